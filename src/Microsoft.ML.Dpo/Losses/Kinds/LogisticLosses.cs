using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Microsoft.ML.Dpo.Losses.Kinds;

// The kinds built on the logistic loss of the score margin Δ = s_c − s_r (see PreferenceLossKind for the papers).

/// <summary>DPO: <c>−(1−ε)·log σ(βΔ) − ε·log σ(−βΔ)</c> (ε &gt; 0: conservative DPO).</summary>
internal sealed class SigmoidLoss : PreferenceLossTerm
{
    public override Tensor Losses(PairScores s) => SmoothedLogistic(s.Delta * s.Beta, s.Epsilon);
}

/// <summary>Robust DPO: <c>[−(1−ε)·log σ(βΔ) + ε·log σ(−βΔ)] / (1 − 2ε)</c>.</summary>
internal sealed class RobustLoss : PreferenceLossTerm
{
    public override Tensor Losses(PairScores s)
    {
        Tensor x = s.Delta * s.Beta;
        return (-F.logsigmoid(x) * (1 - s.Epsilon) + F.logsigmoid(-x) * s.Epsilon) / (1 - 2 * s.Epsilon);
    }
}

/// <summary>EXO-pref: <c>σ(βΔ)·(log σ(βΔ) − log(1−ε)) + σ(−βΔ)·(log σ(−βΔ) − log ε)</c>.</summary>
internal sealed class ExoPairLoss : PreferenceLossTerm
{
    public override Tensor Losses(PairScores s)
    {
        Tensor x = s.Delta * s.Beta;
        return x.sigmoid() * (F.logsigmoid(x) - Math.Log(1 - s.Epsilon)) + (-x).sigmoid() * (F.logsigmoid(-x) - Math.Log(s.Epsilon));
    }
}

/// <summary>DiscoPOP: with x = βΔ, m = σ(x/τ): <c>(1 − m)·(−log σ(x)) + m·e<sup>−x</sup></c>.</summary>
internal sealed class DiscoPopLoss : PreferenceLossTerm
{
    public override Tensor Losses(PairScores s)
    {
        Tensor x = s.Delta * s.Beta;
        Tensor m = (x / s.Options.DiscoPopTau).sigmoid();
        return -F.logsigmoid(x) * (1 - m) + (-x).exp() * m;
    }
}

/// <summary>Length-normalised DPO: <c>−log σ(β·(s<sub>c</sub>/n<sub>c</sub> − s<sub>r</sub>/n<sub>r</sub>))</c>.</summary>
internal sealed class SigmoidNormLoss : PreferenceLossTerm
{
    public override Tensor Losses(PairScores s) =>
        -F.logsigmoid((s.PerToken(PairScores.Need(s.ChosenScores), s.ChosenCounts) - s.PerToken(PairScores.Need(s.RejectedScores), s.RejectedCounts)) * s.Beta);
}

/// <summary>AOT (paired): the sorted policy log-ratios πc − πr minus the sorted reference ones, through the smoothed logistic loss.</summary>
internal sealed class AotLoss : PreferenceLossTerm
{
    public override Tensor Losses(PairScores s)
    {
        Tensor policy = (s.PolicyChosen - s.PolicyRejected).sort(0).Values;
        Tensor reference = (PairScores.Need(s.ReferenceChosen) - PairScores.Need(s.ReferenceRejected)).sort(0).Values;
        return SmoothedLogistic((policy - reference) * s.Beta, s.Epsilon);
    }
}

/// <summary>AOT (unpaired): the sorted chosen log-ratios minus the sorted rejected ones, through the smoothed logistic loss.</summary>
internal sealed class AotUnpairedLoss : PreferenceLossTerm
{
    public override Tensor Losses(PairScores s)
    {
        Tensor chosen = PairScores.Need(s.ChosenLogratios).sort(0).Values;
        Tensor rejected = PairScores.Need(s.RejectedLogratios).sort(0).Values;
        return SmoothedLogistic((chosen - rejected) * s.Beta, s.Epsilon);
    }
}
