using System.Text.Json;
using Microsoft.ML.Dpo.Checkpoints;
using Microsoft.ML.Dpo.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Modeling;

/// <summary>
/// The real stories260K model against greedy continuations and logits computed by llama2.c's reference run.c.
/// </summary>
[TestClass]
public sealed class Stories260KGoldenTests
{
    sealed record GoldenCase(long[] Prompt, long[] Greedy, float[][]? Logits);

    static List<GoldenCase> Cases()
    {
        string path = SharedFiles.Require("golden/stories260K-reference.json");
        using var doc = JsonDocument.Parse(File.ReadAllText(path));
        var cases = new List<GoldenCase>();
        foreach (var c in doc.RootElement.GetProperty("cases").EnumerateArray())
        {
            float[][]? logits = c.TryGetProperty("logits", out var l)
                ? l.EnumerateArray().Select(row => row.EnumerateArray().Select(v => v.GetSingle()).ToArray()).ToArray()
                : null;
            cases.Add(new GoldenCase(
                c.GetProperty("prompt").EnumerateArray().Select(v => v.GetInt64()).ToArray(),
                c.GetProperty("greedy").EnumerateArray().Select(v => v.GetInt64()).ToArray(),
                logits));
        }
        Assert.IsTrue(cases.Count >= 2 && cases.Any(c => c.Logits != null), "golden file has the expected cases");
        return cases;
    }

    static CausalLM LoadBin() => Llama2cCheckpoint.Load(SharedFiles.Require("models/stories260K/stories260K.bin"));

    static CausalLM LoadHf() => HuggingFaceCheckpoint.Load(SharedFiles.Require("models/stories260K/hf"));

    /// <summary>Greedy decoding by recomputing the whole sequence at every step.</summary>
    static long[] GreedyFull(CausalLM model, long[] prompt, int steps)
    {
        using var noGrad = torch.no_grad();
        var seq = prompt.ToList();
        for (int i = 0; i < steps; i++)
        {
            using var scope = NewDisposeScope();
            var logits = model.Forward(torch.tensor(seq.ToArray(), 1, seq.Count));   // [1, T, V]
            seq.Add(logits[0, -1].argmax().item<long>());
        }
        return seq.Skip(prompt.Length).ToArray();
    }

    /// <summary>Greedy decoding with a KvCache: the prompt once, then one token per step.</summary>
    static long[] GreedyCached(CausalLM model, long[] prompt, int steps)
    {
        using var noGrad = torch.no_grad();
        using var cache = model.CreateCache();
        var output = new List<long>();
        long[] input = prompt;
        for (int i = 0; i < steps; i++)
        {
            using var scope = NewDisposeScope();
            var logits = model.Forward(torch.tensor(input, 1, input.Length), cache: cache);
            long next = logits[0, -1].argmax().item<long>();
            output.Add(next);
            input = new[] { next };
        }
        Assert.AreEqual(prompt.Length + steps - 1, cache.Length);
        return output.ToArray();
    }

    static void AssertLogits(CausalLM model, GoldenCase c, double tol)
    {
        using var noGrad = torch.no_grad();
        using var scope = NewDisposeScope();
        var logits = model.Forward(torch.tensor(c.Prompt, 1, c.Prompt.Length));      // [1, T, 512]
        var expected = torch.tensor(c.Logits!.SelectMany(r => r).ToArray(), c.Logits!.Length, c.Logits[0].Length);
        Console.WriteLine($"max abs logit diff vs llama2.c: {expected.unsqueeze(0).sub(logits).abs().max().item<float>():E3}");
        CausalLMTests.AssertClose(expected.unsqueeze(0), logits, tol, "logits vs llama2.c");
    }

    [TestMethod]
    public void Llama2cLoaderReproducesGoldenGreedyContinuationsByFullRecomputation()
    {
        var cases = Cases();
        using var model = LoadBin();
        foreach (var c in cases)
            CollectionAssert.AreEqual(c.Greedy, GreedyFull(model, c.Prompt, c.Greedy.Length), $"prompt [{string.Join(",", c.Prompt)}]");
    }

    [TestMethod]
    public void Llama2cLoaderReproducesGoldenGreedyContinuationsWithKvCache()
    {
        var cases = Cases();
        using var model = LoadBin();
        foreach (var c in cases)
            CollectionAssert.AreEqual(c.Greedy, GreedyCached(model, c.Prompt, c.Greedy.Length), $"prompt [{string.Join(",", c.Prompt)}]");
    }

    [TestMethod]
    public void Llama2cLoaderReproducesGoldenLogits()
    {
        var cases = Cases();
        using var model = LoadBin();
        foreach (var c in cases.Where(c => c.Logits != null))
            AssertLogits(model, c, 1e-4);
    }

    [TestMethod]
    public void HuggingFaceDirectoryGivesTheSameGreedyIdsAndLogits()
    {
        var cases = Cases();
        using var model = LoadHf();
        Assert.IsInstanceOfType<LlamaForCausalLM>(model);
        Assert.AreEqual(4, model.Config.NumKeyValueHeads);
        foreach (var c in cases)
        {
            CollectionAssert.AreEqual(c.Greedy, GreedyCached(model, c.Prompt, c.Greedy.Length));
            if (c.Logits != null) AssertLogits(model, c, 1e-4);
        }
        // Both loaders hold the same weights (llama2.c's q/k rows permuted to the half-split layout).
        using var bin = LoadBin();
        var hfParams = model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var (name, p) in bin.named_parameters())
            Assert.IsTrue(hfParams[name].eq(p).all().item<bool>(), $"{name} differs between stories260K.bin and hf/");
    }

    [TestMethod]
    public void LeftPaddedBatchGivesTheSameNextTokenLogitsAsEachPromptAlone()
    {
        var cases = Cases();
        using var model = LoadBin();
        using var noGrad = torch.no_grad();
        using var scope = NewDisposeScope();
        long[][] prompts = { cases[1].Prompt, new long[] { 1 }, cases[1].Prompt.Concat(cases[1].Greedy.Take(5)).ToArray() };
        int width = prompts.Max(p => p.Length);
        var ids = new long[prompts.Length * width];
        var mask = new long[prompts.Length * width];
        for (int r = 0; r < prompts.Length; r++)
            for (int j = 0; j < prompts[r].Length; j++)
            {
                int col = width - prompts[r].Length + j;
                ids[r * width + col] = prompts[r][j];
                mask[r * width + col] = 1;
            }
        var batched = model.Forward(torch.tensor(ids, prompts.Length, width), torch.tensor(mask, prompts.Length, width));
        Assert.IsFalse(batched.isnan().any().item<bool>());
        for (int r = 0; r < prompts.Length; r++)
        {
            var alone = model.Forward(torch.tensor(prompts[r], 1, prompts[r].Length))[0, -1];
            CausalLMTests.AssertClose(alone, batched[r, -1], 1e-4, $"prompt {r}");
        }
    }
}
