using System.Text.RegularExpressions;

namespace Microsoft.ML.Dpo.Tokenization.Pipeline;

/// <summary>A tokenizer.json added token with Hugging Face's flags.</summary>
internal sealed record AddedToken(int Id, string Content, bool Special, bool SingleWord, bool LStrip, bool RStrip, bool Normalized);

/// <summary>
/// Finds added tokens in text as Hugging Face's AddedVocabulary does: leftmost-longest matches; a <c>single_word</c>
/// token only where no word character touches it; <c>lstrip</c>/<c>rstrip</c> swallow the white space on that side.
/// </summary>
internal sealed class AddedTokenMatcher
{
    sealed class Node
    {
        public Dictionary<char, Node>? Children;
        public AddedToken? Token;
    }

    readonly Node _root = new();
    static readonly Regex s_wordStart = new(@"^\w", RegexOptions.CultureInvariant), s_wordEnd = new(@"\w$", RegexOptions.CultureInvariant);

    public AddedTokenMatcher(IEnumerable<AddedToken> tokens)
    {
        foreach (var token in tokens)
        {
            if (token.Content.Length == 0) continue;
            var node = _root;
            foreach (char c in token.Content)
            {
                node.Children ??= new Dictionary<char, Node>();
                if (!node.Children.TryGetValue(c, out var child)) node.Children[c] = child = new Node();
                node = child;
            }
            node.Token ??= token;
        }
        IsEmpty = _root.Children == null;
    }

    public bool IsEmpty { get; }

    /// <summary>
    /// Splits <paramref name="text"/> into text pieces (Token null) and added tokens, in order. <c>Start</c> is each
    /// piece's UTF-16 position in <paramref name="text"/>.
    /// </summary>
    public List<(int Start, string Text, AddedToken? Token)> Split(string text)
    {
        var result = new List<(int, string, AddedToken?)>();
        if (IsEmpty) { if (text.Length > 0) result.Add((0, text, null)); return result; }
        int pieceStart = 0;
        for (int i = 0; i < text.Length;)
        {
            var node = _root;
            AddedToken? found = null;
            for (int j = i; j < text.Length && node.Children != null && node.Children.TryGetValue(text[j], out node); j++)
                if (node.Token != null) found = node.Token;
            if (found == null) { i++; continue; }
            int start = i, stop = i + found.Content.Length;
            i = stop; // the next search starts after this match, whether it is taken or not
            if (found.SingleWord)
            {
                bool startOk = start == 0 || !s_wordEnd.IsMatch(text[..start]);
                bool stopOk = stop == text.Length || !s_wordStart.IsMatch(text[stop..]);
                if (!startOk || !stopOk) continue;
            }
            if (found.LStrip) { int s = start; while (s > pieceStart && char.IsWhiteSpace(text[s - 1])) s--; start = s; }
            if (found.RStrip) while (stop < text.Length && char.IsWhiteSpace(text[stop])) stop++;
            if (start > pieceStart) result.Add((pieceStart, text[pieceStart..start], null));
            result.Add((start, text[start..stop], found));
            pieceStart = i = stop;
        }
        if (pieceStart < text.Length) result.Add((pieceStart, text[pieceStart..], null));
        return result;
    }
}
