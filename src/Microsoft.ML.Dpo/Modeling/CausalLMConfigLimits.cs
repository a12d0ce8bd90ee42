using System.Globalization;

namespace Microsoft.ML.Dpo.Modeling;

/// <summary>
/// Range checks on the generic sizes of a <see cref="CausalLMConfig"/> (vocabulary, hidden, intermediate, layers, heads, head
/// dimension, positions) and the size check of a configuration against the weights a checkpoint holds — both done before anything
/// is allocated, so a corrupt or mistaken <c>config.json</c> fails in milliseconds with the field named instead of allocating
/// gigabytes or overflowing native size arithmetic.
/// </summary>
/// <remarks>
/// The limits are far above every published model (the largest have vocabularies near 256 K, hidden sizes near 16 K, 126 layers,
/// 128 heads of 128–256) and low enough that the products the modules compute (heads × head_dim, vocab × hidden) cannot overflow.
/// An architecture with further size fields (e.g. a number of experts) adds their minimum contribution to <see cref="MinimumParameters"/>.
/// </remarks>
internal static class CausalLMConfigLimits
{
    public const int MaxVocabSize = 1 << 24;            // 16,777,216
    public const int MaxHiddenSize = 1 << 20;           // 1,048,576
    public const int MaxIntermediateSize = 1 << 22;     // 4,194,304
    public const int MaxLayers = 4096;
    public const int MaxHeads = 4096;
    public const int MaxHeadDim = 1 << 16;              // 65,536
    public const int MaxPositions = 1 << 28;            // 268,435,456
    public const int MaxExperts = 4096;

    /// <summary>Checks each generic size against its range; the message names the field, the value and the range.</summary>
    /// <exception cref="InvalidDataException">A size is out of range.</exception>
    public static void CheckRanges(CausalLMConfig c, string source)
    {
        bool gpt2 = c.IsGpt2;
        Range(c.VocabSize, MaxVocabSize, "vocab_size");
        Range(c.HiddenSize, MaxHiddenSize, gpt2 ? "n_embd" : "hidden_size");
        Range(c.IntermediateSize, MaxIntermediateSize, gpt2 ? "n_inner" : "intermediate_size");
        Range(c.NumHiddenLayers, MaxLayers, gpt2 ? "n_layer" : "num_hidden_layers");
        Range(c.NumAttentionHeads, MaxHeads, gpt2 ? "n_head" : "num_attention_heads");
        Range(c.NumKeyValueHeads, MaxHeads, "num_key_value_heads");
        Range(c.HeadDim, MaxHeadDim, "head_dim");
        Range(c.MaxPositionEmbeddings, MaxPositions, gpt2 ? "n_positions" : "max_position_embeddings");
        if (c.ModelType is "mixtral" or "qwen3_moe")
        {
            Range(c.NumExperts, MaxExperts, c.ModelType == "mixtral" ? "num_local_experts" : "num_experts");
            Range(c.NumExpertsPerToken, MaxExperts, "num_experts_per_tok");
            if (c.ModelType == "qwen3_moe") Range(c.MoeIntermediateSize, MaxIntermediateSize, "moe_intermediate_size");
        }
        if ((long)c.NumAttentionHeads * c.HeadDim > MaxHiddenSize * 4L)
            throw new InvalidDataException(string.Create(CultureInfo.InvariantCulture,
                $"Model configuration '{source}': num_attention_heads × head_dim = {c.NumAttentionHeads} × {c.HeadDim} exceeds {MaxHiddenSize * 4L}."));
        if (c.SlidingWindow is int w && w <= 0)
            throw new InvalidDataException($"Model configuration '{source}': sliding_window must be positive, got {w}.");
        Finite(c.RmsNormEps, "rms_norm_eps", allowZero: true);
        Finite(c.LayerNormEpsilon, "layer_norm_epsilon", allowZero: true);
        Finite(c.RopeTheta, "rope_theta", allowZero: false);

        void Range(int value, int max, string field)
        {
            if (value <= 0 || value > max)
                throw new InvalidDataException(string.Create(CultureInfo.InvariantCulture,
                    $"Model configuration '{source}': {field} = {value} is out of range (1 to {max:N0})."));
        }
        void Finite(double value, string field, bool allowZero)
        {
            if (!(allowZero ? value >= 0 : value > 0) || double.IsInfinity(value))
                throw new InvalidDataException(string.Create(CultureInfo.InvariantCulture,
                    $"Model configuration '{source}': {field} must be a {(allowZero ? "non-negative" : "positive")} finite number, got {value}."));
        }
    }

    /// <summary>
    /// A lower bound on the parameter count of any model of <paramref name="c"/>: the token embedding (vocab × hidden) plus, per layer,
    /// the query and output projections (2 × hidden × heads·head_dim) and an MLP's input and output projections (2 × hidden ×
    /// intermediate); GPT-2 adds its position embedding. Every architecture here holds at least these; the real count is at most a
    /// small multiple (untied head, key/value projections, gate).
    /// </summary>
    public static long MinimumParameters(CausalLMConfig c)
    {
        checked
        {
            long h = c.HiddenSize;
            long mlp = 2 * h * c.IntermediateSize;
            // Qwen3-MoE's sparse layers hold experts of moe_intermediate_size instead (which layers are sparse does not matter
            // for a lower bound); Mixtral's experts are each at least the dense MLP.
            if (c.ModelType == "qwen3_moe") mlp = Math.Min(mlp, 2 * h * c.MoeIntermediateSize * c.NumExperts);
            long perLayer = 2 * h * ((long)c.NumAttentionHeads * c.HeadDim) + mlp;
            long total = (long)c.VocabSize * h + c.NumHiddenLayers * perLayer;
            if (c.IsGpt2) total += (long)c.MaxPositionEmbeddings * h;
            return total;
        }
    }

    /// <summary>
    /// Refuses a configuration that needs more parameters than the checkpoint stores values (a config that does not belong to the
    /// weights), before the model is built; the message gives both counts and, when the checkpoint has an embedding matrix, its
    /// shape beside the one the configuration implies.
    /// </summary>
    /// <param name="c">The configuration.</param>
    /// <param name="tensors">The names and shapes of the checkpoint's tensors (from the safetensors headers).</param>
    /// <param name="configSource">The config file, for the message.</param>
    /// <param name="weightsSource">The checkpoint, for the message.</param>
    /// <exception cref="InvalidDataException">The checkpoint holds fewer values than the configuration needs.</exception>
    public static void CheckAgainstWeights(CausalLMConfig c, IEnumerable<(string Name, long[] Shape)> tensors, string configSource, string weightsSource)
    {
        var list = tensors.ToList();
        long stored = 0;
        foreach (var (_, shape) in list)
            stored = SaturatingAdd(stored, shape.Aggregate(1L, SaturatingMultiply));
        long needed = MinimumParameters(c);
        if (needed <= stored) return;
        string hint = "";
        var embedding = list.FirstOrDefault(t => t.Shape.Length == 2
            && (t.Name.EndsWith("embed_tokens.weight", StringComparison.Ordinal) || t.Name.EndsWith("wte.weight", StringComparison.Ordinal)));
        if (embedding.Name is not null)
            hint = $" (its '{embedding.Name}' is [{string.Join(", ", embedding.Shape)}]; the configuration implies [{c.VocabSize}, {c.HiddenSize}])";
        throw new InvalidDataException(string.Create(CultureInfo.InvariantCulture,
            $"Model configuration '{configSource}' does not match the weights in '{weightsSource}': the configuration needs at least {needed:N0} parameters " +
            $"(vocab_size {c.VocabSize}, hidden {c.HiddenSize}, intermediate {c.IntermediateSize}, {c.NumHiddenLayers} layers, {c.NumAttentionHeads} heads of {c.HeadDim}) " +
            $"but the checkpoint stores {stored:N0} values{hint}."));
    }

    static long SaturatingMultiply(long a, long b) => b != 0 && a > long.MaxValue / b ? long.MaxValue : a * b;

    static long SaturatingAdd(long a, long b) => a > long.MaxValue - b ? long.MaxValue : a + b;
}
