using Microsoft.ML.Dpo.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Training;

[TestClass]
public sealed class TrainingLoopTests
{
    /// <summary>A toy objective: least squares of a linear model on (x, y = 3x − 1), with an optional NaN at a chosen call.</summary>
    sealed class LinearObjective(Linear model, int nanAtCall = -1) : ITrainingObjective<(float X, float Y)>
    {
        int calls;
        public ObjectiveResult Compute(IReadOnlyList<(float X, float Y)> batch)
        {
            calls++;
            var x = tensor(batch.Select(e => e.X).ToArray()).unsqueeze(1);
            var y = tensor(batch.Select(e => e.Y).ToArray()).unsqueeze(1);
            var loss = nn.functional.mse_loss(model.forward(x), y);
            if (calls == nanAtCall) loss = loss * float.NaN;
            return new ObjectiveResult(loss, new Dictionary<string, double> { ["loss"] = loss.item<float>() }, batch.Count);
        }
    }

    static readonly (float X, float Y)[] Data = Enumerable.Range(0, 24).Select(i => (i / 12f - 1f, 3 * (i / 12f - 1f) - 1)).ToArray();

    static Linear NewModel() { manual_seed(7); return nn.Linear(1, 1); }

    static TrainingOptions Options(string? dir, int epochs = 3) => new()
    {
        Epochs = epochs, BatchSize = 4, GradientAccumulationSteps = 2, LearningRate = 0.1, WarmupSteps = 2,
        Schedule = LearningRateScheduleKind.Cosine, LoggingInterval = 1, CheckpointDirectory = dir, Seed = 3,
    };

    static TrainingCheckpoint Checkpoint(string dir, Linear model) =>
        new(dir, d => model.save(Path.Combine(d, "weights.bin")), d => model.load(Path.Combine(d, "weights.bin")));

    static float[] Weights(Linear m) => m.parameters().SelectMany(p => p.data<float>().ToArray()).ToArray();

    [TestMethod]
    public void LossDecreasesAndMetricsAreWritten()
    {
        using var dir = new TempDirectory();
        using var model = NewModel();
        var reports = new List<TrainingProgress>();
        var options = Options(dir.Path, epochs: 6);
        options.LearningRate = 0.5; // Adam moves each weight by about lr per step; w must travel from its init to 3
        options.Progress = new SyncProgress(reports.Add);
        var summary = new TrainingLoop<(float, float)>(options, model.parameters().ToList(), new LinearObjective(model), Checkpoint(dir.Path, model), "toy").Run(Data);
        Assert.AreEqual(18, summary.Steps, "24 examples / batch 4 = 6 micro-batches = 3 steps per epoch, 6 epochs");
        Assert.IsTrue(reports[^1].Metrics["loss"] < reports[0].Metrics["loss"] / 4, $"{reports[0].Metrics["loss"]} -> {reports[^1].Metrics["loss"]}");
        var lines = File.ReadAllLines(summary.MetricsFile!);
        Assert.AreEqual(18, lines.Length);
        StringAssert.Contains(lines[0], "\"learning_rate\"");
        StringAssert.Contains(lines[0], "\"grad_norm\"");
    }

    [TestMethod]
    public void CancelledAndResumedRunEndsWithTheSameWeights()
    {
        using var dirA = new TempDirectory();
        using var dirB = new TempDirectory();
        using var uninterrupted = NewModel();
        new TrainingLoop<(float, float)>(Options(dirA.Path), uninterrupted.parameters().ToList(), new LinearObjective(uninterrupted), Checkpoint(dirA.Path, uninterrupted), "toy").Run(Data);

        using (var first = NewModel())
        {
            using var cancel = new CancellationTokenSource();
            var options = Options(dirB.Path);
            options.CancellationToken = cancel.Token;
            options.Progress = new SyncProgress(p => { if (p.Step == 4) cancel.Cancel(); });
            Assert.ThrowsExactly<OperationCanceledException>(() =>
                new TrainingLoop<(float, float)>(options, first.parameters().ToList(), new LinearObjective(first), Checkpoint(dirB.Path, first), "toy").Run(Data));
        }
        using var resumed = NewModel();
        var resumeOptions = Options(dirB.Path);
        resumeOptions.Resume = true;
        var summary = new TrainingLoop<(float, float)>(resumeOptions, resumed.parameters().ToList(), new LinearObjective(resumed), Checkpoint(dirB.Path, resumed), "toy").Run(Data);
        Assert.AreEqual(9, summary.Steps);
        CollectionAssert.AreEqual(Weights(uninterrupted), Weights(resumed));
        Assert.AreEqual(9, File.ReadAllLines(summary.MetricsFile!).Length, "the resumed run appends to the metrics file");
    }

    [TestMethod]
    public void NaNLossStopsNamingTheStepAndKeepsTheLastCheckpoint()
    {
        using var dir = new TempDirectory();
        using var model = NewModel();
        var options = Options(dir.Path);
        options.CheckpointInterval = 2;
        // Micro-batch call 9 is the first of step 5 (two micro-batches per step).
        var loop = new TrainingLoop<(float, float)>(options, model.parameters().ToList(), new LinearObjective(model, nanAtCall: 9), Checkpoint(dir.Path, model), "toy");
        float[] before = [];
        options.Progress = new SyncProgress(p => { if (p.Step == 4) before = Weights(model); });
        var e = Assert.ThrowsExactly<TrainingDivergedException>(() => loop.Run(Data));
        StringAssert.Contains(e.Message, "step 5");
        StringAssert.Contains(e.Message, Path.Combine(dir.Path, "checkpoint"));
        CollectionAssert.AreEqual(before, Weights(model), "the diverged step was not applied");
        StringAssert.Contains(File.ReadAllText(Path.Combine(dir.Path, "checkpoint", "trainer_state.json")), "\"Step\":4");
    }

    [TestMethod]
    public void ResumingWithAnotherFingerprintIsRefused()
    {
        using var dir = new TempDirectory();
        using var model = NewModel();
        new TrainingLoop<(float, float)>(Options(dir.Path, 1), model.parameters().ToList(), new LinearObjective(model), Checkpoint(dir.Path, model), "data-A").Run(Data);
        var options = Options(dir.Path, 1);
        options.Resume = true;
        var e = Assert.ThrowsExactly<InvalidOperationException>(() =>
            new TrainingLoop<(float, float)>(options, model.parameters().ToList(), new LinearObjective(model), Checkpoint(dir.Path, model), "data-B").Run(Data));
        StringAssert.Contains(e.Message, "other data or options");
    }

    /// <summary>IProgress that reports synchronously (Progress&lt;T&gt; posts to the thread pool).</summary>
    sealed class SyncProgress(Action<TrainingProgress> report) : IProgress<TrainingProgress>
    {
        public void Report(TrainingProgress value) => report(value);
    }
}
