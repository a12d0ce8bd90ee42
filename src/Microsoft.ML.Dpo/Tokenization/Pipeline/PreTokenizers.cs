using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace Microsoft.ML.Dpo.Tokenization.Pipeline;

/// <summary>A piece of text on its way to the model; <c>AtStart</c>: it begins at offset 0 of the original text (Metaspace's "first" scheme).</summary>
internal readonly record struct Piece(string Text, bool AtStart);

/// <summary>How a split keeps the pattern's matches (tokenizer.json's <c>behavior</c>), as Hugging Face's SplitDelimiterBehavior.</summary>
internal enum SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous }

/// <summary>A tokenizer.json pre-tokenizer: cuts each piece into smaller pieces (words) that the model encodes separately.</summary>
internal abstract class PreTokenizer
{
    /// <summary>Cuts every piece of <paramref name="pieces"/>; returns the new list.</summary>
    public List<Piece> PreTokenize(List<Piece> pieces)
    {
        var output = new List<Piece>(pieces.Count);
        foreach (var piece in pieces) Split(piece, output);
        return output;
    }

    /// <summary>Appends the pieces <paramref name="piece"/> is cut into; empty pieces are left out.</summary>
    protected abstract void Split(Piece piece, List<Piece> output);

    /// <summary>
    /// Hugging Face's split by matches: the text is covered by alternating non-matches and matches, which
    /// <paramref name="behavior"/> keeps, drops or glues to a neighbour; <paramref name="invert"/> swaps the roles.
    /// </summary>
    public static void SplitByMatches(Piece piece, List<(int Start, int Length)> found, SplitBehavior behavior, bool invert, List<Piece> output)
    {
        string text = piece.Text;
        var spans = new List<(int Start, int End, bool IsMatch)>(found.Count * 2 + 1);
        int at = 0;
        foreach (var (start, length) in found)
        {
            if (start > at) spans.Add((at, start, invert));
            spans.Add((start, start + length, !invert));
            at = start + length;
        }
        if (at < text.Length) spans.Add((at, text.Length, invert));

        var kept = new List<(int Start, int End)>(spans.Count);
        switch (behavior)
        {
            case SplitBehavior.Removed:
                foreach (var s in spans) if (!s.IsMatch) kept.Add((s.Start, s.End));
                break;
            case SplitBehavior.Isolated:
                foreach (var s in spans) kept.Add((s.Start, s.End));
                break;
            case SplitBehavior.MergedWithPrevious:
            {
                bool previousMatch = false;
                foreach (var s in spans)
                {
                    if (s.IsMatch && !previousMatch && kept.Count > 0) kept[^1] = (kept[^1].Start, s.End);
                    else kept.Add((s.Start, s.End));
                    previousMatch = s.IsMatch;
                }
                break;
            }
            case SplitBehavior.MergedWithNext:
            {
                bool previousMatch = false;
                for (int i = spans.Count - 1; i >= 0; i--)
                {
                    var s = spans[i];
                    if (s.IsMatch && !previousMatch && kept.Count > 0) kept[^1] = (s.Start, kept[^1].End);
                    else kept.Add((s.Start, s.End));
                    previousMatch = s.IsMatch;
                }
                kept.Reverse();
                break;
            }
            case SplitBehavior.Contiguous:
            {
                bool previousMatch = false;
                foreach (var s in spans)
                {
                    if (s.IsMatch == previousMatch && kept.Count > 0) kept[^1] = (kept[^1].Start, s.End);
                    else kept.Add((s.Start, s.End));
                    previousMatch = s.IsMatch;
                }
                break;
            }
        }
        foreach (var (start, end) in kept)
            if (end > start) output.Add(new Piece(text[start..end], piece.AtStart && start == 0));
    }
}

/// <summary>Split: a pattern and a behavior (GPT-4o, Llama 3, Qwen and DeepSeek regexes; Gemma's split on " ").</summary>
internal sealed class SplitPreTokenizer(TextPattern pattern, SplitBehavior behavior, bool invert) : PreTokenizer
{
    protected override void Split(Piece piece, List<Piece> output) => SplitByMatches(piece, pattern.Matches(piece.Text), behavior, invert, output);
}

/// <summary>
/// ByteLevel: optionally a space before the piece, optionally GPT-2's regex split, then every UTF-8 byte written as
/// one of GPT-2's 256 printable characters ("Ġ" for a space).
/// </summary>
internal sealed class ByteLevelPreTokenizer(bool addPrefixSpace, bool useRegex) : PreTokenizer
{
    static readonly TextPattern s_gpt2 = TextPattern.FromRegex(ByteLevelBpe.Gpt2Pattern, "ByteLevel");

    protected override void Split(Piece piece, List<Piece> output)
    {
        string text = addPrefixSpace && !piece.Text.StartsWith(' ') ? " " + piece.Text : piece.Text;
        var words = new List<Piece>();
        if (useRegex) SplitByMatches(piece with { Text = text }, s_gpt2.Matches(text), SplitBehavior.Isolated, false, words);
        else if (text.Length > 0) words.Add(piece with { Text = text });
        foreach (var w in words) output.Add(w with { Text = ByteLevelBpe.ToByteLevel(w.Text) });
    }
}

/// <summary>Metaspace: spaces become "▁" (the replacement), a "▁" is prepended by the scheme, and optionally the piece is split before each "▁".</summary>
internal sealed class MetaspacePreTokenizer(string replacement, string prependScheme, bool split) : PreTokenizer
{
    protected override void Split(Piece piece, List<Piece> output)
    {
        string text = piece.Text.Replace(" ", replacement, StringComparison.Ordinal);
        if (!text.StartsWith(replacement, StringComparison.Ordinal) && (prependScheme == "always" || (prependScheme == "first" && piece.AtStart)))
            text = replacement + text;
        if (!split) { if (text.Length > 0) output.Add(piece with { Text = text }); return; }
        SplitByMatches(piece with { Text = text }, TextPattern.Literal(replacement).Matches(text), SplitBehavior.MergedWithNext, false, output);
    }
}

/// <summary>Digits: digits isolated one by one, or as contiguous runs.</summary>
internal sealed class DigitsPreTokenizer(bool individual) : PreTokenizer
{
    static readonly TextPattern s_digit = TextPattern.FromRegex(@"\p{Nd}", "Digits");
    protected override void Split(Piece piece, List<Piece> output) =>
        SplitByMatches(piece, s_digit.Matches(piece.Text), individual ? SplitBehavior.Isolated : SplitBehavior.Contiguous, false, output);
}

/// <summary>Punctuation: each punctuation character (Unicode P* or ASCII punctuation) split by the behavior.</summary>
internal sealed class PunctuationPreTokenizer(SplitBehavior behavior) : PreTokenizer
{
    protected override void Split(Piece piece, List<Piece> output)
    {
        var found = new List<(int, int)>();
        string t = piece.Text;
        for (int i = 0; i < t.Length; i++)
        {
            int len = char.IsSurrogatePair(t, i) ? 2 : 1;
            if (IsPunctuation(t, i)) found.Add((i, len));
            i += len - 1;
        }
        SplitByMatches(piece, found, behavior, false, output);
    }

    /// <summary>Hugging Face's <c>is_punctuation</c>: ASCII punctuation or a Unicode punctuation category.</summary>
    public static bool IsPunctuation(string s, int i)
    {
        char c = s[i];
        if (c < 128) return char.IsAsciiLetterOrDigit(c) is false && c > ' ' && c < 127;
        return CharUnicodeInfo.GetUnicodeCategory(s, i) is UnicodeCategory.ConnectorPunctuation or UnicodeCategory.DashPunctuation
            or UnicodeCategory.OpenPunctuation or UnicodeCategory.ClosePunctuation or UnicodeCategory.InitialQuotePunctuation
            or UnicodeCategory.FinalQuotePunctuation or UnicodeCategory.OtherPunctuation;
    }
}

/// <summary>Whitespace: the pieces matching <c>\w+|[^\w\s]+</c>.</summary>
internal sealed class WhitespacePreTokenizer : PreTokenizer
{
    static readonly TextPattern s_words = TextPattern.FromRegex(@"\w+|[^\w\s]+", "Whitespace");
    protected override void Split(Piece piece, List<Piece> output) => SplitByMatches(piece, s_words.Matches(piece.Text), SplitBehavior.Removed, true, output);
}

/// <summary>WhitespaceSplit: split on white space, which is removed.</summary>
internal sealed class WhitespaceSplitPreTokenizer : PreTokenizer
{
    static readonly TextPattern s_space = TextPattern.FromRegex(@"\s+", "WhitespaceSplit");
    protected override void Split(Piece piece, List<Piece> output) => SplitByMatches(piece, s_space.Matches(piece.Text), SplitBehavior.Removed, false, output);
}

/// <summary>BertPreTokenizer: split on white space (removed), then each punctuation character isolated.</summary>
internal sealed class BertPreTokenizer : PreTokenizer
{
    static readonly WhitespaceSplitPreTokenizer s_space = new();
    static readonly PunctuationPreTokenizer s_punct = new(SplitBehavior.Isolated);
    protected override void Split(Piece piece, List<Piece> output) => output.AddRange(s_punct.PreTokenize(s_space.PreTokenize([piece])));
}

/// <summary>Sequence: pre-tokenizers applied in order, each to every piece the previous one made.</summary>
internal sealed class SequencePreTokenizer(IReadOnlyList<PreTokenizer> steps) : PreTokenizer
{
    protected override void Split(Piece piece, List<Piece> output)
    {
        var pieces = new List<Piece> { piece };
        foreach (var step in steps) pieces = step.PreTokenize(pieces);
        output.AddRange(pieces);
    }
}
