using System.Text.Json;
using System.Text.Json.Nodes;

namespace Microsoft.ML.Dpo.Tokenization;

/// <summary>
/// The model of a Hugging Face "fast" tokenizer file (tokenizer.json) when it is the only vocabulary of a directory
/// (Llama 3 and many recent exports ship no vocab.json/merges.txt). Only byte-level BPE is read — <c>model.type</c>
/// "BPE" with a ByteLevel pre-tokenizer (alone or after a Split regex, in a Sequence) — as the vocabulary and merges
/// that vocab.json + merges.txt would hold; the tokenizer itself is built by the same code as for those files.
/// Everything else is refused with <see cref="NotSupportedException"/> saying which file to add.
/// </summary>
internal static class TokenizerJson
{
    /// <summary>Reads <c>model.vocab</c> and <c>model.merges</c> (each "a b" or ["a", "b"]) of a byte-level BPE tokenizer.json.</summary>
    /// <param name="fast">The parsed tokenizer.json.</param>
    /// <param name="path">Its path, for messages.</param>
    /// <returns>The vocabulary (token → id) and the merges as "a b" strings, in priority order.</returns>
    /// <exception cref="NotSupportedException">Not a byte-level BPE (SentencePiece-style BPE, WordPiece, Unigram, ...).</exception>
    /// <exception cref="InvalidDataException">The model is malformed.</exception>
    public static (Dictionary<string, int> Vocabulary, List<string> Merges) ReadByteLevelBpe(JsonObject fast, string path)
    {
        if (fast["model"] is not JsonObject model)
            throw new InvalidDataException($"{path}: no \"model\" object, so no vocabulary.");
        string type = model["type"] is JsonValue t && t.TryGetValue(out string? s) ? s
            : model["merges"] != null ? "BPE" : "(none)"; // old files leave the type out of BPE models
        if (type != "BPE")
            throw new NotSupportedException(
                $"{path}: model.type '{type}' is not supported; only byte-level BPE tokenizer.json files load (GPT-2, Llama 3, Qwen2, SmolLM). "
                + "Add the model's tokenizer.model (SentencePiece) or vocab.json + merges.txt to the directory.");

        var types = new List<string>();
        foreach (string key in new[] { "normalizer", "pre_tokenizer", "decoder" }) CollectTypes(fast[key], types);
        bool byteFallback = model["byte_fallback"] is JsonValue bf && bf.TryGetValue(out bool b) && b;
        if (byteFallback || types.Contains("Metaspace") || types.Contains("ByteFallback"))
            throw new NotSupportedException(
                $"{path}: a SentencePiece-style BPE (byte_fallback, '▁' for spaces, as TinyLlama and Mistral) cannot be loaded from tokenizer.json; "
                + "add the model's tokenizer.model (SentencePiece) to the directory.");

        var byteLevel = FindByteLevel(fast["pre_tokenizer"]);
        if (byteLevel == null)
            throw new NotSupportedException(
                $"{path}: a BPE without a ByteLevel pre-tokenizer (found {(types.Count > 0 ? string.Join(", ", types) : "none")}) is not supported; "
                + "only byte-level BPE loads from tokenizer.json. Add the model's tokenizer.model (SentencePiece) or vocab.json + merges.txt to the directory.");
        if (byteLevel["add_prefix_space"] is JsonValue aps && aps.TryGetValue(out bool prefix) && prefix)
            throw new NotSupportedException($"{path}: a ByteLevel pre-tokenizer with add_prefix_space: true is not supported; add vocab.json + merges.txt to the directory.");
        foreach (string key in new[] { "continuing_subword_prefix", "end_of_word_suffix" })
            if (model[key] is JsonValue affix && affix.TryGetValue(out string? a) && a.Length > 0)
                throw new NotSupportedException($"{path}: model.{key} '{a}' is not supported for byte-level BPE.");

        if (model["vocab"] is not JsonObject vocabNode)
            throw new InvalidDataException($"{path}: model.vocab must be an object mapping tokens to integer ids.");
        var vocabulary = new Dictionary<string, int>(vocabNode.Count, StringComparer.Ordinal);
        foreach (var (token, idNode) in vocabNode)
        {
            if (idNode is not JsonValue v || v.GetValueKind() != JsonValueKind.Number || !v.TryGetValue(out int id))
                throw new InvalidDataException($"{path}: model.vocab[\"{token}\"] must be an integer id, found {idNode?.ToJsonString() ?? "null"}.");
            vocabulary[token] = id;
        }

        if (model["merges"] is not JsonArray mergesNode)
            throw new InvalidDataException($"{path}: model.merges must be a list of merges (\"a b\" or [\"a\", \"b\"]).");
        var merges = new List<string>(mergesNode.Count);
        for (int i = 0; i < mergesNode.Count; i++)
        {
            var item = mergesNode[i];
            string? merge = item switch
            {
                JsonValue v when v.TryGetValue(out string? m) && m.Split(' ').Length == 2 => m,
                JsonArray { Count: 2 } pair when pair[0] is JsonValue l && l.TryGetValue(out string? left) && pair[1] is JsonValue r && r.TryGetValue(out string? right)
                    && left.Length > 0 && right.Length > 0 && !left.Contains(' ') && !right.Contains(' ') => left + " " + right,
                _ => null,
            };
            merges.Add(merge ?? throw new InvalidDataException(
                $"{path}: model.merges[{i}] is not a merge of two tokens (\"a b\" or [\"a\", \"b\"], without spaces in the tokens): {item?.ToJsonString() ?? "null"}."));
        }
        return (vocabulary, merges);
    }

    /// <summary>The ByteLevel step of a pre-tokenizer (itself, or inside a Sequence), or null.</summary>
    static JsonObject? FindByteLevel(JsonNode? node) => node switch
    {
        JsonObject o when (string?)o["type"] == "ByteLevel" => o,
        JsonObject o when o["pretokenizers"] is JsonArray steps => steps.Select(FindByteLevel).FirstOrDefault(s => s != null),
        _ => null,
    };

    /// <summary>The types of a normalizer, pre-tokenizer or decoder, with those of the steps of a Sequence.</summary>
    static void CollectTypes(JsonNode? node, List<string> types)
    {
        if (node is not JsonObject o) return;
        if (o["type"] is JsonValue t && t.TryGetValue(out string? type)) types.Add(type);
        foreach (string key in new[] { "normalizers", "pretokenizers", "decoders" })
            if (o[key] is JsonArray steps)
                foreach (var step in steps) CollectTypes(step, types);
    }
}
