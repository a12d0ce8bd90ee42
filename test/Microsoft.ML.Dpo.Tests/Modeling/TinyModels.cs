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

    /// <summary>The four tiny configurations the modeling and checkpoint tests run on, as MSTest dynamic data.</summary>
    public static IEnumerable<object[]> Names => new[]
    {
        new object[] { "llama-tied" }, new object[] { "llama-untied" }, new object[] { "qwen2" }, new object[] { "gpt2" },
    };

    /// <summary>The configuration of one of <see cref="Names"/>.</summary>
    public static CausalLMConfig ByName(string name) => name switch
    {
        "llama-tied" => Llama(tied: true),
        "llama-untied" => Llama(tied: false),
        "qwen2" => Qwen2(),
        _ => Gpt2(),
    };
}
