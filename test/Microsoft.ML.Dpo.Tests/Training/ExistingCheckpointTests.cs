using System.Text.Json;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tests.Trainers;
using Microsoft.ML.Dpo.Tokenization;
using Microsoft.ML.Dpo.Trainers;
using Microsoft.ML.Dpo.Training;

namespace Microsoft.ML.Dpo.Tests.Training;

/// <summary>What training does with the checkpoint folder of an earlier run, its stale temporary folders and its metrics.</summary>
[TestClass]
public sealed class ExistingCheckpointTests
{
    sealed class SyncProgress(Action<TrainingProgress> report) : IProgress<TrainingProgress>
    {
        public void Report(TrainingProgress value) => report(value);
    }

    static IDataView Data(MLContext ml) => ml.Data.LoadFromEnumerable(StylePreferenceTask.MostlyCurtCompletions(StylePreferenceTask.TrainSubjects[..8]));

    static SftTrainer.Options Options(LanguageModel baseModel, string checkpoints, Action<SftTrainer.Options>? configure = null)
    {
        // 8 examples, batch 2, one epoch: 4 steps.
        var o = new SftTrainer.Options { BaseModel = baseModel, Epochs = 1, BatchSize = 2, LearningRate = 1e-3, MaxLength = 64, MaxPromptLength = 40, LoggingInterval = 1, CheckpointDirectory = checkpoints };
        configure?.Invoke(o);
        return o;
    }

    static LanguageModelTransformer Fit(SftTrainer.Options options) => new MLContext(seed: 0).Alignment().Trainers.Sft(options).Fit(Data(new MLContext(seed: 0)));

    static int CheckpointStep(string checkpoints) =>
        JsonDocument.Parse(File.ReadAllText(Path.Combine(checkpoints, "checkpoint", "trainer_state.json"))).RootElement.GetProperty("Step").GetInt32();

    static int[] MetricSteps(string checkpoints) =>
        File.ReadAllLines(Path.Combine(checkpoints, "metrics.jsonl")).Select(l => JsonDocument.Parse(l).RootElement.GetProperty("step").GetInt32()).ToArray();

    [TestMethod]
    public void ExistingCheckpoint_IsRefusedByDefault_RestartDiscardsIt_ResumeTrueStillResumes()
    {
        using var dir = new TempDirectory();
        using var baseModel = StylePreferenceTask.CreateBaseModel(dir.Path);
        string checkpoints = dir.Combine("ckpt");
        Fit(Options(baseModel, checkpoints)).Dispose();
        Assert.AreEqual(4, CheckpointStep(checkpoints));

        // A second run with other options (MaxSteps 1) must not silently replace the step-4 checkpoint.
        var e = Assert.ThrowsExactly<InvalidOperationException>(() => Fit(Options(baseModel, checkpoints, o => o.MaxSteps = 1)));
        StringAssert.Contains(e.Message, "step 4 of 4");
        StringAssert.Contains(e.Message, "ExistingCheckpoint = Resume");
        StringAssert.Contains(e.Message, "--restart");
        Assert.AreEqual(4, CheckpointStep(checkpoints), "the earlier checkpoint is kept");

        using (var restarted = Fit(Options(baseModel, checkpoints, o => { o.MaxSteps = 1; o.ExistingCheckpoint = ExistingCheckpointAction.Restart; })))
            Assert.AreEqual(1, restarted.TrainingSummary!.Steps);
        Assert.AreEqual(1, CheckpointStep(checkpoints));
        CollectionAssert.AreEqual(new[] { 1 }, MetricSteps(checkpoints), "the earlier run's metrics were discarded");

        using var resumed = Fit(Options(baseModel, checkpoints, o => { o.MaxSteps = 1; o.Resume = true; }));
        Assert.AreEqual(ExistingCheckpointAction.Resume, Options(baseModel, checkpoints, o => o.Resume = true).ExistingCheckpoint);
        Assert.AreEqual(1, resumed.TrainingSummary!.Steps, "resumed at its last step: nothing left to do");
    }

    [TestMethod]
    public void ResumeAfterACrash_RemovesStaleTempFolders_AndLeavesNoDuplicateMetricRows()
    {
        using var dir = new TempDirectory();
        using var baseModel = StylePreferenceTask.CreateBaseModel(dir.Path);
        string checkpoints = dir.Combine("ckpt");
        // A crash at step 3 (the progress sink throws after the step-3 row was logged), with checkpoints every 2 steps: the
        // checkpoint is at step 2, metrics.jsonl already holds step 3, which the resumed run replays.
        var crashing = Options(baseModel, checkpoints, o =>
        {
            o.CheckpointInterval = 2;
            o.Progress = new SyncProgress(p => { if (p.Step == 3) throw new IOException("simulated crash"); });
        });
        Assert.ThrowsExactly<IOException>(() => Fit(crashing));
        Assert.AreEqual(2, CheckpointStep(checkpoints));
        CollectionAssert.AreEqual(new[] { 1, 2, 3 }, MetricSteps(checkpoints));

        // What a kill during a checkpoint write leaves, and folders that only look similar.
        string stale = Path.Combine(checkpoints, ".checkpoint.tmp-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path.Combine(stale, "model"));
        File.WriteAllText(Path.Combine(stale, "model", "model.safetensors"), "partial");
        string notOurs = Path.Combine(checkpoints, ".checkpoint.tmp-keep");
        Directory.CreateDirectory(notOurs);

        var lines = new List<string>();
        using var resumed = Fit(Options(baseModel, checkpoints, o => { o.CheckpointInterval = 2; o.Resume = true; o.Log = lines.Add; }));
        Assert.AreEqual(4, resumed.TrainingSummary!.Steps);
        Assert.IsFalse(Directory.Exists(stale), "the stale temporary folder was removed");
        Assert.IsTrue(Directory.Exists(notOurs), "only our own naming pattern is removed");
        Assert.IsTrue(lines.Any(l => l.Contains("Removed 1 temporary folder")), string.Join("\n", lines));
        CollectionAssert.AreEqual(new[] { 1, 2, 3, 4 }, MetricSteps(checkpoints), "one row per step: the replayed step 3 is not duplicated");
    }

    [TestMethod]
    public void MaxLengthBeyondTheContext_IsCappedWithAWarning_ForLlamaAndGpt2()
    {
        using var dir = new TempDirectory();
        var tokenizer = TextTokenizer.CreateByteLevel(dir.Combine("tok"));
        string longText = string.Concat(Enumerable.Repeat("owls hoot at night. ", 30));    // 600 bytes: beyond the 256-token context
        foreach (string arch in new[] { "llama", "gpt2" })
        {
            using var model = ModelPresets.CreateModel(arch, "tiny", tokenizer, seed: 1);
            int context = model.Network.Config.MaxPositionEmbeddings;
            Assert.AreEqual(256, context);
            model.EncodeExample(longText, [longText], 5000, 2500, TruncationMode.KeepEnd, out var prompt, out var completions);
            Assert.AreEqual(context, prompt.Length + completions[0].Length, arch);
            Assert.AreEqual(128, prompt.Length, $"{arch}: the prompt keeps its share of the capped length");

            var lines = new List<string>();
            var options = new SftTrainer.Options { BaseModel = model, MaxSteps = 1, BatchSize = 2, LearningRate = 1e-3, MaxLength = 5000, MaxPromptLength = 2500, Log = lines.Add };
            var ml = new MLContext(seed: 0);
            var data = ml.Data.LoadFromEnumerable(new[] { new StylePreferenceTask.Completion { prompt = longText, completion = longText } });
            using var trained = ml.Alignment().Trainers.Sft(options).Fit(data);   // GPT-2 failed on its position table here before the cap
            Assert.AreEqual(1, trained.TrainingSummary!.Steps);
            Assert.AreEqual(1, trained.DataReport!.Truncated);
            Assert.IsTrue(lines.Any(l => l.StartsWith("warning:") && l.Contains("5000") && l.Contains("capped at 256 tokens")), $"{arch}: " + string.Join("\n", lines));
        }
    }
}
