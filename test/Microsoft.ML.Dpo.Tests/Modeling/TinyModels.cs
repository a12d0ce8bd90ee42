using Microsoft.ML.Dpo.Modeling;

namespace Microsoft.ML.Dpo.Tests.Modeling;

/// <summary>Tiny configurations for fast tests.</summary>
internal static class TinyModels
{
    public static CausalLMConfig Llama(bool tied = true, string modelType = "llama", bool attentionBias = false) => new()
    {
        ModelType = modelType,
        VocabSize = 101,
        HiddenSize = 32,
        IntermediateSize = 48,
        NumHiddenLayers = 2,
        NumAttentionHeads = 4,
        NumKeyValueHeads = 2,
        HeadDim = 8,
        MaxPositionEmbeddings = 128,
        RmsNormEps = 1e-5,
        RopeTheta = 10000,
        TieWordEmbeddings = tied,
        AttentionBias = attentionBias,
        BosTokenId = 1,
        EosTokenIds = new[] { 2, 3 },
    };

    public static CausalLMConfig Qwen2() => Llama(tied: false, modelType: "qwen2", attentionBias: true);

    public static CausalLMConfig Gpt2() => new()
    {
        ModelType = "gpt2",
        VocabSize = 97,
        HiddenSize = 32,
        IntermediateSize = 128,
        NumHiddenLayers = 2,
        NumAttentionHeads = 4,
        NumKeyValueHeads = 4,
        HeadDim = 8,
        MaxPositionEmbeddings = 64,
        LayerNormEpsilon = 1e-5,
        TieWordEmbeddings = true,
        AttentionBias = true,
        MlpBias = true,
        BosTokenId = 96,
        EosTokenIds = new[] { 96 },
    };

    /// <summary>Qwen3: per-head q/k norms, head_dim 12 ≠ hidden / heads, untied.</summary>
    public static CausalLMConfig Qwen3() => With(Llama(tied: false, modelType: "qwen3"), c => c.HeadDim = 12);

    /// <summary>Gemma: (1 + w) norms, GeGLU, √hidden embedding scale, head_dim 12, tied.</summary>
    public static CausalLMConfig Gemma() => With(Llama(tied: true, modelType: "gemma"), c => { c.HeadDim = 12; c.HiddenActivation = "gelu_pytorch_tanh"; });

    /// <summary>Gemma 2: soft-capped scores and logits, query_pre_attn_scalar, window 3 on layers 0 and 2 (of 3), 4 norms per layer.</summary>
    public static CausalLMConfig Gemma2() => With(Gemma(), c =>
    {
        c.ModelType = "gemma2"; c.NumHiddenLayers = 3; c.QueryPreAttnScalar = 16; c.AttnLogitSoftcapping = 20; c.FinalLogitSoftcapping = 15;
        c.SlidingWindow = 3; c.LayerTypes = ["sliding_attention", "full_attention", "sliding_attention"];
    });

    /// <summary>Gemma 3 text: q/k (1 + w) norms, layers 0 and 2 local (window 3, base 1e4), layer 1 global (base 1e6, linear rope scaling 4).</summary>
    public static CausalLMConfig Gemma3() => With(Gemma(), c =>
    {
        c.ModelType = "gemma3_text"; c.NumHiddenLayers = 3; c.QueryPreAttnScalar = 16; c.SlidingWindow = 3;
        c.LayerTypes = ["sliding_attention", "full_attention", "sliding_attention"];
        c.RopeTheta = 1e6; c.RopeLocalBaseFreq = 1e4; c.RopeScaling = new RopeScaling { RopeType = "linear", Factor = 4 };
    });

    /// <summary>Phi-3: fused qkv_proj and gate_up_proj, sliding window 3, longrope within the original context (short factors, scaled cos/sin).</summary>
    public static CausalLMConfig Phi3(int originalContext = 64) => With(Llama(tied: false, modelType: "phi3"), c =>
    {
        c.SlidingWindow = 3; c.OriginalMaxPositionEmbeddings = originalContext;
        c.RopeScaling = new RopeScaling
        {
            RopeType = "longrope", OriginalMaxPositionEmbeddings = originalContext,
            ShortFactor = [1.0, 1.2, 1.7, 3.0], LongFactor = [1.1, 2.5, 8.0, 20.0],
        };
    });

    /// <summary>OLMo 2: post-norms inside the residual, q/k norms over the whole projection, multi-head (Hkv = H).</summary>
    public static CausalLMConfig Olmo2() => With(Llama(tied: false, modelType: "olmo2"), c => c.NumKeyValueHeads = 4);

    static CausalLMConfig With(CausalLMConfig c, Action<CausalLMConfig> change)
    {
        change(c);
        return c;
    }

    /// <summary>The tiny configurations the modeling and checkpoint tests run on, as MSTest dynamic data.</summary>
    public static IEnumerable<object[]> Names => AllNames.Select(n => new object[] { n });

    /// <summary>Every name <see cref="ByName"/> knows.</summary>
    public static IReadOnlyList<string> AllNames { get; } =
        ["llama-tied", "llama-untied", "qwen2", "gpt2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2"];

    /// <summary>The architectures added with issue 12 (one SFT and one DPO test each).</summary>
    public static IEnumerable<object[]> NewArchitectures => new[] { "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2" }.Select(n => new object[] { n });

    /// <summary>The configuration of one of <see cref="Names"/>.</summary>
    public static CausalLMConfig ByName(string name) => name switch
    {
        "llama-tied" => Llama(tied: true),
        "llama-untied" => Llama(tied: false),
        "qwen2" => Qwen2(),
        "gpt2" => Gpt2(),
        "qwen3" => Qwen3(),
        "gemma" => Gemma(),
        "gemma2" => Gemma2(),
        "gemma3_text" => Gemma3(),
        "phi3" => Phi3(),
        "olmo2" => Olmo2(),
        _ => throw new ArgumentException($"No tiny model '{name}'.", nameof(name)),
    };
}
