using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace Microsoft.ML.Dpo.Tokenization.Pipeline;

/// <summary>
/// A tokenizer.json pattern (<c>{"String": ...}</c> or <c>{"Regex": ...}</c>) that finds its matches in a text with
/// the code-point semantics of Hugging Face's Oniguruma regexes: .NET matches UTF-16 code units, so before matching,
/// a text with characters outside the Basic Multilingual Plane is rewritten with one stand-in character of the same
/// Unicode category per such character (a mathematical bold 𝐀 is a letter for <c>\p{L}</c>, an emoji is a symbol),
/// and match positions are mapped back.
/// </summary>
internal sealed class TextPattern
{
    readonly Regex? _regex;
    readonly string? _literal;

    TextPattern(Regex? regex, string? literal) { _regex = regex; _literal = literal; }

    /// <summary>A literal string pattern.</summary>
    public static TextPattern Literal(string s) => new(null, s);

    /// <summary>A regex pattern (Oniguruma syntax as tokenizer.json writes it); throws <see cref="NotSupportedException"/> when .NET cannot compile it.</summary>
    public static TextPattern FromRegex(string pattern, string where)
    {
        // Multiline: Oniguruma's default (Ruby) syntax makes ^ and $ line anchors.
        try { return new(new Regex(pattern, RegexOptions.Compiled | RegexOptions.CultureInvariant | RegexOptions.Multiline), null); }
        catch (ArgumentException e) { throw new NotSupportedException($"{where}: regex {Quote(pattern)} is not supported by .NET's regex engine ({e.Message})."); }
    }

    /// <summary>Reads <c>{"String": s}</c> or <c>{"Regex": r}</c>.</summary>
    public static TextPattern Read(System.Text.Json.Nodes.JsonNode? node, string where)
    {
        if (node is System.Text.Json.Nodes.JsonObject o)
        {
            if (o["String"] is System.Text.Json.Nodes.JsonValue s && s.TryGetValue(out string? str)) return Literal(str);
            if (o["Regex"] is System.Text.Json.Nodes.JsonValue r && r.TryGetValue(out string? re)) return FromRegex(re, where);
        }
        throw new InvalidDataException($"{where}: pattern must be {{\"String\": ...}} or {{\"Regex\": ...}}, found {node?.ToJsonString() ?? "null"}.");
    }

    static string Quote(string s) => System.Text.Json.JsonSerializer.Serialize(s);

    /// <summary>The matches (start, length) in UTF-16 positions of <paramref name="text"/>, left to right, not overlapping; empty matches are left out.</summary>
    public List<(int Start, int Length)> Matches(string text)
    {
        var result = new List<(int, int)>();
        if (text.Length == 0) return result;
        if (_literal != null)
        {
            if (_literal.Length == 0) return result;
            for (int at = text.IndexOf(_literal, StringComparison.Ordinal); at >= 0; at = text.IndexOf(_literal, at + _literal.Length, StringComparison.Ordinal))
                result.Add((at, _literal.Length));
            return result;
        }
        if (!HasSurrogates(text))
        {
            for (var m = _regex!.Match(text); m.Success; m = m.NextMatch())
                if (m.Length > 0) result.Add((m.Index, m.Length));
            return result;
        }
        // One char per code point; map[i] = the UTF-16 position of stand-in i in the original text.
        var sb = new StringBuilder(text.Length);
        var map = new List<int>(text.Length + 1);
        for (int i = 0; i < text.Length;)
        {
            map.Add(i);
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                sb.Append(StandIn(CharUnicodeInfo.GetUnicodeCategory(char.ConvertToUtf32(text[i], text[i + 1]))));
                i += 2;
            }
            else { sb.Append(text[i]); i++; }
        }
        map.Add(text.Length);
        string folded = sb.ToString();
        for (var m = _regex!.Match(folded); m.Success; m = m.NextMatch())
            if (m.Length > 0) result.Add((map[m.Index], map[m.Index + m.Length] - map[m.Index]));
        return result;
    }

    /// <summary>Replaces every match with <paramref name="content"/>.</summary>
    public string Replace(string text, string content)
    {
        if (_literal != null) return _literal.Length == 0 ? text : text.Replace(_literal, content, StringComparison.Ordinal);
        var matches = Matches(text);
        if (matches.Count == 0) return text;
        var sb = new StringBuilder(text.Length);
        int at = 0;
        foreach (var (start, length) in matches) { sb.Append(text, at, start - at).Append(content); at = start + length; }
        return sb.Append(text, at, text.Length - at).ToString();
    }

    static bool HasSurrogates(string s)
    {
        foreach (char c in s) if (char.IsSurrogate(c)) return true;
        return false;
    }

    /// <summary>A Basic Multilingual Plane character of the given category, rare in text and in patterns.</summary>
    static char StandIn(UnicodeCategory category) => category switch
    {
        UnicodeCategory.UppercaseLetter => '\u10A0',
        UnicodeCategory.LowercaseLetter => '\u2D00',
        UnicodeCategory.TitlecaseLetter => '\u1F88',
        UnicodeCategory.ModifierLetter => '\u02B0',
        UnicodeCategory.OtherLetter => '\uA000',
        UnicodeCategory.NonSpacingMark => '\u1AB0',
        UnicodeCategory.SpacingCombiningMark => '\u0903',
        UnicodeCategory.EnclosingMark => '\u20DD',
        UnicodeCategory.DecimalDigitNumber => '\u0F20',
        UnicodeCategory.LetterNumber => '\u2160',
        UnicodeCategory.OtherNumber => '\u2460',
        UnicodeCategory.ConnectorPunctuation => '\u2040',
        UnicodeCategory.DashPunctuation => '\u2E1A',
        UnicodeCategory.OpenPunctuation => '\u2E28',
        UnicodeCategory.ClosePunctuation => '\u2E29',
        UnicodeCategory.InitialQuotePunctuation => '\u2E02',
        UnicodeCategory.FinalQuotePunctuation => '\u2E03',
        UnicodeCategory.OtherPunctuation => '\u2E2E',
        UnicodeCategory.MathSymbol => '\u2A00',
        UnicodeCategory.CurrencySymbol => '\u20B0',
        UnicodeCategory.ModifierSymbol => '\u02C2',
        UnicodeCategory.OtherSymbol => '\u2B50',
        UnicodeCategory.Format => '\u2061',
        UnicodeCategory.PrivateUse => '\uF8FF',
        _ => '\u0378', // unassigned
    };
}
