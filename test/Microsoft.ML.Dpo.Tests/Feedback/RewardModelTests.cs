using Microsoft.ML.Data;
using Microsoft.ML.Dpo.Feedback;
using Microsoft.ML.Dpo.Tests.Trainers;
using Microsoft.ML.Dpo.Trainers;

namespace Microsoft.ML.Dpo.Tests.Feedback;

/// <summary>Reward-model training on the style task, and the judges built on trained models (reward model, DPO implicit reward, ML.NET sentiment).</summary>
[TestClass]
public sealed class RewardModelTests
{
    static TempDirectory? dir;
    static LanguageModel? baseModel;
    static RewardModelTransformer? rewardModel;

    [ClassInitialize]
    public static void Train(TestContext _)
    {
        dir = new TempDirectory();
        baseModel = StylePreferenceTask.CreateBaseModel(dir.Path);
        var ml = new MLContext(seed: 0);
        var data = ml.Data.LoadFromEnumerable(StylePreferenceTask.Pairs(StylePreferenceTask.TrainSubjects));
        rewardModel = ml.Alignment().Trainers.RewardModel(new RewardModelTrainer.Options
        {
            BaseModel = baseModel, Epochs = 8, BatchSize = 8, LearningRate = 1e-3, MaxLength = 64, MaxPromptLength = 40,
            ValidationData = ml.Data.LoadFromEnumerable(StylePreferenceTask.Pairs(StylePreferenceTask.HeldOutSubjects)),
        }).Fit(data);
    }

    [ClassCleanup]
    public static void Cleanup()
    {
        rewardModel?.Dispose();
        baseModel?.Dispose();
        dir?.Dispose();
    }

    [TestMethod]
    public void RewardModelOrdersHeldOutPairs()
    {
        var ml = new MLContext(seed: 0);
        var heldOut = ml.Data.LoadFromEnumerable(StylePreferenceTask.Pairs(StylePreferenceTask.HeldOutSubjects));
        var metrics = rewardModel!.Evaluate(heldOut);
        Console.WriteLine($"held-out reward accuracy {metrics.Accuracy:F2}, mean margin {metrics.MeanMargin:F3} over {metrics.Pairs} pairs; " +
                          $"training: {string.Join(", ", rewardModel.TrainingSummary!.FinalMetrics.Select(kv => $"{kv.Key}={kv.Value:G3}"))}; " +
                          $"validation: {string.Join(", ", rewardModel.ValidationMetrics!.Select(kv => $"{kv.Key}={kv.Value:G3}"))}");
        Assert.AreEqual(10, metrics.Pairs);
        Assert.IsTrue(metrics.Accuracy >= 0.9, $"held-out accuracy {metrics.Accuracy}");
        Assert.IsTrue(metrics.MeanMargin > 0);
        Assert.IsTrue(rewardModel.ValidationMetrics!["eval/accuracy"] >= 0.9);
        Assert.IsTrue(rewardModel.TrainingSummary!.Steps == 32, $"steps {rewardModel.TrainingSummary.Steps}");
    }

    [TestMethod]
    public void TransformAddsLazyRewardColumnsThatMatchScore()
    {
        var ml = new MLContext(seed: 0);
        var pairs = StylePreferenceTask.Pairs(StylePreferenceTask.HeldOutSubjects[..3]);
        var output = rewardModel!.Transform(ml.Data.LoadFromEnumerable(pairs));
        Assert.AreEqual(NumberDataViewType.Single, output.Schema["chosen_reward"].Type);
        var chosen = output.GetColumn<float>("chosen_reward").ToArray();
        var rejected = output.GetColumn<float>("rejected_reward").ToArray();
        for (int i = 0; i < pairs.Length; i++)
        {
            Assert.AreEqual(rewardModel.Score(pairs[i].prompt, pairs[i].chosen), chosen[i], 1e-4f);
            Assert.AreEqual(rewardModel.Score(pairs[i].prompt, pairs[i].rejected), rejected[i], 1e-4f);
        }
        // Re-targeted at another column; the estimator's schema propagation agrees with the transformer's.
        var single = rewardModel.WithOutputColumns(new RewardOutputColumn("r", "prompt", "chosen"));
        Assert.AreEqual(chosen[0], single.Transform(ml.Data.LoadFromEnumerable(pairs)).GetColumn<float>("r").First(), 1e-4f);
        var shape = ml.Alignment().Trainers.RewardModel(new RewardModelTrainer.Options { BaseModel = baseModel })
            .GetOutputSchema(Microsoft.ML.Dpo.Data.SchemaShapes.WithColumns(new SchemaShape([]),
                [("prompt", TextDataViewType.Instance), ("chosen", TextDataViewType.Instance), ("rejected", TextDataViewType.Instance)]));
        Assert.IsTrue(shape.Any(c => c.Name == "chosen_reward") && shape.Any(c => c.Name == "rejected_reward"));
    }

    [TestMethod]
    public void SaveAndLoadKeepTheScores()
    {
        using var saveDir = new TempDirectory();
        string path = Path.Combine(saveDir.Path, "rm");
        rewardModel!.Save(path);
        Assert.IsTrue(File.Exists(Path.Combine(path, RewardModelTransformer.HeadFileName)));
        Assert.IsTrue(File.Exists(Path.Combine(path, "model.safetensors")));
        var headTensors = Microsoft.ML.Dpo.Checkpoints.Safetensors.ReadHeader(Path.Combine(path, RewardModelTransformer.HeadFileName));
        Assert.AreEqual("score.weight", headTensors.Single().Name);
        CollectionAssert.AreEqual(new long[] { 1, 64 }, headTensors.Single().Shape);
        using var loaded = RewardModelTransformer.Load(path, device: "cpu");
        string prompt = StylePreferenceTask.Prompt("otters");
        Assert.AreEqual(rewardModel.Score(prompt, "Happy to help!"), loaded.Score(prompt, "Happy to help!"), 1e-5f);
        Assert.AreEqual(rewardModel.Score(prompt, "No."), loaded.Score(prompt, "No."), 1e-5f);
        CollectionAssert.AreEqual(rewardModel.OutputColumns.ToArray(), loaded.OutputColumns.ToArray());
        // The directory is also a plain causal LM.
        using var lm = LanguageModel.Load(path, device: "cpu");
        Assert.AreEqual(64, lm.Network.Config.HiddenSize);
    }

    [TestMethod]
    public void PipelineWithARewardModelSavesAndLoadsWithIdenticalScores()
    {
        using var saveDir = new TempDirectory();
        var ml = new MLContext();
        var data = ml.Data.LoadFromEnumerable(StylePreferenceTask.Pairs(StylePreferenceTask.HeldOutSubjects[..3]));
        var pipeline = ml.Transforms.CopyColumns("question", "prompt").Fit(data).Append(rewardModel!.WithOutputColumns(rewardModel.OutputColumns.ToArray()));
        string path = saveDir.Combine("pipeline.zip");
        ml.Alignment().Model.Save(pipeline, data.Schema, path);
        var loaded = ml.Alignment().Model.Load(path, out _);
        try
        {
            foreach (var column in rewardModel.OutputColumns)
                CollectionAssert.AreEqual(pipeline.Transform(data).GetColumn<float>(column.OutputColumnName).ToArray(),
                                          loaded.Transform(data).GetColumn<float>(column.OutputColumnName).ToArray(), column.OutputColumnName);
        }
        finally
        {
            foreach (var t in ((IEnumerable<ITransformer>)loaded).OfType<IDisposable>()) t.Dispose();
        }
    }

    [TestMethod]
    public async Task RewardModelJudgeRanksTheWarmAnswerFirst()
    {
        var prompts = StylePreferenceTask.HeldOutSubjects.Select(s => new PromptCompletions(StylePreferenceTask.Prompt(s), ["Go away.", "Gladly, friend!", "No."])).ToList();
        var scored = await CompletionRanker.RankAsync(rewardModel!, prompts);
        int warmFirst = scored.Count(p => p.Completions.MaxBy(c => c.OverallScore)!.Text == "Gladly, friend!");
        Assert.IsTrue(warmFirst >= 9, $"{warmFirst}/10 prompts rank the warm answer first");
        var pairs = Microsoft.ML.Dpo.Data.PreferenceBinarizer.Binarize(scored);
        Assert.AreEqual(10, pairs.Count);
        Assert.IsTrue(pairs.Count(p => p.Chosen == "Gladly, friend!") >= 9);
    }

    [TestMethod]
    public async Task ImplicitRewardJudgeOfADpoModelRanksTheWarmAnswerFirst()
    {
        var ml = new MLContext(seed: 0);
        using var dpo = ml.Alignment().Trainers.Dpo(new DpoTrainer.Options
        {
            BaseModel = baseModel, Beta = 0.1, Epochs = 6, BatchSize = 8, LearningRate = 1e-3, MaxLength = 64, MaxPromptLength = 40,
        }).Fit(ml.Data.LoadFromEnumerable(StylePreferenceTask.Pairs(StylePreferenceTask.TrainSubjects)));
        var judge = new ImplicitRewardJudge(dpo);
        var pairs = StylePreferenceTask.Pairs(StylePreferenceTask.HeldOutSubjects);
        int correct = 0;
        foreach (var pair in pairs)
        {
            var scores = await judge.ScoreAsync([(pair.prompt, pair.rejected), (pair.prompt, pair.chosen)]);
            if (scores[1] > scores[0]) correct++;
        }
        Console.WriteLine($"implicit-reward judge: {correct}/{pairs.Length} held-out pairs ordered");
        Assert.IsTrue(correct >= 9, $"{correct}/{pairs.Length}");
        using var sftLike = new LanguageModelTransformer(baseModel!.Clone(), reference: null, beta: 0, promptColumn: "prompt");   // as SFT makes it
        Assert.ThrowsExactly<ArgumentException>(() => new ImplicitRewardJudge(sftLike));
    }

    public sealed class Review
    {
        public string Text { get; set; } = "";
        public bool Label { get; set; }
    }

    [TestMethod]
    public async Task SentimentClassifierJudgeRanksThePositiveAnswerFirst()
    {
        var ml = new MLContext(seed: 0);
        string[] good = ["wonderful", "great", "happy", "lovely", "delightful", "excellent", "kind", "glad"];
        string[] bad = ["terrible", "awful", "sad", "horrible", "boring", "rude", "bad", "angry"];
        string[] things = ["film", "story", "answer", "day", "meal", "book"];
        var reviews = things.SelectMany(t => good.Select(g => new Review { Text = $"What a {g} {t}, truly {g}.", Label = true })
            .Concat(bad.Select(b => new Review { Text = $"What a {b} {t}, truly {b}.", Label = false }))).ToList();
        var pipeline = ml.Transforms.Text.FeaturizeText("Features", nameof(Review.Text))
            .Append(ml.BinaryClassification.Trainers.SdcaLogisticRegression(labelColumnName: nameof(Review.Label), maximumNumberOfIterations: 50));
        var classifier = pipeline.Fit(ml.Data.LoadFromEnumerable(reviews));

        var judge = new TransformerJudge(ml, classifier, completionColumnName: nameof(Review.Text), scoreColumnName: "Probability");
        var scored = await CompletionRanker.RankAsync(judge,
            [new PromptCompletions("How was the film?", ["It was terrible and boring.", "It was wonderful, a delightful film!", "It was a film."])]);
        var ranked = scored.Single().Completions.OrderByDescending(c => c.OverallScore).Select(c => c.Text).ToArray();
        Console.WriteLine("sentiment judge: " + string.Join(" | ", scored.Single().Completions.Select(c => $"{c.Text} => {c.OverallScore:F3}")));
        Assert.AreEqual("It was wonderful, a delightful film!", ranked[0]);
        Assert.AreEqual("It was terrible and boring.", ranked[^1]);
        Assert.ThrowsExactly<ArgumentException>(() => new TransformerJudge(ml, classifier, nameof(Review.Text), scoreColumnName: "NoSuchColumn"));
    }
}
