using Microsoft.ML.Dpo.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Training;

/// <summary>
/// The output head as one linear map, which the chunked log-probs can fuse: <c>logits = softcap(hidden · Weightᵀ + Bias)</c>,
/// with <c>softcap(x) = cap · tanh(x / cap)</c> when <see cref="Softcap"/> is set (Gemma 2/3's <c>final_logit_softcapping</c>).
/// It must compute exactly what the architecture's <see cref="CausalLM.LogitsFromHidden"/> computes.
/// </summary>
/// <param name="Weight">[V, H]: <c>lm_head.weight</c>, or the token embedding when the head is tied to it.</param>
/// <param name="Bias">[V], or null (no architecture here has one; kept so a head with a bias can be fused).</param>
/// <param name="Softcap">The final logit soft-capping, or null.</param>
internal readonly record struct OutputHead(Tensor Weight, Tensor? Bias = null, double? Softcap = null);

/// <summary>Per-token statistics [M] that the chunked pass fills from the same chunks of logits (no grad).</summary>
/// <remarks>Each is allocated by the caller (zeros [M] in the wide dtype) when asked for, and left null otherwise.</remarks>
internal sealed class TokenStatistics
{
    /// <summary>WPO's <c>lse(2z) − 2·lse(z)</c>: log Σ p² of the predictive distribution.</summary>
    public Tensor? LogSquaredMass { get; init; }
    /// <summary>The predictive entropy.</summary>
    public Tensor? Entropy { get; init; }
    /// <summary>The mean logit over the vocabulary.</summary>
    public Tensor? LogitMean { get; init; }
    /// <summary>1 where the greedy (argmax) prediction is the label, else 0.</summary>
    public Tensor? Correct { get; init; }

    /// <summary>Fills positions [start, start + rows) from their logits <paramref name="z"/> [rows, V] (wide dtype) and log-sum-exp [rows].</summary>
    public void Fill(long start, Tensor z, Tensor lse, Tensor labels)
    {
        using var scope = NewDisposeScope();
        long rows = z.shape[0];
        if (LogSquaredMass is not null)
            // WPO (Zhou et al., 2024, eq. 2): log p aligned to greedy-ish sampling subtracts log Σ p² = lse(2z) − 2·lse(z).
            LogSquaredMass.narrow(0, start, rows).copy_((z * 2).logsumexp(-1) - lse * 2);
        if (Entropy is not null)
        {
            Tensor p = (z - lse.unsqueeze(-1)).exp();
            Entropy.narrow(0, start, rows).copy_(lse - (p * z).sum(-1));
        }
        LogitMean?.narrow(0, start, rows).copy_(z.mean([-1L]));
        Correct?.narrow(0, start, rows).copy_(z.argmax(-1).eq(labels).to_type(z.dtype));
    }
}

/// <summary>
/// Per-token log-probabilities <c>log softmax(head(hidden) / T)[label]</c> [M] of M positions without an [M, V] logits
/// tensor: the output head runs on a chunk of positions at a time, in the forward pass and again in the backward pass,
/// which recomputes each chunk's logits to form the gradients of the hidden states and of the head's weight (and bias).
/// Peak memory for the logits is a few [chunk, V] temporaries instead of [M, V] kept for the whole step.
/// </summary>
/// <remarks>
/// <para>
/// The idea is the one of fused linear cross-entropy (e.g. Liger-Kernel's): never materialise the full logits, recompute them
/// in the backward pass. Here it is a custom autograd function (TorchSharp's <see cref="autograd.SingleTensorFunction{T}"/>)
/// whose output is the per-token log-prob, so every objective (DPO family, SFT, ORPO, KTO, online RL) composes with it.
/// </para>
/// <para>
/// It reproduces the plain path (<see cref="CausalLM.LogitsFromHidden"/>, then <c>/ T</c>, then
/// <see cref="Losses.SequenceLogProbs.TokenLogProbs"/>) operation by operation: the head and the soft-cap in the model's dtype,
/// the division by the temperature in the model's dtype, the log-softmax widened to float32 (float64 stays float64). The
/// gradients are the analytic ones: with <c>z = softcap(hidden·Wᵀ + b) / T</c> and upstream gradient g,
/// <c>∂/∂z = g·(onehot(label) − softmax(z))</c>, times <c>1/T</c>, times <c>1 − tanh²(x / cap)</c> under a soft-cap;
/// then <c>dHidden = d·W</c>, <c>dW = Σ_chunks dᵀ·hidden</c> (accumulated in float32 for half-precision weights) and
/// <c>db = Σ d</c>. The weight's gradient is formed only when the weight requires grad (not with LoRA, whose head is frozen:
/// LoRA adapts only the projections of the blocks, never <c>lm_head</c>).
/// </para>
/// <para>
/// Only positions are chunked, not the vocabulary: a chunk's temporaries are [chunk, V] and the chunk size bounds them.
/// </para>
/// </remarks>
internal sealed class ChunkedLogProbs : autograd.SingleTensorFunction<ChunkedLogProbs>
{
    /// <summary>Per-token log-probs [M] (wide dtype; with grad to hidden, weight and bias) of <paramref name="labels"/> [M] at <paramref name="hidden"/> [M, H].</summary>
    /// <param name="head">The fused output head.</param>
    /// <param name="hidden">[M, H] final-normed hidden states, in the model's dtype.</param>
    /// <param name="labels">[M] int64 token ids in [0, V).</param>
    /// <param name="temperature">Logits are divided by this before the softmax (1: not at all).</param>
    /// <param name="chunkSize">Positions per chunk (at least 1).</param>
    /// <param name="statistics">Statistics to fill from the forward pass's chunks, or null.</param>
    public static Tensor TokenLogProbs(OutputHead head, Tensor hidden, Tensor labels, double temperature, long chunkSize, TokenStatistics? statistics = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(chunkSize, 1, nameof(chunkSize));
        Runtime.AutogradHandBack.Release();
        Interlocked.Increment(ref calls);
        var settings = new Settings(head.Softcap, temperature, chunkSize, statistics);
        // Tensor arguments are the graph's inputs (a null bias is no input); the settings travel as a plain object.
        return apply(hidden, head.Weight, head.Bias, labels, settings);
    }

    static long calls;

    /// <summary>How many times <see cref="TokenLogProbs"/> has run in this process (which path the scoring took, for tests).</summary>
    internal static long Calls => Interlocked.Read(ref calls);

    sealed record Settings(double? Softcap, double Temperature, long ChunkSize, TokenStatistics? Statistics);

    /// <inheritdoc/>
    public override string Name => nameof(ChunkedLogProbs);

    /// <summary>The logits of one chunk in the model's dtype, as the plain path forms them: head, soft-cap, then temperature.</summary>
    static Tensor ChunkLogits(Tensor hidden, Tensor weight, Tensor? bias, double? softcap, double temperature)
    {
        Tensor logits = nn.functional.linear(hidden, weight, bias);                          // [c, V]
        if (softcap is double cap) logits = logits.div(cap).tanh().mul(cap);
        if (temperature != 1) logits = logits / temperature;
        return logits;
    }

    /// <inheritdoc/>
    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var (hidden, weight, bias, labels) = ((Tensor)vars[0], (Tensor)vars[1], vars[2] as Tensor, (Tensor)vars[3]);
        var settings = (Settings)vars[4];
        long m = hidden.shape[0];
        var wide = Precision.Wide(hidden.dtype);
        Tensor tokenLogps = empty(m, dtype: wide, device: hidden.device);
        Tensor lse = empty(m, dtype: wide, device: hidden.device);
        for (long start = 0; start < m; start += settings.ChunkSize)
        {
            using var chunk = NewDisposeScope();
            long rows = Math.Min(settings.ChunkSize, m - start);
            Tensor z = ChunkLogits(hidden.narrow(0, start, rows), weight, bias, settings.Softcap, settings.Temperature);
            if (z.dtype != wide) z = z.to_type(wide);
            Tensor chunkLabels = labels.narrow(0, start, rows);
            Tensor chunkLse = z.logsumexp(-1);                                               // [c]
            lse.narrow(0, start, rows).copy_(chunkLse);
            tokenLogps.narrow(0, start, rows).copy_(z.gather(-1, chunkLabels.unsqueeze(-1)).squeeze(-1) - chunkLse);
            settings.Statistics?.Fill(start, z, chunkLse, chunkLabels);
        }
        var saved = new List<Tensor> { hidden, weight, labels, lse };
        if (bias is not null) saved.Add(bias);
        ctx.save_for_backward(saved);
        ctx.save_data("settings", settings);
        ctx.save_data("needs", (hidden.requires_grad, weight.requires_grad, bias?.requires_grad ?? false));
        return tokenLogps;
    }

    /// <inheritdoc/>
    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor gradOutput)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var saved = ctx.get_saved_variables();
        Tensor hidden = saved[0], weight = saved[1], labels = saved[2], lse = saved[3];
        Tensor? bias = saved.Count > 4 ? saved[4] : null;
        var settings = (Settings)ctx.get_data("settings");
        var (needsHidden, needsWeight, needsBias) = ((bool, bool, bool))ctx.get_data("needs");
        var dtype = hidden.dtype;
        var wide = Precision.Wide(dtype);
        long m = hidden.shape[0];
        Tensor g = gradOutput.to_type(wide);
        Tensor? dHidden = needsHidden ? empty_like(hidden) : null;
        Tensor? dWeight = needsWeight ? zeros(weight.shape, dtype: Precision.Wide(weight.dtype), device: weight.device) : null;
        Tensor? dBias = needsBias && bias is not null ? zeros(bias.shape, dtype: Precision.Wide(bias.dtype), device: bias.device) : null;
        for (long start = 0; start < m; start += settings.ChunkSize)
        {
            using var chunk = NewDisposeScope();
            long rows = Math.Min(settings.ChunkSize, m - start);
            Tensor h = hidden.narrow(0, start, rows);
            Tensor raw = nn.functional.linear(h, weight, bias);                              // [c, V], model dtype
            Tensor z = raw;
            if (settings.Softcap is double cap) z = z.div(cap).tanh().mul(cap);
            if (settings.Temperature != 1) z = z / settings.Temperature;
            // A copy for half precision, else possibly raw itself, which is then not needed again (raw is read below only under
            // a soft-cap, where z is already a new tensor).
            if (z.dtype != wide) z = z.to_type(wide);
            // d = g · (onehot − softmax(z)), in place on z.
            Tensor gc = g.narrow(0, start, rows).unsqueeze(-1);                              // [c, 1]
            Tensor d = z.sub_(lse.narrow(0, start, rows).unsqueeze(-1)).exp_().mul_(gc.neg());
            d.scatter_add_(1, labels.narrow(0, start, rows).unsqueeze(-1), gc);
            if (settings.Temperature != 1) d.div_(settings.Temperature);
            if (settings.Softcap is double capValue)
            {
                // softcap'(x) = 1 − tanh²(x / cap), from the head's raw output.
                Tensor t = raw.to_type(wide).div_(capValue).tanh_();
                d.mul_(t.mul_(t).neg_().add_(1));
            }
            Tensor dLow = d.dtype == dtype ? d : d.to_type(dtype);                           // the matmuls run in the model's dtype
            dHidden?.narrow(0, start, rows).copy_(dLow.mm(weight));
            if (dWeight is not null)
            {
                if (dWeight.dtype == dtype) dWeight.addmm_(dLow.t(), h);
                else dWeight.add_(dLow.t().mm(h));
            }
            dBias?.add_(d.sum(0L).to_type(dBias.dtype));   // 0L: a literal 0 would convert to ScalarType
        }
        Tensor? Cast(Tensor? grad, Tensor? like) => grad is null || like is null || grad.dtype == like.dtype ? grad : grad.to_type(like.dtype);
        // One entry per argument of apply: hidden, weight, bias (null when there is none), labels, settings.
        var grads = new List<Tensor?> { dHidden, Cast(dWeight, weight), Cast(dBias, bias), null, null };
        foreach (var grad in grads) if (grad is not null) Runtime.AutogradHandBack.Keep(grad);
        return grads!;
    }
}

/// <summary>
/// Whether and how the completion log-probs are computed chunk by chunk (<see cref="ChunkedLogProbs"/>) rather than from
/// [M, V] logits: the setting of <see cref="TrainingOptions.ChunkedLogProbs"/> and <see cref="TrainingOptions.LogProbChunkSize"/>,
/// in force for the thread (and the tasks it starts) inside <see cref="Use"/>; outside, the automatic default.
/// </summary>
/// <param name="Enabled">True: always; false: never; null: automatically, when the vocabulary exceeds <see cref="AutomaticVocabularyThreshold"/>.</param>
/// <param name="ChunkSize">Positions per chunk.</param>
internal sealed record LogProbChunking(bool? Enabled, int ChunkSize)
{
    /// <summary>The automatic rule chunks vocabularies larger than this (32,768: Llama 2's 32,000 is not chunked, Qwen's 151,936 is).</summary>
    public const int AutomaticVocabularyThreshold = TrainingOptions.ChunkedLogProbsVocabularyThreshold;

    /// <summary>The default of <see cref="TrainingOptions.LogProbChunkSize"/>.</summary>
    public const int DefaultChunkSize = 256;

    /// <summary>The automatic default: chunked above the threshold, <see cref="DefaultChunkSize"/> positions per chunk.</summary>
    public static readonly LogProbChunking Automatic = new(null, DefaultChunkSize);

    static readonly AsyncLocal<LogProbChunking?> Ambient = new();

    /// <summary>The setting in force: the innermost <see cref="Use"/>, else <see cref="Automatic"/>.</summary>
    public static LogProbChunking Current => Ambient.Value ?? Automatic;

    /// <summary>The setting of <paramref name="options"/>.</summary>
    public static LogProbChunking From(TrainingOptions options) => new(options.ChunkedLogProbs, options.LogProbChunkSize);

    /// <summary>Puts <paramref name="setting"/> in force until the result is disposed.</summary>
    public static IDisposable Use(LogProbChunking setting)
    {
        var previous = Ambient.Value;
        Ambient.Value = setting;
        return new Restore(previous);
    }

    sealed class Restore(LogProbChunking? previous) : IDisposable
    {
        public void Dispose() => Ambient.Value = previous;
    }

    /// <summary>Whether a vocabulary of <paramref name="vocabularySize"/> logits is chunked under this setting.</summary>
    public bool AppliesTo(long vocabularySize) => Enabled ?? vocabularySize > AutomaticVocabularyThreshold;
}
