using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Reinforcement;

/// <summary>How GRPO's token losses are averaged (TRL's <c>loss_type</c>).</summary>
public enum GrpoLossType
{
    /// <summary>Mean over each completion's tokens, then over completions (the GRPO paper; biased toward short correct answers).</summary>
    Grpo,
    /// <summary>Sum over every completion token of the micro-batch ÷ their number (<c>bnpo</c>).</summary>
    Bnpo,
    /// <summary>Sum over tokens ÷ (completions × maximum completion length), a constant (Dr. GRPO).</summary>
    DrGrpo,
    /// <summary>
    /// Sum over tokens ÷ the active tokens of the generation batch (DAPO; TRL's default). Here a generation batch is one
    /// micro-batch, so this equals <see cref="Bnpo"/>; with gradient accumulation TRL divides by the tokens of all accumulated
    /// micro-batches together (the same when they hold equally many).
    /// </summary>
    Dapo,
}

/// <summary>Per-token inputs of a policy-gradient loss, all [N, L] (completion tokens left-aligned, padding masked out), and advantages [N].</summary>
internal sealed record PolicyLossInput(Tensor LogProbs, Tensor OldLogProbs, Tensor? ReferenceLogProbs, Tensor Advantages, Tensor Mask);

/// <summary>A policy loss and its TRL metrics (means over the completion tokens).</summary>
internal sealed record PolicyLossOutput(Tensor Loss, double Kl, double ClipLow, double ClipHigh, double ClipRegion);

/// <summary>The GRPO and RLOO losses: small units over [N, L] per-token log-probs, tested against their closed forms.</summary>
internal static class PolicyLosses
{
    /// <summary>
    /// GRPO's clipped surrogate with a k3 KL penalty: per token, with ratio ρ = exp(log π − log π_old) and the completion's
    /// advantage A, <c>−min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A) + β·(exp(log π_ref − log π) − (log π_ref − log π) − 1)</c>,
    /// averaged per <paramref name="lossType"/>. β = 0 needs no reference log-probs. Clip metrics as TRL: a token is
    /// low-clipped when ρ &lt; 1 − ε_low and A &lt; 0, high-clipped when ρ &gt; 1 + ε_high and A &gt; 0.
    /// </summary>
    public static PolicyLossOutput Grpo(PolicyLossInput input, double epsilonLow, double epsilonHigh, double beta, GrpoLossType lossType, int maxCompletionLength)
    {
        using var scope = NewDisposeScope();
        Tensor mask = input.Mask.to(input.LogProbs.dtype);
        Tensor ratio = (input.LogProbs - input.OldLogProbs).exp();
        Tensor advantage = input.Advantages.to(input.LogProbs.dtype).unsqueeze(1);
        Tensor clipped = ratio.clamp(1 - epsilonLow, 1 + epsilonHigh);
        Tensor perToken = -minimum(ratio * advantage, clipped * advantage);
        double kl = 0;
        if (beta != 0)
        {
            var reference = input.ReferenceLogProbs ?? throw new ArgumentException("β ≠ 0 needs reference log-probs.", nameof(input));
            Tensor delta = reference - input.LogProbs;
            Tensor perTokenKl = delta.exp() - delta - 1;
            perToken = perToken + perTokenKl * beta;
            using (no_grad()) kl = MaskedMean(perTokenKl, mask);
        }
        Tensor masked = perToken * mask;
        Tensor loss = lossType switch
        {
            GrpoLossType.Grpo => (masked.sum(1) / mask.sum(1).clamp_min(1)).mean(),
            GrpoLossType.Bnpo or GrpoLossType.Dapo => masked.sum() / mask.sum().clamp_min(1),
            GrpoLossType.DrGrpo => masked.sum() / (input.LogProbs.shape[0] * (double)maxCompletionLength),
            _ => throw new ArgumentOutOfRangeException(nameof(lossType), lossType, null),
        };
        double low, high, region;
        using (no_grad())
        {
            Tensor isLow = ratio.lt(1 - epsilonLow).logical_and(advantage.lt(0));
            Tensor isHigh = ratio.gt(1 + epsilonHigh).logical_and(advantage.gt(0));
            low = MaskedMean(isLow.to(mask.dtype), mask);
            high = MaskedMean(isHigh.to(mask.dtype), mask);
            region = MaskedMean(isLow.logical_or(isHigh).to(mask.dtype), mask);
        }
        return new PolicyLossOutput(loss.MoveToOuterDisposeScope(), kl, low, high, region);
    }

    /// <summary>
    /// RLOO's REINFORCE loss at the sequence level: <c>−mean_i(A_i · Σ_t log π(y_i,t))</c>, the advantage detached; its gradient
    /// is the REINFORCE estimator with the leave-one-out baseline (the KL penalty is already in the reward).
    /// </summary>
    public static Tensor Reinforce(Tensor logProbs, Tensor advantages, Tensor mask)
    {
        using var scope = NewDisposeScope();
        Tensor sequence = (logProbs * mask.to(logProbs.dtype)).sum(1);
        return (-(advantages.detach().to(sequence.dtype) * sequence).mean()).MoveToOuterDisposeScope();
    }

    static double MaskedMean(Tensor values, Tensor mask)
    {
        double count = mask.sum().ToDouble();
        return count > 0 ? (values * mask).sum().ToDouble() / count : 0;
    }
}
