using TorchSharp;
using static TorchSharp.torch;
using static Microsoft.ML.Dpo.Tests.Losses.LossTestMath;

namespace Microsoft.ML.Dpo.Tests.Losses;

/// <summary>
/// Every <see cref="PreferenceLossKind"/> against its closed form (TRL v1.9's <c>dpo_loss</c>, CPOTrainer's SimPO and CPO),
/// written here in plain doubles, on two input sets; weighted lists, f-divergences, WPO weights; finite-difference gradients.
/// </summary>
[TestClass]
public sealed class PreferenceLossFamilyTests
{
    /// <summary>One batch: policy and reference summed log-probs, completion-token counts, and the chosen NLL.</summary>
    sealed record Batch(double[] Pc, double[] Pr, double[] Rc, double[] Rr, double[] Nc, double[] Nr, double Nll);

    // Set A: four pairs; pair 3 has zero log-ratios (uc = ur = 0), where many losses have simple hand values.
    static readonly Batch A = new([-10, -5, -7, -3], [-12, -4, -7.5, -3], [-11, -5.5, -7, -3], [-11, -4.2, -6.5, -3],
                                  [4, 2, 5, 1], [3, 2, 6, 2], 1.7);
    // Set B: three pairs with larger, mixed-sign log-ratios and longer completions.
    // (No ties among its log-ratios, so the sorting kinds are differentiable there.)
    static readonly Batch B = new([-20, -1.5, -8], [-18, -6, -8.5], [-19, -2.5, -9.3], [-17.5, -4, -9], [10, 3, 7], [8, 5, 7], 0.45);

    static IEnumerable<object[]> Sets() => [[nameof(A)], [nameof(B)]];
    static Batch Set(string name) => name == nameof(A) ? A : B;

    static PreferenceLossOutput Run(PreferenceLossOptions o, Batch b, double[]? pairWeights = null) => PreferenceLoss.Compute(o, new PreferenceLossInput
    {
        PolicyChosenLogps = T(b.Pc), PolicyRejectedLogps = T(b.Pr), ReferenceChosenLogps = T(b.Rc), ReferenceRejectedLogps = T(b.Rr),
        ChosenTokenCounts = T(b.Nc), RejectedTokenCounts = T(b.Nr), ChosenNll = tensor(b.Nll, ScalarType.Float64),
        PairWeights = pairWeights is null ? null : T(pairWeights),
    });

    // ---- the closed forms, in doubles ----

    static double Score(double u, PreferenceLossOptions o) => o.FDivergence switch
    {
        FDivergenceKind.ForwardKL => -Math.Exp(-u),
        FDivergenceKind.JsDivergence => LogSigmoid(u),
        FDivergenceKind.AlphaDivergence when Math.Abs(o.AlphaDivergenceCoefficient - 1) >= 1e-6 =>
            Math.Exp(Math.Min(80, (o.AlphaDivergenceCoefficient - 1) * u)) / (o.AlphaDivergenceCoefficient - 1),
        _ => u,
    };

    static double Smoothed(double x, double e) => -(1 - e) * LogSigmoid(x) - e * LogSigmoid(-x);

    static double[] Expected(PreferenceLossKind kind, PreferenceLossOptions o, Batch b)
    {
        int n = b.Pc.Length;
        double beta = o.Beta, e = o.LabelSmoothing;
        double[] uc = new double[n], ur = new double[n], sc = new double[n], sr = new double[n];
        for (int i = 0; i < n; i++)
        {
            uc[i] = b.Pc[i] - b.Rc[i];
            ur[i] = b.Pr[i] - b.Rr[i];
            sc[i] = Score(uc[i], o);
            sr[i] = Score(ur[i], o);
        }
        double[] sortedPolicy = Enumerable.Range(0, n).Select(i => b.Pc[i] - b.Pr[i]).Order().ToArray();
        double[] sortedReference = Enumerable.Range(0, n).Select(i => b.Rc[i] - b.Rr[i]).Order().ToArray();
        double[] sortedChosen = uc.Order().ToArray(), sortedRejected = ur.Order().ToArray();
        return Enumerable.Range(0, n).Select(i =>
        {
            double d = sc[i] - sr[i], x = beta * d;
            return kind switch
            {
                PreferenceLossKind.Sigmoid => Smoothed(x, e),
                PreferenceLossKind.Robust => (-(1 - e) * LogSigmoid(x) + e * LogSigmoid(-x)) / (1 - 2 * e),
                PreferenceLossKind.Hinge => Math.Max(0, 1 - x),
                PreferenceLossKind.Ipo => Math.Pow(sc[i] / b.Nc[i] - sr[i] / b.Nr[i] - 1 / (2 * beta), 2),
                PreferenceLossKind.ExoPair => Sigmoid(x) * (LogSigmoid(x) - Math.Log(1 - e)) + Sigmoid(-x) * (LogSigmoid(-x) - Math.Log(e)),
                PreferenceLossKind.NcaPair => -LogSigmoid(beta * sc[i]) - 0.5 * LogSigmoid(-beta * sc[i]) - 0.5 * LogSigmoid(-beta * sr[i]),
                PreferenceLossKind.BcoPair => -LogSigmoid(beta * sc[i]) - LogSigmoid(-beta * sr[i]),
                PreferenceLossKind.SppoHard => Math.Pow(sc[i] - 0.5 / beta, 2) + Math.Pow(sr[i] + 0.5 / beta, 2),
                PreferenceLossKind.Aot => Smoothed(beta * (sortedPolicy[i] - sortedReference[i]), e),
                PreferenceLossKind.AotUnpaired => Smoothed(beta * (sortedChosen[i] - sortedRejected[i]), e),
                PreferenceLossKind.ApoZero => 1 - Sigmoid(beta * uc[i]) + Sigmoid(beta * ur[i]),
                PreferenceLossKind.ApoDown => Sigmoid(beta * uc[i]) + 1 - Sigmoid(x),
                PreferenceLossKind.DiscoPop => -LogSigmoid(x) * (1 - Sigmoid(x / o.DiscoPopTau)) + Math.Exp(-x) * Sigmoid(x / o.DiscoPopTau),
                PreferenceLossKind.SigmoidNorm => -LogSigmoid(beta * (sc[i] / b.Nc[i] - sr[i] / b.Nr[i])),
                PreferenceLossKind.Sft => b.Nll,
                PreferenceLossKind.SimPO => Smoothed(beta * (b.Pc[i] / b.Nc[i] - b.Pr[i] / b.Nr[i]) - o.Gamma, e),
                PreferenceLossKind.Cpo => Smoothed(beta * (b.Pc[i] - b.Pr[i]), e) + o.CpoAlpha * b.Nll,
                _ => throw new ArgumentOutOfRangeException(nameof(kind)),
            };
        }).ToArray();
    }

    static PreferenceLossOptions Options(PreferenceLossKind kind, double beta = 0.3) => new()
    {
        Kind = kind, Beta = beta,
        LabelSmoothing = kind is PreferenceLossKind.Sigmoid or PreferenceLossKind.Robust or PreferenceLossKind.ExoPair or PreferenceLossKind.Aot
            or PreferenceLossKind.AotUnpaired or PreferenceLossKind.SimPO or PreferenceLossKind.Cpo ? 0.15 : 0,
        Gamma = 0.4, DiscoPopTau = 0.05, CpoAlpha = 0.7,
    };

    [TestMethod]
    [DynamicData(nameof(Sets))]
    public void EveryKindMatchesItsClosedForm(string set)
    {
        var b = Set(set);
        foreach (var kind in Enum.GetValues<PreferenceLossKind>())
            foreach (double beta in new[] { 0.1, 0.7 })
            {
                using var scope = NewDisposeScope();
                var o = Options(kind, beta);
                AssertClose(Expected(kind, o, b), Run(o, b).Losses, 1e-10, $"{kind} β={beta} set {set}");
            }
    }

    [TestMethod]
    public void HandValuesAtZeroLogRatios()
    {
        // Pair 3 of set A: π = ref for both completions, so u = s = Δ = 0.
        double Pair3(PreferenceLossKind kind, double beta = 0.5, double eps = 0)
        {
            using var scope = NewDisposeScope();
            return D(Run(new PreferenceLossOptions { Kind = kind, Beta = beta, LabelSmoothing = eps }, A).Losses)[3];
        }
        double ln2 = Math.Log(2);
        Assert.AreEqual(ln2, Pair3(PreferenceLossKind.Sigmoid), 1e-15);
        Assert.AreEqual(2 * ln2, Pair3(PreferenceLossKind.NcaPair), 1e-15);
        Assert.AreEqual(2 * ln2, Pair3(PreferenceLossKind.BcoPair), 1e-15);
        Assert.AreEqual(2 * 1.0, Pair3(PreferenceLossKind.SppoHard), 1e-15);                 // 2·(1/(2·0.5))²
        Assert.AreEqual(1.0, Pair3(PreferenceLossKind.ApoZero), 1e-15);                      // 1 − ½ + ½
        Assert.AreEqual(1.0, Pair3(PreferenceLossKind.ApoDown), 1e-15);                      // ½ + 1 − ½
        Assert.AreEqual(0.5 * ln2 + 0.5, Pair3(PreferenceLossKind.DiscoPop), 1e-15);         // m = ½: ½·ln 2 + ½·e⁰
        Assert.AreEqual(0.5 * (-ln2 - Math.Log(0.9)) + 0.5 * (-ln2 - Math.Log(0.1)), Pair3(PreferenceLossKind.ExoPair, eps: 0.1), 1e-15);
        Assert.AreEqual(1.0, Pair3(PreferenceLossKind.Hinge), 1e-15);
        Assert.AreEqual(1.0, Pair3(PreferenceLossKind.Ipo), 1e-15);                          // (0 − 1/(2·0.5))²
        Assert.AreEqual(ln2, Pair3(PreferenceLossKind.SigmoidNorm), 1e-15);
    }

    [TestMethod]
    [DynamicData(nameof(Sets))]
    public void WeightedListIsTheWeightedSumMpo(string set)
    {
        using var scope = NewDisposeScope();
        var b = Set(set);
        var mpo = new PreferenceLossOptions
        {
            Kinds = [PreferenceLossKind.Sigmoid, PreferenceLossKind.BcoPair, PreferenceLossKind.Sft], Weights = [0.8, 0.2, 1.0], Beta = 0.2,
        };
        var single = new PreferenceLossOptions { Beta = 0.2 };
        double[] sigmoid = Expected(PreferenceLossKind.Sigmoid, single, b), bco = Expected(PreferenceLossKind.BcoPair, single, b);
        var output = Run(mpo, b);
        AssertClose(sigmoid.Select((s, i) => 0.8 * s + 0.2 * bco[i] + b.Nll).ToArray(), output.Losses, 1e-12, "MPO");
        // The rewards are the first kind's: β·(π − ref).
        AssertClose(b.Pc.Select((p, i) => 0.2 * (p - b.Rc[i])).ToArray(), output.ChosenRewards, 1e-12);
        Assert.AreEqual("0.8·Sigmoid(β=0.2, ε=0) + 0.2·BcoPair(β=0.2) + 1·Sft", mpo.ToString());

        // Weights default to 1: RPO with α = 1 is sigmoid + sft.
        var rpo = Run(new PreferenceLossOptions { Kinds = [PreferenceLossKind.Sigmoid, PreferenceLossKind.Sft], Beta = 0.2 }, b);
        AssertClose(sigmoid.Select(s => s + b.Nll).ToArray(), rpo.Losses, 1e-12, "RPO");
    }

    [TestMethod]
    [DynamicData(nameof(Sets))]
    public void FDivergencesTransformTheLogRatiosAsTrl(string set)
    {
        var b = Set(set);
        foreach (var divergence in Enum.GetValues<FDivergenceKind>())
            foreach (var kind in new[] { PreferenceLossKind.Sigmoid, PreferenceLossKind.BcoPair, PreferenceLossKind.Ipo, PreferenceLossKind.ApoZero, PreferenceLossKind.Aot })
                foreach (double alpha in new[] { 0.5, 1.0, 2.5 })
                {
                    using var scope = NewDisposeScope();
                    var o = Options(kind);
                    o.FDivergence = divergence;
                    o.AlphaDivergenceCoefficient = alpha;
                    AssertClose(Expected(kind, o, b), Run(o, b).Losses, 1e-10, $"{kind} under {divergence} (α={alpha}) set {set}");
                }

        // Hand check: Jensen–Shannon DPO at β = 1 on pair 0 of set A: uc = 1, ur = −1 → Δ = log σ(1) − log σ(−1) = 1.
        using var s = NewDisposeScope();
        var js = Run(new PreferenceLossOptions { Beta = 1, FDivergence = FDivergenceKind.JsDivergence }, A);
        Assert.AreEqual(-LogSigmoid(1), D(js.Losses)[0], 1e-12);
        // The rewards stay β·(π − ref) whatever the divergence (TRL logs the log-ratios).
        AssertClose(A.Pc.Select((p, i) => p - A.Rc[i]).ToArray(), js.ChosenRewards, 1e-12);
    }

    [TestMethod]
    public void AlphaDivergenceClampsTheExponent()
    {
        using var scope = NewDisposeScope();
        // (α − 1)·u = −1.5·(−100) = 150 > 80: the score is e^80 / (α − 1), finite.
        var o = new PreferenceLossOptions { Kind = PreferenceLossKind.BcoPair, Beta = 1e-36, FDivergence = FDivergenceKind.AlphaDivergence, AlphaDivergenceCoefficient = -0.5 };
        var output = PreferenceLoss.Compute(o, T(-100.0), T(0.0), T(0.0), T(0.0));
        double sc = Math.Exp(80) / -1.5, sr = 1 / -1.5;
        Assert.AreEqual(-LogSigmoid(1e-36 * sc) - LogSigmoid(-1e-36 * sr), D(output.Losses)[0], 1e-12);
    }

    [TestMethod]
    [DynamicData(nameof(Sets))]
    public void PairWeightsMultiplyEveryTerm(string set)
    {
        using var scope = NewDisposeScope();
        var b = Set(set);
        double[] w = Enumerable.Range(0, b.Pc.Length).Select(i => 0.2 + 0.3 * i).ToArray();
        var o = new PreferenceLossOptions { Kinds = [PreferenceLossKind.Sigmoid, PreferenceLossKind.Sft], Weights = [1, 0.5], Beta = 0.1 };
        double[] sigmoid = Expected(PreferenceLossKind.Sigmoid, new PreferenceLossOptions { Beta = 0.1 }, b);
        AssertClose(sigmoid.Select((s, i) => w[i] * (s + 0.5 * b.Nll)).ToArray(), Run(o, b, w).Losses, 1e-12);
        var aot = new PreferenceLossOptions { Kind = PreferenceLossKind.Aot };
        var e = Assert.ThrowsExactly<ArgumentException>(() => Run(aot, b, w));
        StringAssert.Contains(e.Message, "Aot");
        StringAssert.Contains(e.Message, "sorts");
    }

    [TestMethod]
    public void WithoutCountsLengthNormalisedKindsTakeTheValuesAsGiven()
    {
        using var scope = NewDisposeScope();
        var noCounts = A with { Nc = [1, 1, 1, 1], Nr = [1, 1, 1, 1] };
        foreach (var kind in new[] { PreferenceLossKind.Ipo, PreferenceLossKind.SigmoidNorm, PreferenceLossKind.SimPO })
        {
            var o = Options(kind);
            AssertClose(Expected(kind, o, noCounts), PreferenceLoss.Compute(o, T(A.Pc), T(A.Pr), T(A.Rc), T(A.Rr)).Losses, 1e-12, kind.ToString());
        }
    }

    [TestMethod]
    public void RewardsOfReferenceFreeKindsAndSft()
    {
        using var scope = NewDisposeScope();
        var simpo = Run(new PreferenceLossOptions { Kind = PreferenceLossKind.SimPO, Beta = 2 }, A);
        AssertClose(A.Pc.Select((p, i) => 2 * p / A.Nc[i]).ToArray(), simpo.ChosenRewards, 1e-12, "SimPO: β·π/n");
        var cpo = Run(new PreferenceLossOptions { Kind = PreferenceLossKind.Cpo, Beta = 0.5 }, A);
        AssertClose(A.Pr.Select(p => 0.5 * p).ToArray(), cpo.RejectedRewards, 1e-12, "CPO: β·π");
        var sft = PreferenceLoss.Compute(new PreferenceLossOptions { Kind = PreferenceLossKind.Sft }, new PreferenceLossInput
        {
            PolicyChosenLogps = T(A.Pc), PolicyRejectedLogps = T(A.Pr), ChosenNll = tensor(1.25, ScalarType.Float64),
        });
        AssertClose([1.25, 1.25, 1.25, 1.25], sft.Losses, 0, "SFT alone needs no reference");
        AssertClose(A.Pc.Select(p => 0.1 * p).ToArray(), sft.ChosenRewards, 1e-12);
    }

    [TestMethod]
    public void ChosenNegativeLogLikelihoodIsTheTokenMeanOverTheBatch()
    {
        using var scope = NewDisposeScope();
        var sum = T(-6, -1.5, 0).requires_grad_();
        var nll = PreferenceLoss.ChosenNegativeLogLikelihood(sum, tensor(new long[] { 3, 1, 0 }));
        Assert.AreEqual(7.5 / 4, nll.item<double>(), 1e-15);          // (6 + 1.5 + 0) / (3 + 1 + 0): TRL's cross-entropy over all chosen tokens
        nll.backward();
        AssertClose([-0.25, -0.25, -0.25], sum.grad!, 1e-15);
        Assert.AreEqual(0.0, PreferenceLoss.ChosenNegativeLogLikelihood(T(0.0), tensor(new long[] { 0 })).item<double>());
        var e = Assert.ThrowsExactly<ArgumentException>(() => PreferenceLoss.ChosenNegativeLogLikelihood(T(-1, -2), T(1, 2, 3)));
        StringAssert.Contains(e.Message, "[3]");
    }

    [TestMethod]
    [DataRow(PreferenceLossKind.ExoPair, FDivergenceKind.ReverseKL)]
    [DataRow(PreferenceLossKind.DiscoPop, FDivergenceKind.ReverseKL)]
    [DataRow(PreferenceLossKind.NcaPair, FDivergenceKind.JsDivergence)]
    [DataRow(PreferenceLossKind.AotUnpaired, FDivergenceKind.ReverseKL)]
    [DataRow(PreferenceLossKind.ApoDown, FDivergenceKind.AlphaDivergence)]
    [DataRow(PreferenceLossKind.Sigmoid, FDivergenceKind.ForwardKL)]
    public void GradientsMatchFiniteDifferences(PreferenceLossKind kind, FDivergenceKind divergence)
    {
        foreach (var b in new[] { A, B })
        {
            var o = Options(kind, 0.4);
            o.FDivergence = divergence;
            if (kind == PreferenceLossKind.DiscoPop) o.DiscoPopTau = 0.5;   // a smoother mixing coefficient keeps central differences accurate
            double Total(double[] pc, double[] pr)
            {
                using var s = NewDisposeScope();
                return Run(o, b with { Pc = pc, Pr = pr }).Losses.sum().item<double>();
            }
            using var scope = NewDisposeScope();
            var pcT = T(b.Pc).requires_grad_();
            var prT = T(b.Pr).requires_grad_();
            PreferenceLoss.Compute(o, new PreferenceLossInput
            {
                PolicyChosenLogps = pcT, PolicyRejectedLogps = prT, ReferenceChosenLogps = T(b.Rc), ReferenceRejectedLogps = T(b.Rr),
                ChosenTokenCounts = T(b.Nc), RejectedTokenCounts = T(b.Nr),
            }).Losses.sum().backward();
            double[] gc = D(pcT.grad!), gr = D(prT.grad!);
            const double h = 1e-6;
            for (int i = 0; i < b.Pc.Length; i++)
            {
                double[] up = (double[])b.Pc.Clone(), down = (double[])b.Pc.Clone();
                up[i] += h; down[i] -= h;
                Assert.AreEqual((Total(up, b.Pr) - Total(down, b.Pr)) / (2 * h), gc[i], 1e-6, $"{kind}/{divergence} dL/dπc[{i}]");
                up = (double[])b.Pr.Clone(); down = (double[])b.Pr.Clone();
                up[i] += h; down[i] -= h;
                Assert.AreEqual((Total(b.Pc, up) - Total(b.Pc, down)) / (2 * h), gr[i], 1e-6, $"{kind}/{divergence} dL/dπr[{i}]");
            }
        }
    }

    [TestMethod]
    public void NamesAreTrls()
    {
        foreach (var kind in Enum.GetValues<PreferenceLossKind>())
            Assert.AreEqual(kind, PreferenceLossNames.ParseLoss(PreferenceLossNames.Name(kind)));
        Assert.AreEqual(PreferenceLossKind.BcoPair, PreferenceLossNames.ParseLoss("bco_pair"));
        Assert.AreEqual(PreferenceLossKind.AotUnpaired, PreferenceLossNames.ParseLoss("AOT-unpaired"));
        Assert.AreEqual(FDivergenceKind.JsDivergence, PreferenceLossNames.ParseDivergence("js_divergence"));
        var e = Assert.ThrowsExactly<ArgumentException>(() => PreferenceLossNames.ParseLoss("kto_pair"));
        StringAssert.Contains(e.Message, "'kto_pair'");
        StringAssert.Contains(e.Message, "sigmoid_norm");
    }

    [TestMethod]
    public void InvalidCombinationsAreNamed()
    {
        void Fails(PreferenceLossOptions o, string name, string text)
        {
            var e = Assert.ThrowsExactly<ArgumentException>(o.Validate, text);
            Assert.AreEqual(name, e.ParamName);
            StringAssert.Contains(e.Message, text);
        }
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(new PreferenceLossOptions { Kind = PreferenceLossKind.ExoPair }.Validate);
        Fails(new PreferenceLossOptions { Kinds = [PreferenceLossKind.Sigmoid, PreferenceLossKind.Sft], Weights = [1] }, "Weights", "one weight per kind");
        Fails(new PreferenceLossOptions { Kinds = [PreferenceLossKind.Sigmoid, PreferenceLossKind.Sigmoid] }, "Kinds", "twice");
        Fails(new PreferenceLossOptions { Kinds = [] }, "Kinds", "empty");
        Fails(new PreferenceLossOptions { Kind = PreferenceLossKind.Ipo, Kinds = [PreferenceLossKind.Sigmoid] }, "Kind", "set one of them");
        Fails(new PreferenceLossOptions { Kind = PreferenceLossKind.SimPO, FDivergence = FDivergenceKind.ForwardKL }, "FDivergence", "reference-free");
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(new PreferenceLossOptions { Kinds = [PreferenceLossKind.Sft], Weights = [-1] }.Validate);
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(new PreferenceLossOptions { Kind = PreferenceLossKind.DiscoPop, DiscoPopTau = 0 }.Validate);

        using var scope = NewDisposeScope();
        var nll = Assert.ThrowsExactly<ArgumentNullException>(() => PreferenceLoss.Compute(new PreferenceLossOptions { Kind = PreferenceLossKind.Cpo }, T(A.Pc), T(A.Pr), null, null));
        Assert.AreEqual("chosenNll", nll.ParamName);
        StringAssert.Contains(nll.Message, "ChosenNegativeLogLikelihood");
    }
}
