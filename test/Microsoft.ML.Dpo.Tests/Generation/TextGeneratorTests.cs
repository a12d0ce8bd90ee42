using System.Text.Json;
using Microsoft.ML.Dpo.Checkpoints;
using Microsoft.ML.Dpo.Generation;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tests.Modeling;
using Microsoft.ML.Dpo.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Generation;

[TestClass]
public sealed class TextGeneratorTests
{
    // ---- helpers -------------------------------------------------------------------------------------------------

    static List<(int[] Prompt, int[] Greedy)> GoldenCases()
    {
        string path = SharedFiles.Require("golden/stories260K-reference.json");
        using var doc = JsonDocument.Parse(File.ReadAllText(path));
        return doc.RootElement.GetProperty("cases").EnumerateArray()
            .Select(c => (c.GetProperty("prompt").EnumerateArray().Select(v => v.GetInt32()).ToArray(),
                          c.GetProperty("greedy").EnumerateArray().Select(v => v.GetInt32()).ToArray()))
            .ToList();
    }

    static CausalLM LoadStories260K() => CausalLMLoader.Load(SharedFiles.Require("models/stories260K/stories260K.bin"));

    /// <summary>
    /// A tiny random model whose logits are decisive: every matrix is scaled up (std 0.02 · scale) so that next-token
    /// logits spread over several units and greedy choices are not decided by rounding noise.
    /// </summary>
    internal static CausalLM Decisive(CausalLMConfig config, int seed = 7, double scale = 10)
    {
        torch.manual_seed(seed);
        var model = CausalLM.Create(config);
        using var noGrad = torch.no_grad();
        foreach (var (_, p) in model.named_parameters())
            if (p.dim() >= 2) p.mul_(scale);
        return model;
    }

    static CausalLMConfig TinyConfig(string type) => type == "gpt2" ? TinyModels.Gpt2() : TinyModels.Llama();

    /// <summary>Greedy decoding that recomputes the whole sequence at every step (no cache).</summary>
    static int[] GreedyFull(CausalLM model, int[] prompt, int steps)
    {
        using var noGrad = torch.no_grad();
        var seq = prompt.Select(t => (long)t).ToList();
        for (int i = 0; i < steps; i++)
        {
            using var scope = NewDisposeScope();
            var logits = model.Forward(torch.tensor(seq.ToArray(), 1, seq.Count));
            seq.Add(logits[0, -1].argmax().item<long>());
        }
        return seq.Skip(prompt.Length).Select(t => (int)t).ToArray();
    }

    static string Show(IEnumerable<int> ids) => "[" + string.Join(",", ids) + "]";

    // ---- the real model against llama2.c ---------------------------------------------------------------------------

    [TestMethod]
    public void GreedyGenerationOnStories260KReproducesEveryGoldenContinuation()
    {
        var cases = GoldenCases();
        using var model = LoadStories260K();
        Assert.AreEqual(2, model.Config.EosTokenIds.Single(), "stories260K's eos (llama2.c: </s> = 2)");
        var generator = new TextGenerator(model);
        foreach (var (prompt, greedy) in cases)
        {
            // llama2.c's run.c does not stop at EOS; none of the golden continuations contains it, so stopping is off only for parity.
            var options = new GenerationOptions { MaxNewTokens = greedy.Length, StopAtEos = false };
            var got = generator.Generate([prompt], options).Single();
            CollectionAssert.AreEqual(greedy, got, $"prompt {Show(prompt)}: expected {Show(greedy)}, got {Show(got)}");
        }
        // All prompts in one left-padded batch give the same continuations.
        var batch = generator.Generate(cases.Select(c => c.Prompt).ToList(), new GenerationOptions { MaxNewTokens = cases.Max(c => c.Greedy.Length), StopAtEos = false });
        for (int i = 0; i < cases.Count; i++)
            CollectionAssert.AreEqual(cases[i].Greedy, batch[i].Take(cases[i].Greedy.Length).ToArray(), $"batched row {i}");
    }

    [TestMethod]
    public void LeftPaddedBatchOfDifferentLengthsGivesTheSameTokensAsEachPromptAlone()
    {
        var cases = GoldenCases();
        using var model = LoadStories260K();
        var generator = new TextGenerator(model);
        var longPrompt = cases[1].Prompt.Concat(cases[1].Greedy.Take(5)).ToArray();
        int[][] prompts = [cases[1].Prompt, [1], longPrompt, [1, 461]];
        var options = new GenerationOptions { MaxNewTokens = 24, StopAtEos = false };
        var batched = generator.Generate(prompts, options);
        for (int r = 0; r < prompts.Length; r++)
        {
            var alone = generator.Generate([prompts[r]], options).Single();
            CollectionAssert.AreEqual(alone, batched[r], $"row {r} (prompt length {prompts[r].Length}): alone {Show(alone)}, batched {Show(batched[r])}");
            CollectionAssert.AreEqual(GreedyFull(model, prompts[r], options.MaxNewTokens), alone, $"row {r} vs full recomputation");
        }
    }

    // ---- tiny random models ----------------------------------------------------------------------------------------

    [TestMethod]
    [DataRow("llama")]
    [DataRow("gpt2")]
    public void KvCacheGenerationEqualsFullRecomputationGreedyLoop(string type)
    {
        using var model = Decisive(TinyConfig(type));
        var generator = new TextGenerator(model);
        int[] prompt = [5, 17, 33, 8];
        var got = generator.Generate([prompt], new GenerationOptions { MaxNewTokens = 30, StopAtEos = false }).Single();
        var expected = GreedyFull(model, prompt, 30);
        CollectionAssert.AreEqual(expected, got, $"cached {Show(got)} vs full {Show(expected)}");
        Console.WriteLine($"{type}: {Show(got)}");
        Assert.IsTrue(got.Distinct().Count() > 3, "the sequence is not (nearly) constant: the model is decisive, not degenerate");
    }

    [TestMethod]
    [DataRow("llama")]
    [DataRow("gpt2")]
    public void LeftPaddedBatchEqualsEachPromptAloneOnTinyModels(string type)
    {
        using var model = Decisive(TinyConfig(type));
        var generator = new TextGenerator(model);
        int[][] prompts = [[4], [9, 10, 11, 12, 13, 14, 15], [20, 21, 22]];
        var options = new GenerationOptions { MaxNewTokens = 12, StopAtEos = false };
        var batched = generator.Generate(prompts, options);
        for (int r = 0; r < prompts.Length; r++)
            CollectionAssert.AreEqual(generator.Generate([prompts[r]], options).Single(), batched[r], $"row {r}");
    }

    [TestMethod]
    public void SamplingWithTheSameSeedIsReproducibleAndDifferentSeedsDiffer()
    {
        torch.manual_seed(3);
        using var model = CausalLM.Create(TinyModels.Llama());      // near-uniform next-token distributions
        var generator = new TextGenerator(model);
        int[][] prompts = [[1, 5, 6], [1]];
        GenerationOptions Options(long seed) => new() { MaxNewTokens = 32, Temperature = 1.0, Seed = seed, StopAtEos = false };
        var a = generator.Generate(prompts, Options(42));
        torch.manual_seed(999);                                      // the global generator does not matter
        var b = generator.Generate(prompts, Options(42));
        var c = generator.Generate(prompts, Options(43));
        for (int r = 0; r < prompts.Length; r++)
        {
            CollectionAssert.AreEqual(a[r], b[r], $"row {r}: same seed");
            Assert.AreEqual(32, a[r].Length);
        }
        Assert.IsFalse(a[0].SequenceEqual(c[0]) && a[1].SequenceEqual(c[1]), "seeds 42 and 43 gave the same samples");
        var greedy = generator.Generate(prompts, new GenerationOptions { MaxNewTokens = 32, StopAtEos = false });
        Assert.IsFalse(a[0].SequenceEqual(greedy[0]), "sampling at temperature 1 differs from greedy");
    }

    [TestMethod]
    [DataRow(1, 1.0)]        // top-k = 1
    [DataRow(0, 1e-6)]       // top-p tiny: only the most likely token survives
    [DataRow(50, 1e-6)]
    public void SamplingRestrictedToTheTopTokenEqualsGreedy(int topK, double topP)
    {
        using var model = Decisive(TinyModels.Llama());
        var generator = new TextGenerator(model);
        int[][] prompts = [[1, 2, 50], [7]];
        var greedy = generator.Generate(prompts, new GenerationOptions { MaxNewTokens = 20, StopAtEos = false });
        foreach (long seed in new long[] { 0, 1, 2 })
        {
            var sampled = generator.Generate(prompts, new GenerationOptions
            {
                MaxNewTokens = 20, StopAtEos = false, Temperature = 1.5, TopK = topK, TopP = topP, Seed = seed,
            });
            for (int r = 0; r < prompts.Length; r++)
                CollectionAssert.AreEqual(greedy[r], sampled[r], $"seed {seed}, row {r}");
        }
    }

    [TestMethod]
    public void RepetitionPenaltyChangesTheOutputAndReducesRepeats()
    {
        using var model = Decisive(TinyModels.Llama());
        var generator = new TextGenerator(model);
        int[] prompt = [1, 30, 31];
        var plain = generator.Generate([prompt], new GenerationOptions { MaxNewTokens = 40, StopAtEos = false }).Single();
        var penalised = generator.Generate([prompt], new GenerationOptions { MaxNewTokens = 40, StopAtEos = false, RepetitionPenalty = 3.0 }).Single();
        Assert.IsFalse(plain.SequenceEqual(penalised), $"penalty 3 changed nothing: {Show(plain)}");
        Assert.IsTrue(penalised.Distinct().Count() >= plain.Distinct().Count(),
            $"penalised output has fewer distinct tokens: {Show(penalised)} vs {Show(plain)}");
        var one = generator.Generate([prompt], new GenerationOptions { MaxNewTokens = 40, StopAtEos = false, RepetitionPenalty = 1.0 }).Single();
        CollectionAssert.AreEqual(plain, one, "penalty 1 is no penalty");
    }

    [TestMethod]
    public void EosStopsItsRowWhileOtherRowsContinue()
    {
        using var model = Decisive(TinyModels.Llama());
        var generator = new TextGenerator(model);
        int[][] prompts = [[1, 30, 31], [1, 60]];
        var free = generator.Generate(prompts, new GenerationOptions { MaxNewTokens = 20, StopAtEos = false });
        // Make a token that row 0 produces after a few steps (and row 1 does not produce at all) the model's EOS.
        int first = Enumerable.Range(2, free[0].Length - 2).FirstOrDefault(i => !free[1].Contains(free[0][i]) && Array.IndexOf(free[0], free[0][i]) == i, -1);
        if (first < 0) Assert.Inconclusive($"no token of row 0 {Show(free[0])} is absent from row 1 {Show(free[1])}; pick other prompts.");
        int eos = free[0][first];
        model.Config.EosTokenIds = [eos];
        var streamed = new List<GeneratedToken>();
        var stopped = generator.Generate(prompts, new GenerationOptions { MaxNewTokens = 20 }, streamed.Add);
        CollectionAssert.AreEqual(free[0].Take(first).ToArray(), stopped[0], "row 0 ends before its EOS, which is not returned");
        CollectionAssert.AreEqual(free[1], stopped[1], "row 1 continues to the token limit");
        Assert.IsFalse(streamed.Any(t => t.TokenId == eos), "EOS is not streamed");
        var notStopping = generator.Generate(prompts, new GenerationOptions { MaxNewTokens = 20, StopAtEos = false });
        CollectionAssert.AreEqual(free[0], notStopping[0], "StopAtEos = false ignores EOS");

        // When every row has ended, generation stops.
        var single = generator.Generate([prompts[0]], new GenerationOptions { MaxNewTokens = 20 }).Single();
        CollectionAssert.AreEqual(free[0].Take(first).ToArray(), single);
    }

    [TestMethod]
    public void StreamingCallbackReceivesExactlyTheGeneratedTokensInOrder()
    {
        using var model = Decisive(TinyModels.Llama());
        var generator = new TextGenerator(model);
        int[][] prompts = [[1, 30, 31], [1], [4, 5, 6, 7, 8]];
        var streamed = new List<GeneratedToken>();
        var result = generator.Generate(prompts, new GenerationOptions { MaxNewTokens = 15, StopAtEos = false }, streamed.Add);
        Assert.AreEqual(3 * 15, streamed.Count);
        for (int r = 0; r < prompts.Length; r++)
        {
            var mine = streamed.Where(t => t.Row == r).ToList();
            CollectionAssert.AreEqual(result[r], mine.Select(t => t.TokenId).ToArray(), $"row {r}");
            CollectionAssert.AreEqual(Enumerable.Range(0, 15).ToArray(), mine.Select(t => t.Step).ToArray(), $"row {r} steps");
        }
        // Tokens come step by step, rows in order within a step.
        var order = streamed.Select(t => (t.Step, t.Row)).ToList();
        CollectionAssert.AreEqual(order.OrderBy(o => o.Step).ThenBy(o => o.Row).ToList(), order);
    }

    [TestMethod]
    public void PromptLongerThanTheContextIsAnErrorNamingTheLengthsUnlessTruncated()
    {
        using var model = Decisive(TinyModels.Llama());             // context 128
        var generator = new TextGenerator(model);
        int[] tooLong = Enumerable.Range(0, 130).Select(i => 3 + i % 90).ToArray();
        var error = Assert.ThrowsExactly<ArgumentException>(() => generator.Generate([[1, 2], tooLong]));
        StringAssert.Contains(error.Message, "Prompt 1");
        StringAssert.Contains(error.Message, "130");
        StringAssert.Contains(error.Message, "128");
        StringAssert.Contains(error.Message, nameof(GenerationOptions.TruncateLongPrompts));

        var truncated = generator.Generate([tooLong], new GenerationOptions { TruncateLongPrompts = true, StopAtEos = false, MaxNewTokens = 10 }).Single();
        Assert.AreEqual(1, truncated.Length, "the last 127 prompt tokens leave room for one new token");
        var lastTokens = generator.Generate([tooLong[^127..]], new GenerationOptions { StopAtEos = false, MaxNewTokens = 10 }).Single();
        CollectionAssert.AreEqual(lastTokens, truncated);

        // A prompt that fits but leaves less room than MaxNewTokens is cut short by the context, not rejected.
        var nearFull = generator.Generate([tooLong[..120]], new GenerationOptions { StopAtEos = false, MaxNewTokens = 50 }).Single();
        Assert.AreEqual(8, nearFull.Length);
    }

    [TestMethod]
    public void InvalidInputsAreRejected()
    {
        using var model = Decisive(TinyModels.Llama());
        var generator = new TextGenerator(model);
        Assert.ThrowsExactly<ArgumentException>(() => generator.Generate([Array.Empty<int>()]));
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => generator.Generate([[1]], new GenerationOptions { MaxNewTokens = -1 }));
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => generator.Generate([[1]], new GenerationOptions { TopP = 0 }));
        Assert.ThrowsExactly<InvalidOperationException>(() => generator.Generate([[1]], new GenerationOptions { StopStrings = ["x"] }));
        Assert.ThrowsExactly<InvalidOperationException>(() => generator.Generate(["text"]));
        Assert.AreEqual(0, generator.Generate([[1]], new GenerationOptions { MaxNewTokens = 0 }).Single().Length);
        Assert.AreEqual(0, generator.Generate(Array.Empty<int[]>()).Count);
    }

    [TestMethod]
    public void NoTensorsLeakOverFiftyGenerationSteps()
    {
        using var model = Decisive(TinyModels.Llama());
        var generator = new TextGenerator(model);
        int[][] prompts = [[1, 30, 31], [1]];
        var options = new GenerationOptions { MaxNewTokens = 50, StopAtEos = false, Temperature = 0.8, TopK = 20, TopP = 0.9, RepetitionPenalty = 1.2 };
        generator.Generate(prompts, new GenerationOptions { MaxNewTokens = 3 });    // warm up
        GC.Collect(); GC.WaitForPendingFinalizers();
        long before = torch.Tensor.TotalCount;
        long liveBefore = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        var duringStep = new List<long>();
        var result = generator.Generate(prompts, options, t => { if (t.Row == 0) duringStep.Add(torch.Tensor.TotalCount); });
        GC.Collect(); GC.WaitForPendingFinalizers();
        Assert.AreEqual(50, result[0].Length);
        Assert.AreEqual(before, torch.Tensor.TotalCount, "live tensors after generation");
        Assert.AreEqual(liveBefore, DisposeScopeManager.Statistics.ThreadTotalLiveCount, "dispose-scope live count after generation");
        Assert.AreEqual(50, duringStep.Count);
        Assert.AreEqual(duringStep[1], duringStep[^1], $"live tensors grew during generation: step 1 {duringStep[1]}, step 49 {duringStep[^1]}");
    }

    // ---- text, tokenizer and stop strings ---------------------------------------------------------------------------

    static CausalLMConfig TinyGpt2FullVocab() => new()
    {
        ModelType = "gpt2",
        VocabSize = 50257,
        HiddenSize = 32,
        IntermediateSize = 64,
        NumHiddenLayers = 1,
        NumAttentionHeads = 2,
        NumKeyValueHeads = 2,
        HeadDim = 16,
        MaxPositionEmbeddings = 128,
        TieWordEmbeddings = true,
        AttentionBias = true,
        MlpBias = true,
        BosTokenId = 50256,
        EosTokenIds = [50256],
    };

    [TestMethod]
    public void StopStringIsCutFromTheOutput()
    {
        using var model = Decisive(TinyGpt2FullVocab(), seed: 5, scale: 5);
        var tokenizer = TextTokenizer.Gpt2();
        var generator = new TextGenerator(model, tokenizer);
        string prompt = "Once upon a time there was";
        var promptIds = tokenizer.EncodePrompt(prompt).ToArray();
        var ids = generator.Generate([promptIds], new GenerationOptions { MaxNewTokens = 30, StopAtEos = false }).Single();
        string full = generator.Generate([prompt], new GenerationOptions { MaxNewTokens = 30, StopAtEos = false }).Single();
        Assert.AreEqual(tokenizer.Decode(ids), full, "text generation decodes the same tokens");

        // A stop string: the text of a later plain-ASCII token (with its neighbour's tail, so it spans a token boundary).
        int at = Enumerable.Range(4, ids.Length - 4).FirstOrDefault(i =>
            tokenizer.Decode([ids[i]]) is { Length: > 1 } s && s.All(ch => ch < 128 && !char.IsControl(ch)), -1);
        if (at < 0) Assert.Inconclusive($"no plain-ASCII token in {full}");
        string previous = tokenizer.Decode([ids[at - 1]]);
        string stop = (previous.Length > 0 && previous[^1] < 128 ? previous[^1..] : "") + tokenizer.Decode([ids[at]]);
        int cut = full.IndexOf(stop, StringComparison.Ordinal);
        Assert.IsTrue(cut >= 0);

        var options = new GenerationOptions { MaxNewTokens = 30, StopAtEos = false, StopStrings = ["never appears \u2603", stop] };
        string stopped = generator.Generate([prompt], options).Single();
        Assert.AreEqual(full[..cut], stopped, $"stop string '{stop}' in '{full}'");
        Assert.IsFalse(stopped.Contains(stop, StringComparison.Ordinal));

        var stoppedIds = generator.Generate([promptIds], options).Single();
        Assert.IsTrue(stoppedIds.Length < ids.Length && ids.Take(stoppedIds.Length).SequenceEqual(stoppedIds), "token output is a prefix of the unstopped one");
        Assert.IsFalse(tokenizer.Decode(stoppedIds).Contains(stop, StringComparison.Ordinal));
    }
}
