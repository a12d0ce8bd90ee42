using Microsoft.ML.Dpo.Losses;
using TorchSharp;
using static TorchSharp.torch;
using static Microsoft.ML.Dpo.Tests.Losses.LossTestMath;

namespace Microsoft.ML.Dpo.Tests.Losses;

[TestClass]
public sealed class SequenceLogProbsTests
{
    // logits [B=2, T=3, V=4]
    static readonly double[,,] Logits =
    {
        { { 1.0, 2.0, 0.5, -1.0 }, { 0.0, 0.0, 0.0, 0.0 }, { 3.0, -2.0, 1.0, 0.25 } },
        { { -0.5, 0.5, 2.5, 1.5 }, { 10.0, -10.0, 0.0, 5.0 }, { 0.1, 0.2, 0.3, 0.4 } },
    };
    static readonly long[,] Labels = { { 1, 3, 0 }, { 2, 1, 3 } };

    /// <summary>log softmax(x)[k] = x[k] − log Σ_j exp(x[j]), in doubles.</summary>
    static double ManualLogProb(int b, int t, long k)
    {
        double m = double.NegativeInfinity;
        for (int v = 0; v < 4; v++) m = Math.Max(m, Logits[b, t, v]);
        double z = 0;
        for (int v = 0; v < 4; v++) z += Math.Exp(Logits[b, t, v] - m);
        return Logits[b, t, k] - m - Math.Log(z);
    }

    static double[] Flat(double[,,] a) => a.Cast<double>().ToArray();
    static Tensor LogitsTensor(ScalarType type = ScalarType.Float64) => tensor(Flat(Logits), 2, 3, 4).to_type(type);
    static Tensor LabelsTensor() => tensor(Labels.Cast<long>().ToArray(), 2, 3);

    static double[] Expected() =>
        Enumerable.Range(0, 6).Select(i => ManualLogProb(i / 3, i % 3, Labels[i / 3, i % 3])).ToArray();

    [TestMethod]
    public void TokenLogProbsMatchesManualLogSoftmax()
    {
        using var scope = NewDisposeScope();
        var lp = SequenceLogProbs.TokenLogProbs(LogitsTensor(), LabelsTensor());
        CollectionAssert.AreEqual(new long[] { 2, 3 }, lp.shape);
        Assert.AreEqual(ScalarType.Float64, lp.dtype);
        AssertClose(Expected(), lp.flatten(), 1e-12);
        Assert.AreEqual(-Math.Log(4), D(lp)[1], 1e-15); // uniform logits over 4 tokens
    }

    [TestMethod]
    [DataRow(ScalarType.Float32, 1e-6)]
    [DataRow(ScalarType.BFloat16, 0.05)]
    [DataRow(ScalarType.Float16, 0.01)]
    public void LowPrecisionLogitsAreScoredInFloat32(ScalarType type, double tolerance)
    {
        using var scope = NewDisposeScope();
        var lp = SequenceLogProbs.TokenLogProbs(LogitsTensor(type), LabelsTensor().to_type(ScalarType.Int32));
        Assert.AreEqual(ScalarType.Float32, lp.dtype);
        AssertClose(Expected(), lp.flatten(), tolerance);
    }

    [TestMethod]
    public void NegativeLabelsAreIgnored()
    {
        using var scope = NewDisposeScope();
        var labels = tensor(new long[] { 1, -100, 0, -100, 1, 3 }, 2, 3);
        var lp = SequenceLogProbs.TokenLogProbs(LogitsTensor(), labels);
        double[] e = Expected();
        AssertClose(new[] { e[0], 0, e[2], 0, e[4], e[5] }, lp.flatten(), 1e-12);
    }

    [TestMethod]
    public void TokenLogProbsValidatesArguments()
    {
        using var scope = NewDisposeScope();
        var big = tensor(new long[] { 1, 4, 0, 2, 1, 3 }, 2, 3);
        var ex = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => SequenceLogProbs.TokenLogProbs(LogitsTensor(), big));
        StringAssert.Contains(ex.Message, "4");
        var wrong = Assert.ThrowsExactly<ArgumentException>(() => SequenceLogProbs.TokenLogProbs(LogitsTensor(), tensor(new long[] { 1, 2 }, 1, 2)));
        StringAssert.Contains(wrong.Message, "[1, 2]");
        StringAssert.Contains(wrong.Message, "[2, 3, 4]");
        Assert.ThrowsExactly<ArgumentException>(() => SequenceLogProbs.TokenLogProbs(LogitsTensor().flatten(1), LabelsTensor()));
        Assert.ThrowsExactly<ArgumentException>(() => SequenceLogProbs.TokenLogProbs(LogitsTensor(), LabelsTensor().to_type(ScalarType.Float32)));
    }

    [TestMethod]
    public void TokenLogProbsGradientIsOneHotMinusSoftmax()
    {
        using var scope = NewDisposeScope();
        var logits = LogitsTensor().requires_grad_();
        SequenceLogProbs.TokenLogProbs(logits, LabelsTensor()).sum().backward();
        double[] g = D(logits.grad!);
        for (int b = 0; b < 2; b++)
            for (int t = 0; t < 3; t++)
                for (int v = 0; v < 4; v++)
                {
                    double softmax = Math.Exp(ManualLogProb(b, t, v));
                    double expected = (Labels[b, t] == v ? 1 : 0) - softmax;
                    Assert.AreEqual(expected, g[(b * 3 + t) * 4 + v], 1e-12);
                }
    }

    [TestMethod]
    public void ReduceSumsAndCountsMaskedTokens()
    {
        using var scope = NewDisposeScope();
        var tokenLogps = tensor(new double[] { -1, -2, -3, -0.5, -0.25, -4 }, 2, 3);
        var (sum, count) = SequenceLogProbs.Reduce(tokenLogps, tensor(new long[] { 0, 1, 1, 1, 0, 1 }, 2, 3));
        AssertClose(new[] { -5.0, -4.5 }, sum, 0);
        AssertClose(new[] { 2.0, 2.0 }, count, 0);
        Assert.AreEqual(ScalarType.Float64, count.dtype);
        AssertClose(new[] { -2.5, -2.25 }, SequenceLogProbs.Mean(sum, count), 1e-15);

        var boolMask = tensor(new[] { true, true, true, false, false, false }, 2, 3);
        var (s2, c2) = SequenceLogProbs.Reduce(tokenLogps, boolMask);
        AssertClose(new[] { -6.0, 0 }, s2, 0);
        AssertClose(new[] { 3.0, 0 }, c2, 0);
        AssertClose(new[] { -2.0, 0 }, SequenceLogProbs.Mean(s2, c2), 1e-15); // an empty row's mean is 0, not NaN
    }

    [TestMethod]
    public void MaskedNonFiniteTokenLogProbsContributeExactlyZero()
    {
        using var scope = NewDisposeScope();
        var tokenLogps = tensor(new[] { -1, double.NegativeInfinity, -3, double.NaN, -0.25, double.PositiveInfinity }, 2, 3).requires_grad_();
        var mask = tensor(new long[] { 1, 0, 1, 0, 1, 0 }, 2, 3);
        var (sum, count) = SequenceLogProbs.Reduce(tokenLogps, mask);
        AssertClose(new[] { -4, -0.25 }, sum, 0);
        AssertClose(new[] { 2.0, 1.0 }, count, 0);
        sum.sum().backward();
        CollectionAssert.AreEqual(new double[] { 1, 0, 1, 0, 1, 0 }, D(tokenLogps.grad!));
    }

    [TestMethod]
    public void GarbageLogitsAtMaskedPositionsGiveFiniteResultsAndGradients()
    {
        using var scope = NewDisposeScope();
        double[] flat = Flat(Logits);
        for (int v = 0; v < 4; v++)
        {
            flat[(0 * 3 + 2) * 4 + v] = double.NegativeInfinity;   // row 0, position 2: all −inf (softmax is NaN)
            flat[(1 * 3 + 0) * 4 + v] = double.NaN;                // row 1, position 0: NaN
        }
        var mask = tensor(new long[] { 1, 1, 0, 0, 1, 1 }, 2, 3);
        double[] e = Expected();

        // Without the mask in TokenLogProbs: the value there is garbage, but Reduce drops it exactly.
        using (NewDisposeScope())
        {
            var logits = tensor(flat, 2, 3, 4);
            var (sum, _) = SequenceLogProbs.Reduce(SequenceLogProbs.TokenLogProbs(logits, LabelsTensor()), mask);
            AssertClose(new[] { e[0] + e[1], e[4] + e[5] }, sum, 1e-12);
        }

        // With the mask: values and gradients are finite, and the masked logits get exactly zero gradient.
        var withGrad = tensor(flat, 2, 3, 4).requires_grad_();
        var tokenLogps = SequenceLogProbs.TokenLogProbs(withGrad, LabelsTensor(), mask);
        AssertClose(new[] { e[0], e[1], 0, 0, e[4], e[5] }, tokenLogps.flatten(), 1e-12);
        var (s, c) = SequenceLogProbs.Reduce(tokenLogps, mask);
        AssertClose(new[] { e[0] + e[1], e[4] + e[5] }, s, 1e-12);
        AssertClose(new[] { 2.0, 2.0 }, c, 0);
        s.sum().backward();
        double[] g = D(withGrad.grad!);
        Assert.IsTrue(g.All(double.IsFinite), "gradients are finite");
        for (int v = 0; v < 4; v++)
        {
            Assert.AreEqual(0.0, g[(0 * 3 + 2) * 4 + v]);
            Assert.AreEqual(0.0, g[(1 * 3 + 0) * 4 + v]);
        }
        // Unmasked position (row 0, t 0): one-hot minus softmax.
        Assert.AreEqual(1 - Math.Exp(ManualLogProb(0, 0, 1)), g[1], 1e-12);
    }

    [TestMethod]
    public void FromLogitsShiftsAndReducesAConcatenatedPairBatch()
    {
        using var scope = NewDisposeScope();
        // 2B = 2 rows (1 chosen, 1 rejected), T = 4 ids, V = 4. logits[:, t] predicts ids[:, t + 1];
        // the last position's logits predict nothing and are garbage.
        var ids = tensor(new long[] { 2, 1, 3, 0, /* rejected */ 0, 2, 1, 3 }, 2, 4);
        var completion = tensor(new long[] { 0, 1, 1, 0, /* rejected: prompt 0, completion at 2, 3 */ 0, 0, 1, 1 }, 2, 4);
        var garbage = full(new long[] { 2, 1, 4 }, double.NaN, ScalarType.Float64);
        var logits = cat(new[] { LogitsTensor(), garbage }, 1);                  // [2, 4, 4]
        var (sum, count) = SequenceLogProbs.FromLogits(logits, ids, completion);
        // Row 0 scores ids[1] = 1 (logits t=0) and ids[2] = 3 (logits t=1); ids[3] is not completion.
        // Row 1 scores ids[2] = 1 (logits t=1) and ids[3] = 3 (logits t=2).
        AssertClose(new[] { ManualLogProb(0, 0, 1) + ManualLogProb(0, 1, 3), ManualLogProb(1, 1, 1) + ManualLogProb(1, 2, 3) }, sum, 1e-12);
        AssertClose(new[] { 2.0, 2.0 }, count, 0);

        var (chosen, rejected) = SequenceLogProbs.SplitPairs(sum);
        AssertClose(new[] { D(sum)[0] }, chosen, 0);
        AssertClose(new[] { D(sum)[1] }, rejected, 0);
    }

    [TestMethod]
    public void SplitPairsNeedsAnEvenBatch()
    {
        using var scope = NewDisposeScope();
        var (c, r) = SequenceLogProbs.SplitPairs(T(1, 2, 3, 4));
        AssertClose(new double[] { 1, 2 }, c, 0);
        AssertClose(new double[] { 3, 4 }, r, 0);
        var ex = Assert.ThrowsExactly<ArgumentException>(() => SequenceLogProbs.SplitPairs(T(1, 2, 3)));
        StringAssert.Contains(ex.Message, "[3]");
    }

    [TestMethod]
    public void ResultsBelongToTheCallersScope()
    {
        Tensor sum, count, lp;
        using (NewDisposeScope())
        {
            lp = SequenceLogProbs.TokenLogProbs(LogitsTensor(), LabelsTensor());
            (sum, count) = SequenceLogProbs.Reduce(lp, ones(2, 3));
            AssertClose(new[] { 3.0, 3.0 }, count, 0);
        }
        Assert.IsTrue(lp.IsInvalid);
        Assert.IsTrue(sum.IsInvalid);
        Assert.IsTrue(count.IsInvalid);

        using var logits = LogitsTensor();
        using var labels = LabelsTensor();
        using var mask = ones(2, 3);
        long before = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        var (s, c) = SequenceLogProbs.FromLogits(logits, labels, mask);
        Assert.AreEqual(before + 2, DisposeScopeManager.Statistics.ThreadTotalLiveCount, "only sum and count stay alive");
        s.Dispose();
        c.Dispose();
    }

    [TestMethod]
    public void PairBatchFlowsIntoPreferenceLossAndBackToTheLogits()
    {
        using var scope = NewDisposeScope();
        // Policy logits for rows [chosen, rejected]; the reference scores the same ids with all-zero logits (uniform).
        var ids = tensor(new long[] { 0, 1, 3, 0, 2, 1 }, 2, 3);
        var completion = tensor(new long[] { 0, 1, 1, 0, 1, 1 }, 2, 3);
        var logits = LogitsTensor().requires_grad_();
        var (sum, _) = SequenceLogProbs.FromLogits(logits, ids, completion);
        var (refSum, _) = SequenceLogProbs.FromLogits(zeros(2, 3, 4, ScalarType.Float64), ids, completion);
        var (pc, pr) = SequenceLogProbs.SplitPairs(sum);
        var (rc, rr) = SequenceLogProbs.SplitPairs(refSum);
        using var output = PreferenceLoss.Compute(new PreferenceLossOptions { Beta = 0.5 }, pc, pr, rc, rr);

        double chosen = ManualLogProb(0, 0, 1) + ManualLogProb(0, 1, 3);
        double rejected = ManualLogProb(1, 0, 2) + ManualLogProb(1, 1, 1);
        double logitsValue = chosen - rejected;   // the uniform reference cancels: 2·log ¼ on both sides
        AssertClose(new[] { -LogSigmoid(0.5 * logitsValue) }, output.Losses, 1e-12);
        AssertClose(new[] { 0.5 * (chosen - 2 * Math.Log(0.25)) }, output.ChosenRewards, 1e-12);

        output.Losses.sum().backward();
        double[] g = D(logits.grad!);
        // dL/dlogits[chosen row, t=0, v] = −β·σ(−β·l) · (onehot(1) − softmax)
        double scale = -0.5 * Sigmoid(-0.5 * logitsValue);
        for (int v = 0; v < 4; v++)
            Assert.AreEqual(scale * ((v == 1 ? 1 : 0) - Math.Exp(ManualLogProb(0, 0, v))), g[v], 1e-12);
        Assert.IsTrue(g.Skip(8).Take(4).All(x => x == 0), "the last position predicts nothing");
    }
}
