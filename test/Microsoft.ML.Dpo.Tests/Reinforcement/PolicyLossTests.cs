using Microsoft.ML.Dpo.Reinforcement;
using TorchSharp;
using static Microsoft.ML.Dpo.Tests.Losses.LossTestMath;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Reinforcement;

/// <summary>GRPO and RLOO advantages and losses against their closed forms in plain doubles, and clipped-ratio gradients by finite differences.</summary>
[TestClass]
public sealed class PolicyLossTests
{
    [TestMethod]
    public void GroupRelativeAdvantagesCentreAndScaleEachGroup()
    {
        // Two groups of 4: one with a single success, one where every completion got the same reward (no signal).
        using var rewards = T(1, 0, 0, 0, 2, 2, 2, 2);
        double std0 = Math.Sqrt((0.75 * 0.75 + 3 * 0.25 * 0.25) / 3);   // unbiased: 0.5
        var (group, zeroStd) = Advantages.GroupRelative(rewards, 4, RewardScaling.Group);
        AssertClose([0.75 / (std0 + 1e-4), -0.25 / (std0 + 1e-4), -0.25 / (std0 + 1e-4), -0.25 / (std0 + 1e-4), 0, 0, 0, 0], group, 1e-12, "group");
        Assert.AreEqual(0.5, zeroStd);

        double mean = 9.0 / 8, batchStd = Math.Sqrt(new double[] { 1, 0, 0, 0, 2, 2, 2, 2 }.Sum(r => (r - mean) * (r - mean)) / 7);
        var (batch, _) = Advantages.GroupRelative(rewards, 4, RewardScaling.Batch);
        AssertClose([0.75 / (batchStd + 1e-4), -0.25 / (batchStd + 1e-4), -0.25 / (batchStd + 1e-4), -0.25 / (batchStd + 1e-4), 0, 0, 0, 0], batch, 1e-12, "batch");
        var (none, _) = Advantages.GroupRelative(rewards, 4, RewardScaling.None);
        AssertClose([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0], none, 1e-12, "none");
        group.Dispose(); batch.Dispose(); none.Dispose();
    }

    [TestMethod]
    public void LeaveOneOutBaselineIsTheMeanOfTheOthers()
    {
        using var rewards = T(1, 0, 0, 3, 0.5, 0.5);   // groups of 3: [1, 0, 0], [3, 0.5, 0.5]
        using var advantages = Advantages.LeaveOneOut(rewards, 3);
        AssertClose([1 - 0, 0 - 0.5, 0 - 0.5, 3 - 0.5, 0.5 - 1.75, 0.5 - 1.75], advantages, 1e-12);

        double[] a = [1, -0.5, -0.5, 2.5, -1.25, -1.25];
        double m = a.Average(), s = Math.Sqrt(a.Sum(x => (x - m) * (x - m)) / 5);
        using var normalized = Advantages.LeaveOneOut(rewards, 3, normalize: true);
        AssertClose(a.Select(x => (x - m) / (s + 1e-8)).ToArray(), normalized, 1e-12);
    }

    [TestMethod]
    public void KlShapedRewardSubtractsTheSequenceKl()
    {
        using var rewards = T(1, 0);
        using var old = T(-1, -2, -3, -0.5, -0.5, 9).view(2, 3);
        using var reference = T(-1.5, -1, -3, -1, -0.25, 0).view(2, 3);
        using var mask = tensor(new[] { true, true, true, true, true, false }).view(2, 3);   // row 1's last token is padding
        using var shaped = Advantages.KlShapedRewards(rewards, old, reference, mask, beta: 0.1);
        double kl0 = (-1 + 1.5) + (-2 + 1) + 0, kl1 = (-0.5 + 1) + (-0.5 + 0.25);
        AssertClose([1 - 0.1 * kl0, 0 - 0.1 * kl1], shaped, 1e-12);
    }

    // Two completions of up to 3 tokens; row 1 has 2. Ratios chosen so that some tokens are clipped and none sit on a clip boundary.
    static readonly double[] LogP = [-1.0, -0.4, -2.0, -0.7, -1.2, 0];
    static readonly double[] OldLogP = [-1.1, -0.9, -1.7, -0.2, -1.25, 0];
    static readonly double[] RefLogP = [-0.8, -0.5, -2.5, -0.6, -1.0, 0];
    static readonly bool[] Mask = [true, true, true, true, true, false];
    static readonly double[] Adv = [0.8, -1.3];

    /// <summary>GRPO's per-token loss and its averages, written out in doubles.</summary>
    static double Expected(double epsLow, double epsHigh, double beta, GrpoLossType type, int maxLength, out double kl, out double low, out double high)
    {
        var perToken = new double[6];
        double klSum = 0, lowCount = 0, highCount = 0, tokens = 0;
        for (int i = 0; i < 6; i++)
        {
            if (!Mask[i]) continue;
            double a = Adv[i / 3], ratio = Math.Exp(LogP[i] - OldLogP[i]);
            double clipped = Math.Clamp(ratio, 1 - epsLow, 1 + epsHigh);
            double delta = RefLogP[i] - LogP[i], k3 = Math.Exp(delta) - delta - 1;
            perToken[i] = -Math.Min(ratio * a, clipped * a) + beta * k3;
            klSum += k3; tokens++;
            if (ratio < 1 - epsLow && a < 0) lowCount++;
            if (ratio > 1 + epsHigh && a > 0) highCount++;
        }
        kl = klSum / tokens; low = lowCount / tokens; high = highCount / tokens;
        double row0 = perToken[0] + perToken[1] + perToken[2], row1 = perToken[3] + perToken[4];
        return type switch
        {
            GrpoLossType.Grpo => (row0 / 3 + row1 / 2) / 2,
            GrpoLossType.Bnpo or GrpoLossType.Dapo => (row0 + row1) / 5,
            GrpoLossType.DrGrpo => (row0 + row1) / (2.0 * maxLength),
            _ => throw new ArgumentOutOfRangeException(nameof(type)),
        };
    }

    static PolicyLossInput Input(Tensor logp, bool withReference) => new(logp, T(OldLogP).view(2, 3), withReference ? T(RefLogP).view(2, 3) : null, T(Adv),
        tensor(Mask).view(2, 3));

    [TestMethod]
    [DataRow(GrpoLossType.Grpo, 0.0)]
    [DataRow(GrpoLossType.Bnpo, 0.0)]
    [DataRow(GrpoLossType.DrGrpo, 0.04)]
    [DataRow(GrpoLossType.Dapo, 0.04)]
    [DataRow(GrpoLossType.Grpo, 0.1)]
    public void GrpoLossMatchesItsClosedForm(GrpoLossType type, double beta)
    {
        using var scope = NewDisposeScope();
        foreach (var (low, high) in new[] { (0.2, 0.2), (0.2, 0.28) })
        {
            double expected = Expected(low, high, beta, type, maxLength: 7, out double kl, out double lowShare, out double highShare);
            var output = PolicyLosses.Grpo(Input(T(LogP).view(2, 3), beta != 0), low, high, beta, type, maxCompletionLength: 7);
            Assert.AreEqual(expected, output.Loss.ToDouble(), 1e-12, $"{type} ε=({low}, {high})");
            Assert.AreEqual(beta != 0 ? kl : 0, output.Kl, 1e-12);
            Assert.AreEqual(lowShare, output.ClipLow, 1e-12);
            Assert.AreEqual(highShare, output.ClipHigh, 1e-12);
            Assert.AreEqual(lowShare + highShare, output.ClipRegion, 1e-12);
        }
        // These inputs clip: token 1 (ratio e^0.5 > 1.2, A > 0) high, token 3 (ratio e^-0.5 < 0.8, A < 0) low.
        Assert.AreEqual(0.2, PolicyLosses.Grpo(Input(T(LogP).view(2, 3), false), 0.2, 0.2, 0, type, 7).ClipHigh, 1e-12);
    }

    [TestMethod]
    public void GrpoWithoutKlNeedsNoReference()
    {
        using var scope = NewDisposeScope();
        var output = PolicyLosses.Grpo(Input(T(LogP).view(2, 3), withReference: false), 0.2, 0.2, beta: 0, GrpoLossType.Dapo, 7);
        Assert.AreEqual(Expected(0.2, 0.2, 0, GrpoLossType.Dapo, 7, out _, out _, out _), output.Loss.ToDouble(), 1e-12);
        Assert.ThrowsExactly<ArgumentException>(() => PolicyLosses.Grpo(Input(T(LogP).view(2, 3), withReference: false), 0.2, 0.2, beta: 0.1, GrpoLossType.Dapo, 7));
    }

    [TestMethod]
    [DataRow(GrpoLossType.Grpo, 0.0)]
    [DataRow(GrpoLossType.Dapo, 0.1)]
    [DataRow(GrpoLossType.DrGrpo, 0.1)]
    public void ClippedRatioGradientsMatchFiniteDifferences(GrpoLossType type, double beta)
    {
        using var scope = NewDisposeScope();
        var logp = T(LogP).view(2, 3).requires_grad_();
        var output = PolicyLosses.Grpo(Input(logp, beta != 0), 0.2, 0.28, beta, type, 7);
        output.Loss.backward();
        double[] analytic = D(logp.grad!);
        const double h = 1e-6;
        for (int i = 0; i < 6; i++)
        {
            double Loss(double shift)
            {
                var shifted = (double[])LogP.Clone();
                shifted[i] += shift;
                using var inner = NewDisposeScope();
                return PolicyLosses.Grpo(Input(T(shifted).view(2, 3), beta != 0), 0.2, 0.28, beta, type, 7).Loss.ToDouble();
            }
            double numeric = (Loss(h) - Loss(-h)) / (2 * h);
            Assert.AreEqual(numeric, analytic[i], 1e-7, $"token {i}: analytic {analytic[i]:R}, numeric {numeric:R}");
        }
        if (beta == 0) Assert.AreEqual(0.0, analytic[1], 1e-15, "a clipped token (ratio above 1 + ε_high with A > 0) gets no policy gradient");
        Assert.AreEqual(0.0, analytic[5], "padding gets no gradient");
    }

    [TestMethod]
    public void ReinforceLossIsMinusAdvantageTimesSequenceLogProb()
    {
        using var scope = NewDisposeScope();
        var logp = T(LogP).view(2, 3).requires_grad_();
        var loss = PolicyLosses.Reinforce(logp, T(Adv), tensor(Mask).view(2, 3));
        double expected = -(0.8 * (-1.0 - 0.4 - 2.0) + -1.3 * (-0.7 - 1.2)) / 2;
        Assert.AreEqual(expected, loss.ToDouble(), 1e-12);
        loss.backward();
        AssertClose([-0.4, -0.4, -0.4, 0.65, 0.65, 0], logp.grad!, 1e-12, "d loss / d log p = −A / N on each real token");
    }
}
