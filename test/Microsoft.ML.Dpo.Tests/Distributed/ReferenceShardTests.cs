using System.Text.Json;
using MlDpo.Commands;

namespace Microsoft.ML.Dpo.Tests.Distributed;

/// <summary><c>mldpo dpo --precompute-reference --shard i/n</c>: offline shards of the reference precomputation, joined by record key.</summary>
[TestClass]
public sealed class ReferenceShardTests
{
    static (int Code, string Text) Run(params string[] args)
    {
        var (code, output, error) = CliRunner.Run(args);
        return (code, output + error);
    }

    [TestMethod]
    public void TwoShardsJoined_EqualTheUnshardedPrecomputation_BitForBit()
    {
        using var dir = new TempDirectory();
        Assert.AreEqual(0, Run("init", "--preset", "tiny", "--tokenizer", "bytes", "--output", dir.Combine("base")).Code);
        string data = dir.Combine("pairs.jsonl");
        string[] subjects = ["apples", "rivers", "clouds", "tigers", "pianos"];
        File.WriteAllLines(data, Enumerable.Range(0, 10).Select(i => JsonSerializer.Serialize(new
        {
            prompt = $"Tell me about {subjects[i % 5]} {i}.", chosen = $"Happy to help{new string('!', i)}", rejected = i % 2 == 0 ? "No." : "Go away.",
        })));
        string[] Dpo(string output, string checkpoints, params string[] more) =>
            ["dpo", "--model", dir.Combine("base"), "--data", data, "--output", output, "--checkpoint-dir", checkpoints, "--batch-size", "4",
             "--max-length", "64", "--max-steps", "1", "--precompute-reference", .. more];

        var whole = Run(Dpo(dir.Combine("whole"), dir.Combine("whole.ck")));
        Assert.AreEqual(0, whole.Code, whole.Text);
        string wholeCache = Directory.GetFiles(dir.Combine("whole.ck"), "reference_logps.*.bin").Single();

        foreach (string shard in new[] { "1/2", "0/2" })
        {
            var run = Run(Dpo(dir.Combine("sharded"), dir.Combine("sharded.ck"), "--shard", shard));
            Assert.AreEqual(0, run.Code, run.Text);
            StringAssert.Contains(run.Text, $"Reference shard {shard} written to");
        }
        Assert.IsFalse(Directory.Exists(dir.Combine("sharded")), "a shard job trains nothing and writes no model");
        var shards = Directory.GetFiles(dir.Combine("sharded.ck"), "reference_logps.*.shard-*.jsonl").Order().ToList();
        Assert.AreEqual(2, shards.Count);
        // 10 pairs in batches of 4: shard 0 holds batches 0 and 2 (6 records), shard 1 batch 1 (4); one header line each.
        Assert.AreEqual(7, File.ReadAllLines(shards[0]).Length);
        Assert.AreEqual(5, File.ReadAllLines(shards[1]).Length);

        var joined = Run(Dpo(dir.Combine("sharded"), dir.Combine("sharded.ck")));
        Assert.AreEqual(0, joined.Code, joined.Text);
        StringAssert.Contains(joined.Text, "joined from the shard files");
        string joinedCache = Directory.GetFiles(dir.Combine("sharded.ck"), "reference_logps.*.bin").Single();
        Assert.AreEqual(Path.GetFileName(wholeCache), Path.GetFileName(joinedCache), "same reference and data, same cache key");
        CollectionAssert.AreEqual(File.ReadAllBytes(wholeCache), File.ReadAllBytes(joinedCache));
    }

    [TestMethod]
    public void AMissingShard_IsNamed()
    {
        using var dir = new TempDirectory();
        Assert.AreEqual(0, Run("init", "--preset", "tiny", "--tokenizer", "bytes", "--output", dir.Combine("base")).Code);
        string data = dir.Combine("pairs.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 6).Select(i => JsonSerializer.Serialize(new { prompt = $"Hi {i}.", chosen = "Hello!", rejected = "No." })));
        string[] args = ["dpo", "--model", dir.Combine("base"), "--data", data, "--output", dir.Combine("out"), "--batch-size", "2", "--max-length", "32", "--precompute-reference"];
        Assert.AreEqual(0, Run([.. args, "--shard", "0/3"]).Code);
        Assert.AreEqual(0, Run([.. args, "--shard", "2/3"]).Code);
        var run = Run(args);
        Assert.AreEqual(1, run.Code);
        StringAssert.Contains(run.Text, "Reference shards 1 of 3 are missing");
        Assert.AreEqual(1, Run([.. args, "--shard", "3/3"]).Code, "the index must be below the count");
    }
}
