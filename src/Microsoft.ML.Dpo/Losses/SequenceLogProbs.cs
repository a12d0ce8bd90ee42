using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Losses;

/// <summary>
/// Per-token and per-sequence log-probabilities of given tokens under a causal language model's logits — the inputs of
/// <see cref="PreferenceLoss"/> and of supervised fine-tuning.
/// </summary>
/// <remarks>
/// <para>
/// A trainer's batch is one concatenated [2B, T] tensor of token ids — the B chosen rows, then the B rejected rows —
/// with a completion mask (1 at completion tokens, 0 at prompt and padding). One forward pass gives logits [2B, T, V];
/// <see cref="FromLogits"/> turns them into per-row summed log-probabilities and completion-token counts [2B], and
/// <see cref="SplitPairs"/> splits those into the chosen and rejected halves [B]. Sequence-level kinds (DPO) use the
/// sums; length-normalised kinds (IPO, SimPO) use <see cref="Mean"/>.
/// </para>
/// <para>
/// <b>Alignment.</b> The logits at position t predict the token at position t + 1. <see cref="TokenLogProbs"/> does
/// <b>not</b> shift: its <c>labels[:, t]</c> is scored by <c>logits[:, t]</c>, so a caller with raw model outputs passes
/// <c>logits[:, :-1]</c>, <c>inputIds[:, 1:]</c> and <c>mask[:, 1:]</c>. <see cref="FromLogits"/> does that shift itself
/// and takes the unshifted ids and mask.
/// </para>
/// <para>
/// Results belong to the caller's current dispose scope; intermediates are disposed before returning.
/// </para>
/// </remarks>
public static class SequenceLogProbs
{
    /// <summary>
    /// Gathers <c>log p(labels[b, t])</c> from the log-softmax of <c>logits[b, t]</c>, shape [B, T].
    /// </summary>
    /// <remarks>
    /// No shift is applied (see the class remarks). The log-softmax (as logit − logsumexp) is computed one row of the batch at a time and in
    /// float32 when the logits are float16 or bfloat16 (float64 logits stay float64), so no extra [B, T, V] buffer is
    /// allocated besides what autograd keeps for the backward pass. Positions whose label is negative (the Hugging Face
    /// ignore index −100) or whose <paramref name="mask"/> entry is 0 are 0 in the result.
    /// </remarks>
    /// <param name="logits">[B, T, V] floating-point logits (any float dtype).</param>
    /// <param name="labels">[B, T] integer token ids in [0, V), or negative to ignore.</param>
    /// <param name="mask">
    /// Optional [B, T] bool or 0/1 mask (nonzero = keep). Where it is 0 the logits are replaced by zeros <em>before</em> the
    /// log-softmax, so non-finite garbage there (e.g. a row of −inf) cannot produce NaN in the value or in the gradient;
    /// without it such positions yield NaN in the result (which <see cref="Reduce"/> still drops exactly) and NaN
    /// gradients into those logits.
    /// </param>
    /// <returns>[B, T] log-probabilities in the logits' dtype, promoted to float32 for half-precision logits.</returns>
    public static Tensor TokenLogProbs(Tensor logits, Tensor labels, Tensor? mask = null)
    {
        if (logits is null) throw new ArgumentNullException(nameof(logits));
        if (labels is null) throw new ArgumentNullException(nameof(labels));
        if (logits.dim() != 3)
            throw new ArgumentException($"logits must be [B, T, V], but has shape {PreferenceLoss.Shape(logits)}.", nameof(logits));
        if (!logits.is_floating_point())
            throw new ArgumentException($"logits must be floating-point, but has dtype {logits.dtype}.", nameof(logits));
        if (labels.dim() != 2 || labels.shape[0] != logits.shape[0] || labels.shape[1] != logits.shape[1])
            throw new ArgumentException($"labels must be [B, T] = [{logits.shape[0]}, {logits.shape[1]}] to match logits {PreferenceLoss.Shape(logits)}, but has shape {PreferenceLoss.Shape(labels)}.", nameof(labels));
        if (labels.is_floating_point() || labels.dtype == ScalarType.Bool || labels.is_complex())
            throw new ArgumentException($"labels must be integer token ids, but has dtype {labels.dtype}.", nameof(labels));
        if (mask is not null) CheckMask(mask, nameof(mask), labels, nameof(labels));

        using var scope = NewDisposeScope();
        long batch = logits.shape[0], vocab = logits.shape[2];
        Tensor ids = labels.to_type(ScalarType.Int64);
        if (ids.numel() > 0)
        {
            long max = ids.max().item<long>();
            if (max >= vocab)
                throw new ArgumentOutOfRangeException(nameof(labels), max, $"labels holds token id {max}, outside the vocabulary of {vocab} logits.");
        }
        Tensor ignored = ids.lt(0);
        Tensor? keep = mask is null ? null : AsBool(mask);
        if (keep is not null) ignored = ignored.logical_or(keep.logical_not());
        Tensor index = ids.clamp_min(0).unsqueeze(-1);                    // [B, T, 1], ignored labels point at id 0

        ScalarType compute = logits.dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;
        var rows = new Tensor[batch];
        for (long b = 0; b < batch; b++)
        {
            using var rowScope = NewDisposeScope();
            Tensor row = logits[b];                                        // [T, V]
            if (row.dtype != compute) row = row.to_type(compute);
            if (keep is not null) row = row.masked_fill(keep[b].logical_not().unsqueeze(-1), 0.0);
            // log p = logit[label] − logsumexp(logits): unlike log_softmax, this keeps no [T, V] output alive for the backward pass.
            rows[b] = (row.gather(-1, index[b]) - row.logsumexp(-1, keepdim: true)).squeeze(-1).MoveToOuterDisposeScope();
        }
        Tensor result = batch == 0
            ? zeros(new[] { 0L, logits.shape[1] }, compute, logits.device)
            : stack(rows, 0);
        return result.masked_fill(ignored, 0.0).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Sums per-token log-probabilities over the masked (completion) tokens of each row, and counts those tokens.
    /// </summary>
    /// <remarks>
    /// Masked-out positions contribute exactly 0 to the sum and receive exactly 0 gradient, even when their value is
    /// −inf or NaN (they are selected away, not multiplied by 0). For the concatenated [2B, T] batch the results are
    /// [2B]; split them with <see cref="SplitPairs"/>. The per-token mean is <see cref="Mean"/>.
    /// </remarks>
    /// <param name="tokenLogps">[B, T] per-token log-probabilities (from <see cref="TokenLogProbs"/>).</param>
    /// <param name="mask">[B, T] bool or 0/1 mask, nonzero (1) at the completion tokens to count.</param>
    /// <returns><c>sum</c>: [B] summed log-probabilities (with grad); <c>count</c>: [B] number of masked tokens, in the dtype of <paramref name="tokenLogps"/>.</returns>
    public static (Tensor sum, Tensor count) Reduce(Tensor tokenLogps, Tensor mask)
    {
        if (tokenLogps is null) throw new ArgumentNullException(nameof(tokenLogps));
        if (mask is null) throw new ArgumentNullException(nameof(mask));
        if (tokenLogps.dim() != 2)
            throw new ArgumentException($"tokenLogps must be [B, T], but has shape {PreferenceLoss.Shape(tokenLogps)}.", nameof(tokenLogps));
        if (!tokenLogps.is_floating_point())
            throw new ArgumentException($"tokenLogps must be floating-point, but has dtype {tokenLogps.dtype}.", nameof(tokenLogps));
        CheckMask(mask, nameof(mask), tokenLogps, nameof(tokenLogps));

        using var scope = NewDisposeScope();
        Tensor keep = AsBool(mask);
        Tensor sum = tokenLogps.masked_fill(keep.logical_not(), 0.0).sum(1);
        Tensor count = keep.sum(1).to_type(tokenLogps.dtype);
        return (sum.MoveToOuterDisposeScope(), count.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// Per-row summed log-probabilities and completion-token counts straight from a causal LM's output, shifting
    /// internally: the logits at position t score the token at t + 1.
    /// </summary>
    /// <param name="logits">[B, T, V] model output for <paramref name="inputIds"/>.</param>
    /// <param name="inputIds">[B, T] the token ids that were fed to the model (prompt, completion, padding).</param>
    /// <param name="completionMask">
    /// [B, T] aligned with <paramref name="inputIds"/>: nonzero at completion tokens. Column 0 is never scored (nothing
    /// predicts the first token).
    /// </param>
    /// <returns><c>sum</c> and <c>count</c> of shape [B], as <see cref="Reduce"/>.</returns>
    public static (Tensor sum, Tensor count) FromLogits(Tensor logits, Tensor inputIds, Tensor completionMask)
    {
        if (logits is null) throw new ArgumentNullException(nameof(logits));
        if (inputIds is null) throw new ArgumentNullException(nameof(inputIds));
        if (completionMask is null) throw new ArgumentNullException(nameof(completionMask));
        if (logits.dim() != 3)
            throw new ArgumentException($"logits must be [B, T, V], but has shape {PreferenceLoss.Shape(logits)}.", nameof(logits));
        if (inputIds.dim() != 2 || inputIds.shape[0] != logits.shape[0] || inputIds.shape[1] != logits.shape[1])
            throw new ArgumentException($"inputIds must be [B, T] = [{logits.shape[0]}, {logits.shape[1]}] to match logits {PreferenceLoss.Shape(logits)}, but has shape {PreferenceLoss.Shape(inputIds)}.", nameof(inputIds));
        CheckMask(completionMask, nameof(completionMask), inputIds, nameof(inputIds));

        using var scope = NewDisposeScope();
        long steps = Math.Max(0, logits.shape[1] - 1);
        Tensor l = logits.narrow(1, 0, steps);
        Tensor labels = inputIds.narrow(1, Math.Min(1, inputIds.shape[1]), steps);
        Tensor mask = completionMask.narrow(1, Math.Min(1, completionMask.shape[1]), steps);
        var (sum, count) = Reduce(TokenLogProbs(l, labels, mask), mask);
        return (sum.MoveToOuterDisposeScope(), count.MoveToOuterDisposeScope());
    }

    /// <summary>The per-token mean <c>sum / count</c>, shape [B]; a row with no tokens (count 0) gets 0.</summary>
    /// <param name="sum">[B] summed log-probabilities from <see cref="Reduce"/>.</param>
    /// <param name="count">[B] token counts from <see cref="Reduce"/>.</param>
    public static Tensor Mean(Tensor sum, Tensor count)
    {
        if (sum is null) throw new ArgumentNullException(nameof(sum));
        if (count is null) throw new ArgumentNullException(nameof(count));
        if (!sum.shape.SequenceEqual(count.shape))
            throw new ArgumentException($"count has shape {PreferenceLoss.Shape(count)} but sum has shape {PreferenceLoss.Shape(sum)}.", nameof(count));
        using var scope = NewDisposeScope();
        return (sum / count.detach().to_type(sum.dtype).clamp_min(1)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Splits per-row values of the concatenated batch (chosen rows first, then rejected rows) into the chosen and the
    /// rejected halves. The halves are views of <paramref name="rows"/> (they share its storage and graph).
    /// </summary>
    /// <param name="rows">[2B, ...] per-row values.</param>
    public static (Tensor chosen, Tensor rejected) SplitPairs(Tensor rows)
    {
        if (rows is null) throw new ArgumentNullException(nameof(rows));
        if (rows.dim() < 1 || rows.shape[0] % 2 != 0)
            throw new ArgumentException($"rows must have an even first dimension (B chosen rows then B rejected rows), but has shape {PreferenceLoss.Shape(rows)}.", nameof(rows));
        long half = rows.shape[0] / 2;
        return (rows.narrow(0, 0, half), rows.narrow(0, half, half));
    }

    static Tensor AsBool(Tensor mask) => mask.dtype == ScalarType.Bool ? mask : mask.ne(0);

    static void CheckMask(Tensor mask, string name, Tensor like, string likeName)
    {
        if (!mask.shape.SequenceEqual(like.shape))
            throw new ArgumentException($"{name} has shape {PreferenceLoss.Shape(mask)} but {likeName} has shape {PreferenceLoss.Shape(like)}.", name);
        if (mask.is_complex())
            throw new ArgumentException($"{name} must be bool or 0/1, but has dtype {mask.dtype}.", name);
    }
}
