using Microsoft.ML.Dpo.Losses;
using static Microsoft.ML.Dpo.Tests.Losses.LossTestMath;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Losses;

/// <summary>ORPO's and KTO's loss units against their closed forms (plain doubles) and finite differences.</summary>
[TestClass]
public sealed class OrpoKtoLossTests
{
    // Two input sets of mean log-probs per token (ORPO): ordinary values, and values near 0 (probabilities near 1) and far below.
    static readonly (double[] C, double[] R, double Nll)[] OrpoInputs =
    [
        ([-0.7, -1.3, -2.2, -0.05], [-1.1, -0.9, -3.0, -0.4], 0.93),
        ([-1e-4, -0.69, -0.7, -8.0], [-0.3, -0.6931, -12.0, -1e-3], 2.5),
    ];

    static double OrpoClosedForm(double c, double r, double nll, double lambda)
    {
        double logOdds = (c - r) - (Math.Log(1 - Math.Exp(c)) - Math.Log(1 - Math.Exp(r)));
        return nll - lambda * LogSigmoid(logOdds);
    }

    [TestMethod]
    public void OrpoMatchesTheClosedForm()
    {
        foreach (var (c, r, nll) in OrpoInputs)
            foreach (double lambda in new[] { 0.1, 1.0 })
            {
                using var scope = NewDisposeScope();
                var output = OrpoLoss.Compute(T(c), T(r), tensor(nll, ScalarType.Float64), lambda);
                AssertClose(c.Select((ci, i) => OrpoClosedForm(ci, r[i], nll, lambda)).ToArray(), output.Losses, 1e-12, $"λ={lambda}");
                AssertClose(c.Select((ci, i) => (ci - r[i]) - (Math.Log(1 - Math.Exp(ci)) - Math.Log(1 - Math.Exp(r[i])))).ToArray(), output.LogOdds, 1e-12, "log odds");
                Assert.IsFalse(output.LogOdds.requires_grad);
            }
    }

    [TestMethod]
    public void OrpoStaysFiniteWhereTheOddsAreInfinite()
    {
        var c = T(0.0, -0.5).requires_grad_();
        var output = OrpoLoss.Compute(c, T(-0.5, 0.0), tensor(1.0, ScalarType.Float64), 0.1);
        output.Losses.sum().backward();
        Assert.IsTrue(D(output.Losses).All(double.IsFinite), string.Join(", ", D(output.Losses)));
        Assert.IsTrue(D(c.grad!).All(double.IsFinite));
    }

    [TestMethod]
    public void OrpoGradientsMatchFiniteDifferences()
    {
        foreach (var (c, r, nll) in OrpoInputs)
        {
            const double lambda = 0.5, h = 1e-7;
            double Total(double[] cc, double[] rr, double n) => cc.Select((ci, i) => OrpoClosedForm(ci, rr[i], n, lambda)).Sum();
            using var scope = NewDisposeScope();
            var cT = T(c).requires_grad_();
            var rT = T(r).requires_grad_();
            var nT = tensor(nll, ScalarType.Float64).requires_grad_();
            OrpoLoss.Compute(cT, rT, nT, lambda).Losses.sum().backward();
            for (int i = 0; i < c.Length; i++)
            {
                double[] up = (double[])c.Clone(), down = (double[])c.Clone();
                up[i] += h; down[i] -= h;
                Assert.AreEqual((Total(up, r, nll) - Total(down, r, nll)) / (2 * h), D(cT.grad!)[i], 1e-5 * Math.Max(1, Math.Abs(D(cT.grad!)[i])), $"dL/dc[{i}]");
                up = (double[])r.Clone(); down = (double[])r.Clone();
                up[i] += h; down[i] -= h;
                Assert.AreEqual((Total(c, up, nll) - Total(c, down, nll)) / (2 * h), D(rT.grad!)[i], 1e-5 * Math.Max(1, Math.Abs(D(rT.grad!)[i])), $"dL/dr[{i}]");
            }
            Assert.AreEqual(c.Length, nT.grad!.item<double>(), 1e-12, "each pair's loss holds the NLL once");
        }
    }

    // Two input sets for KTO: summed log-probs of the policy and the reference, labels, and mismatched-pair log-probs for z.
    static readonly (double[] P, double[] R, bool[] D, double[] Pk, double[] Rk)[] KtoInputs =
    [
        ([-4.0, -7.5, -2.0, -9.0], [-5.0, -7.0, -2.5, -8.0], [true, false, true, false], [-12.0, -11.0, -10.0, -9.0], [-12.5, -11.2, -10.1, -9.6]),
        ([-1.0, -3.0, -20.0], [-0.5, -4.0, -18.0], [false, true, true], [-6.0, -7.0, -8.0], [-5.0, -6.5, -7.0]),   // z < 0 before clamping
    ];

    static double KtoZ(double[] pk, double[] rk) => Math.Max(0, pk.Select((p, i) => p - rk[i]).Average());

    static double KtoClosedForm(double p, double r, bool desirable, double z, double beta, double wd, double wu) =>
        desirable ? wd * (1 - Sigmoid(beta * (p - r - z))) : wu * (1 - Sigmoid(beta * (z - (p - r))));

    [TestMethod]
    public void KtoMatchesTheClosedForm()
    {
        foreach (var (p, r, d, pk, rk) in KtoInputs)
            foreach (var (beta, wd, wu) in new[] { (0.1, 1.0, 1.0), (0.5, 1.33, 0.7) })
            {
                using var scope = NewDisposeScope();
                var z = KtoLoss.KlEstimate(T(pk), T(rk));
                Assert.AreEqual(KtoZ(pk, rk), z.item<double>(), 1e-12, "z: the clamped mean log-ratio of the mismatched pairs");
                var output = KtoLoss.Compute(T(p), T(r), tensor(d), z, beta, wd, wu);
                AssertClose(p.Select((pi, i) => KtoClosedForm(pi, r[i], d[i], KtoZ(pk, rk), beta, wd, wu)).ToArray(), output.Losses, 1e-12, $"β={beta}");
                AssertClose(p.Select((pi, i) => beta * (pi - r[i])).ToArray(), output.Rewards, 1e-12, "rewards");
            }
        Assert.AreEqual(0.0, KtoZ(KtoInputs[1].Pk, KtoInputs[1].Rk), "the second set's mean log-ratio is negative: z is clamped to 0");
    }

    [TestMethod]
    public void KtoGradientsMatchFiniteDifferencesAndNoneFlowsIntoTheReferencePoint()
    {
        foreach (var (p, r, d, pk, rk) in KtoInputs)
        {
            const double beta = 0.3, wd = 1.2, wu = 0.8, h = 1e-6;
            double z = KtoZ(pk, rk);
            double Total(double[] pp) => pp.Select((pi, i) => KtoClosedForm(pi, r[i], d[i], z, beta, wd, wu)).Sum();
            using var scope = NewDisposeScope();
            var pT = T(p).requires_grad_();
            var pkT = T(pk).requires_grad_();
            var zT = KtoLoss.KlEstimate(pkT, T(rk));
            Assert.IsFalse(zT.requires_grad, "z is detached");
            KtoLoss.Compute(pT, T(r), tensor(d), zT, beta, wd, wu).Losses.sum().backward();
            for (int i = 0; i < p.Length; i++)
            {
                double[] up = (double[])p.Clone(), down = (double[])p.Clone();
                up[i] += h; down[i] -= h;
                Assert.AreEqual((Total(up) - Total(down)) / (2 * h), D(pT.grad!)[i], 1e-7, $"dL/dπ[{i}]");
            }
            Assert.IsNull(pkT.grad, "no gradient through the mismatched pairs");
        }
    }
}
