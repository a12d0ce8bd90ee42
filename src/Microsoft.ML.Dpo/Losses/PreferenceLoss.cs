using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Microsoft.ML.Dpo;

/// <summary>
/// Preference-optimisation losses over sequence log-probabilities: DPO and its variants (see
/// <see cref="PreferenceLossKind"/>), plus the negative log-likelihood term of RPO.
/// </summary>
/// <remarks>
/// The functions take per-pair sequence log-probabilities (computed with <see cref="Losses.SequenceLogProbs"/>) and
/// return per-pair tensors; reduction over the batch, gradient accumulation and metrics are the trainer's. Intermediate
/// tensors are disposed before returning; results belong to the caller's current dispose scope (see
/// <see cref="PreferenceLossOutput"/>).
/// </remarks>
public static class PreferenceLoss
{
    /// <summary>
    /// Computes the per-pair loss and the implicit rewards of a batch of B preference pairs.
    /// </summary>
    /// <param name="options">The kind and its hyper-parameters; validated with <see cref="PreferenceLossOptions.Validate"/>.</param>
    /// <param name="policyChosenLogps">[B] log-probabilities of the chosen completions under the policy (with grad).</param>
    /// <param name="policyRejectedLogps">[B] log-probabilities of the rejected completions under the policy (with grad).</param>
    /// <param name="referenceChosenLogps">
    /// [B] log-probabilities of the chosen completions under the frozen reference model; required by every kind except
    /// <see cref="PreferenceLossKind.SimPO"/>, which ignores it. It is detached: no gradient flows into the reference.
    /// </param>
    /// <param name="referenceRejectedLogps">[B] the same for the rejected completions.</param>
    /// <returns>
    /// Per-pair <see cref="PreferenceLossOutput.Losses"/>, <see cref="PreferenceLossOutput.ChosenRewards"/> and
    /// <see cref="PreferenceLossOutput.RejectedRewards"/>, each of shape [B] and the promoted floating dtype of the inputs.
    /// </returns>
    /// <exception cref="ArgumentNullException">A required argument is null (the message names it).</exception>
    /// <exception cref="ArgumentException">
    /// An input is not a 1-D floating-point tensor, the shapes or devices of the inputs differ, or an option is out of range.
    /// </exception>
    public static PreferenceLossOutput Compute(PreferenceLossOptions options, Tensor policyChosenLogps, Tensor policyRejectedLogps,
                                               Tensor? referenceChosenLogps, Tensor? referenceRejectedLogps)
    {
        if (options is null) throw new ArgumentNullException(nameof(options));
        options.Validate();
        CheckLogps(policyChosenLogps, nameof(policyChosenLogps), null, null);
        CheckLogps(policyRejectedLogps, nameof(policyRejectedLogps), policyChosenLogps, nameof(policyChosenLogps));
        bool useReference = options.RequiresReference;
        if (useReference)
        {
            string why = $"PreferenceLossKind.{options.Kind} compares the policy with a reference model and needs its log-probabilities; " +
                         "pass the frozen reference model's sequence log-probabilities (or use PreferenceLossKind.SimPO, which is reference-free).";
            if (referenceChosenLogps is null) throw new ArgumentNullException(nameof(referenceChosenLogps), $"{nameof(referenceChosenLogps)} is null. {why}");
            if (referenceRejectedLogps is null) throw new ArgumentNullException(nameof(referenceRejectedLogps), $"{nameof(referenceRejectedLogps)} is null. {why}");
            CheckLogps(referenceChosenLogps, nameof(referenceChosenLogps), policyChosenLogps, nameof(policyChosenLogps));
            CheckLogps(referenceRejectedLogps, nameof(referenceRejectedLogps), policyChosenLogps, nameof(policyChosenLogps));
        }

        double beta = options.Beta;
        double eps = options.LabelSmoothing;
        using var scope = NewDisposeScope();

        Tensor pc = policyChosenLogps, pr = policyRejectedLogps;
        Tensor logits, chosenRewards, rejectedRewards;
        if (useReference)
        {
            Tensor rc = referenceChosenLogps!.detach(), rr = referenceRejectedLogps!.detach();
            logits = (pc - pr) - (rc - rr);
            chosenRewards = (pc.detach() - rc) * beta;
            rejectedRewards = (pr.detach() - rr) * beta;
        }
        else
        {
            logits = pc - pr;
            chosenRewards = pc.detach() * beta;
            rejectedRewards = pr.detach() * beta;
        }

        Tensor losses = options.Kind switch
        {
            PreferenceLossKind.Sigmoid when eps == 0 => -F.logsigmoid(logits * beta),
            PreferenceLossKind.Sigmoid => -F.logsigmoid(logits * beta) * (1 - eps) - F.logsigmoid(logits * -beta) * eps,
            PreferenceLossKind.Robust => (-F.logsigmoid(logits * beta) * (1 - eps) + F.logsigmoid(logits * -beta) * eps) / (1 - 2 * eps),
            PreferenceLossKind.Hinge => F.relu(1 - logits * beta),
            PreferenceLossKind.Ipo => (logits - 1 / (2 * beta)).square(),
            PreferenceLossKind.SimPO => -F.logsigmoid(logits * beta - options.Gamma),
            _ => throw new ArgumentOutOfRangeException(nameof(options), options.Kind, "Unknown PreferenceLossKind."),
        };

        return new PreferenceLossOutput(losses.MoveToOuterDisposeScope(), chosenRewards.MoveToOuterDisposeScope(),
                                        rejectedRewards.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// The mean per-token negative log-likelihood of each chosen completion, <c>−sum / count</c>, shape [B] — the
    /// supervised term of RPO (Pang et al., 2024, "Iterative Reasoning Preference Optimization").
    /// </summary>
    /// <remarks>
    /// <see cref="Compute"/> does not include this term: the trainer adds <c>weight · NLL</c> to the per-pair loss of
    /// any kind, i.e. <c>loss = Compute(...).Losses + α · NegativeLogLikelihood(sum, count)</c>; RPO is
    /// <see cref="PreferenceLossKind.Sigmoid"/> with α &gt; 0 (the paper uses α = 1). Pass the chosen rows of
    /// <see cref="Losses.SequenceLogProbs.Reduce"/> (the policy's summed log-probabilities, with grad, and the token
    /// counts). A pair with no completion tokens (count 0, sum 0) gets 0.
    /// </remarks>
    /// <param name="chosenTokenLogpsSum">[B] the policy's log-probabilities summed over each chosen completion's tokens.</param>
    /// <param name="chosenTokenCounts">[B] the number of completion tokens of each chosen completion (any numeric dtype).</param>
    /// <returns>[B] the mean token negative log-likelihood, attached to the graph of <paramref name="chosenTokenLogpsSum"/>.</returns>
    public static Tensor NegativeLogLikelihood(Tensor chosenTokenLogpsSum, Tensor chosenTokenCounts)
    {
        CheckLogps(chosenTokenLogpsSum, nameof(chosenTokenLogpsSum), null, null);
        if (chosenTokenCounts is null) throw new ArgumentNullException(nameof(chosenTokenCounts));
        CheckSameShapeAndDevice(chosenTokenCounts, nameof(chosenTokenCounts), chosenTokenLogpsSum, nameof(chosenTokenLogpsSum));
        using var scope = NewDisposeScope();
        var counts = chosenTokenCounts.detach().to_type(chosenTokenLogpsSum.dtype).clamp_min(1);
        return (-chosenTokenLogpsSum / counts).MoveToOuterDisposeScope();
    }

    static void CheckLogps(Tensor? t, string name, Tensor? like, string? likeName)
    {
        if (t is null) throw new ArgumentNullException(name);
        if (t.IsInvalid) throw new ObjectDisposedException(name, $"{name} has been disposed.");
        if (t.dim() != 1)
            throw new ArgumentException($"{name} must be a 1-D tensor [B] of per-pair sequence log-probabilities, but has shape {Shape(t)}.", name);
        if (!t.is_floating_point())
            throw new ArgumentException($"{name} must be a floating-point tensor, but has dtype {t.dtype}.", name);
        if (like is not null) CheckSameShapeAndDevice(t, name, like, likeName!);
    }

    static void CheckSameShapeAndDevice(Tensor t, string name, Tensor like, string likeName)
    {
        if (t.IsInvalid) throw new ObjectDisposedException(name, $"{name} has been disposed.");
        if (!t.shape.SequenceEqual(like.shape))
            throw new ArgumentException($"{name} has shape {Shape(t)} but {likeName} has shape {Shape(like)}; every input holds one entry per pair.", name);
        if (t.device_type != like.device_type || t.device_index != like.device_index)
            throw new ArgumentException($"{name} is on {t.device} but {likeName} is on {like.device}.", name);
    }

    internal static string Shape(Tensor t) => "[" + string.Join(", ", t.shape) + "]";
}
