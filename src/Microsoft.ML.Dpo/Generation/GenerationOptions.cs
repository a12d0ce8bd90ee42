namespace Microsoft.ML.Dpo.Generation;

/// <summary>How text is generated. The defaults decode greedily up to 128 new tokens.</summary>
public sealed class GenerationOptions
{
    /// <summary>The most tokens to generate per prompt (fewer when the longest prompt plus this exceeds the model's context). Default 128.</summary>
    public int MaxNewTokens { get; set; } = 128;
    /// <summary>Softmax temperature; 0 means greedy decoding. Default 0.</summary>
    public double Temperature { get; set; }
    /// <summary>Sample only among the K most likely tokens (0: no limit). Default 0.</summary>
    public int TopK { get; set; }
    /// <summary>Sample only among the most likely tokens whose probabilities sum to P (1: no limit). Default 1.</summary>
    public double TopP { get; set; } = 1.0;
    /// <summary>Penalty for tokens already present (CTRL-style: logits divided if positive, multiplied if negative); 1 disables. Default 1.</summary>
    public double RepetitionPenalty { get; set; } = 1.0;
    /// <summary>Seed of the sampler; the same seed reproduces the same samples. Default 0.</summary>
    public long Seed { get; set; }
    /// <summary>Strings that end generation when they appear in the generated text (they are cut from the result).</summary>
    public IReadOnlyList<string> StopStrings { get; set; } = [];
    /// <summary>Stop at the model's end-of-sequence token(s). Default true.</summary>
    public bool StopAtEos { get; set; } = true;
    /// <summary>
    /// When a prompt does not fit the model's context, keep its last tokens instead of failing. Default false.
    /// </summary>
    public bool TruncateLongPrompts { get; set; }
    /// <summary>
    /// How many rows <c>LanguageModelTransformer</c>'s <c>Transform</c> generates together (left-padded, one KV cache), a batch
    /// at a time as its cursor reaches them; 1 generates one row at a time. Greedy responses are the same text either way;
    /// sampled ones (<see cref="Temperature"/> &gt; 0) depend on the batch, as each batch draws from one generator seeded with
    /// <see cref="Seed"/>. Default 8.
    /// </summary>
    public int TransformBatchSize { get; set; } = 8;

    /// <summary>Checks value ranges; throws <see cref="ArgumentOutOfRangeException"/> naming the option.</summary>
    public void Validate()
    {
        if (MaxNewTokens < 0) throw new ArgumentOutOfRangeException(nameof(MaxNewTokens), MaxNewTokens, "MaxNewTokens must not be negative.");
        if (Temperature < 0) throw new ArgumentOutOfRangeException(nameof(Temperature), Temperature, "Temperature must not be negative (0 is greedy).");
        if (TopK < 0) throw new ArgumentOutOfRangeException(nameof(TopK), TopK, "TopK must not be negative (0 disables it).");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentOutOfRangeException(nameof(TopP), TopP, "TopP must be in (0, 1].");
        if (TransformBatchSize < 1) throw new ArgumentOutOfRangeException(nameof(TransformBatchSize), TransformBatchSize, "TransformBatchSize must be at least 1 (1: one row at a time).");
        if (!(RepetitionPenalty > 0)) throw new ArgumentOutOfRangeException(nameof(RepetitionPenalty), RepetitionPenalty, "RepetitionPenalty must be positive (1 disables it).");
    }
}
