using System.Text.Json;
using MlDpo.Commands;

namespace Microsoft.ML.Dpo.Tests.Cli;

/// <summary><c>mldpo dpo</c>'s loss-family, LD-DPO, WPO and TR-DPO flags, run in process.</summary>
[TestClass]
public sealed class DpoLossCliTests
{
    static (int Code, string Out, string Error) Run(params string[] args) => CliRunner.Run(args);

    [TestMethod]
    public void WeightedLossListAndFamilyFlagsTrainAndLogTrlMetrics()
    {
        using var dir = new TempDirectory();
        string pairs = dir.Combine("pairs.jsonl");
        File.WriteAllLines(pairs, new[] { "apples", "rivers", "clouds", "tigers" }
            .Select(s => JsonSerializer.Serialize(new { prompt = $"Tell me about {s}.\n", chosen = "Happy to help!", rejected = "No." })));
        Assert.AreEqual(0, Run("init", "--preset", "tiny", "--tokenizer", "bytes", "--output", dir.Combine("base")).Code);
        string[] common = ["dpo", "--model", dir.Combine("base"), "--data", pairs, "--batch-size", "2", "--max-length", "48", "--logging-steps", "1"];

        var mpo = Run([.. common, "--output", dir.Combine("mpo"), "--max-steps", "2", "--loss", "sigmoid,bco_pair,sft", "--loss-weights", "0.8,0.2,1",
            "--f-divergence", "js_divergence", "--ld-alpha", "0.5", "--use-weighting", "--sync-ref-steps", "1", "--sync-ref-alpha", "0.5",
            "--eval-data", pairs, "--eval-steps", "1", "--eval-max-new-tokens", "4"]);
        Assert.AreEqual(0, mpo.Code, mpo.Error);
        var last = JsonDocument.Parse(File.ReadAllLines(dir.Combine("mpo", "metrics.jsonl"))[^1]).RootElement;
        StringAssert.Contains(mpo.Out, "eval at step 2:");
        foreach (var name in new[] { "logits/chosen", "logits/rejected", "entropy", "mean_token_accuracy", "num_tokens", "nll_loss", "wpo_weight",
                                     "eval/mean_length", "eval/repeated_ngram_share", "eval/reference_mean_length" })
            Assert.IsTrue(last.TryGetProperty(name, out _), name);

        var unknown = Run([.. common, "--output", dir.Combine("x"), "--loss", "sigmoid,kto_pair"]);
        Assert.AreEqual(1, unknown.Code);
        StringAssert.Contains(unknown.Error, "'kto_pair'");
        StringAssert.Contains(unknown.Error, "apo_zero");

        var counts = Run([.. common, "--output", dir.Combine("x"), "--loss", "sigmoid,sft", "--loss-weights", "1"]);
        Assert.AreEqual(1, counts.Code);
        StringAssert.Contains(counts.Error, "one weight per loss");

        var twice = Run([.. common, "--output", dir.Combine("x"), "--loss", "sigmoid,sft", "--rpo-alpha", "1"]);
        Assert.AreEqual(1, twice.Code);
        StringAssert.Contains(twice.Error, "give its weight in --loss-weights or --rpo-alpha, not both");   // flags, not the C# names (issue 14)

        var stale = Run([.. common, "--output", dir.Combine("x"), "--sync-ref-steps", "2", "--precompute-reference"]);
        Assert.AreEqual(1, stale.Code);
        StringAssert.Contains(stale.Error, "stale");
        Assert.IsFalse(Directory.Exists(dir.Combine("x")), "refused before anything is written");
    }
}
