using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Microsoft.ML.Dpo.Tokenization.Pipeline;

/// <summary>
/// Reads a Hugging Face <c>tokenizer.json</c> into an <see cref="HfTokenizer"/>. Every component is checked when the
/// file loads: one that is not implemented is a <see cref="NotSupportedException"/> naming the file and the
/// component's path (<c>pre_tokenizer.pretokenizers[1]: Split with behavior "Foo"</c>), never a tokenizer that loads
/// and gives other ids than Hugging Face.
/// </summary>
internal static class TokenizerJsonReader
{
    public static HfTokenizer Read(JsonObject root, string path)
    {
        var reader = new Reader(path);
        var model = reader.Model(root["model"] as JsonObject ?? throw new InvalidDataException($"{path}: no \"model\" object, so no vocabulary."));
        var normalizer = reader.Normalizer(root["normalizer"], "normalizer");
        var pre = reader.PreTokenizer(root["pre_tokenizer"], "pre_tokenizer");
        var post = reader.PostProcessor(root["post_processor"], "post_processor", model, root);
        var decoder = reader.Decoder(root["decoder"], "decoder");
        var added = ReadAddedTokens(root["added_tokens"], path);
        return new HfTokenizer(model, normalizer, pre, post, decoder, added);
    }

    public static List<AddedToken> ReadAddedTokens(JsonNode? node, string path)
    {
        var added = new List<AddedToken>();
        if (node is null) return added;
        if (node is not JsonArray list) throw new InvalidDataException($"{path}: added_tokens must be a list.");
        for (int i = 0; i < list.Count; i++)
        {
            if (list[i] is not JsonObject o || o["content"] is not JsonValue c || !c.TryGetValue(out string? content) || o["id"] is not JsonValue idv || !idv.TryGetValue(out int id))
                throw new InvalidDataException($"{path}: added_tokens[{i}] must have a string \"content\" and an integer \"id\".");
            bool special = Bool(o, "special", false);
            added.Add(new AddedToken(id, content, special, Bool(o, "single_word", false), Bool(o, "lstrip", false), Bool(o, "rstrip", false), Bool(o, "normalized", !special)));
        }
        return added;
    }

    static bool Bool(JsonObject o, string key, bool fallback) => o[key] is JsonValue v && v.TryGetValue(out bool b) ? b : fallback;

    sealed class Reader(string path)
    {
        NotSupportedException Unsupported(string where, string what) =>
            new($"{path}: {where}: {what} is not supported; the tokenizer would not give Hugging Face's ids.");

        InvalidDataException Invalid(string where, string what) => new($"{path}: {where}: {what}.");

        static string? Str(JsonObject o, string key) => o[key] is JsonValue v && v.TryGetValue(out string? s) ? s : null;

        string Type(JsonObject o, string where) => Str(o, "type") ?? throw Invalid(where, "no \"type\"");

        public BpeModel Model(JsonObject model)
        {
            string type = Str(model, "type") ?? (model["merges"] != null ? "BPE" : "(none)"); // old files leave the type out of BPE models
            if (type != "BPE") throw Unsupported("model", $"model type \"{type}\" (only BPE is implemented; WordPiece, Unigram and WordLevel are refused)");
            if (model["dropout"] is JsonValue d && d.TryGetValue(out double dropout) && dropout != 0)
                throw Unsupported("model.dropout", $"BPE dropout {dropout} (random merges)");
            foreach (string key in new[] { "continuing_subword_prefix", "end_of_word_suffix" })
                if (Str(model, key) is { Length: > 0 } affix) throw Unsupported($"model.{key}", $"\"{affix}\"");
            if (model["vocab"] is not JsonObject vocabNode) throw Invalid("model.vocab", "must be an object mapping tokens to integer ids");
            var vocab = new Dictionary<string, int>(vocabNode.Count, StringComparer.Ordinal);
            foreach (var (token, idNode) in vocabNode)
            {
                if (idNode is not JsonValue v || v.GetValueKind() != JsonValueKind.Number || !v.TryGetValue(out int id) || id < 0)
                    throw Invalid($"model.vocab[{JsonSerializer.Serialize(token)}]", $"must be a non-negative integer id, found {idNode?.ToJsonString() ?? "null"}");
                vocab[token] = id;
            }
            if (model["merges"] is not JsonArray mergesNode) throw Invalid("model.merges", "must be a list of merges (\"a b\" or [\"a\", \"b\"])");
            var pairs = new List<(string, string)>(mergesNode.Count);
            for (int i = 0; i < mergesNode.Count; i++)
            {
                var item = mergesNode[i];
                if (item is JsonValue mv && mv.TryGetValue(out string? m) && m.IndexOf(' ', 1) is int sp && sp > 0 && sp < m.Length - 1 && m.IndexOf(' ', sp + 1) < 0)
                    pairs.Add((m[..sp], m[(sp + 1)..]));
                else if (item is JsonArray { Count: 2 } pair && pair[0] is JsonValue l && l.TryGetValue(out string? left) && pair[1] is JsonValue r && r.TryGetValue(out string? right))
                    pairs.Add((left, right));
                else throw Invalid($"model.merges[{i}]", $"is not a merge of two tokens: {item?.ToJsonString() ?? "null"}");
            }
            var merges = BpeModel.MergesFromPairs(pairs, vocab, $"{path}: model.merges");
            int? unk = Str(model, "unk_token") is string u ? (vocab.TryGetValue(u, out int uid) ? uid : throw Invalid("model.unk_token", $"\"{u}\" is not in the vocabulary")) : null;
            return new BpeModel(vocab, merges, unk, Bool(model, "fuse_unk", false), Bool(model, "byte_fallback", false), Bool(model, "ignore_merges", false));
        }

        public Normalizer? Normalizer(JsonNode? node, string where)
        {
            if (node is null) return null;
            if (node is not JsonObject o) throw Invalid(where, "must be an object or null");
            string type = Type(o, where);
            return type switch
            {
                "NFC" => new UnicodeNormalizer(NormalizationForm.FormC),
                "NFD" => new UnicodeNormalizer(NormalizationForm.FormD),
                "NFKC" => new UnicodeNormalizer(NormalizationForm.FormKC),
                "NFKD" => new UnicodeNormalizer(NormalizationForm.FormKD),
                "Lowercase" => new LowercaseNormalizer(),
                "StripAccents" => new StripAccentsNormalizer(),
                "Strip" => new StripNormalizer(Bool(o, "strip_left", true), Bool(o, "strip_right", true)),
                "Prepend" => new PrependNormalizer(Str(o, "prepend") ?? throw Invalid(where, "Prepend without \"prepend\"")),
                "Replace" => new ReplaceNormalizer(TextPattern.Read(o["pattern"], $"{path}: {where}.pattern"), Str(o, "content") ?? ""),
                "Sequence" => new SequenceNormalizer(List(o, "normalizers", where).Select((n, i) => Normalizer(n, $"{where}.normalizers[{i}]")!).ToList()),
                _ => throw Unsupported(where, $"normalizer \"{type}\""),
            };
        }

        List<JsonNode?> List(JsonObject o, string key, string where) =>
            o[key] is JsonArray a ? a.ToList() : throw Invalid($"{where}.{key}", "must be a list");

        SplitBehavior Behavior(JsonObject o, string where, string fallback)
        {
            string b = Str(o, "behavior") ?? fallback;
            return b switch
            {
                "Removed" => SplitBehavior.Removed,
                "Isolated" => SplitBehavior.Isolated,
                "MergedWithPrevious" => SplitBehavior.MergedWithPrevious,
                "MergedWithNext" => SplitBehavior.MergedWithNext,
                "Contiguous" => SplitBehavior.Contiguous,
                _ => throw Unsupported(where, $"{Str(o, "type")} with behavior \"{b}\""),
            };
        }

        static string PrependScheme(JsonObject o) =>
            Str(o, "prepend_scheme") ?? (o["add_prefix_space"] is JsonValue v && v.TryGetValue(out bool b) && !b ? "never" : "always");

        public PreTokenizer? PreTokenizer(JsonNode? node, string where)
        {
            if (node is null) return null;
            if (node is not JsonObject o) throw Invalid(where, "must be an object or null");
            string type = Type(o, where);
            switch (type)
            {
                case "ByteLevel": return new ByteLevelPreTokenizer(Bool(o, "add_prefix_space", true), Bool(o, "use_regex", true));
                case "Split":
                    return new SplitPreTokenizer(TextPattern.Read(o["pattern"], $"{path}: {where}.pattern"), Behavior(o, where, "Removed"), Bool(o, "invert", false));
                case "Metaspace":
                {
                    string scheme = PrependScheme(o);
                    if (scheme is not ("always" or "first" or "never")) throw Unsupported(where, $"Metaspace with prepend_scheme \"{scheme}\"");
                    return new MetaspacePreTokenizer(Str(o, "replacement") ?? "▁", scheme, Bool(o, "split", true));
                }
                case "Digits": return new DigitsPreTokenizer(Bool(o, "individual_digits", false));
                case "Punctuation": return new PunctuationPreTokenizer(Behavior(o, where, "Isolated"));
                case "Whitespace": return new WhitespacePreTokenizer();
                case "WhitespaceSplit": return new WhitespaceSplitPreTokenizer();
                case "BertPreTokenizer": return new BertPreTokenizer();
                case "Sequence":
                    return new SequencePreTokenizer(List(o, "pretokenizers", where).Select((n, i) => PreTokenizer(n, $"{where}.pretokenizers[{i}]")!).ToList());
                default: throw Unsupported(where, $"pre-tokenizer \"{type}\"");
            }
        }

        public PostProcessor? PostProcessor(JsonNode? node, string where, BpeModel model, JsonObject root)
        {
            if (node is null) return null;
            if (node is not JsonObject o) throw Invalid(where, "must be an object or null");
            string type = Type(o, where);
            switch (type)
            {
                case "ByteLevel": return new NoOpPostProcessor();
                case "TemplateProcessing":
                {
                    var specials = o["special_tokens"] as JsonObject ?? new JsonObject();
                    var items = new List<int[]?>();
                    var single = o["single"] as JsonArray ?? throw Invalid($"{where}.single", "must be a list");
                    for (int i = 0; i < single.Count; i++)
                    {
                        if (single[i] is JsonObject item && item["Sequence"] is JsonObject seq)
                        {
                            if (Str(seq, "id") != "A") throw Unsupported($"{where}.single[{i}]", $"sequence \"{Str(seq, "id")}\" in a single-sequence template");
                            items.Add(null);
                        }
                        else if (single[i] is JsonObject item2 && item2["SpecialToken"] is JsonObject st && Str(st, "id") is string name)
                        {
                            if (specials[name] is not JsonObject entry || entry["ids"] is not JsonArray idList)
                                throw Invalid($"{where}.special_tokens", $"no ids for \"{name}\"");
                            items.Add(idList.Select(x => x is JsonValue v && v.TryGetValue(out int id) ? id : throw Invalid($"{where}.special_tokens[\"{name}\"].ids", "must be integers")).ToArray());
                        }
                        else throw Invalid($"{where}.single[{i}]", "must be {\"SpecialToken\": ...} or {\"Sequence\": ...}");
                    }
                    return new TemplatePostProcessor(items);
                }
                case "RobertaProcessing":
                case "BertProcessing":
                {
                    int Id(string key) => o[key] is JsonArray { Count: 2 } a && a[1] is JsonValue v && v.TryGetValue(out int id) ? id : throw Invalid($"{where}.{key}", "must be [token, id]");
                    return new TemplatePostProcessor([[Id("cls")], null, [Id("sep")]]);
                }
                case "Sequence":
                    return new SequencePostProcessor(List(o, "processors", where).Select((n, i) => PostProcessor(n, $"{where}.processors[{i}]", model, root)!).ToList());
                default: throw Unsupported(where, $"post-processor \"{type}\"");
            }
        }

        public Decoder? Decoder(JsonNode? node, string where)
        {
            if (node is null) return null;
            if (node is not JsonObject o) throw Invalid(where, "must be an object or null");
            string type = Type(o, where);
            switch (type)
            {
                case "ByteLevel": return new ByteLevelDecoder();
                case "Metaspace": return new MetaspaceDecoder(Str(o, "replacement") ?? "▁", PrependScheme(o) != "never");
                case "ByteFallback": return new ByteFallbackDecoder();
                case "Fuse": return new FuseDecoder();
                case "Strip":
                {
                    string content = Str(o, "content") ?? " ";
                    if (content.Length != 1) throw Unsupported(where, $"Strip of \"{content}\" (one character expected)");
                    int Int(string key) => o[key] is JsonValue v && v.TryGetValue(out int n) ? n : 0;
                    return new StripDecoder(content[0], Int("start"), Int("stop"));
                }
                case "Replace": return new ReplaceDecoder(TextPattern.Read(o["pattern"], $"{path}: {where}.pattern"), Str(o, "content") ?? "");
                case "Sequence":
                    return new SequenceDecoder(List(o, "decoders", where).Select((n, i) => Decoder(n, $"{where}.decoders[{i}]")!).ToList());
                default: throw Unsupported(where, $"decoder \"{type}\"");
            }
        }
    }
}
