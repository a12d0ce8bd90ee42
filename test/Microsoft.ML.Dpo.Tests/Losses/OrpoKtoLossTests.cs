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
}
