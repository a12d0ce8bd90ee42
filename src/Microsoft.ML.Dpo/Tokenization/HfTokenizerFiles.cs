using System.Text.Json;
using System.Text.Json.Nodes;

namespace Microsoft.ML.Dpo.Tokenization;

/// <summary>
/// The JSON side of a Hugging Face tokenizer directory: special token strings (tokenizer_config.json,
/// special_tokens_map.json), added tokens (added_tokens_decoder, added_tokens.json, tokenizer.json), the chat
/// template, and token ids (generation_config.json, config.json).
/// </summary>
internal sealed class HfTokenizerFiles
{
    public const string TokenizerConfig = "tokenizer_config.json";
    public const string SpecialTokensMap = "special_tokens_map.json";
    public const string GenerationConfig = "generation_config.json";
    public const string ModelConfig = "config.json";
    public const string TokenizerJson = "tokenizer.json";
    public const string AddedTokensJson = "added_tokens.json";
    /// <summary>The chat template as its own file, which transformers writes beside tokenizer_config.json and prefers to its <c>chat_template</c>.</summary>
    public const string ChatTemplateFile = "chat_template.jinja";

    /// <summary>The directory read.</summary>
    public string Directory { get; private init; } = "";

    public JsonObject? Config { get; private set; }
    public JsonObject? SpecialMap { get; private set; }
    public JsonObject? Generation { get; private set; }
    public JsonObject? Model { get; private set; }
    public JsonObject? Fast { get; private set; }

    /// <summary>Added tokens by content (added_tokens_decoder, added_tokens.json, tokenizer.json's added_tokens).</summary>
    public Dictionary<string, int> AddedTokens { get; } = new(StringComparer.Ordinal);

    /// <summary>Which of the JSON files were found.</summary>
    public List<string> Found { get; } = new();

    public static HfTokenizerFiles Read(string directory)
    {
        var files = new HfTokenizerFiles
        {
            Directory = directory,
            Config = ReadObject(directory, TokenizerConfig),
            SpecialMap = ReadObject(directory, SpecialTokensMap),
            Generation = ReadObject(directory, GenerationConfig),
            Model = ReadObject(directory, ModelConfig),
            Fast = ReadObject(directory, TokenizerJson),
        };
        foreach (var (name, node) in new[] { (TokenizerConfig, files.Config), (SpecialTokensMap, files.SpecialMap), (GenerationConfig, files.Generation), (ModelConfig, files.Model), (TokenizerJson, files.Fast) })
            if (node != null) files.Found.Add(name);

        if (files.Fast?["added_tokens"] is JsonArray fastAdded)
            foreach (var item in fastAdded)
                if (item is JsonObject o && o["content"] is JsonValue c && o["id"] is JsonValue i)
                    files.AddedTokens[c.GetValue<string>()] = files.ReadInt(i, TokenizerJson, "added_tokens[].id");
        if (ReadObject(directory, AddedTokensJson) is { } addedJson)
        {
            files.Found.Add(AddedTokensJson);
            foreach (var (token, id) in addedJson)
                files.AddedTokens[token] = files.ReadInt(id, AddedTokensJson, token);
        }
        if (files.Config?["added_tokens_decoder"] is JsonNode decoderNode)
        {
            if (decoderNode is not JsonObject decoder)
                throw files.Invalid(TokenizerConfig, "'added_tokens_decoder' must be an object mapping ids to {\"content\": ...}");
            foreach (var (key, value) in decoder)
            {
                if (!int.TryParse(key, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out int id))
                    throw files.Invalid(TokenizerConfig, $"'added_tokens_decoder' key '{key}' is not an integer id");
                string content = files.TokenString(value, TokenizerConfig, $"added_tokens_decoder[{key}]")
                    ?? throw files.Invalid(TokenizerConfig, $"'added_tokens_decoder[{key}]' has no content");
                files.AddedTokens[content] = id;
            }
        }
        return files;
    }

    /// <summary>
    /// A special token's string (bos_token, eos_token, pad_token, unk_token) from tokenizer_config.json, else
    /// special_tokens_map.json. <c>Defined</c> is true when either file has the key, even as null (then the
    /// tokenizer deliberately has no such token, as Qwen2 has no BOS).
    /// </summary>
    public (bool Defined, string? Token) SpecialToken(string key)
    {
        foreach (var (obj, file) in new[] { (Config, TokenizerConfig), (SpecialMap, SpecialTokensMap) })
            if (obj != null && obj.TryGetPropertyValue(key, out var node))
                return (true, TokenString(node, file, key));
        return (false, null);
    }

    /// <summary>Token ids under <paramref name="key"/> (an integer or a list of integers) in generation_config.json, then config.json.</summary>
    public IReadOnlyList<int> TokenIds(string key)
    {
        foreach (var (obj, file) in new[] { (Generation, GenerationConfig), (Model, ModelConfig) })
            if (obj != null && obj.TryGetPropertyValue(key, out var node) && node != null)
                return ReadIds(node, file, key);
        return Array.Empty<int>();
    }

    /// <summary>All eos ids named in generation_config.json and config.json (several models stop on more than one).</summary>
    public IEnumerable<int> AllEosIds()
    {
        foreach (var (obj, file) in new[] { (Generation, GenerationConfig), (Model, ModelConfig) })
            if (obj != null && obj.TryGetPropertyValue("eos_token_id", out var node) && node != null)
                foreach (int id in ReadIds(node, file, "eos_token_id"))
                    yield return id;
    }

    /// <summary>
    /// The Jinja chat template and where it was read: chat_template.jinja when the directory has one (transformers reads it in
    /// preference to tokenizer_config.json), else tokenizer_config.json's <c>chat_template</c>; null when there is none.
    /// </summary>
    public (string Source, string File)? ChatTemplateWithFile()
    {
        string path = Path.Combine(Directory, ChatTemplateFile);
        if (File.Exists(path)) return (File.ReadAllText(path), path);
        return ChatTemplate() is { } source ? (source, Path.Combine(Directory, TokenizerConfig)) : null;
    }

    /// <summary>The Jinja chat template of tokenizer_config.json: a string, or a list of {name, template} whose "default" entry is taken.</summary>
    public string? ChatTemplate()
    {
        if (Config == null || !Config.TryGetPropertyValue("chat_template", out var node) || node == null) return null;
        if (node is JsonValue v && v.TryGetValue(out string? s)) return s;
        if (node is JsonArray list)
        {
            foreach (var item in list)
                if (item is JsonObject o && o["name"] is JsonValue n && n.TryGetValue(out string? name) && name == "default")
                    return o["template"]?.GetValue<string>();
            throw Invalid(TokenizerConfig, "'chat_template' is a list without a \"default\" entry");
        }
        throw Invalid(TokenizerConfig, $"'chat_template' must be a string or a list of {{name, template}}, found {node.GetValueKind()}");
    }

    /// <summary>tokenizer_config.json's add_bos_token, when present.</summary>
    public bool? AddBosToken() =>
        Config != null && Config.TryGetPropertyValue("add_bos_token", out var n) && n is JsonValue v && v.TryGetValue(out bool b) ? b : null;

    /// <summary>A boolean of tokenizer_config.json (add_eos_token, legacy, clean_up_tokenization_spaces ...), when present.</summary>
    public bool? ConfigBool(string key) =>
        Config != null && Config.TryGetPropertyValue(key, out var n) && n is JsonValue v && v.TryGetValue(out bool b) ? b : null;

    /// <summary>An integer of tokenizer_config.json (model_max_length), when present and integral.</summary>
    public long? ConfigLong(string key)
    {
        if (Config == null || !Config.TryGetPropertyValue(key, out var n) || n is not JsonValue v || v.GetValueKind() != JsonValueKind.Number) return null;
        if (v.TryGetValue(out long l)) return l;
        return v.TryGetValue(out double d) && d < long.MaxValue && d == Math.Floor(d) ? (long)d : null;
    }

    /// <summary>tokenizer_config.json's added_tokens_decoder with their flags (special, lstrip, rstrip, single_word, normalized).</summary>
    public IEnumerable<Pipeline.AddedToken> ConfigAddedTokens()
    {
        if (Config?["added_tokens_decoder"] is not JsonObject decoder) yield break;
        foreach (var (key, value) in decoder)
        {
            if (value is not JsonObject o || !int.TryParse(key, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out int id)) continue;
            string? content = TokenString(o, TokenizerConfig, $"added_tokens_decoder[{key}]");
            if (content == null) continue;
            bool Flag(string name, bool fallback) => o[name] is JsonValue f && f.TryGetValue(out bool b) ? b : fallback;
            bool special = Flag("special", false);
            yield return new Pipeline.AddedToken(id, content, special, Flag("single_word", false), Flag("lstrip", false), Flag("rstrip", false), Flag("normalized", !special));
        }
    }

    /// <summary>The additional_special_tokens of tokenizer_config.json, else special_tokens_map.json (strings or {"content": ...}).</summary>
    public IEnumerable<string> AdditionalSpecialTokens()
    {
        foreach (var (obj, file) in new[] { (Config, TokenizerConfig), (SpecialMap, SpecialTokensMap) })
            if (obj?["additional_special_tokens"] is JsonArray list)
            {
                foreach (var item in list) if (TokenString(item, file, "additional_special_tokens") is string s) yield return s;
                yield break;
            }
    }

    /// <summary>tokenizer_config.json's tokenizer_class, when present.</summary>
    public string? TokenizerClass() =>
        Config?["tokenizer_class"] is JsonValue v && v.TryGetValue(out string? s) ? s : null;

    IReadOnlyList<int> ReadIds(JsonNode node, string file, string key) => node switch
    {
        JsonArray list => list.Select(item => item is null ? throw Invalid(file, $"'{key}' contains null") : ReadInt(item, file, key)).ToArray(),
        _ => new[] { ReadInt(node, file, key) },
    };

    int ReadInt(JsonNode? node, string file, string key)
    {
        if (node is JsonValue v && v.GetValueKind() == JsonValueKind.Number && v.TryGetValue(out int i)) return i;
        throw Invalid(file, $"'{key}' must be an integer or a list of integers, found {(node is null ? "null" : node.GetValueKind().ToString())} ({node?.ToJsonString()})");
    }

    /// <summary>A token given as a string or as an AddedToken object {"content": ...}; null for JSON null.</summary>
    string? TokenString(JsonNode? node, string file, string key)
    {
        switch (node)
        {
            case null: return null;
            case JsonValue v when v.GetValueKind() == JsonValueKind.String: return v.GetValue<string>();
            case JsonObject o when o["content"] is JsonValue c && c.GetValueKind() == JsonValueKind.String: return c.GetValue<string>();
            default: throw Invalid(file, $"'{key}' must be a string or an object with a string \"content\", found {node.ToJsonString()}");
        }
    }

    static JsonObject? ReadObject(string directory, string name)
    {
        string path = Path.Combine(directory, name);
        if (!File.Exists(path)) return null;
        JsonNode? node;
        try
        {
            node = JsonNode.Parse(File.ReadAllText(path), documentOptions: new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
            Runtime.JsonText.ReadAllStrings(node);   // a duplicate key or an invalid string throws here, not later
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: not valid JSON ({e.Message.ReplaceLineEndings(" ")})", e);
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"{path}: not valid JSON (a key appears twice)", e);
        }
        catch (InvalidOperationException e)
        {
            throw new InvalidDataException($"{path}: a name or string is not valid text ({e.Message.ReplaceLineEndings(" ")})", e);
        }
        return node as JsonObject ?? throw new InvalidDataException($"{path}: expected a JSON object at the top level, found {node?.GetValueKind().ToString() ?? "null"}.");
    }

    InvalidDataException Invalid(string file, string what) => new($"{Path.Combine(Directory, file)}: {what}.");
}
