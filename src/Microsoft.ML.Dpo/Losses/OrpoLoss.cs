using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Microsoft.ML.Dpo.Losses;

/// <summary>The per-pair parts of the ORPO loss, all [B] except <see cref="Nll"/>.</summary>
/// <param name="Losses">NLL − λ·log σ(log-odds ratio), with grad; its mean over the batch is ORPO's loss.</param>
/// <param name="LogOddsRatio">log σ(log-odds ratio), detached (TRL's <c>log_odds_ratio</c> is its mean).</param>
/// <param name="LogOdds">The log-odds ratio, detached (TRL's <c>log_odds_chosen</c> is its mean).</param>
/// <param name="Nll">The chosen answers' token-mean NLL (a scalar, as given).</param>
internal sealed record OrpoLossOutput(Tensor Losses, Tensor LogOddsRatio, Tensor LogOdds, Tensor Nll);

/// <summary>
/// ORPO (Hong et al., 2024, "ORPO: Monolithic Preference Optimization without Reference Model"), as TRL's ORPOTrainer
/// computes it: with the length-averaged log-probabilities p̄<sub>c</sub>, p̄<sub>r</sub> of the chosen and rejected
/// completions, the log-odds ratio is <c>(p̄<sub>c</sub> − p̄<sub>r</sub>) − (log(1 − e<sup>p̄<sub>c</sub></sup>) − log(1 − e<sup>p̄<sub>r</sub></sup>))</c>
/// and the loss is the SFT NLL on the chosen completions minus λ·log σ(log-odds ratio). No reference model.
/// </summary>
internal static class OrpoLoss
{
    /// <summary>
    /// The largest mean log-probability used: a completion the model is certain of (p̄ = 0 in floating point) would have
    /// infinite odds, where TRL's formula gives NaN; capping at −1e−7 (probability 1 − 1e−7) keeps the loss finite.
    /// </summary>
    public const double MaxMeanLogProb = -1e-7;

    /// <summary>log(1 − e<sup>x</sup>) for x &lt; 0, in the form that is accurate on both sides of −ln 2 (Mächler, 2012).</summary>
    public static Tensor Log1mExp(Tensor x) => where(x.gt(-Math.Log(2)), (-x.expm1()).log(), (-x.exp()).log1p());

    /// <summary>Computes ORPO's per-pair loss.</summary>
    /// <param name="chosenMeanLogps">[B] the policy's mean log-probability per token of each chosen completion (with grad).</param>
    /// <param name="rejectedMeanLogps">[B] the same for the rejected completions.</param>
    /// <param name="chosenNll">The chosen completions' token-mean NLL, a scalar (<see cref="PreferenceLoss.ChosenNegativeLogLikelihood"/>).</param>
    /// <param name="lambda">λ, the weight of the odds-ratio term (TRL's <c>beta</c>).</param>
    public static OrpoLossOutput Compute(Tensor chosenMeanLogps, Tensor rejectedMeanLogps, Tensor chosenNll, double lambda)
    {
        using var scope = NewDisposeScope();
        Tensor c = chosenMeanLogps.clamp_max(MaxMeanLogProb), r = rejectedMeanLogps.clamp_max(MaxMeanLogProb);
        Tensor logOdds = (c - r) - (Log1mExp(c) - Log1mExp(r));
        Tensor ratio = F.logsigmoid(logOdds);
        Tensor losses = chosenNll - ratio * lambda;
        return new OrpoLossOutput(losses.MoveToOuterDisposeScope(), ratio.detach().MoveToOuterDisposeScope(), logOdds.detach().MoveToOuterDisposeScope(), chosenNll);
    }
}
