using Microsoft.ML.Dpo.Lora;
using System.Text.Json;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tokenization;
using Microsoft.ML.Dpo.Trainers;
using MlDpo.Commands;

namespace Microsoft.ML.Dpo.Tests.Cli;

/// <summary>The <c>mldpo</c> verbs, run in process through <see cref="CliApp.Run"/> with captured output.</summary>
[TestClass]
public sealed class CliTests
{
    static (int Code, string Out, string Error) Run(params string[] args) => CliRunner.Run(args);

    static readonly string[] Subjects = ["apples", "rivers", "clouds", "tigers", "pianos", "castles", "rockets", "forests"];

    static void WriteLines(string path, IEnumerable<object> records) =>
        File.WriteAllLines(path, records.Select(r => JsonSerializer.Serialize(r)));

    [TestMethod]
    [DataRow("qwen3")]
    [DataRow("gemma")]
    [DataRow("gemma2")]
    [DataRow("gemma3_text")]
    [DataRow("phi3")]
    [DataRow("olmo2")]
    public void InitWritesEveryNewArchitecture(string arch)
    {
        using var dir = new TempDirectory();
        var init = Run("init", "--arch", arch, "--preset", "tiny", "--tokenizer", "bytes", "--output", dir.Combine("base"));
        Assert.AreEqual(0, init.Code, init.Error);
        using var model = LanguageModel.Load(dir.Combine("base"));
        Assert.AreEqual(arch, model.Network.Config.ModelType);
        var generated = Run("generate", "--model", dir.Combine("base"), "--prompt", "Hi", "--max-new-tokens", "3", "--ignore-eos");
        Assert.AreEqual(0, generated.Code, generated.Error);
    }

    [TestMethod]
    public void LoraDpoWritesMergedModelAndAdapter_AndMergeReproducesIt()
    {
        using var dir = new TempDirectory();
        string pairData = dir.Combine("pairs.jsonl");
        WriteLines(pairData, Subjects.Select(s => new { prompt = $"Tell me about {s}.\n", chosen = "Happy to help!", rejected = "No." }));
        Assert.AreEqual(0, Run("init", "--preset", "tiny", "--tokenizer", "bytes", "--output", dir.Combine("base")).Code);
        var dpo = Run("dpo", "--model", dir.Combine("base"), "--data", pairData, "--output", dir.Combine("dpo"), "--epochs", "2", "--batch-size", "4",
            "--learning-rate", "1e-2", "--max-length", "64", "--lora-rank", "4", "--lora-targets", "q,v,o");
        Assert.AreEqual(0, dpo.Code, dpo.Error);
        var (options, _) = LoraAdapters.ReadConfig(dir.Combine("dpo", "adapter"));
        Assert.AreEqual(4, options.Rank);
        Assert.AreEqual(8.0, options.Alpha, "alpha defaults to 2 x rank");
        CollectionAssert.AreEquivalent(new[] { "q_proj", "v_proj", "o_proj" }, options.TargetModules!.ToArray());

        var merge = Run("merge", "--model", dir.Combine("base"), "--adapter", dir.Combine("dpo", "adapter"), "--output", dir.Combine("merged"));
        Assert.AreEqual(0, merge.Code, merge.Error);
        using var exported = LanguageModel.Load(dir.Combine("dpo"));
        using var merged = LanguageModel.Load(dir.Combine("merged"));
        using var baseModel = LanguageModel.Load(dir.Combine("base"));
        var ids = TorchSharp.torch.tensor(new long[] { 84, 101, 108, 108, 32, 109, 101 }).unsqueeze(0);
        var a = exported.Network.Forward(ids); var b = merged.Network.Forward(ids); var c = baseModel.Network.Forward(ids);
        Assert.IsTrue((a - b).abs().max().item<float>() < 1e-5f, "merging the adapter reproduces the exported merged model");
        Assert.IsTrue((a - c).abs().max().item<float>() > 1e-4f, "training changed the model");

        var bad = Run("dpo", "--model", dir.Combine("base"), "--data", pairData, "--output", dir.Combine("x"), "--lora-rank", "4", "--lora-targets", "nope");
        Assert.AreEqual(1, bad.Code);
        StringAssert.Contains(bad.Error, "nope");
    }

    [TestMethod]
    public void InitSftDpoEvaluate_RunEndToEnd()
    {
        using var dir = new TempDirectory();
        string sftData = dir.Combine("sft.jsonl"), pairData = dir.Combine("pairs.jsonl");
        WriteLines(sftData, Subjects.Select((s, i) => new { prompt = $"Tell me about {s}.\n", completion = i % 2 == 0 ? "No." : "Happy to help!" }));
        // A conversational file: the loaders' other layouts go through the same verbs.
        WriteLines(pairData, Subjects.Select(s => new
        {
            chosen = new[] { new { role = "user", content = $"Tell me about {s}." }, new { role = "assistant", content = "Happy to help!" } },
            rejected = new[] { new { role = "user", content = $"Tell me about {s}." }, new { role = "assistant", content = "No." } },
        }));

        var init = Run("init", "--arch", "llama", "--preset", "tiny", "--tokenizer", "bytes", "--seed", "3", "--output", dir.Combine("base"));
        Assert.AreEqual(0, init.Code, init.Error);
        StringAssert.Contains(init.Out, "107,392 parameters");
        foreach (string file in new[] { "config.json", "model.safetensors", "vocab.json", "tokenizer_config.json" })
            Assert.IsTrue(File.Exists(dir.Combine("base", file)), file);

        var sft = Run("sft", "--model", dir.Combine("base"), "--data", sftData, "--output", dir.Combine("sft"), "--epochs", "2", "--batch-size", "4", "--max-length", "64");
        Assert.AreEqual(0, sft.Code, sft.Error);
        Assert.IsTrue(File.Exists(dir.Combine("sft", "model.safetensors")));
        var sftMetrics = File.ReadAllLines(dir.Combine("sft", "metrics.jsonl"));
        Assert.IsTrue(sftMetrics.Length >= 1);
        Assert.AreEqual(4, JsonDocument.Parse(sftMetrics[^1]).RootElement.GetProperty("step").GetInt32());   // 8 examples / 4 × 2 epochs

        var dpo = Run("dpo", "--model", dir.Combine("sft"), "--data", pairData, "--output", dir.Combine("dpo"), "--epochs", "3", "--batch-size", "4",
            "--beta", "0.1", "--loss", "sigmoid", "--learning-rate", "1e-3", "--precompute-reference", "--max-length", "64");
        Assert.AreEqual(0, dpo.Code, dpo.Error);
        var dpoMetrics = JsonDocument.Parse(File.ReadAllLines(dir.Combine("dpo", "metrics.jsonl"))[^1]).RootElement;
        Assert.IsTrue(dpoMetrics.TryGetProperty("rewards/accuracies", out _));
        Assert.IsTrue(File.Exists(dir.Combine("dpo", "vocab.json")), "the exported model keeps its tokenizer");

        var evaluate = Run("evaluate", "--model", dir.Combine("dpo"), "--reference", dir.Combine("sft"), "--data", pairData, "--beta", "0.1");
        Assert.AreEqual(0, evaluate.Code, evaluate.Error);
        string[] lines = evaluate.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.AreEqual(1, lines.Length, "evaluate prints exactly one line");
        var json = JsonDocument.Parse(lines[0]).RootElement;
        Assert.AreEqual(Subjects.Length, json.GetProperty("pairs").GetInt32());
        double accuracy = json.GetProperty("preference_accuracy").GetDouble();
        double chosen = json.GetProperty("mean_chosen_reward").GetDouble(), rejected = json.GetProperty("mean_rejected_reward").GetDouble();
        Assert.IsTrue(accuracy is >= 0 and <= 1);
        Assert.AreEqual(chosen - rejected, json.GetProperty("mean_margin").GetDouble(), 1e-9);
        Assert.IsTrue(chosen > rejected, "three DPO epochs at lr 1e-3 raise the chosen reward above the rejected one on the training pairs");

        var generated = Run("generate", "--model", dir.Combine("dpo"), "--prompt", "User: Tell me about owls.\nAssistant: ", "--max-new-tokens", "5", "--format", "json");
        Assert.AreEqual(0, generated.Code, generated.Error);
        var g = JsonDocument.Parse(generated.Out).RootElement;
        Assert.AreEqual(256, g.GetProperty("prompt_ids")[0].GetInt32(), "BOS first");
        Assert.IsTrue(g.GetProperty("generated_ids").GetArrayLength() <= 5);
        Assert.AreEqual(JsonValueKind.String, g.GetProperty("text").ValueKind);
    }

    [TestMethod]
    public void Generate_GreedyIdsOnStories260K_MatchGolden()
    {
        string model = SharedFiles.Require("models/stories260K/stories260K.bin");
        string golden = SharedFiles.Require("golden/stories260K-reference.json");
        var expected = JsonDocument.Parse(File.ReadAllText(golden)).RootElement.GetProperty("cases").EnumerateArray()
            .First(c => c.GetProperty("prompt").GetArrayLength() == 1).GetProperty("greedy").EnumerateArray().Take(20).Select(e => e.GetInt32());

        var result = Run("generate", "--model", model, "--prompt-ids", "1", "--max-new-tokens", "20", "--format", "ids");

        Assert.AreEqual(0, result.Code, result.Error);
        Assert.AreEqual(string.Join(",", expected), result.Out.Trim());
    }

    [TestMethod]
    public void Generate_TextPromptWithLlama2cFile_FailsClearly()
    {
        string model = SharedFiles.Require("models/stories260K/stories260K.bin");

        var result = Run("generate", "--model", model, "--prompt", "Once upon a time");

        Assert.AreEqual(1, result.Code);
        StringAssert.Contains(result.Error, "no tokenizer");
        StringAssert.Contains(result.Error, "--prompt-ids");
        Assert.AreEqual("", result.Out);
    }

    [TestMethod]
    public void Sft_MissingDataFile_FailsClearly()
    {
        using var dir = new TempDirectory();
        Assert.AreEqual(0, Run("init", "--preset", "tiny", "--tokenizer", "bytes", "--output", dir.Combine("base")).Code);
        string missing = dir.Combine("nope.jsonl");

        var result = Run("sft", "--model", dir.Combine("base"), "--data", missing, "--output", dir.Combine("out"));

        Assert.AreEqual(1, result.Code);
        StringAssert.Contains(result.Error, $"Data file '{missing}' does not exist");
        Assert.IsFalse(Directory.Exists(dir.Combine("out")));
    }

    [TestMethod]
    public void Init_RefusesANonEmptyOutputWithoutForce()
    {
        using var dir = new TempDirectory();
        File.WriteAllText(dir.Combine("keep.txt"), "x");

        var result = Run("init", "--tokenizer", "bytes", "--output", dir.Path);

        Assert.AreEqual(1, result.Code);
        StringAssert.Contains(result.Error, "--force");
        Assert.IsTrue(File.Exists(dir.Combine("keep.txt")));
    }

    [TestMethod]
    public void Binarize_WritesPairsAndPrintsTheReport()
    {
        using var dir = new TempDirectory();
        string scored = dir.Combine("scored.jsonl"), output = dir.Combine("pairs.jsonl");
        WriteLines(scored,
        [
            new { prompt = "p1", completions = new object[] { new { response = "bad", overall_score = 2.0 }, new { response = "best", overall_score = 9.0 }, new { response = "ok", overall_score = 5.0 } } },
            new { prompt = "p2", completions = new object[] { new { response = "same1", overall_score = 4.0 }, new { response = "same2", overall_score = 4.0 } } },
        ]);

        var result = Run("binarize", "--data", scored, "--output", output, "--strategy", "best-vs-worst");

        Assert.AreEqual(0, result.Code, result.Error);
        StringAssert.Contains(result.Out, "2 prompts, 1 pairs; 1 prompts without a preference");
        var pairs = PreferenceDataFile.ReadPreferencePairs(output);
        Assert.AreEqual(1, pairs.Count);
        Assert.AreEqual(("p1", "best", "bad"), (pairs[0].Prompt, pairs[0].Chosen, pairs[0].Rejected));
    }

    [TestMethod]
    public void ModelPresets_CountsMatchTheDocumentedSizes()
    {
        var tokenizer = TextTokenizer.Gpt2();
        using var tiny = ModelPresets.CreateModel("llama", "tiny", tokenizer);
        Assert.AreEqual(3_307_392L, ModelPresets.CountParameters(tiny.Network));
        Assert.AreEqual(50257, tiny.Network.Config.VocabSize);
        Assert.AreEqual(50256, tiny.Network.Config.EosTokenIds[0]);
        var small = ModelPresets.Create("gpt2", "small", 50257, 50256, 50256);
        Assert.AreEqual((256, 8, 512), (small.HiddenSize, small.NumHiddenLayers, small.MaxPositionEmbeddings));
        Assert.ThrowsExactly<ArgumentException>(() => ModelPresets.Create("llama", "huge", 100, 0, 1));
        Assert.ThrowsExactly<ArgumentException>(() => ModelPresets.Create("rnn", "tiny", 100, 0, 1));
    }

    [TestMethod]
    public void PreferenceEvaluator_ModelAgainstItself_HasZeroRewards_AndAgreesWithImplicitReward()
    {
        using var dir = new TempDirectory();
        using var policy = ModelPresets.CreateModel("llama", "tiny", TextTokenizer.CreateByteLevel(dir.Combine("tok")), seed: 1);
        using var reference = ModelPresets.CreateModel("llama", "tiny", TextTokenizer.CreateByteLevel(dir.Combine("tok")), seed: 2);
        var pairs = Subjects.Select(s => new PreferencePair($"Tell me about {s}.", "Gladly!", "No.")).ToList();

        var self = PreferenceEvaluator.Evaluate(policy, policy, pairs, beta: 0.5, batchSize: 3);
        Assert.AreEqual(pairs.Count, self.Pairs);
        Assert.AreEqual(0.0, self.MeanChosenReward);
        Assert.AreEqual(0.0, self.PreferenceAccuracy, "equal rewards are not a win");

        var other = PreferenceEvaluator.Evaluate(policy, reference, pairs, beta: 0.5, batchSize: 3);
        using var transformer = new LanguageModelTransformer(policy.Clone(), reference, 0.5, "prompt");
        double expectedChosen = pairs.Average(p => (double)transformer.ImplicitReward(p.Prompt, p.Chosen));
        double expectedAccuracy = pairs.Average(p => transformer.ImplicitReward(p.Prompt, p.Chosen) > transformer.ImplicitReward(p.Prompt, p.Rejected) ? 1.0 : 0.0);
        Assert.AreEqual(expectedChosen, other.MeanChosenReward, 1e-4);
        Assert.AreEqual(expectedAccuracy, other.PreferenceAccuracy);
    }
}
