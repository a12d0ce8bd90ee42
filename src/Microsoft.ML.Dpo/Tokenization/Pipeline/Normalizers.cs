using System.Globalization;
using System.Text;

namespace Microsoft.ML.Dpo.Tokenization.Pipeline;

/// <summary>A tokenizer.json normalizer: applied to each piece of text between added tokens, before pre-tokenization.</summary>
internal abstract class Normalizer
{
    public abstract string Normalize(string text);
}

/// <summary>NFC, NFD, NFKC or NFKD.</summary>
internal sealed class UnicodeNormalizer(NormalizationForm form) : Normalizer
{
    public override string Normalize(string text) => text.IsNormalized(form) ? text : text.Normalize(form);
}

/// <summary>
/// Lowercase: each character's Unicode lower case, as Hugging Face's (Rust <c>char::to_lowercase</c>, full mappings:
/// "İ" → "i̇"; no final-sigma rule: "Σ" is always "σ").
/// </summary>
internal sealed class LowercaseNormalizer : Normalizer
{
    public override string Normalize(string text) =>
        text.Contains('\u0130') ? text.Replace("\u0130", "i\u0307", StringComparison.Ordinal).ToLowerInvariant() : text.ToLowerInvariant();
}

/// <summary>Strip: white space removed on the left and/or right.</summary>
internal sealed class StripNormalizer(bool left, bool right) : Normalizer
{
    public override string Normalize(string text) => left && right ? text.Trim() : left ? text.TrimStart() : right ? text.TrimEnd() : text;
}

/// <summary>StripAccents: non-spacing marks removed (meant after NFD).</summary>
internal sealed class StripAccentsNormalizer : Normalizer
{
    public override string Normalize(string text)
    {
        var sb = new StringBuilder(text.Length);
        foreach (char c in text) if (CharUnicodeInfo.GetUnicodeCategory(c) != UnicodeCategory.NonSpacingMark) sb.Append(c);
        return sb.ToString();
    }
}

/// <summary>Prepend: a string put before a non-empty piece (SentencePiece's "▁" dummy prefix in Llama/Mistral files).</summary>
internal sealed class PrependNormalizer(string prefix) : Normalizer
{
    public override string Normalize(string text) => text.Length == 0 ? text : prefix + text;
}

/// <summary>Replace: every match of a pattern replaced by a content (" " → "▁").</summary>
internal sealed class ReplaceNormalizer(TextPattern pattern, string content) : Normalizer
{
    public override string Normalize(string text) => pattern.Replace(text, content);
}

/// <summary>Sequence: normalizers applied in order.</summary>
internal sealed class SequenceNormalizer(IReadOnlyList<Normalizer> steps) : Normalizer
{
    public override string Normalize(string text)
    {
        foreach (var step in steps) text = step.Normalize(text);
        return text;
    }
}
