using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Microsoft.ML.Dpo.Losses.Kinds;

// The kinds that score each completion's own reward, not only the margin — they can push the chosen likelihood up.

/// <summary>NCA (pairwise): <c>−log σ(β·s<sub>c</sub>) − ½·log σ(−β·s<sub>c</sub>) − ½·log σ(−β·s<sub>r</sub>)</c>.</summary>
internal sealed class NcaPairLoss : PreferenceLossTerm
{
    public override Tensor Losses(PairScores s)
    {
        Tensor c = PairScores.Need(s.ChosenScores) * s.Beta, r = PairScores.Need(s.RejectedScores) * s.Beta;
        return -F.logsigmoid(c) - 0.5 * F.logsigmoid(-c) - 0.5 * F.logsigmoid(-r);
    }
}

/// <summary>BCO (pairwise), as TRL v1.9: <c>−log σ(β·s<sub>c</sub>) − log σ(−β·s<sub>r</sub>)</c>.</summary>
internal sealed class BcoPairLoss : PreferenceLossTerm
{
    public override Tensor Losses(PairScores s) =>
        -F.logsigmoid(PairScores.Need(s.ChosenScores) * s.Beta) - F.logsigmoid(PairScores.Need(s.RejectedScores) * -s.Beta);
}

/// <summary>APO-zero: <c>1 − σ(β·u<sub>c</sub>) + σ(β·u<sub>r</sub>)</c> on the log-ratios.</summary>
internal sealed class ApoZeroLoss : PreferenceLossTerm
{
    public override Tensor Losses(PairScores s) =>
        1 - (PairScores.Need(s.ChosenLogratios) * s.Beta).sigmoid() + (PairScores.Need(s.RejectedLogratios) * s.Beta).sigmoid();
}

/// <summary>APO-down: <c>σ(β·u<sub>c</sub>) + 1 − σ(βΔ)</c>.</summary>
internal sealed class ApoDownLoss : PreferenceLossTerm
{
    public override Tensor Losses(PairScores s) =>
        (PairScores.Need(s.ChosenLogratios) * s.Beta).sigmoid() + 1 - (s.Delta * s.Beta).sigmoid();
}
