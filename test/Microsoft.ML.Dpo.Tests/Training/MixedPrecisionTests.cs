using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Losses;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tests.Modeling;
using Microsoft.ML.Dpo.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Training;

/// <summary>
/// Issue 18, mixed precision: bf16 and fp16 matmuls over float32 master weights (<see cref="ComputePrecision"/>) and fp16's
/// dynamic loss scaling (<see cref="LossScaler"/>) in the training loop.
/// </summary>
/// <remarks>
/// <para><b>Tolerances.</b> A half type keeps p bits of significand (bfloat16 p = 8, float16 p = 11), so rounding an operand
/// to it changes it by a relative u = 2^-p at most (bf16: 3.9e-3, fp16: 4.9e-4). A matmul rounds both operands, so each product
/// moves by at most 2u relatively; summed in float32 over K terms of random sign, the perturbations add like a random walk,
/// as the output itself does, so each matmul's output carries a relative error of about 2u. The tiny Llama chains S = 2L + 1
/// matmul stages (attention projections, then the MLP, per layer, then the head), and errors of successive stages add: the
/// logits, log-probabilities and loss are within about 2u·S of float32 relative to their scale, and so is the gradient (its
/// backward pass is the same chain, transposed). The tests allow exactly <c>Bound(u) = 2u·S</c> (bf16: 3.9 %, fp16: 0.49 %).
/// These are bounds on typical error, derived, not fitted: the test fails if any matmul ran in the wrong dtype (error 0 or far
/// beyond), and the fp16 bound is eight times tighter than bf16's, as the mantissas say.</para>
/// </remarks>
[TestClass]
public sealed class MixedPrecisionTests
{
    const double BFloat16Unit = 1.0 / 256, Float16Unit = 1.0 / 2048;   // 2^-8, 2^-11

    static CausalLMConfig Config() => TinyModels.Llama(tied: false);

    static double Bound(double unit) => 2 * unit * (2 * Config().NumHiddenLayers + 1);

    /// <summary>The tiny Llama with weights ~N(0, 0.1) instead of 0.02, so logits are O(1) and the loss is not just log V.</summary>
    static CausalLM Model(int seed = 5)
    {
        manual_seed(seed);
        var model = CausalLM.Create(Config());
        using var _ = no_grad();
        foreach (var p in model.parameters())
            if (p.dim() >= 2) p.mul_(5);
        return model;
    }

    static int[] Tokens(Random random, int count) => Enumerable.Range(0, count).Select(_ => random.Next(4, 101)).ToArray();

    static List<TokenizedCompletion> SftData(int count = 8)
    {
        var random = new Random(11);
        return Enumerable.Range(0, count).Select(i => new TokenizedCompletion(Tokens(random, 3 + i % 3), [.. Tokens(random, 4 + i % 4), 2], i, i)).ToList();
    }

    static List<TokenizedPreference> PairData(int count = 4)
    {
        var random = new Random(13);
        return Enumerable.Range(0, count).Select(i => new TokenizedPreference(Tokens(random, 3 + i % 2), [.. Tokens(random, 3 + i % 3), 2], [.. Tokens(random, 5 - i % 3), 2], i, i)).ToList();
    }

    static ScalarType? DType(MixedPrecisionKind kind) => kind switch
    {
        MixedPrecisionKind.BFloat16 => ScalarType.BFloat16,
        MixedPrecisionKind.Float16 => ScalarType.Float16,
        _ => null,
    };

    /// <summary>Loss (as computed, and its dtype) and the flattened float64 gradient of every parameter (their dtypes checked) of one objective call.</summary>
    static (double Loss, ScalarType LossType, double[] Gradient) LossAndGradient<T>(CausalLM model, ITrainingObjective<T> objective, IReadOnlyList<T> batch, ScalarType? dtype)
    {
        using var scope = NewDisposeScope();
        model.zero_grad();
        double loss;
        ScalarType lossType;
        using (ComputePrecision.Use(dtype))
        {
            var result = objective.Compute(batch);
            (loss, lossType) = (result.Loss.ToDouble(), result.Loss.dtype);
            result.Loss.backward();
        }
        var gradient = new List<double>();
        foreach (var (name, p) in model.named_parameters().Where(p => p.parameter.requires_grad))
        {
            Assert.AreEqual(ScalarType.Float32, p.dtype, $"{name}: master weight");
            Assert.IsNotNull(p.grad, $"{name}: no gradient");
            Assert.AreEqual(ScalarType.Float32, p.grad.dtype, $"{name}: gradient");
            gradient.AddRange(p.grad.to(float64).data<double>().ToArray());
        }
        model.zero_grad();
        return (loss, lossType, gradient.ToArray());
    }

    static double RelativeError(double[] expected, double[] actual)
    {
        double diff = 0, norm = 0;
        for (int i = 0; i < expected.Length; i++) { diff += (actual[i] - expected[i]) * (actual[i] - expected[i]); norm += expected[i] * expected[i]; }
        return Math.Sqrt(diff / norm);
    }

    static void AssertWithinBound<T>(CausalLM model, ITrainingObjective<T> objective, IReadOnlyList<T> batch, string what)
    {
        var exact = LossAndGradient(model, objective, batch, null);
        Assert.AreEqual(ScalarType.Float32, exact.LossType);
        foreach (var (kind, unit) in new[] { (MixedPrecisionKind.BFloat16, BFloat16Unit), (MixedPrecisionKind.Float16, Float16Unit) })
        {
            var mixed = LossAndGradient(model, objective, batch, DType(kind));
            Assert.AreEqual(ScalarType.Float32, mixed.LossType, $"{what} {kind}: the loss is float32");
            double lossError = Math.Abs(mixed.Loss - exact.Loss) / Math.Abs(exact.Loss), gradientError = RelativeError(exact.Gradient, mixed.Gradient);
            Console.WriteLine($"{what} {kind}: loss {exact.Loss:R} vs {mixed.Loss:R} (relative {lossError:E2}), gradient relative error {gradientError:E2}, bound {Bound(unit):E2}");
            Assert.IsTrue(lossError <= Bound(unit), $"{what} {kind}: loss relative error {lossError:E3} > {Bound(unit):E3}");
            Assert.IsTrue(gradientError <= Bound(unit), $"{what} {kind}: gradient relative error {gradientError:E3} > {Bound(unit):E3}");
            Assert.IsTrue(lossError > 0 && gradientError > 0, $"{what} {kind}: identical to float32, so the matmuls did not run in half precision");
        }
    }

    [TestMethod]
    public void SftLossAndGradient_AreWithinTheRoundingBoundOfFloat32()
    {
        using var model = Model();
        AssertWithinBound(model, new SftObjective(model, 0, completionOnlyLoss: true), SftData(4), "SFT");
    }

    [TestMethod]
    public void DpoLossAndGradient_AreWithinTheRoundingBoundOfFloat32()
    {
        using var model = Model();
        using var reference = Model(seed: 6);
        foreach (var p in reference.parameters()) p.requires_grad = false;
        var objective = new DpoObjective(model, new ReferenceLogProbs.Live(reference), new PreferenceLossOptions { Beta = 1 }, new DpoStepOptions(), 0);
        AssertWithinBound(model, objective, PairData(), "DPO");
    }

    /// <summary>Every architecture runs under both compute dtypes (no dtype mismatch in any attention, MLP, MoE or head variant) and stays near float32.</summary>
    [TestMethod]
    public void EveryArchitecture_ForwardsUnderMixedPrecision_CloseToFloat32()
    {
        foreach (string architecture in ModelPresets.Architectures)
        {
            using var scope = NewDisposeScope();
            manual_seed(3);
            using var model = CausalLM.Create(ModelPresets.Create(architecture, "tiny", 101, 1, 2));
            using var _ = no_grad();
            var ids = tensor(Tokens(new Random(2), 12).Select(i => (long)i).ToArray(), 2, 6);
            var exact = model.Forward(ids);
            double scale = exact.abs().max().ToDouble();
            foreach (var (kind, unit) in new[] { (MixedPrecisionKind.BFloat16, BFloat16Unit), (MixedPrecisionKind.Float16, Float16Unit) })
            {
                Tensor mixed;
                using (ComputePrecision.Use(DType(kind))) mixed = model.Forward(ids);
                Assert.AreEqual(ScalarType.Float32, mixed.dtype, $"{architecture} {kind}: logits");
                double error = (mixed - exact).abs().max().ToDouble() / scale;
                // Two layers, as the Llama above, but every variant: the same derived bound, on the largest logit.
                Assert.IsTrue(error > 0 && error <= 2 * unit * 5, $"{architecture} {kind}: max |Δlogit| / max |logit| = {error:E3}");
            }
            Assert.IsTrue(model.parameters().All(p => p.dtype == ScalarType.Float32), architecture);
        }
    }

    [TestMethod]
    public void LoraAdapters_ComputeInHalfPrecision_AndGetFloat32Gradients()
    {
        using var model = Model();
        Dpo.Lora.LoraAdapters.Apply(model, new Dpo.Lora.LoraOptions { Rank = 4 });
        using (no_grad())
            foreach (var (name, p) in model.named_parameters())
                if (name.Contains("lora_B")) p.normal_(0, 0.1);     // non-zero B, so the adapters change the output
        var objective = new SftObjective(model, 0, completionOnlyLoss: true);
        var exact = LossAndGradient(model, objective, SftData(4), null);
        var mixed = LossAndGradient(model, objective, SftData(4), ScalarType.BFloat16);
        Assert.IsTrue(Math.Abs(mixed.Loss - exact.Loss) / exact.Loss <= Bound(BFloat16Unit));
        Assert.IsTrue(RelativeError(exact.Gradient, mixed.Gradient) <= Bound(BFloat16Unit));
    }

    [TestMethod]
    public void MixedForwardAndBackward_LeaveNoTensorsAlive()
    {
        using var model = Model();
        var objective = new SftObjective(model, 0, completionOnlyLoss: true);
        var data = SftData(4);
        void Step()
        {
            using var scope = NewDisposeScope();
            using (ComputePrecision.Use(ScalarType.BFloat16)) objective.Compute(data).Loss.backward();
        }
        Step();   // gradients allocated once
        GC.Collect(); GC.WaitForPendingFinalizers();
        long before = torch.Tensor.TotalCount, liveBefore = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        for (int i = 0; i < 5; i++) Step();
        GC.Collect(); GC.WaitForPendingFinalizers();
        Assert.AreEqual(before, torch.Tensor.TotalCount, "live tensors grew over 5 mixed-precision steps");
        Assert.AreEqual(liveBefore, DisposeScopeManager.Statistics.ThreadTotalLiveCount, "dispose-scope live count grew");
        Assert.IsNull(ComputePrecision.Current, "the compute dtype is restored after the scope");
    }

    // ---- the training loop ----

    static TrainingOptions LoopOptions(MixedPrecisionKind kind, string? dir = null, int steps = 30) => new()
    {
        Epochs = 100, BatchSize = 2, LearningRate = 3e-3, Schedule = LearningRateScheduleKind.Constant, LoggingInterval = 1, MaxSteps = steps,
        MixedPrecision = kind, CheckpointDirectory = dir, Seed = 3,
    };

    static TrainingCheckpoint Checkpoint(string dir, CausalLM model) =>
        new(dir, d => model.save(Path.Combine(d, "weights.bin")), d => model.load(Path.Combine(d, "weights.bin")));

    static float[] Weights(CausalLM model) => model.parameters().SelectMany(p => p.data<float>().ToArray()).ToArray();

    static (List<double> Losses, List<string> Log) Train(CausalLM model, TrainingOptions options, string? dir = null)
    {
        var losses = new List<double>();
        var log = new List<string>();
        options.Progress = new SyncProgress(p => losses.Add(p.Metrics["loss"]));
        new TrainingLoop<TokenizedCompletion>(options, model.parameters().ToList(), new SftObjective(model, 0, completionOnlyLoss: true),
            dir is null ? null : Checkpoint(dir, model), "mixed", log.Add).Run(SftData());
        return (losses, log);
    }

    [TestMethod]
    public void ShortRun_LossDecreasesAsInFloat32_AndAdamStateIsFloat32()
    {
        var curves = new Dictionary<MixedPrecisionKind, List<double>>();
        foreach (var kind in Enum.GetValues<MixedPrecisionKind>())
        {
            using var dir = new TempDirectory();
            using var model = Model();
            var (losses, _) = Train(model, LoopOptions(kind, dir.Path), dir.Path);
            curves[kind] = losses;
            Assert.IsTrue(model.parameters().All(p => p.dtype == ScalarType.Float32), $"{kind}: master weights");
            // AdamW keeps exp_avg and exp_avg_sq per weight: 8 bytes per float32 weight (4 if its state were half precision).
            long weights = model.parameters().Sum(p => p.numel());
            long optimizerBytes = new FileInfo(Path.Combine(dir.Path, "checkpoint", "optimizer.bin")).Length;
            Assert.IsTrue(optimizerBytes >= 8 * weights && optimizerBytes < 8 * weights + 64 * 1024, $"{kind}: optimizer state {optimizerBytes} bytes for {weights} weights");
        }
        double fp32Drop = curves[MixedPrecisionKind.None][0] - curves[MixedPrecisionKind.None][^1];
        Assert.IsTrue(fp32Drop > 0.5, $"float32 itself learns: {string.Join(", ", curves[MixedPrecisionKind.None])}");
        foreach (var kind in new[] { MixedPrecisionKind.BFloat16, MixedPrecisionKind.Float16 })
        {
            var curve = curves[kind];
            // fp16 starts at GradScaler's 2^16, which may overflow in the first steps (skipped): compare where both trained.
            double drop = curve[0] - curve[^1];
            Console.WriteLine($"{kind}: {curve[0]:F4} -> {curve[^1]:F4} (float32 {curves[MixedPrecisionKind.None][0]:F4} -> {curves[MixedPrecisionKind.None][^1]:F4})");
            Assert.IsTrue(drop >= 0.8 * fp32Drop, $"{kind} drops the loss by {drop:F4}, float32 by {fp32Drop:F4}");
            Assert.IsTrue(Math.Abs(curve[^1] - curves[MixedPrecisionKind.None][^1]) <= 0.1 * curves[MixedPrecisionKind.None][^1],
                $"{kind} ends at {curve[^1]:F4}, float32 at {curves[MixedPrecisionKind.None][^1]:F4}");
        }
    }

    [TestMethod]
    public void Float16LossScaling_SkipsOverflowingSteps_AndResumesExactly()
    {
        // 2^30 overflows float16 for certain (the logits' gradients are about 1e-2 × 2^30 ≫ 65,504): the first steps are skipped,
        // halving the scale, until it fits; with a growth interval of 3 it then doubles, overflows again, and so on.
        TrainingOptions Options(string dir, int steps)
        {
            var o = LoopOptions(MixedPrecisionKind.Float16, dir, steps);
            o.InitialLossScale = Math.Pow(2, 30);
            o.LossScaleGrowthInterval = 3;
            return o;
        }

        // One skipped step changes nothing and halves the scale.
        using (var dir = new TempDirectory())
        using (var model = Model())
        {
            var before = Weights(model);
            var (_, log) = Train(model, Options(dir.Path, 1), dir.Path);
            CollectionAssert.AreEqual(before, Weights(model), "a skipped step leaves the weights as they were");
            Assert.AreEqual(1, log.Count(l => l.Contains("float16 gradients overflowed at loss scale 1073741824; the step is skipped and the scale lowered to 536870912")), string.Join("\n", log));
            var state = TrainingCheckpoint.ReadState(Path.Combine(dir.Path, "checkpoint", "trainer_state.json"));
            Assert.AreEqual(Math.Pow(2, 29), state.LossScale);
            Assert.AreEqual(1, state.Step, "a skipped step still counts (its data were used)");
        }

        const int total = 40, split = 22;
        float[] straight;
        double? straightScale;
        int skipped;
        using (var dir = new TempDirectory())
        using (var model = Model())
        {
            var (losses, log) = Train(model, Options(dir.Path, total), dir.Path);
            straight = Weights(model);
            skipped = log.Count(l => l.Contains("overflowed"));
            straightScale = TrainingCheckpoint.ReadState(Path.Combine(dir.Path, "checkpoint", "trainer_state.json")).LossScale;
            Assert.IsTrue(skipped >= 15 && skipped < total - 10, $"{skipped} of {total} steps skipped");
            Assert.IsTrue(losses[^1] < losses[0], "the steps taken train");
            Assert.IsTrue(log.All(l => !l.Contains("stopped")));
        }
        using (var dir = new TempDirectory())
        {
            using (var model = Model())
                Train(model, Options(dir.Path, split), dir.Path);
            using var resumed = Model();
            var options = Options(dir.Path, total);
            options.Resume = true;
            var (_, log) = Train(resumed, options, dir.Path);
            StringAssert.Contains(log[0], $"at step {split}");
            CollectionAssert.AreEqual(straight, Weights(resumed), "interrupted and resumed = straight through, scaler state included");
            Assert.AreEqual(straightScale, TrainingCheckpoint.ReadState(Path.Combine(dir.Path, "checkpoint", "trainer_state.json")).LossScale);
        }
    }

    [TestMethod]
    public void Float16_NonFiniteUnscaledLoss_StillStopsTraining()
    {
        using var model = Model();
        var options = LoopOptions(MixedPrecisionKind.Float16, steps: 5);
        var objective = new NaNAt<TokenizedCompletion>(new SftObjective(model, 0, completionOnlyLoss: true), call: 3);
        var error = Assert.ThrowsExactly<TrainingDivergedException>(() =>
            new TrainingLoop<TokenizedCompletion>(options, model.parameters().ToList(), objective, null, "nan").Run(SftData()));
        StringAssert.StartsWith(error.Message, "The loss became NaN at step 3");
    }

    [TestMethod]
    public void LossScaler_GrowsAfterTheInterval_HalvesOnOverflow_AndStopsBelowOne()
    {
        var scaler = new LossScaler(8, growthInterval: 2);
        scaler.Stepped();
        Assert.AreEqual(8, scaler.Scale);
        scaler.Stepped();
        Assert.AreEqual(16, scaler.Scale);
        Assert.AreEqual(0, scaler.GoodSteps);
        scaler.Stepped();
        Assert.IsTrue(scaler.Overflowed());
        Assert.AreEqual((8.0, 0), (scaler.Scale, scaler.GoodSteps), "an overflow halves and resets the count");
        var low = new LossScaler(1);
        Assert.IsFalse(low.Overflowed(), "below a scale of 1 the overflow is a divergence");
    }

    [TestMethod]
    public void MixedPrecisionOverHalfWeights_IsRefusedInOneLine()
    {
        var options = new TrainingOptions { MixedPrecision = MixedPrecisionKind.BFloat16, Precision = ModelPrecision.BFloat16 };
        var error = Assert.ThrowsExactly<ArgumentException>(options.Validate);
        StringAssert.StartsWith(error.Message, "MixedPrecision BFloat16 computes in half precision over float32 master weights, so it needs Precision = Float32, not BFloat16");

        manual_seed(1);
        using var half = CausalLM.Create(Config(), ScalarType.BFloat16);
        var loop = new TrainingLoop<TokenizedCompletion>(LoopOptions(MixedPrecisionKind.Float16, steps: 1), half.parameters().ToList(),
            new SftObjective(half, 0, completionOnlyLoss: true), null, "half");
        var refused = Assert.ThrowsExactly<ArgumentException>(() => loop.Run(SftData()));
        StringAssert.StartsWith(refused.Message, "MixedPrecision Float16 keeps float32 master weights, but the trainable weights are BFloat16");
    }

    [TestMethod]
    public void EveryTrainingVerb_HasTheMixedPrecisionFlag()
    {
        var verbs = MlDpo.Commands.CliApp.Build().Subcommands.Where(v => v.Options.Any(o => o.Name == "--max-steps")).ToList();
        Assert.IsTrue(verbs.Count >= 4, string.Join(", ", verbs.Select(v => v.Name)));
        foreach (var verb in verbs)
            Assert.IsTrue(verb.Options.Any(o => o.Name == "--mixed-precision"), verb.Name);
    }

    [TestMethod]
    public void Cli_DpoWithBf16MixedPrecision_Trains_AndAnUnknownKindIsRefused()
    {
        using var dir = new TempDirectory();
        Assert.AreEqual(0, CliRunner.Run("init", "--preset", "tiny", "--tokenizer", "bytes", "--output", dir.Combine("base")).Code);
        string data = dir.Combine("pairs.jsonl");
        File.WriteAllLines(data, new[] { "apples", "rivers", "clouds", "tigers" }.Select(s =>
            System.Text.Json.JsonSerializer.Serialize(new { prompt = $"Tell me about {s}.\n", chosen = $"{s} are lovely.", rejected = "No." })));
        string[] Args(string kind) => ["dpo", "--model", dir.Combine("base"), "--data", data, "--output", dir.Combine("out-" + kind), "--max-steps", "2",
            "--batch-size", "2", "--max-length", "48", "--logging-steps", "1", "--mixed-precision", kind];
        var run = CliRunner.Run(Args("bf16"));
        Assert.AreEqual(0, run.Code, run.Error);
        Assert.AreEqual(2, File.ReadAllLines(Path.Combine(dir.Combine("out-bf16"), "metrics.jsonl")).Length);
        var refused = CliRunner.Run(Args("fp8"));
        Assert.AreNotEqual(0, refused.Code);
        StringAssert.Contains(refused.Error, "fp8");
    }

    sealed class NaNAt<T>(ITrainingObjective<T> inner, int call) : ITrainingObjective<T>
    {
        int calls;
        public ObjectiveResult Compute(IReadOnlyList<T> batch)
        {
            var result = inner.Compute(batch);
            return ++calls == call ? result with { Loss = result.Loss * float.NaN } : result;
        }
    }

    sealed class SyncProgress(Action<TrainingProgress> report) : IProgress<TrainingProgress>
    {
        public void Report(TrainingProgress value) => report(value);
    }
}
