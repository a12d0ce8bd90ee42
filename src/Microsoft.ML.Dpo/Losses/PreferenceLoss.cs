using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;
using Microsoft.ML.Dpo.Losses.Kinds;

namespace Microsoft.ML.Dpo;

/// <summary>
/// Preference-optimisation losses over sequence log-probabilities: DPO and its family (see <see cref="PreferenceLossKind"/>),
/// under any f-divergence (<see cref="FDivergenceKind"/>), alone or as a weighted sum.
/// </summary>
/// <remarks>
/// The functions take per-pair sequence log-probabilities (computed with <see cref="Losses.SequenceLogProbs"/>) and
/// return per-pair tensors; reduction over the batch, gradient accumulation and metrics are the trainer's. Each kind is
/// one small unit (<c>Losses/Kinds/</c>); this class validates the inputs, computes the log-ratios and scores they share
/// once, and sums the weighted kinds. Intermediate tensors are disposed before returning; results belong to the caller's
/// current dispose scope (see <see cref="PreferenceLossOutput"/>).
/// </remarks>
public static class PreferenceLoss
{
    /// <summary>
    /// Computes the per-pair loss and the implicit rewards of a batch of B preference pairs from their log-probabilities
    /// (the short form of <see cref="Compute(PreferenceLossOptions, PreferenceLossInput)"/> without token counts, NLL or weights).
    /// </summary>
    /// <param name="options">The kind and its hyper-parameters; validated with <see cref="PreferenceLossOptions.Validate"/>.</param>
    /// <param name="policyChosenLogps">[B] log-probabilities of the chosen completions under the policy (with grad).</param>
    /// <param name="policyRejectedLogps">[B] log-probabilities of the rejected completions under the policy (with grad).</param>
    /// <param name="referenceChosenLogps">
    /// [B] log-probabilities of the chosen completions under the frozen reference model; required unless every kind is
    /// reference-free (<see cref="PreferenceLossKind.SimPO"/>, <see cref="PreferenceLossKind.Cpo"/>), which ignore it. It is
    /// detached: no gradient flows into the reference.
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
                                               Tensor? referenceChosenLogps, Tensor? referenceRejectedLogps) =>
        Compute(options, new PreferenceLossInput
        {
            PolicyChosenLogps = policyChosenLogps, PolicyRejectedLogps = policyRejectedLogps,
            ReferenceChosenLogps = referenceChosenLogps, ReferenceRejectedLogps = referenceRejectedLogps,
        });

    /// <summary>
    /// Computes the per-pair loss <c>Σ<sub>k</sub> w<sub>k</sub>·loss<sub>k</sub></c> (times <see cref="PreferenceLossInput.PairWeights"/>
    /// when given) and the implicit rewards of a batch of B preference pairs.
    /// </summary>
    /// <param name="options">The kinds, weights and hyper-parameters; validated with <see cref="PreferenceLossOptions.Validate"/>.</param>
    /// <param name="input">The log-probabilities and what the kinds need besides (see <see cref="PreferenceLossInput"/>).</param>
    /// <returns>
    /// Per-pair losses and rewards [B]. The rewards are those of the first kind that defines them: <c>β·(π − ref)</c> for
    /// reference-based kinds (TRL's), <c>β·π</c> (per token for SimPO) for reference-free ones.
    /// </returns>
    /// <exception cref="ArgumentNullException">A tensor a kind needs is null (the message names it and the kind).</exception>
    /// <exception cref="ArgumentException">A tensor has the wrong shape, dtype or device, or an option is out of range.</exception>
    public static PreferenceLossOutput Compute(PreferenceLossOptions options, PreferenceLossInput input)
    {
        if (options is null) throw new ArgumentNullException(nameof(options));
        if (input is null) throw new ArgumentNullException(nameof(input));
        options.Validate();
        var terms = options.Terms;
        Tensor pc = input.PolicyChosenLogps, pr = input.PolicyRejectedLogps;
        CheckLogps(pc, "policyChosenLogps", null, null);
        CheckLogps(pr, "policyRejectedLogps", pc, "policyChosenLogps");
        bool useReference = options.RequiresReference;
        string kinds = string.Join("+", terms.Select(t => $"PreferenceLossKind.{t.Kind}"));
        if (useReference)
        {
            string why = $"{kinds} compares the policy with a reference model and needs its log-probabilities; " +
                         "pass the frozen reference model's sequence log-probabilities (or use a reference-free kind: SimPO, Cpo).";
            if (input.ReferenceChosenLogps is null) throw new ArgumentNullException("referenceChosenLogps", $"referenceChosenLogps is null. {why}");
            if (input.ReferenceRejectedLogps is null) throw new ArgumentNullException("referenceRejectedLogps", $"referenceRejectedLogps is null. {why}");
            CheckLogps(input.ReferenceChosenLogps, "referenceChosenLogps", pc, "policyChosenLogps");
            CheckLogps(input.ReferenceRejectedLogps, "referenceRejectedLogps", pc, "policyChosenLogps");
        }
        if ((input.ChosenTokenCounts is null) != (input.RejectedTokenCounts is null))
            throw new ArgumentException("Give both ChosenTokenCounts and RejectedTokenCounts, or neither.", nameof(input));
        if (input.ChosenTokenCounts is not null)
        {
            CheckSameShapeAndDevice(input.ChosenTokenCounts, "chosenTokenCounts", pc, "policyChosenLogps");
            CheckSameShapeAndDevice(input.RejectedTokenCounts!, "rejectedTokenCounts", pc, "policyChosenLogps");
        }
        if (options.RequiresChosenNll)
        {
            if (input.ChosenNll is null)
                throw new ArgumentNullException("chosenNll", $"chosenNll is null. {kinds} adds the chosen completions' NLL; pass PreferenceLoss.ChosenNegativeLogLikelihood(...).");
            if (input.ChosenNll.dim() != 0 || !input.ChosenNll.is_floating_point())
                throw new ArgumentException($"chosenNll must be a floating-point scalar, but has shape {Shape(input.ChosenNll)} and dtype {input.ChosenNll.dtype}.", "chosenNll");
        }
        if (input.PairWeights is not null)
        {
            CheckLogps(input.PairWeights, "pairWeights", pc, "policyChosenLogps");
            var sorting = terms.Select(t => t.Kind).Where(k => k is PreferenceLossKind.Aot or PreferenceLossKind.AotUnpaired).ToList();
            if (sorting.Count > 0)
                throw new ArgumentException($"Per-pair weights (WPO) cannot be combined with PreferenceLossKind.{sorting[0]}: it sorts the pairs over the batch, which would misalign the weights.", "pairWeights");
        }

        using var scope = NewDisposeScope();
        Tensor? rc = null, rr = null, uc = null, ur = null;
        if (useReference)
        {
            rc = input.ReferenceChosenLogps!.detach();
            rr = input.ReferenceRejectedLogps!.detach();
            uc = pc - rc;
            ur = pr - rr;
        }
        var scores = new PairScores
        {
            Options = options,
            PolicyChosen = pc, PolicyRejected = pr, ReferenceChosen = rc, ReferenceRejected = rr,
            ChosenCounts = input.ChosenTokenCounts?.detach().to_type(pc.dtype), RejectedCounts = input.RejectedTokenCounts?.detach().to_type(pc.dtype),
            ChosenLogratios = uc, RejectedLogratios = ur,
            ChosenScores = uc is null ? null : Score(uc, options), RejectedScores = ur is null ? null : Score(ur, options),
            ChosenNll = input.ChosenNll,
        };

        Tensor? losses = null;
        (Tensor Chosen, Tensor Rejected)? rewards = null;
        foreach (var (kind, weight) in terms)
        {
            var unit = PreferenceLossTerm.For(kind);
            Tensor term = unit.Losses(scores);
            if (input.PairWeights is not null) term = term * input.PairWeights.detach();
            if (weight != 1) term = term * weight;
            losses = losses is null ? term : losses + term;
            rewards ??= unit.Rewards(scores);
        }
        rewards ??= uc is not null ? (uc.detach() * options.Beta, ur!.detach() * options.Beta) : (pc.detach() * options.Beta, pr.detach() * options.Beta);

        return new PreferenceLossOutput(losses!.MoveToOuterDisposeScope(), rewards.Value.Chosen.MoveToOuterDisposeScope(),
                                        rewards.Value.Rejected.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// The score of a log-ratio <c>u = π − ref</c> under the f-divergence: <c>u</c> (reverse KL), <c>−e<sup>−u</sup></c>
    /// (forward KL), <c>log σ(u)</c> (Jensen–Shannon), <c>e<sup>(α−1)u</sup>/(α−1)</c> (α-divergence, exponent clamped).
    /// </summary>
    internal static Tensor Score(Tensor logratio, PreferenceLossOptions options)
    {
        switch (options.FDivergence)
        {
            case FDivergenceKind.ForwardKL: return -(-logratio).exp();
            case FDivergenceKind.JsDivergence: return F.logsigmoid(logratio);
            case FDivergenceKind.AlphaDivergence:
                double a = options.AlphaDivergenceCoefficient;
                if (Math.Abs(a - 1) < 1e-6) return logratio;                        // the limit a → 1 is reverse KL
                double max = logratio.dtype == ScalarType.Float16 ? 11 : 80;        // keeps e^x finite in the dtype, as TRL
                ScalarType wide = logratio.dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;
                return ((logratio * (a - 1)).to_type(wide).clamp_max(max).exp().to_type(logratio.dtype)) * (1 / (a - 1));
            default: return logratio;
        }
    }

    /// <summary>
    /// The token-mean negative log-likelihood of the chosen completions over the whole batch, <c>−Σ sum / Σ count</c>, a
    /// scalar — TRL's <c>sft</c> loss (cross-entropy over every chosen completion token): the input
    /// <see cref="PreferenceLossInput.ChosenNll"/> of <see cref="PreferenceLossKind.Sft"/> (RPO, MPO) and
    /// <see cref="PreferenceLossKind.Cpo"/>. A batch without completion tokens gives 0.
    /// </summary>
    /// <param name="chosenTokenLogpsSum">[B] the policy's log-probabilities summed over each chosen completion's tokens (with grad).</param>
    /// <param name="chosenTokenCounts">[B] the number of completion tokens of each chosen completion (any numeric dtype).</param>
    /// <returns>A scalar attached to the graph of <paramref name="chosenTokenLogpsSum"/>.</returns>
    public static Tensor ChosenNegativeLogLikelihood(Tensor chosenTokenLogpsSum, Tensor chosenTokenCounts)
    {
        CheckLogps(chosenTokenLogpsSum, nameof(chosenTokenLogpsSum), null, null);
        if (chosenTokenCounts is null) throw new ArgumentNullException(nameof(chosenTokenCounts));
        CheckSameShapeAndDevice(chosenTokenCounts, nameof(chosenTokenCounts), chosenTokenLogpsSum, nameof(chosenTokenLogpsSum));
        using var scope = NewDisposeScope();
        var total = chosenTokenCounts.detach().to_type(chosenTokenLogpsSum.dtype).sum().clamp_min(1);
        return (-chosenTokenLogpsSum.sum() / total).MoveToOuterDisposeScope();
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
