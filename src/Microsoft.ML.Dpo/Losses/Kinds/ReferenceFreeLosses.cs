using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Losses.Kinds;

// The kinds that need no reference model (TRL's CPOTrainer losses, and the supervised term).

/// <summary>SimPO: <c>−(1−ε)·log σ(x) − ε·log σ(−x)</c>, x = β·(π<sub>c</sub>/n<sub>c</sub> − π<sub>r</sub>/n<sub>r</sub>) − γ; rewards β·π/n.</summary>
internal sealed class SimPOLoss : PreferenceLossTerm
{
    public override Tensor Losses(PairScores s) =>
        SmoothedLogistic((s.PerToken(s.PolicyChosen, s.ChosenCounts) - s.PerToken(s.PolicyRejected, s.RejectedCounts)) * s.Beta - s.Options.Gamma, s.Epsilon);

    public override (Tensor Chosen, Tensor Rejected)? Rewards(PairScores s) =>
        (s.PerToken(s.PolicyChosen.detach(), s.ChosenCounts) * s.Beta, s.PerToken(s.PolicyRejected.detach(), s.RejectedCounts) * s.Beta);
}

/// <summary>CPO: <c>−(1−ε)·log σ(β·(π<sub>c</sub> − π<sub>r</sub>)) − ε·log σ(…) + α·NLL</c>; rewards β·π.</summary>
internal sealed class CpoLoss : PreferenceLossTerm
{
    public override Tensor Losses(PairScores s)
    {
        Tensor preference = SmoothedLogistic((s.PolicyChosen - s.PolicyRejected) * s.Beta, s.Epsilon);
        return s.Options.CpoAlpha == 0 ? preference : preference + PairScores.Need(s.ChosenNll) * s.Options.CpoAlpha;
    }

    public override (Tensor Chosen, Tensor Rejected)? Rewards(PairScores s) => (s.PolicyChosen.detach() * s.Beta, s.PolicyRejected.detach() * s.Beta);
}

/// <summary>SFT on the chosen completions: the batch's token-mean NLL, the same for every pair; no rewards.</summary>
internal sealed class SftLoss : PreferenceLossTerm
{
    public override Tensor Losses(PairScores s) => PairScores.Need(s.ChosenNll).expand(s.PolicyChosen.shape);

    public override (Tensor Chosen, Tensor Rejected)? Rewards(PairScores s) => null;
}
