using TorchSharp;
using static TorchSharp.torch;
using static Microsoft.ML.Dpo.Tests.Losses.LossTestMath;

namespace Microsoft.ML.Dpo.Tests.Losses;

[TestClass]
public sealed class PreferenceLossTests
{
    // Four pairs. logits = (πc − πr) − (refc − refr):
    //   pair 0: (−10 + 12) − (−11 + 11)     = 2
    //   pair 1: (−5 + 4)   − (−5.5 + 4.2)   = 0.3
    //   pair 2: (−7 + 7.5) − (−7 + 6.5)     = 1
    //   pair 3: (−3 + 3)   − (−3 + 3)       = 0
    static readonly double[] Pc = { -10, -5, -7, -3 };
    static readonly double[] Pr = { -12, -4, -7.5, -3 };
    static readonly double[] Rc = { -11, -5.5, -7, -3 };
    static readonly double[] Rr = { -11, -4.2, -6.5, -3 };
    static readonly double[] Logits = { 2, 0.3, 1, 0 };

    static PreferenceLossOutput Run(PreferenceLossOptions o) => PreferenceLoss.Compute(o, T(Pc), T(Pr), T(Rc), T(Rr));

    static double[] Map(Func<double, double> f) => Logits.Select(f).ToArray();

    [TestMethod]
    public void DefaultsAreDpoWithBetaPointOne()
    {
        var o = new PreferenceLossOptions();
        Assert.AreEqual(PreferenceLossKind.Sigmoid, o.Kind);
        Assert.AreEqual(0.1, o.Beta);
        Assert.AreEqual(0.0, o.LabelSmoothing);
        Assert.AreEqual(0.5, o.Gamma);
        Assert.IsTrue(o.RequiresReference);
        Assert.IsFalse(new PreferenceLossOptions { Kind = PreferenceLossKind.SimPO }.RequiresReference);
    }

    [TestMethod]
    public void SigmoidIsDpo()
    {
        using var scope = NewDisposeScope();
        var output = Run(new PreferenceLossOptions { Beta = 0.1 });
        // Hand values: −log σ(0.2) = log(1 + e^−0.2) = 0.5981388693; −log σ(0) = ln 2.
        Assert.AreEqual(0.5981388693, D(output.Losses)[0], 1e-9);
        Assert.AreEqual(Math.Log(2), D(output.Losses)[3], 1e-15);
        AssertClose(Map(l => -LogSigmoid(0.1 * l)), output.Losses);
        CollectionAssert.AreEqual(new long[] { 4 }, output.Losses.shape, "not reduced");
    }

    [TestMethod]
    public void SigmoidWithLabelSmoothingIsConservativeDpo()
    {
        using var scope = NewDisposeScope();
        var output = Run(new PreferenceLossOptions { Beta = 0.5, LabelSmoothing = 0.2 });
        AssertClose(Map(l => -0.8 * LogSigmoid(0.5 * l) - 0.2 * LogSigmoid(-0.5 * l)), output.Losses);
        // At logits = 0 both terms are −log ½, whatever ε: the loss is ln 2.
        Assert.AreEqual(Math.Log(2), D(output.Losses)[3], 1e-15);
    }

    [TestMethod]
    public void RobustMatchesChowdhuryFormulaAndEqualsDpoAtZeroSmoothing()
    {
        using var scope = NewDisposeScope();
        var robust = Run(new PreferenceLossOptions { Kind = PreferenceLossKind.Robust, Beta = 0.5, LabelSmoothing = 0.2 });
        AssertClose(Map(l => (-0.8 * LogSigmoid(0.5 * l) + 0.2 * LogSigmoid(-0.5 * l)) / 0.6), robust.Losses);
        // Pair 3 (logits 0): (−0.8 + 0.2)·log ½ / 0.6 = ln 2.
        Assert.AreEqual(Math.Log(2), D(robust.Losses)[3], 1e-15);

        var plain = Run(new PreferenceLossOptions { Kind = PreferenceLossKind.Robust, Beta = 0.5 });
        AssertClose(Map(l => -LogSigmoid(0.5 * l)), plain.Losses);
    }

    [TestMethod]
    public void HingeIsReluOfOneMinusBetaLogits()
    {
        using var scope = NewDisposeScope();
        var output = Run(new PreferenceLossOptions { Kind = PreferenceLossKind.Hinge, Beta = 1 });
        AssertClose(new[] { 0, 0.7, 0, 1 }, output.Losses, 1e-12);   // max(0, 1 − [2, 0.3, 1, 0])
        var small = Run(new PreferenceLossOptions { Kind = PreferenceLossKind.Hinge, Beta = 0.1, LabelSmoothing = 0.3 });
        AssertClose(new[] { 0.8, 0.97, 0.9, 1 }, small.Losses, 1e-12); // label smoothing is ignored
    }

    [TestMethod]
    public void IpoIsSquaredDistanceToHalfInverseBeta()
    {
        using var scope = NewDisposeScope();
        var output = Run(new PreferenceLossOptions { Kind = PreferenceLossKind.Ipo, Beta = 0.5 });
        AssertClose(new[] { 1, 0.49, 0, 1 }, output.Losses, 1e-12);   // ([2, 0.3, 1, 0] − 1)²
        var b01 = Run(new PreferenceLossOptions { Kind = PreferenceLossKind.Ipo, Beta = 0.1 });
        AssertClose(new[] { 9, 22.09, 16, 25 }, b01.Losses, 1e-12);   // ([2, 0.3, 1, 0] − 5)²
    }

    [TestMethod]
    public void SimPOIsReferenceFreeWithMargin()
    {
        using var scope = NewDisposeScope();
        var o = new PreferenceLossOptions { Kind = PreferenceLossKind.SimPO, Beta = 2, Gamma = 0.5 };
        var output = PreferenceLoss.Compute(o, T(Pc), T(Pr), null, null);
        // β·(πc − πr) − γ = 2·[2, −1, 0.5, 0] − 0.5 = [3.5, −2.5, 0.5, −0.5]
        AssertClose(new[] { 3.5, -2.5, 0.5, -0.5 }.Select(x => -LogSigmoid(x)).ToArray(), output.Losses);
        Assert.AreEqual(Math.Log(1 + Math.Exp(2.5)), D(output.Losses)[1], 1e-12);
        AssertClose(Pc.Select(p => 2 * p).ToArray(), output.ChosenRewards);
        AssertClose(Pr.Select(p => 2 * p).ToArray(), output.RejectedRewards);

        // References, if given, are ignored.
        var withRefs = PreferenceLoss.Compute(o, T(Pc), T(Pr), T(Rc), T(Rr));
        AssertClose(D(output.Losses), withRefs.Losses);
        AssertClose(D(output.ChosenRewards), withRefs.ChosenRewards);
    }

    [TestMethod]
    public void RewardsAreBetaTimesPolicyMinusReferenceAndDetached()
    {
        using var scope = NewDisposeScope();
        var pc = T(Pc).requires_grad_();
        var pr = T(Pr).requires_grad_();
        var output = PreferenceLoss.Compute(new PreferenceLossOptions { Beta = 0.1 }, pc, pr, T(Rc), T(Rr));
        AssertClose(new[] { 0.1, 0.05, 0, 0 }, output.ChosenRewards, 1e-12);       // 0.1·(πc − refc)
        AssertClose(new[] { -0.1, 0.02, -0.1, 0 }, output.RejectedRewards, 1e-12); // 0.1·(πr − refr)
        Assert.IsFalse(output.ChosenRewards.requires_grad);
        Assert.IsFalse(output.RejectedRewards.requires_grad);
        Assert.IsTrue(output.Losses.requires_grad);
    }

    [TestMethod]
    public void NoGradientFlowsIntoTheReference()
    {
        using var scope = NewDisposeScope();
        var pc = T(Pc).requires_grad_();
        var rc = T(Rc).requires_grad_();
        var output = PreferenceLoss.Compute(new PreferenceLossOptions(), pc, T(Pr), rc, T(Rr));
        output.Losses.sum().backward();
        Assert.IsNotNull(pc.grad);
        Assert.IsNull(rc.grad);
    }

    [TestMethod]
    [DataRow(0.0)]
    [DataRow(0.1)]
    public void SigmoidGradientMatchesAnalyticFormula(double eps)
    {
        using var scope = NewDisposeScope();
        const double beta = 0.5;
        var pc = T(Pc).requires_grad_();
        var pr = T(Pr).requires_grad_();
        var output = PreferenceLoss.Compute(new PreferenceLossOptions { Beta = beta, LabelSmoothing = eps }, pc, pr, T(Rc), T(Rr));
        output.Losses.sum().backward();
        // d/dlogits [−(1−ε)·log σ(βl) − ε·log σ(−βl)] = −(1−ε)·β·σ(−βl) + ε·β·σ(βl); dlogits/dπc = +1, dlogits/dπr = −1.
        double[] dl = Map(l => -(1 - eps) * beta * Sigmoid(-beta * l) + eps * beta * Sigmoid(beta * l));
        AssertClose(dl, pc.grad!, 1e-12, "dL/dπc");
        AssertClose(dl.Select(g => -g).ToArray(), pr.grad!, 1e-12, "dL/dπr");
        if (eps == 0) Assert.AreEqual(-beta * 0.5, D(pc.grad!)[3], 1e-15); // −β·σ(0)
    }

    [TestMethod]
    [DataRow(PreferenceLossKind.Sigmoid, 0.0)]
    [DataRow(PreferenceLossKind.Sigmoid, 0.2)]
    [DataRow(PreferenceLossKind.Robust, 0.2)]
    [DataRow(PreferenceLossKind.Hinge, 0.0)]
    [DataRow(PreferenceLossKind.Ipo, 0.0)]
    [DataRow(PreferenceLossKind.SimPO, 0.0)]
    public void GradientMatchesFiniteDifferences(PreferenceLossKind kind, double eps)
    {
        using var scope = NewDisposeScope();
        var o = new PreferenceLossOptions { Kind = kind, Beta = 0.3, LabelSmoothing = eps, Gamma = 0.4 };
        var pc = T(Pc).requires_grad_();
        var pr = T(Pr).requires_grad_();
        PreferenceLoss.Compute(o, pc, pr, T(Rc), T(Rr)).Losses.sum().backward();
        double[] gc = D(pc.grad!), gr = D(pr.grad!);

        double Total(double[] c, double[] r)
        {
            using var s = NewDisposeScope();
            return PreferenceLoss.Compute(o, T(c), T(r), T(Rc), T(Rr)).Losses.sum().item<double>();
        }
        const double h = 1e-6;
        for (int i = 0; i < Pc.Length; i++)
        {
            double[] up = (double[])Pc.Clone(), down = (double[])Pc.Clone();
            up[i] += h; down[i] -= h;
            Assert.AreEqual((Total(up, Pr) - Total(down, Pr)) / (2 * h), gc[i], 1e-7, $"{kind} dL/dπc[{i}]");
            up = (double[])Pr.Clone(); down = (double[])Pr.Clone();
            up[i] += h; down[i] -= h;
            Assert.AreEqual((Total(Pc, up) - Total(Pc, down)) / (2 * h), gr[i], 1e-7, $"{kind} dL/dπr[{i}]");
        }
    }

    [TestMethod]
    public void LargeMarginsStayFinite()
    {
        using var scope = NewDisposeScope();
        // β·logits = ±1000: a naive log(σ(x)) would give −inf / NaN.
        var output = PreferenceLoss.Compute(new PreferenceLossOptions { Beta = 1, LabelSmoothing = 0.1 },
                                            T(0, -2000), T(-2000, 0), T(0, 0), T(0, 0));
        AssertClose(new[] { 0.1 * 2000, 0.9 * 2000 }, output.Losses, 1e-6);
    }

    [TestMethod]
    public void Float32InputsGiveFloat32Results()
    {
        using var scope = NewDisposeScope();
        Tensor F32(double[] v) => tensor(v.Select(x => (float)x).ToArray());
        var output = PreferenceLoss.Compute(new PreferenceLossOptions(), F32(Pc), F32(Pr), F32(Rc), F32(Rr));
        Assert.AreEqual(ScalarType.Float32, output.Losses.dtype);
        AssertClose(Map(l => -LogSigmoid(0.1 * l)), output.Losses, 1e-6);
    }

    // ---- ownership ----

    [TestMethod]
    public void ResultsBelongToTheCallersDisposeScope()
    {
        PreferenceLossOutput output;
        using (var outer = NewDisposeScope())
        {
            output = Run(new PreferenceLossOptions());
            Assert.IsFalse(output.Losses.IsInvalid);
            AssertClose(Map(l => -LogSigmoid(0.1 * l)), output.Losses);
        }
        Assert.IsTrue(output.Losses.IsInvalid);
        Assert.IsTrue(output.ChosenRewards.IsInvalid);
        Assert.IsTrue(output.RejectedRewards.IsInvalid);
        output.Dispose(); // harmless after the scope disposed them
    }

    [TestMethod]
    public void OutsideAnyScopeTheOutputOwnsItsTensorsAndIntermediatesAreFreed()
    {
        Tensor[] inputs = { T(Pc), T(Pr), T(Rc), T(Rr) };
        try
        {
            long before = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
            var output = PreferenceLoss.Compute(new PreferenceLossOptions { LabelSmoothing = 0.1 }, inputs[0], inputs[1], inputs[2], inputs[3]);
            Assert.AreEqual(before + 3, DisposeScopeManager.Statistics.ThreadTotalLiveCount, "only the three results stay alive");
            using (NewDisposeScope()) // D() makes temporaries
                AssertClose(Map(l => -0.9 * LogSigmoid(0.1 * l) - 0.1 * LogSigmoid(-0.1 * l)), output.Losses);
            output.Dispose();
            Assert.IsTrue(output.Losses.IsInvalid);
            Assert.IsTrue(output.ChosenRewards.IsInvalid);
            Assert.IsTrue(output.RejectedRewards.IsInvalid);
            Assert.AreEqual(before, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
        }
        finally
        {
            foreach (var t in inputs) t.Dispose();
        }
    }

    [TestMethod]
    public void LossesCanBeBackpropagatedAfterIntermediatesAreDisposed()
    {
        using var scope = NewDisposeScope();
        var pc = T(Pc).requires_grad_();
        using var output = PreferenceLoss.Compute(new PreferenceLossOptions(), pc, T(Pr), T(Rc), T(Rr));
        output.Losses.mean().backward();
        AssertClose(Map(l => -0.1 * Sigmoid(-0.1 * l) / 4), pc.grad!, 1e-12);
    }

    // ---- validation ----

    [TestMethod]
    [DataRow(PreferenceLossKind.Sigmoid)]
    [DataRow(PreferenceLossKind.Robust)]
    [DataRow(PreferenceLossKind.Hinge)]
    [DataRow(PreferenceLossKind.Ipo)]
    public void ReferenceKindsRejectNullReferences(PreferenceLossKind kind)
    {
        using var scope = NewDisposeScope();
        var o = new PreferenceLossOptions { Kind = kind };
        var ex = Assert.ThrowsExactly<ArgumentNullException>(() => PreferenceLoss.Compute(o, T(Pc), T(Pr), null, T(Rr)));
        Assert.AreEqual("referenceChosenLogps", ex.ParamName);
        StringAssert.Contains(ex.Message, kind.ToString());
        StringAssert.Contains(ex.Message, "referenceChosenLogps");
        ex = Assert.ThrowsExactly<ArgumentNullException>(() => PreferenceLoss.Compute(o, T(Pc), T(Pr), T(Rc), null));
        Assert.AreEqual("referenceRejectedLogps", ex.ParamName);
    }

    [TestMethod]
    public void NullPolicyOrOptionsAreRejected()
    {
        using var scope = NewDisposeScope();
        Assert.AreEqual("options", Assert.ThrowsExactly<ArgumentNullException>(() => PreferenceLoss.Compute(null!, T(Pc), T(Pr), T(Rc), T(Rr))).ParamName);
        Assert.AreEqual("policyRejectedLogps", Assert.ThrowsExactly<ArgumentNullException>(() => PreferenceLoss.Compute(new(), T(Pc), null!, T(Rc), T(Rr))).ParamName);
    }

    [TestMethod]
    public void MismatchedShapesNameBothShapes()
    {
        using var scope = NewDisposeScope();
        var ex = Assert.ThrowsExactly<ArgumentException>(() => PreferenceLoss.Compute(new(), T(1, 2, 3), T(1, 2), T(1, 2, 3), T(1, 2, 3)));
        Assert.AreEqual("policyRejectedLogps", ex.ParamName);
        StringAssert.Contains(ex.Message, "[2]");
        StringAssert.Contains(ex.Message, "[3]");
        ex = Assert.ThrowsExactly<ArgumentException>(() => PreferenceLoss.Compute(new(), T(1, 2, 3), T(1, 2, 3), T(1, 2, 3), T(1, 2, 3, 4)));
        Assert.AreEqual("referenceRejectedLogps", ex.ParamName);
        StringAssert.Contains(ex.Message, "[4]");
        StringAssert.Contains(ex.Message, "[3]");
    }

    [TestMethod]
    public void NonVectorAndIntegerInputsAreRejected()
    {
        using var scope = NewDisposeScope();
        var m = tensor(new double[] { 1, 2, 3, 4 }, 2, 2);
        var ex = Assert.ThrowsExactly<ArgumentException>(() => PreferenceLoss.Compute(new(), m, m, m, m));
        StringAssert.Contains(ex.Message, "1-D");
        StringAssert.Contains(ex.Message, "[2, 2]");
        var scalar = tensor(1.0);
        Assert.ThrowsExactly<ArgumentException>(() => PreferenceLoss.Compute(new(), scalar, scalar, scalar, scalar));
        var ints = tensor(new long[] { 1, 2 });
        ex = Assert.ThrowsExactly<ArgumentException>(() => PreferenceLoss.Compute(new(), ints, ints, ints, ints));
        StringAssert.Contains(ex.Message, "floating-point");
    }

    [TestMethod]
    [DataRow(PreferenceLossKind.Sigmoid, 0.0)]
    [DataRow(PreferenceLossKind.Ipo, 0.0)]
    [DataRow(PreferenceLossKind.Ipo, -0.1)]
    [DataRow(PreferenceLossKind.SimPO, double.NaN)]
    [DataRow(PreferenceLossKind.Hinge, double.PositiveInfinity)]
    public void BetaMustBePositive(PreferenceLossKind kind, double beta)
    {
        using var scope = NewDisposeScope();
        var o = new PreferenceLossOptions { Kind = kind, Beta = beta };
        var ex = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => PreferenceLoss.Compute(o, T(Pc), T(Pr), T(Rc), T(Rr)));
        Assert.AreEqual("Beta", ex.ParamName);
        StringAssert.Contains(ex.Message, "greater than 0");
    }

    [TestMethod]
    [DataRow(PreferenceLossKind.Sigmoid, 0.5)]
    [DataRow(PreferenceLossKind.Robust, 0.5)]
    [DataRow(PreferenceLossKind.Robust, 0.7)]
    [DataRow(PreferenceLossKind.Sigmoid, -0.1)]
    [DataRow(PreferenceLossKind.Robust, double.NaN)]
    public void LabelSmoothingMustLieInZeroToHalf(PreferenceLossKind kind, double eps)
    {
        using var scope = NewDisposeScope();
        var o = new PreferenceLossOptions { Kind = kind, LabelSmoothing = eps };
        var ex = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => PreferenceLoss.Compute(o, T(Pc), T(Pr), T(Rc), T(Rr)));
        Assert.AreEqual("LabelSmoothing", ex.ParamName);
        StringAssert.Contains(ex.Message, "[0, 0.5)");
    }

    [TestMethod]
    public void GammaMustBeFiniteAndNonNegative()
    {
        var ex = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new PreferenceLossOptions { Kind = PreferenceLossKind.SimPO, Gamma = -1 }.Validate());
        Assert.AreEqual("Gamma", ex.ParamName);
        new PreferenceLossOptions { Kind = PreferenceLossKind.SimPO, Gamma = 0 }.Validate();
    }

    [TestMethod]
    public void OptionsDescribeThemselves()
    {
        Assert.AreEqual("Sigmoid(β=0.1, ε=0)", new PreferenceLossOptions().ToString());
        Assert.AreEqual("SimPO(β=2, γ=0.5)", new PreferenceLossOptions { Kind = PreferenceLossKind.SimPO, Beta = 2 }.ToString());
        var c = new PreferenceLossOptions { Kind = PreferenceLossKind.Ipo, Beta = 0.3 }.Clone();
        Assert.AreEqual(PreferenceLossKind.Ipo, c.Kind);
        Assert.AreEqual(0.3, c.Beta);
    }

    [TestMethod]
    public void DisposedInputsAreReported()
    {
        using var scope = NewDisposeScope();
        var pc = T(Pc);
        pc.Dispose();
        var ex = Assert.ThrowsExactly<ObjectDisposedException>(() => PreferenceLoss.Compute(new(), pc, T(Pr), T(Rc), T(Rr)));
        StringAssert.Contains(ex.Message, "policyChosenLogps");
    }
}
