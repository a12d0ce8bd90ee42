using static TorchSharp.torch;

namespace Microsoft.ML.Dpo;

/// <summary>
/// What <see cref="PreferenceLoss.Compute(PreferenceLossOptions, PreferenceLossInput)"/> reads for a batch of B pairs: the
/// policy's (and the reference's) summed completion log-probabilities, and what some kinds need besides.
/// </summary>
/// <remarks>All tensors are 1-D [B] floating-point on one device, except <see cref="ChosenNll"/>, a scalar.</remarks>
public sealed class PreferenceLossInput
{
    /// <summary>[B] log-probabilities of the chosen completions under the policy (with grad).</summary>
    public required Tensor PolicyChosenLogps { get; init; }

    /// <summary>[B] log-probabilities of the rejected completions under the policy (with grad).</summary>
    public required Tensor PolicyRejectedLogps { get; init; }

    /// <summary>
    /// [B] log-probabilities of the chosen completions under the frozen reference; required unless every kind is
    /// reference-free (<see cref="PreferenceLossKind.SimPO"/>, <see cref="PreferenceLossKind.Cpo"/>,
    /// <see cref="PreferenceLossKind.Sft"/>). Detached: no gradient flows into the reference.
    /// </summary>
    public Tensor? ReferenceChosenLogps { get; init; }

    /// <summary>[B] the same for the rejected completions.</summary>
    public Tensor? ReferenceRejectedLogps { get; init; }

    /// <summary>
    /// [B] completion-token counts of the chosen completions. When given (with <see cref="RejectedTokenCounts"/>),
    /// <see cref="PreferenceLossKind.Ipo"/>, <see cref="PreferenceLossKind.SigmoidNorm"/> and <see cref="PreferenceLossKind.SimPO"/>
    /// divide by them (a count of 0 counts as 1); when null they take the log-probabilities as already normalised.
    /// </summary>
    public Tensor? ChosenTokenCounts { get; init; }

    /// <summary>[B] completion-token counts of the rejected completions.</summary>
    public Tensor? RejectedTokenCounts { get; init; }

    /// <summary>
    /// A scalar: the policy's token-mean negative log-likelihood over all chosen completion tokens of the batch
    /// (<see cref="PreferenceLoss.ChosenNegativeLogLikelihood"/>), with grad; required by <see cref="PreferenceLossKind.Sft"/>
    /// and <see cref="PreferenceLossKind.Cpo"/>.
    /// </summary>
    public Tensor? ChosenNll { get; init; }

    /// <summary>
    /// [B] optional per-pair weights, detached, that multiply every kind's per-pair loss: WPO (Zhou et al., 2024,
    /// "WPO: Enhancing RLHF with Weighted Preference Optimization") passes the product of the chosen and the rejected
    /// completion's length-normalised, sampling-aligned probabilities. Refused with <see cref="PreferenceLossKind.Aot"/> and
    /// <see cref="PreferenceLossKind.AotUnpaired"/>, which sort the pairs.
    /// </summary>
    public Tensor? PairWeights { get; init; }
}
