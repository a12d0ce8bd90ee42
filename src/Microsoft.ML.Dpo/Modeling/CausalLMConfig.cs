using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Microsoft.ML.Dpo.Modeling;

/// <summary>
/// The shape of a causal language model, read from and written to a Hugging Face <c>config.json</c>.
/// One class serves every architecture: the Llama family (<c>llama</c>, <c>mistral</c>, <c>qwen2</c>), <c>qwen3</c>,
/// <c>gemma</c>, <c>gemma2</c>, <c>gemma3_text</c>, <c>phi3</c>, <c>olmo2</c>, the sparse mixtures of experts <c>mixtral</c> and
/// <c>qwen3_moe</c>, and <c>gpt2</c>; fields that only some use say so.
/// </summary>
public sealed class CausalLMConfig
{
    /// <summary>The model types this library can build.</summary>
    public static IReadOnlyList<string> SupportedModelTypes { get; } = new[] { "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2", "mixtral", "qwen3_moe", "gpt2" };

    /// <summary>Hugging Face <c>model_type</c>: one of <see cref="SupportedModelTypes"/>.</summary>
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

    /// <summary>Optional RoPE scaling: "llama3" or "linear" (Llama family, Qwen3, OLMo 2, Gemma), "longrope" (Phi-3).</summary>
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

    /// <summary>
    /// The MLP activation: "silu" (SwiGLU) for most; Gemma's GeGLU uses "gelu_pytorch_tanh" (<c>hidden_activation</c>).
    /// Supported: silu, gelu_pytorch_tanh, gelu_new (the same tanh approximation), gelu (exact erf).
    /// </summary>
    public string HiddenActivation { get; set; } = "silu";

    /// <summary>Gemma 2 / 3: attention scores are scaled by <c>query_pre_attn_scalar^-0.5</c> instead of <c>head_dim^-0.5</c>. Null: head_dim.</summary>
    public double? QueryPreAttnScalar { get; set; }

    /// <summary>Gemma 2 / 3: attention scores become <c>cap · tanh(score / cap)</c> before the mask (<c>attn_logit_softcapping</c>). Null: off.</summary>
    public double? AttnLogitSoftcapping { get; set; }

    /// <summary>Gemma 2 / 3: output logits become <c>cap · tanh(logit / cap)</c> (<c>final_logit_softcapping</c>). Null: off.</summary>
    public double? FinalLogitSoftcapping { get; set; }

    /// <summary>
    /// Per-layer attention kind, "sliding_attention" (uses <see cref="SlidingWindow"/>) or "full_attention", for models
    /// that mix them (Gemma 2: even layers slide; Gemma 3: <c>sliding_window_pattern</c> or <c>layer_types</c>). Null: every
    /// layer slides when <see cref="SlidingWindow"/> is set.
    /// </summary>
    public IReadOnlyList<string>? LayerTypes { get; set; }

    /// <summary>Gemma 3: the RoPE base of the sliding (local) layers (<c>rope_local_base_freq</c>); global layers use <see cref="RopeTheta"/> and <see cref="RopeScaling"/>.</summary>
    public double? RopeLocalBaseFreq { get; set; }

    /// <summary>Gemma 3 as written by transformers 4.51: layer i slides unless (i + 1) % pattern == 0 (kept to write it back).</summary>
    public int? SlidingWindowPattern { get; set; }

    /// <summary>Phi-3: <c>original_max_position_embeddings</c> (with longrope, the length that switches short to long factors).</summary>
    public int? OriginalMaxPositionEmbeddings { get; set; }

    /// <summary>Whether layer <paramref name="layer"/> uses the sliding window.</summary>
    public bool IsSlidingLayer(int layer) =>
        SlidingWindow.HasValue && (LayerTypes is null || LayerTypes[layer] == "sliding_attention");

    /// <summary>Beginning-of-sequence token id.</summary>
    public int BosTokenId { get; set; } = 1;

    /// <summary>End-of-sequence token ids (a config may give one id or a list).</summary>
    public IReadOnlyList<int> EosTokenIds { get; set; } = new[] { 2 };

    /// <summary>Padding token id, when the config names one.</summary>
    public int? PadTokenId { get; set; }

    /// <summary>
    /// True when the weights began as a random initialisation by this library (<see cref="ModelPresets"/>, <c>mldpo init</c>)
    /// rather than as a pretrained checkpoint: models trained from it keep the flag, so the trainers' automatic learning rate
    /// (<see cref="Trainers.TrainingDefaults.LearningRate"/>) treats the whole lineage as trained from scratch. Written to
    /// <c>config.json</c> as <c>"mldpo_started_from_random_weights": true</c> (transformers keeps unknown keys as attributes
    /// and ignores them); absent means false.
    /// </summary>
    public bool StartedFromRandomWeights { get; set; }

    /// <summary>
    /// Routed experts per sparse MoE layer (<c>num_local_experts</c> for mixtral, <c>num_experts</c> for qwen3_moe); 0 for a dense model.
    /// </summary>
    public int NumExperts { get; set; }

    /// <summary>Experts each token is routed to (<c>num_experts_per_tok</c>, the top-k of the router).</summary>
    public int NumExpertsPerToken { get; set; }

    /// <summary>
    /// Width of one expert's SwiGLU MLP for qwen3_moe (<c>moe_intermediate_size</c>); mixtral's experts use
    /// <see cref="IntermediateSize"/>, and qwen3_moe's dense layers (<see cref="MlpOnlyLayers"/>) use <see cref="IntermediateSize"/>.
    /// </summary>
    public int MoeIntermediateSize { get; set; }

    /// <summary>Renormalise the top-k routing weights to sum to 1 (<c>norm_topk_prob</c>; mixtral always does).</summary>
    public bool NormTopKProb { get; set; }

    /// <summary>qwen3_moe: every <c>decoder_sparse_step</c>-th layer (layer i with (i + 1) % step == 0) is a sparse MoE layer. Default 1.</summary>
    public int DecoderSparseStep { get; set; } = 1;

    /// <summary>qwen3_moe: layers that use a dense MLP (<see cref="IntermediateSize"/>) instead of the MoE block (<c>mlp_only_layers</c>).</summary>
    public IReadOnlyList<int> MlpOnlyLayers { get; set; } = Array.Empty<int>();

    /// <summary>
    /// The coefficient of the load-balancing auxiliary loss (<c>router_aux_loss_coef</c>, default 0.001), used by the trainers
    /// when they train an MoE model (see <see cref="Training.TrainingOptions"/>).
    /// </summary>
    public double RouterAuxLossCoef { get; set; } = 0.001;

    /// <summary><c>output_router_logits</c> as the config gives it (kept for the round trip; the trainers add the auxiliary loss to an MoE either way).</summary>
    public bool OutputRouterLogits { get; set; }

    /// <summary>mixtral: multiplicative router jitter in training, hidden states × U(1 − j, 1 + j) before routing (<c>router_jitter_noise</c>). Default 0.</summary>
    public double RouterJitterNoise { get; set; }

    /// <summary>True when the model has sparse mixture-of-experts layers (<see cref="NumExperts"/> &gt; 0).</summary>
    public bool IsMixtureOfExperts => NumExperts > 0;

    /// <summary>Whether layer <paramref name="layer"/> is a sparse MoE layer (Hugging Face's rule: not in <c>mlp_only_layers</c>, and (layer + 1) % <c>decoder_sparse_step</c> == 0).</summary>
    internal bool IsSparseLayer(int layer) => NumExperts > 0 && !MlpOnlyLayers.Contains(layer) && (layer + 1) % DecoderSparseStep == 0;

    /// <summary>The width of one expert's MLP: mixtral <c>intermediate_size</c>, qwen3_moe <c>moe_intermediate_size</c>.</summary>
    internal int ExpertIntermediateSize => ModelType == "mixtral" ? IntermediateSize : MoeIntermediateSize;

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
            ReadDecoderFields(c, r, root, sourceNameForErrors);
        }
        c.HeadDim = r.Int("head_dim") ?? (c.IsGemmaFamily ? 256 : modelType == "qwen3" ? 128 : c.NumAttentionHeads > 0 ? c.HiddenSize / c.NumAttentionHeads : 0);
        if (modelType is "olmo2" or "phi3" && c.NumAttentionHeads > 0 && c.HeadDim * c.NumAttentionHeads != c.HiddenSize)
            throw new InvalidDataException($"Model configuration '{sourceNameForErrors}': \"head_dim\" ({c.HeadDim}) other than hidden_size / num_attention_heads is not supported for {modelType}.");
        c.PadTokenId = r.Int("pad_token_id");
        c.StartedFromRandomWeights = r.Bool(StartedFromRandomWeightsKey) ?? false;
        c.Validate(sourceNameForErrors);
        return c;
    }

    /// <summary>Gemma, Gemma 2 and Gemma 3 text: (1 + w) RMSNorm, embeddings × √hidden, GeGLU.</summary>
    internal bool IsGemmaFamily => ModelType is "gemma" or "gemma2" or "gemma3_text";

    /// <summary>The fields of the rotary decoders (everything but gpt2), with each architecture's Hugging Face defaults for absent keys.</summary>
    static void ReadDecoderFields(CausalLMConfig c, Reader r, JsonObject root, string source)
    {
        string t = c.ModelType;
        bool gemma = c.IsGemmaFamily, gemma23 = t is "gemma2" or "gemma3_text";
        c.MaxPositionEmbeddings = r.Int("max_position_embeddings") ?? t switch { "mixtral" => 4096 * 32, "qwen3_moe" => 32768, _ => 2048 };
        c.RmsNormEps = r.Double("rms_norm_eps") ?? (t is "phi3" or "olmo2" or "mixtral" ? 1e-5 : 1e-6);
        c.RopeTheta = r.Double("rope_theta") ?? (t is "gemma3_text" or "mixtral" ? 1_000_000.0 : 10000.0);
        c.TieWordEmbeddings = r.Bool("tie_word_embeddings") ?? gemma;
        // Mixtral's attention never has biases, nor do the MoE experts: transformers ignores these fields for them.
        c.AttentionBias = t is not ("phi3" or "mixtral") && (r.Bool("attention_bias") ?? (t == "qwen2"));
        c.MlpBias = t is not ("mixtral" or "qwen3_moe") && (r.Bool("mlp_bias") ?? false);
        if (c.MlpBias && t is not ("llama" or "mistral" or "qwen2"))
            throw new InvalidDataException($"Model configuration '{source}': \"mlp_bias\" true is not supported for {t}.");

        // Gemma reads hidden_activation (gelu_pytorch_tanh when null) and ignores the legacy hidden_act; the others read hidden_act.
        string activationKey = gemma ? "hidden_activation" : "hidden_act";
        string act = r.String(activationKey) ?? (gemma ? "gelu_pytorch_tanh" : "silu");
        if (act is not ("silu" or "gelu_pytorch_tanh" or "gelu_new" or "gelu") || (t is "llama" or "mistral" or "qwen2" or "mixtral" or "qwen3_moe" && act != "silu"))
            throw new InvalidDataException($"Model configuration '{source}': {activationKey} \"{act}\" is not supported for {t} (supported: {(t is "llama" or "mistral" or "qwen2" or "mixtral" or "qwen3_moe" ? "silu" : "silu, gelu_pytorch_tanh, gelu_new, gelu")}).");
        c.HiddenActivation = act;

        if (r.Double("partial_rotary_factor") is double prf && prf != 1.0)
            throw new InvalidDataException($"Model configuration '{source}': \"partial_rotary_factor\" {prf} is not supported (rotary over the whole head only).");
        c.OriginalMaxPositionEmbeddings = t == "phi3" ? r.Int("original_max_position_embeddings") ?? 4096 : null;
        c.RopeScaling = Modeling.RopeScaling.FromJson(root["rope_scaling"], source, t, c.OriginalMaxPositionEmbeddings);
        if (c.RopeScaling is { RopeType: "longrope" } lr && c.OriginalMaxPositionEmbeddings is int original)
            lr.OriginalMaxPositionEmbeddings = original;

        // Soft-capping and the query scale change the computation: only Gemma 2 and 3 implement them.
        if (gemma23)
        {
            c.QueryPreAttnScalar = r.DoubleOr("query_pre_attn_scalar", 256);
            c.AttnLogitSoftcapping = r.DoubleOr("attn_logit_softcapping", t == "gemma2" ? 50.0 : null);
            c.FinalLogitSoftcapping = r.DoubleOr("final_logit_softcapping", t == "gemma2" ? 30.0 : null);
        }
        else
        {
            foreach (var key in new[] { "attn_logit_softcapping", "final_logit_softcapping" })
                if (r.Double(key) is double cap)
                    throw new InvalidDataException($"Model configuration '{source}': \"{key}\" ({cap}) is not supported for {t} (only gemma2 and gemma3_text soft-cap).");
        }

        // Sliding windows: which key turns them on, and which layers use them.
        c.SlidingWindow = t switch
        {
            "mistral" or "phi3" or "mixtral" => r.Int("sliding_window"),
            "qwen2" => r.Bool("use_sliding_window") ?? false ? r.Int("sliding_window") : null,
            "qwen3" => r.IntOr("sliding_window", 4096),     // transformers 4.51 masks with it whenever it is set
            "gemma2" or "gemma3_text" => r.IntOr("sliding_window", 4096),
            _ => null,
        };
        if (t is "gemma2" or "gemma3_text" or "qwen3")
            c.LayerTypes = r.StringList("layer_types");
        if (t == "gemma3_text")
        {
            c.RopeLocalBaseFreq = r.Double("rope_local_base_freq") ?? 10000.0;
            if (c.LayerTypes is null)
            {
                int pattern = r.Int("sliding_window_pattern") ?? 6;
                if (pattern <= 0) throw new InvalidDataException($"Model configuration '{source}': \"sliding_window_pattern\" must be positive, got {pattern}.");
                c.SlidingWindowPattern = pattern;
                c.LayerTypes = Enumerable.Range(0, c.NumHiddenLayers).Select(i => (i + 1) % pattern != 0 ? "sliding_attention" : "full_attention").ToArray();
            }
        }
        else if (t == "gemma2" && c.LayerTypes is null)
            c.LayerTypes = Enumerable.Range(0, c.NumHiddenLayers).Select(i => i % 2 == 0 ? "sliding_attention" : "full_attention").ToArray();
        else if (t == "qwen3" && c.LayerTypes is not null && c.LayerTypes.All(l => l == "full_attention"))
            c.LayerTypes = null;
        if (c.LayerTypes is not null && c.SlidingWindow is null && c.LayerTypes.Contains("sliding_attention"))
            throw new InvalidDataException($"Model configuration '{source}': \"layer_types\" names sliding_attention layers but \"sliding_window\" is null.");
        if (t == "qwen3" && c.LayerTypes is not null && c.SlidingWindow is null) c.LayerTypes = null;

        c.BosTokenId = r.Int("bos_token_id") ?? (gemma ? 2 : 1);
        c.EosTokenIds = r.IntOrList("eos_token_id") ?? new[] { gemma ? 1 : 2 };
        if (t is "mixtral" or "qwen3_moe") ReadMixtureOfExperts(c, r, root, source);
    }

    /// <summary>The sparse-MoE fields of mixtral and qwen3_moe; fields that change the computation and are not implemented are errors.</summary>
    static void ReadMixtureOfExperts(CausalLMConfig c, Reader r, JsonObject root, string source)
    {
        InvalidDataException Unsupported(string what) => new($"Model configuration '{source}': {what} is not supported.");
        c.NumExpertsPerToken = r.Int("num_experts_per_tok") ?? (c.ModelType == "mixtral" ? 2 : 8);
        c.RouterAuxLossCoef = r.Double("router_aux_loss_coef") ?? 0.001;
        c.OutputRouterLogits = r.Bool("output_router_logits") ?? false;
        if (c.ModelType == "mixtral")
        {
            if (c.RopeScaling is not null) throw Unsupported("\"rope_scaling\" for mixtral (transformers 4.47 ignores it, later versions apply it)");
            c.NumExperts = r.Int("num_local_experts") ?? 8;
            c.NormTopKProb = true;
            c.RouterJitterNoise = r.Double("router_jitter_noise") ?? 0.0;
            if (!(c.RouterJitterNoise >= 0 && c.RouterJitterNoise < 1))
                throw new InvalidDataException($"Model configuration '{source}': \"router_jitter_noise\" must be in [0, 1), got {c.RouterJitterNoise}.");
            return;
        }
        // qwen3_moe
        c.NumExperts = r.Int("num_experts") ?? 128;
        c.MoeIntermediateSize = r.Int("moe_intermediate_size") ?? 768;
        c.NormTopKProb = r.Bool("norm_topk_prob") ?? false;
        c.DecoderSparseStep = r.Int("decoder_sparse_step") ?? 1;
        if (c.DecoderSparseStep <= 0) throw new InvalidDataException($"Model configuration '{source}': \"decoder_sparse_step\" must be positive, got {c.DecoderSparseStep}.");
        c.MlpOnlyLayers = r.IntOrList("mlp_only_layers") ?? Array.Empty<int>();
        if (root["mlp_only_layers"] is JsonValue) throw new InvalidDataException($"Model configuration '{source}': \"mlp_only_layers\" must be a list of layer indices.");
        // Qwen3MoeConfig keeps sliding_window only when use_sliding_window is true, and then applies it only from layer
        // max_window_layers on; that per-layer window is not implemented.
        if ((r.Bool("use_sliding_window") ?? false) && root["sliding_window"] is not null)
            throw Unsupported("\"use_sliding_window\": true (per-layer sliding windows from \"max_window_layers\" on)");
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
        if (ModelType is "mixtral" or "qwen3_moe")
        {
            Positive(NumExperts, ModelType == "mixtral" ? "num_local_experts" : "num_experts");
            Positive(NumExpertsPerToken, "num_experts_per_tok");
            if (NumExpertsPerToken > NumExperts)
                throw new InvalidDataException($"Model configuration '{sourceNameForErrors}': num_experts_per_tok ({NumExpertsPerToken}) exceeds the number of experts ({NumExperts}).");
            if (ModelType == "qwen3_moe") Positive(MoeIntermediateSize, "moe_intermediate_size");
            if (MlpOnlyLayers.Any(l => l < 0 || l >= NumHiddenLayers))
                throw new InvalidDataException($"Model configuration '{sourceNameForErrors}': mlp_only_layers [{string.Join(", ", MlpOnlyLayers)}] names a layer outside 0..{NumHiddenLayers - 1}.");
        }
        else if (NumExperts != 0)
            throw new InvalidDataException($"Model configuration '{sourceNameForErrors}': model_type \"{ModelType}\" has no experts (NumExperts = {NumExperts}); use mixtral or qwen3_moe.");
        if (LayerTypes is not null)
        {
            if (LayerTypes.Count != NumHiddenLayers)
                throw new InvalidDataException($"Model configuration '{sourceNameForErrors}': \"layer_types\" has {LayerTypes.Count} entries for {NumHiddenLayers} layers.");
            int bad = LayerTypes.ToList().FindIndex(l => l is not ("sliding_attention" or "full_attention"));
            if (bad >= 0)
                throw new InvalidDataException($"Model configuration '{sourceNameForErrors}': \"layer_types\"[{bad}] is \"{LayerTypes[bad]}\" (supported: sliding_attention, full_attention).");
        }
        if (SlidingWindow is int w && w <= 0)
            throw new InvalidDataException($"Model configuration '{sourceNameForErrors}': sliding_window must be positive, got {w}.");
        if (RopeScaling is { RopeType: "longrope" } lr)
        {
            if (lr.ShortFactor is null || lr.LongFactor is null || lr.ShortFactor.Count != HeadDim / 2 || lr.LongFactor.Count != HeadDim / 2)
                throw new InvalidDataException($"Model configuration '{sourceNameForErrors}': rope_scaling short_factor and long_factor must each have head_dim / 2 = {HeadDim / 2} entries, got {lr.ShortFactor?.Count ?? 0} and {lr.LongFactor?.Count ?? 0}.");
            if (lr.OriginalMaxPositionEmbeddings <= 0)
                throw new InvalidDataException($"Model configuration '{sourceNameForErrors}': original_max_position_embeddings must be positive, got {lr.OriginalMaxPositionEmbeddings}.");
        }
        if (RopeScaling is { RopeType: "linear", Factor: <= 0 })
            throw new InvalidDataException($"Model configuration '{sourceNameForErrors}': rope_scaling linear factor must be positive, got {RopeScaling.Factor}.");
        foreach (var (value, name) in new[] { (QueryPreAttnScalar, "query_pre_attn_scalar"), (AttnLogitSoftcapping, "attn_logit_softcapping"), (FinalLogitSoftcapping, "final_logit_softcapping") })
            if (value is double v && !(v > 0))
                throw new InvalidDataException($"Model configuration '{sourceNameForErrors}': {name} must be positive or null, got {v}.");
        if (IsGpt2 && HeadDim * NumAttentionHeads != HiddenSize)
            throw new InvalidDataException($"Model configuration '{sourceNameForErrors}': n_embd ({HiddenSize}) is not a multiple of n_head ({NumAttentionHeads}).");
    }

    /// <summary>The <c>config.json</c> key of <see cref="StartedFromRandomWeights"/>.</summary>
    internal const string StartedFromRandomWeightsKey = "mldpo_started_from_random_weights";

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
                "mixtral" => "MixtralForCausalLM",
                "qwen3_moe" => "Qwen3MoeForCausalLM",
                "qwen3" => "Qwen3ForCausalLM",
                "gemma" => "GemmaForCausalLM",
                "gemma2" => "Gemma2ForCausalLM",
                "gemma3_text" => "Gemma3ForCausalLM",
                "phi3" => "Phi3ForCausalLM",
                "olmo2" => "Olmo2ForCausalLM",
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
            o["hidden_act"] = HiddenActivation;
            o["tie_word_embeddings"] = TieWordEmbeddings;
            if (ModelType is not ("phi3" or "mixtral")) o["attention_bias"] = AttentionBias;
            if (ModelType is "llama" or "mistral" or "qwen2") o["mlp_bias"] = MlpBias;
            if (IsGemmaFamily) o["hidden_activation"] = HiddenActivation;
            if (ModelType is "gemma2" or "gemma3_text")
            {
                o["query_pre_attn_scalar"] = QueryPreAttnScalar;
                o["attn_logit_softcapping"] = AttnLogitSoftcapping;
                o["final_logit_softcapping"] = FinalLogitSoftcapping;
                o["sliding_window"] = SlidingWindow;
            }
            if (ModelType is "gemma2" or "gemma3_text")
            {
                // The layer kinds: as the default pattern when they follow it (what transformers 4.47 / 4.51 read), else layer_types.
                var kinds = Enumerable.Range(0, NumHiddenLayers).Select(i => IsSlidingLayer(i) ? "sliding_attention" : "full_attention").ToArray();
                int? pattern = ModelType == "gemma2" ? 2 : SlidingWindowPattern;
                var byPattern = pattern is int p
                    ? Enumerable.Range(0, NumHiddenLayers).Select(i => (i + 1) % p != 0 ? "sliding_attention" : "full_attention").ToArray() : null;
                if (ModelType == "gemma3_text") o["rope_local_base_freq"] = RopeLocalBaseFreq ?? 10000.0;
                if (byPattern is not null && byPattern.SequenceEqual(kinds))
                {
                    if (ModelType == "gemma3_text") o["sliding_window_pattern"] = pattern;
                }
                else
                    o["layer_types"] = new JsonArray(kinds.Select(l => (JsonNode?)JsonValue.Create(l)).ToArray());
            }
            else if (ModelType == "qwen3" && LayerTypes is not null)
                o["layer_types"] = new JsonArray(LayerTypes.Select(l => (JsonNode?)JsonValue.Create(l)).ToArray());
            if (ModelType == "qwen3")
            {
                o["sliding_window"] = SlidingWindow;
                o["use_sliding_window"] = SlidingWindow.HasValue;
            }
            if (ModelType == "phi3")
            {
                o["original_max_position_embeddings"] = OriginalMaxPositionEmbeddings ?? RopeScaling?.OriginalMaxPositionEmbeddings ?? MaxPositionEmbeddings;
                o["sliding_window"] = SlidingWindow;
            }
            if (ModelType == "mistral") o["sliding_window"] = SlidingWindow;
            else if (ModelType == "qwen2")
            {
                o["use_sliding_window"] = SlidingWindow.HasValue;
                if (SlidingWindow.HasValue) o["sliding_window"] = SlidingWindow;
            }
            if (ModelType == "mixtral")
            {
                o["num_local_experts"] = NumExperts;
                o["num_experts_per_tok"] = NumExpertsPerToken;
                o["router_jitter_noise"] = RouterJitterNoise;
            }
            else if (ModelType == "qwen3_moe")
            {
                o["num_experts"] = NumExperts;
                o["num_experts_per_tok"] = NumExpertsPerToken;
                o["moe_intermediate_size"] = MoeIntermediateSize;
                o["norm_topk_prob"] = NormTopKProb;
                o["decoder_sparse_step"] = DecoderSparseStep;
                o["mlp_only_layers"] = new JsonArray(MlpOnlyLayers.Select(l => (JsonNode?)JsonValue.Create(l)).ToArray());
                o["use_sliding_window"] = false;
                o["sliding_window"] = null;
            }
            if (IsMixtureOfExperts)
            {
                o["router_aux_loss_coef"] = RouterAuxLossCoef;
                o["output_router_logits"] = OutputRouterLogits;
            }
        }
        o["bos_token_id"] = BosTokenId;
        o["eos_token_id"] = EosTokenIds.Count == 1 ? JsonValue.Create(EosTokenIds[0]) : new JsonArray(EosTokenIds.Select(e => (JsonNode?)JsonValue.Create(e)).ToArray());
        if (PadTokenId is int pad) o["pad_token_id"] = pad;
        if (torchDtype != null) o["torch_dtype"] = torchDtype;
        if (StartedFromRandomWeights) o[StartedFromRandomWeightsKey] = true;
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    /// <summary>A copy of this configuration.</summary>
    public CausalLMConfig Clone()
    {
        var c = (CausalLMConfig)MemberwiseClone();
        c.EosTokenIds = EosTokenIds.ToArray();
        c.MlpOnlyLayers = MlpOnlyLayers.ToArray();
        c.RopeScaling = RopeScaling?.Clone();
        c.LayerTypes = LayerTypes?.ToArray();
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

        /// <summary>The number, null when the key holds null, <paramref name="absent"/> when the key is missing (Hugging Face class defaults).</summary>
        public double? DoubleOr(string key, double? absent) => root.ContainsKey(key) ? Double(key) : absent;

        public int? IntOr(string key, int? absent) => root.ContainsKey(key) ? Int(key) : absent;

        public string[]? StringList(string key) => root[key] switch
        {
            null => null,
            JsonArray a when a.All(n => n is JsonValue v && v.TryGetValue(out string? _)) => a.Select(n => n!.GetValue<string>()).ToArray(),
            _ => throw Bad(key, "a list of strings"),
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

/// <summary>
/// RoPE frequency scaling: <c>llama3</c> (Llama 3.1 and later), <c>linear</c> (frequencies ÷ <see cref="Factor"/>: Gemma 3's
/// global layers) or <c>longrope</c> (Phi-3; older configs call it <c>su</c> or <c>yarn</c>, which Phi-3 reads as longrope).
/// </summary>
public sealed class RopeScaling
{
    /// <summary>The scaling type: "llama3", "linear" or "longrope".</summary>
    public string RopeType { get; set; } = "llama3";

    /// <summary>llama3: overall scale factor for low frequencies; linear: the divisor of every frequency.</summary>
    public double Factor { get; set; } = 8.0;

    /// <summary>Wavelength threshold factor below which frequencies are scaled fully (llama3).</summary>
    public double LowFreqFactor { get; set; } = 1.0;

    /// <summary>Wavelength threshold factor above which frequencies are left unscaled (llama3).</summary>
    public double HighFreqFactor { get; set; } = 4.0;

    /// <summary>
    /// The context length of the original (unscaled) model (llama3: from <c>rope_scaling</c>; longrope: the config's
    /// top-level <c>original_max_position_embeddings</c>, which decides between the short and long factors).
    /// </summary>
    public int OriginalMaxPositionEmbeddings { get; set; } = 8192;

    /// <summary>longrope: per-frequency divisors (head_dim / 2 of them) used while every position is within the original context.</summary>
    public IReadOnlyList<double>? ShortFactor { get; set; }

    /// <summary>longrope: per-frequency divisors used once a position reaches beyond the original context.</summary>
    public IReadOnlyList<double>? LongFactor { get; set; }

    /// <summary>longrope: the cos/sin multiplier when the config gives it; null means √(1 + ln(max/original) / ln(original)).</summary>
    public double? AttentionFactor { get; set; }

    internal RopeScaling Clone()
    {
        var c = (RopeScaling)MemberwiseClone();
        c.ShortFactor = ShortFactor?.ToArray();
        c.LongFactor = LongFactor?.ToArray();
        return c;
    }

    internal JsonNode ToJsonNode()
    {
        static JsonArray Numbers(IReadOnlyList<double> v) => new(v.Select(d => (JsonNode?)JsonValue.Create(d)).ToArray());
        switch (RopeType)
        {
            case "linear":
                // Both keys: transformers 4.47 models read "type", later ones "rope_type".
                return new JsonObject { ["type"] = "linear", ["rope_type"] = "linear", ["factor"] = Factor };
            case "longrope":
                // Phi-3 in transformers 4.47 accepts exactly these three keys.
                var o = new JsonObject { ["type"] = "longrope", ["short_factor"] = Numbers(ShortFactor!), ["long_factor"] = Numbers(LongFactor!) };
                if (AttentionFactor is double a) o["attention_factor"] = a;
                return o;
            default:
                return new JsonObject
                {
                    ["rope_type"] = RopeType,
                    ["factor"] = Factor,
                    ["low_freq_factor"] = LowFreqFactor,
                    ["high_freq_factor"] = HighFreqFactor,
                    ["original_max_position_embeddings"] = OriginalMaxPositionEmbeddings,
                };
        }
    }

    /// <summary>Reads <c>rope_scaling</c>; <paramref name="modelType"/> decides the aliases (Phi-3 reads su and yarn as longrope).</summary>
    internal static RopeScaling? FromJson(JsonNode? node, string source, string modelType = "llama", int? originalMaxPositionEmbeddings = null)
    {
        if (node is null) return null;
        if (node is not JsonObject o)
            throw new InvalidDataException($"Model configuration '{source}': \"rope_scaling\" must be an object or null.");
        var typeNode = o["rope_type"] ?? o["type"];
        if (typeNode is not null && (typeNode is not JsonValue tv || tv.GetValueKind() != JsonValueKind.String))
            throw new InvalidDataException($"Model configuration '{source}': rope_scaling \"rope_type\" must be a string, got {typeNode.ToJsonString()}.");
        string? type = typeNode?.GetValue<string>();
        if (type is null or "default") return null;
        if (modelType == "phi3" && type is "su" or "yarn") type = "longrope";
        string supported = modelType == "phi3" ? "longrope (su, yarn)" : "llama3, linear";
        bool ok = modelType == "phi3" ? type == "longrope" : type is "llama3" or "linear";
        if (!ok)
            throw new InvalidDataException($"Model configuration '{source}': rope_scaling type \"{type}\" is not supported for {modelType} (supported: {supported}).");
        double D(string k, double def) => o[k] switch
        {
            null => def,
            JsonValue v when v.TryGetValue(out double d) => d,
            var other => throw new InvalidDataException($"Model configuration '{source}': rope_scaling \"{k}\" must be a number, got {other.ToJsonString()}."),
        };
        double[] List(string k)
        {
            if (o[k] is JsonArray a && a.All(n => n is JsonValue v && v.TryGetValue(out double _)))
                return a.Select(n => n!.GetValue<double>()).ToArray();
            throw new InvalidDataException($"Model configuration '{source}': rope_scaling \"{k}\" must be a list of numbers, got {o[k]?.ToJsonString() ?? "nothing"}.");
        }
        int OriginalPositions() => D("original_max_position_embeddings", 8192) is var m && m >= 1 && m <= CausalLMConfigLimits.MaxPositions ? (int)m
            : throw new InvalidDataException($"Model configuration '{source}': rope_scaling original_max_position_embeddings = {m} is out of range (1 to {CausalLMConfigLimits.MaxPositions}).");
        switch (type)
        {
            case "linear":
                if (o["factor"] is null) throw new InvalidDataException($"Model configuration '{source}': rope_scaling type \"linear\" lacks \"factor\".");
                return new RopeScaling { RopeType = type, Factor = D("factor", 1.0) };
            case "longrope":
                foreach (var key in o.Select(kv => kv.Key))
                    if (key is not ("type" or "rope_type" or "short_factor" or "long_factor" or "attention_factor" or "original_max_position_embeddings"))
                        throw new InvalidDataException($"Model configuration '{source}': rope_scaling field \"{key}\" is not supported for longrope.");
                int original = o["original_max_position_embeddings"] is null ? originalMaxPositionEmbeddings ?? 4096 : OriginalPositions();
                return new RopeScaling
                {
                    RopeType = type, ShortFactor = List("short_factor"), LongFactor = List("long_factor"),
                    AttentionFactor = o["attention_factor"] is null ? null : D("attention_factor", 1.0),
                    OriginalMaxPositionEmbeddings = original,
                };
            default:
                return new RopeScaling
                {
                    RopeType = type,
                    Factor = D("factor", 8.0),
                    LowFreqFactor = D("low_freq_factor", 1.0),
                    HighFreqFactor = D("high_freq_factor", 4.0),
                    OriginalMaxPositionEmbeddings = (int)D("original_max_position_embeddings", 8192),
                };
        }
    }
}
