using System.Text;

namespace Microsoft.ML.Dpo.Tokenization.Pipeline;

/// <summary>A tokenizer.json decoder: turns the tokens of ids back into text pieces, which are then concatenated.</summary>
internal abstract class Decoder
{
    public abstract List<string> DecodeChain(List<string> tokens, Func<string, bool> isAddedToken);

    /// <summary>UTF-8 bytes to text, each invalid byte sequence as one U+FFFD.</summary>
    public static string Utf8(List<byte> bytes) => Encoding.UTF8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(bytes));
}

/// <summary>ByteLevel: GPT-2's printable characters back to bytes, decoded as UTF-8 (added tokens are taken as they are written).</summary>
internal sealed class ByteLevelDecoder : Decoder
{
    public override List<string> DecodeChain(List<string> tokens, Func<string, bool> isAddedToken)
    {
        var bytes = new List<byte>();
        Span<byte> buffer = stackalloc byte[4];
        foreach (string token in tokens)
        {
            bool mapped = !isAddedToken(token);
            if (mapped) foreach (char c in token) if (ByteLevelBpe.CharToByte(c) < 0) { mapped = false; break; }
            if (mapped) foreach (char c in token) bytes.Add((byte)ByteLevelBpe.CharToByte(c));
            else bytes.AddRange(Encoding.UTF8.GetBytes(token));
        }
        return [Utf8(bytes)];
    }
}

/// <summary>Metaspace: "▁" back to spaces; the first token loses its leading space unless the prepend scheme is "never".</summary>
internal sealed class MetaspaceDecoder(string replacement, bool stripFirst) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens, Func<string, bool> isAddedToken)
    {
        var result = new List<string>(tokens.Count);
        for (int i = 0; i < tokens.Count; i++)
        {
            string t = tokens[i].Replace(replacement, " ", StringComparison.Ordinal);
            if (i == 0 && stripFirst && t.StartsWith(' ')) t = t[1..];
            result.Add(t);
        }
        return result;
    }
}

/// <summary>ByteFallback: runs of &lt;0xNN&gt; tokens back to their UTF-8 text (an invalid run: one U+FFFD per byte, as Hugging Face).</summary>
internal sealed class ByteFallbackDecoder : Decoder
{
    public override List<string> DecodeChain(List<string> tokens, Func<string, bool> isAddedToken)
    {
        var result = new List<string>(tokens.Count);
        var pending = new List<byte>();
        void Flush()
        {
            if (pending.Count == 0) return;
            try { result.Add(new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(pending.ToArray())); }
            catch (DecoderFallbackException) { result.Add(new string('\uFFFD', pending.Count)); }
            pending.Clear();
        }
        foreach (string t in tokens)
        {
            if (t.Length == 6 && t.StartsWith("<0x", StringComparison.Ordinal) && t[5] == '>'
                && byte.TryParse(t.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber, null, out byte b))
                pending.Add(b);
            else { Flush(); result.Add(t); }
        }
        Flush();
        return result;
    }
}

/// <summary>Fuse: all tokens into one string.</summary>
internal sealed class FuseDecoder : Decoder
{
    public override List<string> DecodeChain(List<string> tokens, Func<string, bool> isAddedToken) => [string.Concat(tokens)];
}

/// <summary>Strip: up to <c>start</c> leading and <c>stop</c> trailing occurrences of a character removed from each token.</summary>
internal sealed class StripDecoder(char content, int start, int stop) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens, Func<string, bool> isAddedToken)
    {
        var result = new List<string>(tokens.Count);
        foreach (string t in tokens)
        {
            int from = 0, to = t.Length;
            for (int i = 0; i < start && from < t.Length && t[from] == content; i++) from++;
            for (int i = 0; i < stop && to > from && t[to - 1] == content; i++) to--;
            result.Add(t[from..to]);
        }
        return result;
    }
}

/// <summary>Replace: a pattern replaced in each token ("▁" → " ").</summary>
internal sealed class ReplaceDecoder(TextPattern pattern, string content) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens, Func<string, bool> isAddedToken) => tokens.Select(t => pattern.Replace(t, content)).ToList();
}

/// <summary>Sequence: decoders applied in order.</summary>
internal sealed class SequenceDecoder(IReadOnlyList<Decoder> steps) : Decoder
{
    public override List<string> DecodeChain(List<string> tokens, Func<string, bool> isAddedToken)
    {
        foreach (var step in steps) tokens = step.DecodeChain(tokens, isAddedToken);
        return tokens;
    }
}
