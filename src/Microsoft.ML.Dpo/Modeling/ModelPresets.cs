using Microsoft.ML.Dpo.Tokenization;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Modeling;

/// <summary>
/// Named model sizes for training from scratch (<c>mldpo init</c>): <c>tiny</c>, <c>small</c> and <c>medium</c>, in the
/// <c>llama</c> and <c>gpt2</c> architectures, and in the llama shape (same widths, heads and context) for <c>qwen3</c>,
/// <c>gemma</c>, <c>gemma2</c>, <c>gemma3_text</c>, <c>phi3</c> and <c>olmo2</c> with each architecture's own features (Gemma 2 and 3:
/// sliding window of a quarter of the context on alternating layers, Gemma 2's soft-caps 50 and 30; Gemma 3: one global
/// layer in min(6, layers); OLMo 2: as many key/value heads as query heads). Embedding and output head are tied, so the vocabulary costs one
/// <c>vocab × hidden</c> matrix. Parameter counts with GPT-2's 50,257-token vocabulary (computed by
/// <see cref="CountParameters"/>; with a 257-id byte-level vocabulary the embedding shrinks to 257 × hidden):
/// <list type="table">
/// <listheader><term>preset</term><description>shape and size (GPT-2 vocabulary)</description></listheader>
/// <item><term>tiny</term><description>hidden 64, 2 layers, 4 heads (llama: 2 key/value heads, MLP 172; gpt2: MLP 256), context 256.
/// llama 3,307,392 and gpt2 3,332,928 parameters (3.22M of them the embedding; 107,392 and 132,928 with the 257-id byte vocabulary):
/// a demonstration size that trains in seconds on two CPU cores.</description></item>
/// <item><term>small</term><description>hidden 256, 8 layers, 8 heads (llama: 4 key/value heads, MLP 688; gpt2: MLP 1024),
/// context 512. llama 18,670,080 and gpt2 19,315,456 parameters.</description></item>
/// <item><term>medium</term><description>hidden 512, 12 layers, 8 heads (llama: MLP 1376; gpt2: MLP 2048), context 1024.
/// llama 63,689,728 and gpt2 64,085,504 parameters.</description></item>
/// </list>
/// </summary>
public static class ModelPresets
{
    /// <summary>
    /// The architectures presets exist for: "llama", "gpt2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2", and the
    /// sparse mixtures of experts "mixtral" (Mistral attention, 8 experts of the llama MLP width, top-2) and "qwen3_moe"
    /// (per-head q/k norms, 8 experts of half the llama MLP width, top-2 with renormalised weights, every layer sparse).
    /// </summary>
    public static IReadOnlyList<string> Architectures { get; } = ["llama", "gpt2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2", "mixtral", "qwen3_moe"];

    /// <summary>The preset names, smallest first: "tiny", "small", "medium".</summary>
    public static IReadOnlyList<string> Names { get; } = ["tiny", "small", "medium"];

    sealed record Shape(int Hidden, int Layers, int Heads, int KeyValueHeads, int LlamaMlp, int Context);

    static Shape ShapeOf(string preset) => preset switch
    {
        "tiny" => new Shape(64, 2, 4, 2, 172, 256),
        "small" => new Shape(256, 8, 8, 4, 688, 512),
        "medium" => new Shape(512, 12, 8, 8, 1376, 1024),
        _ => throw new ArgumentException($"Unknown preset '{preset}'; presets: {string.Join(", ", Names)}.", nameof(preset)),
    };

    /// <summary>The configuration of a preset.</summary>
    /// <param name="architecture">One of <see cref="Architectures"/>.</param>
    /// <param name="preset">"tiny", "small" or "medium".</param>
    /// <param name="vocabSize">Rows of the embedding: the tokenizer's <see cref="TextTokenizer.VocabularySize"/>.</param>
    /// <param name="bosTokenId">The beginning-of-sequence id.</param>
    /// <param name="eosTokenId">The end-of-sequence id.</param>
    /// <returns>A validated configuration with tied embeddings, marked <see cref="CausalLMConfig.StartedFromRandomWeights"/>.</returns>
    /// <exception cref="ArgumentException">An unknown architecture or preset, or ids outside the vocabulary.</exception>
    public static CausalLMConfig Create(string architecture, string preset, int vocabSize, int bosTokenId, int eosTokenId)
    {
        ArgumentNullException.ThrowIfNull(architecture);
        ArgumentNullException.ThrowIfNull(preset);
        if (vocabSize <= 0) throw new ArgumentOutOfRangeException(nameof(vocabSize), vocabSize, "The vocabulary size must be positive.");
        if (bosTokenId < 0 || bosTokenId >= vocabSize) throw new ArgumentOutOfRangeException(nameof(bosTokenId), bosTokenId, $"BOS must be an id below the vocabulary size {vocabSize}.");
        if (eosTokenId < 0 || eosTokenId >= vocabSize) throw new ArgumentOutOfRangeException(nameof(eosTokenId), eosTokenId, $"EOS must be an id below the vocabulary size {vocabSize}.");
        var s = ShapeOf(preset);
        var config = architecture switch
        {
            "llama" => new CausalLMConfig
            {
                ModelType = "llama", HiddenSize = s.Hidden, IntermediateSize = s.LlamaMlp, NumHiddenLayers = s.Layers,
                NumAttentionHeads = s.Heads, NumKeyValueHeads = s.KeyValueHeads, HeadDim = s.Hidden / s.Heads, RmsNormEps = 1e-5,
            },
            "mixtral" => new CausalLMConfig
            {
                ModelType = "mixtral", HiddenSize = s.Hidden, IntermediateSize = s.LlamaMlp, NumHiddenLayers = s.Layers,
                NumAttentionHeads = s.Heads, NumKeyValueHeads = s.KeyValueHeads, HeadDim = s.Hidden / s.Heads, RmsNormEps = 1e-5,
                RopeTheta = 1e6, NumExperts = 8, NumExpertsPerToken = 2, NormTopKProb = true,
            },
            "qwen3_moe" => new CausalLMConfig
            {
                ModelType = "qwen3_moe", HiddenSize = s.Hidden, IntermediateSize = s.LlamaMlp, NumHiddenLayers = s.Layers,
                NumAttentionHeads = s.Heads, NumKeyValueHeads = s.KeyValueHeads, HeadDim = s.Hidden / s.Heads, RmsNormEps = 1e-6,
                RopeTheta = 1e6, NumExperts = 8, NumExpertsPerToken = 2, MoeIntermediateSize = s.LlamaMlp / 2, NormTopKProb = true,
            },
            "gpt2" => new CausalLMConfig
            {
                ModelType = "gpt2", HiddenSize = s.Hidden, IntermediateSize = 4 * s.Hidden, NumHiddenLayers = s.Layers,
                NumAttentionHeads = s.Heads, NumKeyValueHeads = s.Heads, HeadDim = s.Hidden / s.Heads, LayerNormEpsilon = 1e-5,
                AttentionBias = true, MlpBias = true,
            },
            "qwen3" or "gemma" or "gemma2" or "gemma3_text" or "phi3" or "olmo2" => DecoderPreset(architecture, s),
            _ => throw new ArgumentException($"Unknown architecture '{architecture}'; architectures: {string.Join(", ", Architectures)}.", nameof(architecture)),
        };
        config.VocabSize = vocabSize;
        config.MaxPositionEmbeddings = s.Context;
        config.TieWordEmbeddings = true;
        config.BosTokenId = bosTokenId;
        config.EosTokenIds = [eosTokenId];
        config.StartedFromRandomWeights = true;   // a preset is trained from scratch: the trainers' automatic learning rates follow
        config.Validate($"{architecture}/{preset}");
        return config;
    }

    static CausalLMConfig DecoderPreset(string architecture, Shape s)
    {
        int headDim = s.Hidden / s.Heads;
        var c = new CausalLMConfig
        {
            ModelType = architecture, HiddenSize = s.Hidden, IntermediateSize = s.LlamaMlp, NumHiddenLayers = s.Layers,
            NumAttentionHeads = s.Heads, NumKeyValueHeads = architecture == "olmo2" ? s.Heads : s.KeyValueHeads, HeadDim = headDim,
            RmsNormEps = architecture is "phi3" or "olmo2" ? 1e-5 : 1e-6,
        };
        if (architecture is "gemma" or "gemma2" or "gemma3_text") c.HiddenActivation = "gelu_pytorch_tanh";
        if (architecture is "gemma2" or "gemma3_text")
        {
            c.QueryPreAttnScalar = headDim;
            c.SlidingWindow = s.Context / 4;
            int pattern = architecture == "gemma2" ? 2 : Math.Min(6, s.Layers);
            c.LayerTypes = Enumerable.Range(0, s.Layers).Select(i => (i + 1) % pattern != 0 ? "sliding_attention" : "full_attention").ToArray();
        }
        if (architecture == "gemma2") (c.AttnLogitSoftcapping, c.FinalLogitSoftcapping) = (50.0, 30.0);
        if (architecture == "gemma3_text") (c.RopeTheta, c.RopeLocalBaseFreq, c.SlidingWindowPattern) = (1e6, 1e4, Math.Min(6, s.Layers));
        if (architecture == "phi3") c.OriginalMaxPositionEmbeddings = s.Context;
        return c;
    }

    /// <summary>
    /// A new randomly initialised model of a preset over <paramref name="tokenizer"/> (vocabulary size, BOS and EOS taken from it;
    /// a tokenizer without BOS uses its EOS as BOS). Save it with <see cref="LanguageModel.Save"/>.
    /// </summary>
    /// <param name="architecture">One of <see cref="Architectures"/>.</param>
    /// <param name="preset">"tiny", "small" or "medium".</param>
    /// <param name="tokenizer">The tokenizer, e.g. <see cref="TextTokenizer.Gpt2"/> or <see cref="TextTokenizer.CreateByteLevel"/>.</param>
    /// <param name="seed">Seeds TorchSharp's generator (<c>torch.manual_seed</c>) before initialisation: the same seed gives the same weights.</param>
    /// <returns>The model (float32, CPU).</returns>
    /// <exception cref="ArgumentException">The tokenizer has no EOS token, or an unknown architecture or preset.</exception>
    public static LanguageModel CreateModel(string architecture, string preset, TextTokenizer tokenizer, int seed = 42)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        int eos = tokenizer.EosTokenId ?? throw new ArgumentException("The tokenizer has no end-of-sequence token; a model trained from scratch needs one.", nameof(tokenizer));
        int bos = tokenizer.BosTokenId ?? eos;
        var config = Create(architecture, preset, tokenizer.VocabularySize, bos, eos);
        Runtime.DpoRuntime.EnsureNativeLibrary();
        manual_seed(seed);
        return new LanguageModel(CausalLM.Create(config), tokenizer);
    }

    /// <summary>The number of scalar parameters of <paramref name="network"/> (tied matrices counted once).</summary>
    /// <param name="network">The model.</param>
    /// <returns>The count.</returns>
    public static long CountParameters(CausalLM network)
    {
        ArgumentNullException.ThrowIfNull(network);
        return network.parameters().Sum(p => p.numel());
    }
}
