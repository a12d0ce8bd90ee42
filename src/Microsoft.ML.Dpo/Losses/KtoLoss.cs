using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Losses;

/// <summary>KTO's per-example loss [N] (with grad) and implicit rewards β·(π − ref) [N] (detached).</summary>
internal sealed record KtoLossOutput(Tensor Losses, Tensor Rewards);

/// <summary>
/// KTO (Ethayarajh et al., 2024, "KTO: Model Alignment as Prospect Theoretic Optimization"), as TRL's KTOTrainer computes it
/// (<c>loss_type="kto"</c>): with the log-ratio u = π − ref of each completion (summed log-probs) and the reference point z
/// (<see cref="KlEstimate"/>), a desirable completion costs <c>w<sub>D</sub>·(1 − σ(β·(u − z)))</c> and an undesirable one
/// <c>w<sub>U</sub>·(1 − σ(β·(z − u)))</c>; the loss is the mean over the batch.
/// </summary>
internal static class KtoLoss
{
    /// <summary>
    /// The reference point z: the batch mean of π − ref over mismatched (prompt, other completion) pairs, clamped at 0 and
    /// detached (TRL computes it under no_grad and clamps it the same way).
    /// </summary>
    /// <param name="policyKlLogps">[N] the policy's summed log-probs of the mismatched completions.</param>
    /// <param name="referenceKlLogps">[N] the reference's.</param>
    public static Tensor KlEstimate(Tensor policyKlLogps, Tensor referenceKlLogps)
    {
        using var scope = NewDisposeScope();
        return (policyKlLogps.detach() - referenceKlLogps.detach()).mean().clamp_min(0).MoveToOuterDisposeScope();
    }

    /// <summary>Computes KTO's per-example loss.</summary>
    /// <param name="policyLogps">[N] the policy's summed log-probs of the completions (with grad).</param>
    /// <param name="referenceLogps">[N] the reference's (detached here).</param>
    /// <param name="desirable">[N] bool: true for a desirable completion.</param>
    /// <param name="kl">The reference point z, a scalar (<see cref="KlEstimate"/>).</param>
    /// <param name="beta">β.</param>
    /// <param name="desirableWeight">w<sub>D</sub>.</param>
    /// <param name="undesirableWeight">w<sub>U</sub>.</param>
    public static KtoLossOutput Compute(Tensor policyLogps, Tensor referenceLogps, Tensor desirable, Tensor kl, double beta, double desirableWeight, double undesirableWeight)
    {
        using var scope = NewDisposeScope();
        Tensor logratio = policyLogps - referenceLogps.detach();
        Tensor z = kl.detach();
        Tensor chosen = (1 - ((logratio - z) * beta).sigmoid()) * desirableWeight;
        Tensor rejected = (1 - ((z - logratio) * beta).sigmoid()) * undesirableWeight;
        Tensor losses = where(desirable, chosen, rejected);
        return new KtoLossOutput(losses.MoveToOuterDisposeScope(), (logratio.detach() * beta).MoveToOuterDisposeScope());
    }
}
