using System.Text.Json;
using System.Text.RegularExpressions;
using MlDpo.Commands;

namespace Microsoft.ML.Dpo.Tests.Cli;

/// <summary><c>mldpo evaluate --generate</c> with judges, and the training verbs' --judge, --save-best and early stopping, run in process.</summary>
[TestClass]
public sealed class EvaluationCliTests
{
    static (int Code, string Out, string Error) Run(params string[] args) => CliRunner.Run(args);

    static readonly string[] Subjects = ["apples", "rivers", "clouds", "tigers", "pianos", "castles", "rockets", "forests"];

    [TestMethod]
    public void EvaluateGenerateJudgesTheAnswersAndTrainingVerbsSaveTheBest()
    {
        using var dir = new TempDirectory();
        string sftData = dir.Combine("sft.jsonl"), pairs = dir.Combine("pairs.jsonl"), held = dir.Combine("held.jsonl");
        File.WriteAllLines(sftData, Subjects.Select((s, i) => JsonSerializer.Serialize(new { prompt = $"Tell me about {s}.\n", completion = i % 4 == 0 ? "Happy to help!" : "No." })));
        File.WriteAllLines(pairs, Subjects.Select(s => JsonSerializer.Serialize(new { prompt = $"Tell me about {s}.\n", chosen = "Happy to help!", rejected = "No." })));
        File.WriteAllLines(held, new[] { "owls", "kites", "bees", "whales" }.Select(s => JsonSerializer.Serialize(new { prompt = $"Tell me about {s}.\n", completion = "x", label = true })));
        Assert.AreEqual(0, Run("init", "--preset", "tiny", "--tokenizer", "bytes", "--seed", "1", "--output", dir.Combine("base")).Code);
        var sft = Run("sft", "--model", dir.Combine("base"), "--data", sftData, "--output", dir.Combine("sft"), "--epochs", "20", "--learning-rate", "3e-3",
            "--eval-data", held, "--eval-max-new-tokens", "8");
        Assert.AreEqual(0, sft.Code, sft.Error);
        StringAssert.Contains(sft.Out, "eval at step 40:");   // SFT evaluates by generation too, against the starting model
        var sftLast = JsonDocument.Parse(File.ReadAllLines(dir.Combine("sft", "metrics.jsonl"))[^1]).RootElement;
        foreach (var name in new[] { "eval/mean_length", "eval/degenerate_rate", "eval/reference_mean_length" })
            Assert.IsTrue(sftLast.TryGetProperty(name, out _), name);

        // evaluate --generate on a KTO file's prompts, with a regex judge: the win rate is recomputed from the printed samples.
        var evaluated = Run("evaluate", "--model", dir.Combine("sft"), "--reference", dir.Combine("base"), "--data", held, "--generate",
            "--judge", "regex:^(Happy|Gladly)", "--max-new-tokens", "16", "--samples", "4");
        Assert.AreEqual(0, evaluated.Code, evaluated.Error);
        var json = JsonDocument.Parse(evaluated.Out.Trim()).RootElement;
        Assert.AreEqual(4, json.GetProperty("prompts").GetInt32());
        Assert.IsFalse(json.TryGetProperty("preference_accuracy", out _), "a KTO file has no pairs");
        var samples = json.GetProperty("samples").EnumerateArray().ToList();
        Assert.HasCount(4, samples);
        static double Score(string answer) => Regex.IsMatch(answer, "^(Happy|Gladly)") ? 1 : 0;
        double expected = samples.Average(s => Score(s.GetProperty("model").GetString()!).CompareTo(Score(s.GetProperty("reference").GetString()!)) switch { > 0 => 1.0, 0 => 0.5, _ => 0.0 });
        Assert.AreEqual(expected, json.GetProperty("eval/win_rate").GetDouble(), 1e-12);
        double degenerate = samples.Average(s => Microsoft.ML.Dpo.Training.GenerationEvaluation.IsDegenerate(s.GetProperty("model").GetString()!) ? 1.0 : 0.0);
        Assert.AreEqual(degenerate, json.GetProperty("eval/degenerate_rate").GetDouble(), 1e-12);
        foreach (var name in new[] { "eval/mean_length", "eval/reference_mean_length", "eval/repeated_ngram_share", "eval/unjudged" })
            Assert.IsTrue(json.TryGetProperty(name, out _), name);

        // A prompt-only file (online RL's layout) gives the same prompts, hence the same answers and win rate.
        string promptsOnly = dir.Combine("prompts.jsonl");
        File.WriteAllLines(promptsOnly, File.ReadAllLines(held).Select(l => JsonSerializer.Serialize(new { prompt = JsonDocument.Parse(l).RootElement.GetProperty("prompt").GetString() })));
        var onPrompts = Run("evaluate", "--model", dir.Combine("sft"), "--reference", dir.Combine("base"), "--data", promptsOnly, "--generate",
            "--judge", "regex:^(Happy|Gladly)", "--max-new-tokens", "16", "--samples", "4");
        Assert.AreEqual(0, onPrompts.Code, onPrompts.Error);
        var promptJson = JsonDocument.Parse(onPrompts.Out.Trim()).RootElement;
        Assert.AreEqual(json.GetProperty("eval/win_rate").GetDouble(), promptJson.GetProperty("eval/win_rate").GetDouble());
        Assert.AreEqual(json.GetProperty("samples").ToString(), promptJson.GetProperty("samples").ToString());

        // On pairs: preference accuracy too; the implicit-reward judge takes two model folders.
        var onPairs = Run("evaluate", "--model", dir.Combine("sft"), "--reference", dir.Combine("base"), "--data", pairs, "--generate",
            "--judge", $"implicit:{dir.Combine("sft")},{dir.Combine("base")}", "--max-new-tokens", "8");
        Assert.AreEqual(0, onPairs.Code, onPairs.Error);
        var pairJson = JsonDocument.Parse(onPairs.Out.Trim()).RootElement;
        Assert.AreEqual(Subjects.Length, pairJson.GetProperty("pairs").GetInt32());
        Assert.IsTrue(pairJson.TryGetProperty("eval/win_rate", out _));

        var badJudge = Run("evaluate", "--model", dir.Combine("sft"), "--reference", dir.Combine("base"), "--data", pairs, "--generate", "--judge", "oracle:x");
        Assert.AreEqual(1, badJudge.Code);
        StringAssert.Contains(badJudge.Error, "'oracle:x' names no judge kind");
        var noGenerate = Run("evaluate", "--model", dir.Combine("sft"), "--reference", dir.Combine("base"), "--data", pairs, "--judge", "regex:x");
        Assert.AreEqual(1, noGenerate.Code);
        StringAssert.Contains(noGenerate.Error, "--generate");

        // Training with a judge, the best evaluation kept and early stopping, from the shell.
        var orpo = Run("orpo", "--model", dir.Combine("sft"), "--data", pairs, "--output", dir.Combine("orpo"), "--epochs", "4", "--batch-size", "2", "--logging-steps", "1",
            "--eval-data", held, "--eval-steps", "1", "--eval-max-new-tokens", "16", "--judge", "regex:^(Happy|Gladly)",
            "--save-best", "eval/win_rate", "--early-stopping-patience", "2");
        Assert.AreEqual(0, orpo.Code, orpo.Error);
        var rows = File.ReadAllLines(dir.Combine("orpo", "metrics.jsonl")).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        var winRates = rows.Where(r => r.TryGetProperty("eval/win_rate", out _)).Select(r => (Step: r.GetProperty("step").GetInt32(), Rate: r.GetProperty("eval/win_rate").GetDouble())).ToList();
        Assert.HasCount(rows.Count, winRates, "every step evaluated");
        var best = winRates.First(w => w.Rate == winRates.Max(x => x.Rate));
        StringAssert.Contains(orpo.Out, $"Best evaluation at step {best.Step} (");
        if (winRates[^1].Step < 16) StringAssert.Contains(orpo.Out, "Stopped early at step");

        // The exported model is the best step's: evaluate --generate against the same reference gives the best win rate.
        var check = Run("evaluate", "--model", dir.Combine("orpo"), "--reference", dir.Combine("sft"), "--data", held, "--generate",
            "--judge", "regex:^(Happy|Gladly)", "--max-new-tokens", "16");
        Assert.AreEqual(0, check.Code, check.Error);
        Assert.AreEqual(best.Rate, JsonDocument.Parse(check.Out.Trim()).RootElement.GetProperty("eval/win_rate").GetDouble(), 1e-12);

        var needsEval = Run("orpo", "--model", dir.Combine("sft"), "--data", pairs, "--output", dir.Combine("x"), "--save-best", "eval/win_rate");
        Assert.AreEqual(1, needsEval.Code);
        StringAssert.Contains(needsEval.Error, "--eval-data");
    }
}
