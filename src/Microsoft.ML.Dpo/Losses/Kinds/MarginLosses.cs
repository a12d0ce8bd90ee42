using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Microsoft.ML.Dpo.Losses.Kinds;

// The kinds that regress scores to a target margin, or bound them with a hinge.

/// <summary>SLiC's hinge on the score margin: <c>max(0, 1 − βΔ)</c>.</summary>
internal sealed class HingeLoss : PreferenceLossTerm
{
    public override Tensor Losses(PairScores s) => F.relu(1 - s.Delta * s.Beta);
}

/// <summary>IPO: <c>(s<sub>c</sub>/n<sub>c</sub> − s<sub>r</sub>/n<sub>r</sub> − 1/(2β))²</c> (TRL normalises by length, as the IPO authors do).</summary>
internal sealed class IpoLoss : PreferenceLossTerm
{
    public override Tensor Losses(PairScores s) =>
        (s.PerToken(PairScores.Need(s.ChosenScores), s.ChosenCounts) - s.PerToken(PairScores.Need(s.RejectedScores), s.RejectedCounts) - 1 / (2 * s.Beta)).square();
}

/// <summary>SPPO (hard labels): <c>(s<sub>c</sub> − 1/(2β))² + (s<sub>r</sub> + 1/(2β))²</c>.</summary>
internal sealed class SppoHardLoss : PreferenceLossTerm
{
    public override Tensor Losses(PairScores s) =>
        (PairScores.Need(s.ChosenScores) - 0.5 / s.Beta).square() + (PairScores.Need(s.RejectedScores) + 0.5 / s.Beta).square();
}
