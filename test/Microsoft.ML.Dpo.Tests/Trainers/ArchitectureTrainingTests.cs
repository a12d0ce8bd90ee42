using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tests.Modeling;
using Microsoft.ML.Dpo.Tokenization;
using Microsoft.ML.Dpo.Training;
using Microsoft.ML.Dpo.Trainers;

namespace Microsoft.ML.Dpo.Tests.Trainers;

/// <summary>
/// SFT and DPO on a tiny preset of each architecture added with issue 12 (Qwen3, Gemma 1/2/3, Phi-3, OLMo 2): the loss is
/// finite, every weight tensor moves (so each received a gradient: weight decay is off), and a run interrupted after its
/// first step and resumed ends with exactly the weights of the uninterrupted run.
/// </summary>
[TestClass]
public sealed class ArchitectureTrainingTests
{
    public static IEnumerable<object[]> Architectures => TinyModels.NewArchitectures;

    static LanguageModel BaseModel(string arch, string dir) =>
        ModelPresets.CreateModel(arch, "tiny", TextTokenizer.CreateByteLevel(Path.Combine(dir, "tokenizer")), seed: 3);

    static float[] Weights(LanguageModel model) => model.Network.parameters().SelectMany(p => p.data<float>().ToArray()).ToArray();

    sealed class SyncProgress(Action<TrainingProgress> report) : IProgress<TrainingProgress>
    {
        public void Report(TrainingProgress value) => report(value);
    }

    /// <summary>Runs <paramref name="fit"/> straight, then interrupted after step 1 and resumed; checks loss, movement and resume.</summary>
    static void CheckRun(LanguageModel baseModel, string arch, string dir, Func<TrainingOptions, LanguageModelTransformer> fit, Func<TrainingOptions> options)
    {
        var losses = new List<double>();
        var straightOptions = options();
        straightOptions.Progress = new SyncProgress(p => losses.Add(p.Metrics["loss"]));
        using var straight = fit(straightOptions);
        Assert.IsTrue(losses.Count == 3 && losses.All(double.IsFinite), $"{arch}: losses {string.Join(", ", losses)}");

        var before = baseModel.Network.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var (name, p) in straight.Model.Network.named_parameters())
            Assert.IsTrue(p.ne(before[name]).any().item<bool>(), $"{arch}: {name} did not move (no gradient reached it)");

        using var cancel = new CancellationTokenSource();
        var first = options();
        first.CheckpointDirectory = Path.Combine(dir, "resumed");
        first.CancellationToken = cancel.Token;
        first.Progress = new SyncProgress(p => { if (p.Step == 1) cancel.Cancel(); });
        Assert.ThrowsExactly<OperationCanceledException>(() => fit(first));
        var second = options();
        second.CheckpointDirectory = Path.Combine(dir, "resumed");
        second.Resume = true;
        using var resumed = fit(second);
        CollectionAssert.AreEqual(Weights(straight.Model), Weights(resumed.Model), $"{arch}: resumed run differs");
    }

    [TestMethod]
    [DynamicData(nameof(Architectures))]
    public void SftTrainsEveryWeightAndResumesExactly(string arch)
    {
        using var dir = new TempDirectory();
        using var baseModel = BaseModel(arch, dir.Path);
        var ml = new MLContext(seed: 0);
        var data = ml.Data.LoadFromEnumerable(StylePreferenceTask.MostlyCurtCompletions(StylePreferenceTask.TrainSubjects[..8]));
        CheckRun(baseModel, arch, dir.Path,
            o => ml.Alignment().Trainers.Sft((SftTrainer.Options)o).Fit(data),
            () => new SftTrainer.Options { BaseModel = baseModel, BatchSize = 2, LearningRate = 1e-3, MaxLength = 40, MaxPromptLength = 30, LoggingInterval = 1, MaxSteps = 3 });
    }

    [TestMethod]
    [DynamicData(nameof(Architectures))]
    public void DpoTrainsEveryWeightAndResumesExactly(string arch)
    {
        using var dir = new TempDirectory();
        using var baseModel = BaseModel(arch, dir.Path);
        var ml = new MLContext(seed: 0);
        var data = ml.Data.LoadFromEnumerable(StylePreferenceTask.Pairs(StylePreferenceTask.TrainSubjects[..8]));
        CheckRun(baseModel, arch, dir.Path,
            o => ml.Alignment().Trainers.Dpo((DpoTrainer.Options)o).Fit(data),
            () => new DpoTrainer.Options { BaseModel = baseModel, BatchSize = 2, LearningRate = 1e-3, MaxLength = 40, MaxPromptLength = 30, LoggingInterval = 1, MaxSteps = 3 });
    }
}
