using Microsoft.ML.Dpo.Modeling;

namespace Microsoft.ML.Dpo.Training;

/// <summary>The model FLOPs of one micro-batch: the policy's forward and backward, and a live reference's forward, apart.</summary>
/// <param name="Policy">Policy forward + backward (3 × its forward).</param>
/// <param name="Reference">A live reference model's forward (0 when the reference is precomputed or not used).</param>
internal readonly record struct StepFlops(double Policy, double Reference)
{
    /// <summary>Both together.</summary>
    public double Total => Policy + Reference;

    /// <summary>The sum of two counts.</summary>
    public static StepFlops operator +(StepFlops a, StepFlops b) => new(a.Policy + b.Policy, a.Reference + b.Reference);
}

/// <summary>
/// Model FLOPs by the corrected count open-instruct uses for MFU. A sequence of <c>t</c> real tokens whose output layer runs at
/// <c>h</c> positions costs, in its forward pass, <c>2·N·t</c> for the trunk (<c>N</c>: the non-embedding parameters of the
/// model, counted from it; for a mixture of experts, the experts' parameters times top-k ÷ experts), <c>2·V·H·h</c> for the output
/// layer (counted apart, only where it runs: the library computes it only at positions that predict a target token) and
/// <c>4·L·A·t²</c> for attention's two products (<c>A</c> = heads × head size; no causal or sliding-window discount). Training
/// (forward + backward) costs three times the forward: <c>6·N</c> and <c>12·L·A·t</c> per token. These are the model's FLOPs,
/// not the hardware's: padding, gradient-checkpointing recomputation and LoRA's skipped weight gradients are not counted
/// differently, so the same run gives the same count however it is executed.
/// </summary>
internal sealed class ModelFlops
{
    readonly double trunk, head, attention;

    /// <summary>From explicit sizes (tests, benchmarks).</summary>
    /// <param name="trunkParameters">N: the parameters whose matmuls run at every position (no embeddings, no output layer).</param>
    /// <param name="vocabSize">V.</param>
    /// <param name="hiddenSize">H, the output layer's input width.</param>
    /// <param name="layers">L.</param>
    /// <param name="attentionWidth">A = attention heads × head size.</param>
    public ModelFlops(double trunkParameters, long vocabSize, long hiddenSize, long layers, long attentionWidth)
    {
        trunk = trunkParameters;
        head = (double)vocabSize * hiddenSize;
        attention = (double)layers * attentionWidth;
        TrunkParameters = trunkParameters;
    }

    /// <summary>N, as counted.</summary>
    public double TrunkParameters { get; }

    /// <summary>The count for <paramref name="model"/>: N from its parameters (LoRA adapters included, they run at every position).</summary>
    public static ModelFlops Of(CausalLM model)
    {
        var c = model.Config;
        double expertShare = c.IsMixtureOfExperts ? (double)c.NumExpertsPerToken / c.NumExperts : 1;
        double n = 0;
        foreach (var (name, p) in model.named_parameters())
        {
            if (IsEmbeddingOrOutput(name)) continue;
            n += p.numel() * (name.Contains(".experts.", StringComparison.Ordinal) ? expertShare : 1);
        }
        return new ModelFlops(n, c.VocabSize, c.HiddenSize, c.NumHiddenLayers, (long)c.NumAttentionHeads * c.HeadDim);
    }

    /// <summary>Token and position embeddings (lookups, no FLOPs) and the output layer (counted apart).</summary>
    static bool IsEmbeddingOrOutput(string name) =>
        name.EndsWith("embed_tokens.weight", StringComparison.Ordinal) || name.EndsWith("wte.weight", StringComparison.Ordinal)
        || name.EndsWith("wpe.weight", StringComparison.Ordinal) || name.StartsWith("lm_head.", StringComparison.Ordinal);

    /// <summary>One forward pass over a sequence of <paramref name="tokens"/> real tokens with the output layer at <paramref name="headPositions"/> of them.</summary>
    public double Forward(long tokens, long headPositions) =>
        2 * trunk * tokens + 2 * head * headPositions + 4 * attention * tokens * (double)tokens;

    /// <summary>Forward + backward of the same (3 × the forward).</summary>
    public double Training(long tokens, long headPositions) => 3 * Forward(tokens, headPositions);

    /// <summary>
    /// A DPO micro-batch: each pair's chosen and rejected sequences (prompt + completion tokens; the output layer at the
    /// completion's positions) through the policy's forward and backward and, when <paramref name="liveReference"/>, a reference forward.
    /// </summary>
    public StepFlops Pairs(IEnumerable<(int Prompt, int Chosen, int Rejected)> pairs, bool liveReference)
    {
        double forward = 0;
        foreach (var (prompt, chosen, rejected) in pairs)
            forward += Forward(prompt + chosen, HeadPositions(prompt, chosen)) + Forward(prompt + rejected, HeadPositions(prompt, rejected));
        return new StepFlops(3 * forward, liveReference ? forward : 0);
    }

    /// <summary>The positions that predict one of <paramref name="completion"/> target tokens (the first token of a sequence is never predicted).</summary>
    internal static long HeadPositions(int prompt, int completion) => prompt > 0 ? completion : Math.Max(0, completion - 1);
}
