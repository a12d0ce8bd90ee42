using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Microsoft.ML.Dpo.Modeling;

/// <summary>
/// The shape of a causal language model, read from and written to a Hugging Face <c>config.json</c>.
/// One class serves the Llama family (<c>llama</c>, <c>mistral</c>, <c>qwen2</c>) and <c>gpt2</c>.
/// </summary>
public sealed class CausalLMConfig
{
    /// <summary>The model types this library can build.</summary>
    public static IReadOnlyList<string> SupportedModelTypes { get; } = new[] { "llama", "mistral", "qwen2", "gpt2" };

    /// <summary>Hugging Face <c>model_type</c>: "llama", "mistral", "qwen2" or "gpt2".</summary>
    public string ModelType { get; set; } = "llama";

    /// <summary>Vocabulary size (rows of the token embedding and of the output head).</summary>
    public int VocabSize { get; set; }

    /// <summary>Width of the residual stream (<c>hidden_size</c>; gpt2 <c>n_embd</c>).</summary>
    public int HiddenSize { get; set; }

    /// <summary>Width of the MLP (<c>intermediate_size</c>; gpt2 <c>n_inner</c>, default 4 × hidden).</summary>
    public int IntermediateSize { get; set; }

    /// <summary>Number of transformer blocks (<c>num_hidden_layers</c>; gpt2 <c>n_layer</c>).</summary>
    public int NumHiddenLayers { get; set; }

    /// <summary>Number of query heads (<c>num_attention_heads</c>; gpt2 <c>n_head</c>).</summary>
    public int NumAttentionHeads { get; set; }

    /// <summary>Number of key/value heads (grouped-query attention); equals <see cref="NumAttentionHeads"/> for plain multi-head attention.</summary>
    public int NumKeyValueHeads { get; set; }

    /// <summary>Width of one attention head; <see cref="HiddenSize"/> / <see cref="NumAttentionHeads"/> unless the config gives <c>head_dim</c>.</summary>
    public int HeadDim { get; set; }

    /// <summary>Longest sequence the position scheme was trained for (<c>max_position_embeddings</c>; gpt2 <c>n_positions</c>, the rows of <c>wpe</c>).</summary>
    public int MaxPositionEmbeddings { get; set; } = 2048;

    /// <summary>RMSNorm epsilon (Llama family).</summary>
    public double RmsNormEps { get; set; } = 1e-6;

    /// <summary>LayerNorm epsilon (gpt2 <c>layer_norm_epsilon</c>).</summary>
    public double LayerNormEpsilon { get; set; } = 1e-5;

    /// <summary>RoPE base (<c>rope_theta</c>).</summary>
    public double RopeTheta { get; set; } = 10000.0;

    /// <summary>Optional RoPE scaling; only the "llama3" type is supported.</summary>
    public RopeScaling? RopeScaling { get; set; }

    /// <summary>Whether the output head shares the token embedding matrix.</summary>
    public bool TieWordEmbeddings { get; set; }

    /// <summary>
    /// Bias on the attention projections. For llama/mistral it applies to q, k, v and o (<c>attention_bias</c>);
    /// for qwen2 it applies to q, k and v only (o never has one), and it is true by default.
    /// </summary>
    public bool AttentionBias { get; set; }

    /// <summary>Bias on the MLP projections (<c>mlp_bias</c>).</summary>
    public bool MlpBias { get; set; }

    /// <summary>
    /// Sliding-window attention (<c>sliding_window</c>: Mistral; Qwen2 when <c>use_sliding_window</c> is true): each token
    /// attends to itself and the previous <c>SlidingWindow − 1</c> positions. Null: full causal attention.
    /// </summary>
    public int? SlidingWindow { get; set; }

    /// <summary>Beginning-of-sequence token id.</summary>
    public int BosTokenId { get; set; } = 1;

    /// <summary>End-of-sequence token ids (a config may give one id or a list).</summary>
    public IReadOnlyList<int> EosTokenIds { get; set; } = new[] { 2 };

    /// <summary>Padding token id, when the config names one.</summary>
    public int? PadTokenId { get; set; }

    /// <summary>True for <c>gpt2</c>, false for the Llama family.</summary>
    public bool IsGpt2 => ModelType == "gpt2";

    /// <summary>Whether the output projection <c>o_proj</c> has a bias (llama/mistral: <see cref="AttentionBias"/>; qwen2: never).</summary>
    internal bool OutputProjectionBias => AttentionBias && ModelType != "qwen2";

    /// <summary>Reads <c>config.json</c> at <paramref name="configJsonPath"/>.</summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">The file is not a valid or supported configuration.</exception>
    public static CausalLMConfig Load(string configJsonPath)
    {
        if (!File.Exists(configJsonPath))
            throw new FileNotFoundException($"Model configuration '{configJsonPath}' does not exist.", configJsonPath);
        return FromJson(File.ReadAllText(configJsonPath), configJsonPath);
    }

    /// <summary>Parses a Hugging Face <c>config.json</c> text; <paramref name="sourceNameForErrors"/> names it in error messages.</summary>
    /// <exception cref="InvalidDataException">The text is not valid JSON, lacks a required field, or names an unsupported model type or RoPE scaling.</exception>
    public static CausalLMConfig FromJson(string json, string sourceNameForErrors)
    {
        JsonObject root;
        try
        {
            root = JsonNode.Parse(json) as JsonObject
                ?? throw new InvalidDataException($"Model configuration '{sourceNameForErrors}' is not a JSON object.");
            Runtime.JsonText.ReadAllStrings(root);   // a duplicate key or an invalid string throws here, not later
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"Model configuration '{sourceNameForErrors}' is not valid JSON: {e.Message.ReplaceLineEndings(" ")}", e);
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"Model configuration '{sourceNameForErrors}' is not valid: a key appears twice.", e);
        }
        catch (InvalidOperationException e)
        {
            throw new InvalidDataException($"Model configuration '{sourceNameForErrors}' holds a name or string that is not valid text ({e.Message.ReplaceLineEndings(" ")}).", e);
        }

        var r = new Reader(root, sourceNameForErrors);
        string modelType = r.String("model_type")
            ?? throw new InvalidDataException($"Model configuration '{sourceNameForErrors}' has no \"model_type\"; supported: {string.Join(", ", SupportedModelTypes)}.");
        if (!SupportedModelTypes.Contains(modelType))
            throw new InvalidDataException($"Model configuration '{sourceNameForErrors}': model_type \"{modelType}\" is not supported; supported: {string.Join(", ", SupportedModelTypes)}.");

        var c = new CausalLMConfig { ModelType = modelType };
        if (modelType == "gpt2")
        {
            c.VocabSize = r.RequiredInt("vocab_size");
            c.HiddenSize = r.RequiredInt("n_embd");
            c.NumHiddenLayers = r.RequiredInt("n_layer");
            c.NumAttentionHeads = r.RequiredInt("n_head");
            c.NumKeyValueHeads = c.NumAttentionHeads;
            c.MaxPositionEmbeddings = r.RequiredInt("n_positions");
            c.IntermediateSize = r.Int("n_inner") ?? 4 * c.HiddenSize;
            c.LayerNormEpsilon = r.Double("layer_norm_epsilon") ?? 1e-5;
            c.TieWordEmbeddings = r.Bool("tie_word_embeddings") ?? true;
            if (!c.TieWordEmbeddings)
                throw new InvalidDataException($"Model configuration '{sourceNameForErrors}': gpt2 with an untied output head is not supported.");
            string act = r.String("activation_function") ?? "gelu_new";
            if (act is not ("gelu_new" or "gelu_pytorch_tanh"))
                throw new InvalidDataException($"Model configuration '{sourceNameForErrors}': gpt2 activation_function \"{act}\" is not supported (gelu_new).");
            c.AttentionBias = true;
            c.MlpBias = true;
            c.BosTokenId = r.Int("bos_token_id") ?? 50256;
            c.EosTokenIds = r.IntOrList("eos_token_id") ?? new[] { 50256 };
        }
        else
        {
            c.VocabSize = r.RequiredInt("vocab_size");
            c.HiddenSize = r.RequiredInt("hidden_size");
            c.IntermediateSize = r.RequiredInt("intermediate_size");
            c.NumHiddenLayers = r.RequiredInt("num_hidden_layers");
            c.NumAttentionHeads = r.RequiredInt("num_attention_heads");
            c.NumKeyValueHeads = r.Int("num_key_value_heads") ?? c.NumAttentionHeads;
            c.MaxPositionEmbeddings = r.Int("max_position_embeddings") ?? 2048;
            c.RmsNormEps = r.Double("rms_norm_eps") ?? 1e-6;
            c.RopeTheta = r.Double("rope_theta") ?? 10000.0;
            c.TieWordEmbeddings = r.Bool("tie_word_embeddings") ?? false;
            c.AttentionBias = r.Bool("attention_bias") ?? (modelType == "qwen2");
            c.MlpBias = r.Bool("mlp_bias") ?? false;
            string act = r.String("hidden_act") ?? "silu";
            if (act != "silu")
                throw new InvalidDataException($"Model configuration '{sourceNameForErrors}': hidden_act \"{act}\" is not supported (silu).");
            c.RopeScaling = Modeling.RopeScaling.FromJson(root["rope_scaling"], sourceNameForErrors);
            bool windowed = modelType == "mistral" || (modelType == "qwen2" && (r.Bool("use_sliding_window") ?? false));
            c.SlidingWindow = windowed ? r.Int("sliding_window") : null;
            c.BosTokenId = r.Int("bos_token_id") ?? 1;
            c.EosTokenIds = r.IntOrList("eos_token_id") ?? new[] { 2 };
        }
        c.HeadDim = r.Int("head_dim") ?? (c.NumAttentionHeads > 0 ? c.HiddenSize / c.NumAttentionHeads : 0);
        c.PadTokenId = r.Int("pad_token_id");
        c.Validate(sourceNameForErrors);
        return c;
    }

    /// <summary>Checks the sizes for consistency.</summary>
    /// <exception cref="InvalidDataException">A size is non-positive or the head counts do not divide.</exception>
    public void Validate(string sourceNameForErrors = "configuration")
    {
        void Positive(int v, string name)
        {
            if (v <= 0) throw new InvalidDataException($"Model configuration '{sourceNameForErrors}': {name} must be positive, got {v}.");
        }
        if (!SupportedModelTypes.Contains(ModelType))
            throw new InvalidDataException($"Model configuration '{sourceNameForErrors}': model_type \"{ModelType}\" is not supported; supported: {string.Join(", ", SupportedModelTypes)}.");
        Positive(VocabSize, "vocab_size"); Positive(HiddenSize, "hidden_size"); Positive(IntermediateSize, "intermediate_size");
        Positive(NumHiddenLayers, "num_hidden_layers"); Positive(NumAttentionHeads, "num_attention_heads");
        Positive(NumKeyValueHeads, "num_key_value_heads"); Positive(HeadDim, "head_dim"); Positive(MaxPositionEmbeddings, "max_position_embeddings");
        CausalLMConfigLimits.CheckRanges(this, sourceNameForErrors);
        if (NumAttentionHeads % NumKeyValueHeads != 0)
            throw new InvalidDataException($"Model configuration '{sourceNameForErrors}': num_attention_heads ({NumAttentionHeads}) is not a multiple of num_key_value_heads ({NumKeyValueHeads}).");
        if (HeadDim % 2 != 0 && !IsGpt2)
            throw new InvalidDataException($"Model configuration '{sourceNameForErrors}': head_dim ({HeadDim}) must be even for rotary embeddings.");
        if (IsGpt2 && HeadDim * NumAttentionHeads != HiddenSize)
            throw new InvalidDataException($"Model configuration '{sourceNameForErrors}': n_embd ({HiddenSize}) is not a multiple of n_head ({NumAttentionHeads}).");
    }

    /// <summary>A Hugging Face compatible <c>config.json</c> text (gpt2 uses its own field names).</summary>
    public string ToJson() => ToJson(null);

    internal string ToJson(string? torchDtype)
    {
        var o = new JsonObject();
        if (IsGpt2)
        {
            o["architectures"] = new JsonArray("GPT2LMHeadModel");
            o["model_type"] = "gpt2";
            o["vocab_size"] = VocabSize;
            o["n_embd"] = HiddenSize;
            o["n_layer"] = NumHiddenLayers;
            o["n_head"] = NumAttentionHeads;
            o["n_positions"] = MaxPositionEmbeddings;
            o["n_ctx"] = MaxPositionEmbeddings;
            o["n_inner"] = IntermediateSize;
            o["activation_function"] = "gelu_new";
            o["layer_norm_epsilon"] = LayerNormEpsilon;
            o["tie_word_embeddings"] = true;
        }
        else
        {
            o["architectures"] = new JsonArray(ModelType switch
            {
                "mistral" => "MistralForCausalLM",
                "qwen2" => "Qwen2ForCausalLM",
                _ => "LlamaForCausalLM",
            });
            o["model_type"] = ModelType;
            o["vocab_size"] = VocabSize;
            o["hidden_size"] = HiddenSize;
            o["intermediate_size"] = IntermediateSize;
            o["num_hidden_layers"] = NumHiddenLayers;
            o["num_attention_heads"] = NumAttentionHeads;
            o["num_key_value_heads"] = NumKeyValueHeads;
            o["head_dim"] = HeadDim;
            o["max_position_embeddings"] = MaxPositionEmbeddings;
            o["rms_norm_eps"] = RmsNormEps;
            o["rope_theta"] = RopeTheta;
            o["rope_scaling"] = RopeScaling?.ToJsonNode();
            o["hidden_act"] = "silu";
            o["tie_word_embeddings"] = TieWordEmbeddings;
            o["attention_bias"] = AttentionBias;
            o["mlp_bias"] = MlpBias;
            if (ModelType == "mistral") o["sliding_window"] = SlidingWindow;
            else if (ModelType == "qwen2")
            {
                o["use_sliding_window"] = SlidingWindow.HasValue;
                if (SlidingWindow.HasValue) o["sliding_window"] = SlidingWindow;
            }
        }
        o["bos_token_id"] = BosTokenId;
        o["eos_token_id"] = EosTokenIds.Count == 1 ? JsonValue.Create(EosTokenIds[0]) : new JsonArray(EosTokenIds.Select(e => (JsonNode?)JsonValue.Create(e)).ToArray());
        if (PadTokenId is int pad) o["pad_token_id"] = pad;
        if (torchDtype != null) o["torch_dtype"] = torchDtype;
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    /// <summary>A copy of this configuration.</summary>
    public CausalLMConfig Clone()
    {
        var c = (CausalLMConfig)MemberwiseClone();
        c.EosTokenIds = EosTokenIds.ToArray();
        c.RopeScaling = RopeScaling?.Clone();
        return c;
    }

    sealed class Reader(JsonObject root, string source)
    {
        InvalidDataException Bad(string key, string expected) =>
            new($"Model configuration '{source}': \"{key}\" must be {expected}, got {root[key]?.ToJsonString()}.");

        public string? String(string key) => root[key] switch
        {
            null => null,
            JsonValue v when v.TryGetValue(out string? s) => s,
            _ => throw Bad(key, "a string"),
        };

        public int? Int(string key) => root[key] switch
        {
            null => null,
            JsonValue v when v.TryGetValue(out int i) => i,
            JsonValue v when v.TryGetValue(out double d) && d == Math.Floor(d) && Math.Abs(d) < int.MaxValue => (int)d,
            _ => throw Bad(key, "an integer"),
        };

        public int RequiredInt(string key) => Int(key) ?? throw new InvalidDataException($"Model configuration '{source}' lacks the required field \"{key}\".");

        public double? Double(string key) => root[key] switch
        {
            null => null,
            JsonValue v when v.TryGetValue(out double d) => d,
            _ => throw Bad(key, "a number"),
        };

        public bool? Bool(string key) => root[key] switch
        {
            null => null,
            JsonValue v when v.TryGetValue(out bool b) => b,
            _ => throw Bad(key, "true or false"),
        };

        public int[]? IntOrList(string key) => root[key] switch
        {
            null => null,
            JsonValue v when v.TryGetValue(out int i) => new[] { i },
            JsonArray a when a.All(n => n is JsonValue jv && jv.TryGetValue(out int _)) => a.Select(n => n!.GetValue<int>()).ToArray(),
            _ => throw Bad(key, "an integer or a list of integers"),
        };
    }
}

/// <summary>RoPE frequency scaling ("llama3" type: Llama 3.1 and later).</summary>
public sealed class RopeScaling
{
    /// <summary>The scaling type; only "llama3" is supported.</summary>
    public string RopeType { get; set; } = "llama3";

    /// <summary>Overall scale factor for low frequencies.</summary>
    public double Factor { get; set; } = 8.0;

    /// <summary>Wavelength threshold factor below which frequencies are scaled fully.</summary>
    public double LowFreqFactor { get; set; } = 1.0;

    /// <summary>Wavelength threshold factor above which frequencies are left unscaled.</summary>
    public double HighFreqFactor { get; set; } = 4.0;

    /// <summary>The context length of the original (unscaled) model.</summary>
    public int OriginalMaxPositionEmbeddings { get; set; } = 8192;

    internal RopeScaling Clone() => (RopeScaling)MemberwiseClone();

    internal JsonNode ToJsonNode() => new JsonObject
    {
        ["rope_type"] = RopeType,
        ["factor"] = Factor,
        ["low_freq_factor"] = LowFreqFactor,
        ["high_freq_factor"] = HighFreqFactor,
        ["original_max_position_embeddings"] = OriginalMaxPositionEmbeddings,
    };

    internal static RopeScaling? FromJson(JsonNode? node, string source)
    {
        if (node is null) return null;
        if (node is not JsonObject o)
            throw new InvalidDataException($"Model configuration '{source}': \"rope_scaling\" must be an object or null.");
        var typeNode = o["rope_type"] ?? o["type"];
        if (typeNode is not null && (typeNode is not JsonValue tv || tv.GetValueKind() != JsonValueKind.String))
            throw new InvalidDataException($"Model configuration '{source}': rope_scaling \"rope_type\" must be a string, got {typeNode.ToJsonString()}.");
        string? type = typeNode?.GetValue<string>();
        if (type is null or "default") return null;
        if (type != "llama3")
            throw new InvalidDataException($"Model configuration '{source}': rope_scaling type \"{type}\" is not supported (supported: llama3).");
        double D(string k, double def) => o[k] is JsonValue v && v.TryGetValue(out double d) ? d : def;
        return new RopeScaling
        {
            RopeType = type,
            Factor = D("factor", 8.0),
            LowFreqFactor = D("low_freq_factor", 1.0),
            HighFreqFactor = D("high_freq_factor", 4.0),
            OriginalMaxPositionEmbeddings = D("original_max_position_embeddings", 8192) is var m && m >= 1 && m <= CausalLMConfigLimits.MaxPositions ? (int)m
                : throw new InvalidDataException($"Model configuration '{source}': rope_scaling original_max_position_embeddings = {m} is out of range (1 to {CausalLMConfigLimits.MaxPositions})."),
        };
    }
}
