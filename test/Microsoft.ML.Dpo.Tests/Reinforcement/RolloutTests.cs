using Microsoft.ML.Dpo.Generation;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Reinforcement;
using Microsoft.ML.Dpo.Tests.Modeling;
using Microsoft.ML.Dpo.Trainers;
using Microsoft.ML.Dpo.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Reinforcement;

/// <summary>Rollout sampling: stored log-probs equal a fresh forward's, shared prefill equals separate prompts, EOS and truncation flags, references.</summary>
[TestClass]
public sealed class RolloutTests
{
    static CausalLM Model()
    {
        manual_seed(3);
        var model = CausalLM.Create(TinyModels.Llama());
        model.eval();
        return model;
    }

    static readonly int[][] Prompts = [[1, 5, 9, 14], [1, 7], [1, 20, 21, 22, 23, 24]];

    static List<Rollout> Sample(CausalLM model, IReadOnlyList<int[]> prompts, int k, double temperature, int maxNew, long seed = 11)
    {
        var tokenized = prompts.Select((p, i) => new TokenizedPrompt($"prompt {i}", p, i + 1, i)).ToList();
        var generator = new TextGenerator(model);
        var sampled = generator.Sample(tokenized.Select(p => p.Ids).ToList(), k, new GenerationOptions { Temperature = temperature, MaxNewTokens = maxNew, Seed = seed });
        return sampled.Select((s, i) => new Rollout(i / k, tokenized[i / k], s.Tokens, "", s.LogProbs, s.EndedAtEos)).ToList();
    }

    [TestMethod]
    [DataRow(1.0)]
    [DataRow(0.7)]
    public void LogProbsStoredAtSamplingEqualAFreshForward(double temperature)
    {
        using var model = Model();
        using var scope = NewDisposeScope();
        var rollouts = Sample(model, Prompts, k: 3, temperature, maxNew: 12);
        using var batch = RolloutSampler.Batch(rollouts, padId: 0, model.Device);
        using var _ = no_grad();
        var scores = SequenceScoring.Score(model, batch, new ScoringRequest(Temperature: temperature));
        var mask = RolloutSampler.CompletionMask(rollouts, model.Device);
        var fresh = RolloutSampler.Padded(scores.TokenLogProbs!, mask);
        var stored = RolloutSampler.SampledLogProbs(rollouts, model.Device);
        double maxDiff = (fresh - stored).abs().max().ToDouble();
        Console.WriteLine($"T={temperature}: {rollouts.Sum(r => r.Completion.Length)} tokens, max |stored − fresh| = {maxDiff:G3}");
        Assert.IsTrue(maxDiff < 1e-4, $"max |Δ log p| = {maxDiff}");
        Assert.IsTrue(rollouts.Sum(r => r.Completion.Length) > 20);
    }

    [TestMethod]
    public void SharedPrefillSamplesWhatSeparatePromptsSample()
    {
        using var model = Model();
        var shared = Sample(model, Prompts, k: 4, 1.0, maxNew: 10);
        var separate = Sample(model, Prompts.SelectMany(p => Enumerable.Repeat(p, 4)).ToList(), k: 1, 1.0, maxNew: 10);
        Assert.HasCount(12, shared);
        for (int i = 0; i < shared.Count; i++)
        {
            CollectionAssert.AreEqual(separate[i].Completion, shared[i].Completion, $"row {i}");
            for (int t = 0; t < shared[i].SampledLogProbs.Length; t++) Assert.AreEqual(separate[i].SampledLogProbs[t], shared[i].SampledLogProbs[t], 1e-5);
        }
        Assert.IsTrue(shared.Take(4).Select(r => string.Join(",", r.Completion)).Distinct().Count() > 1, "the K completions of a prompt differ");
    }

    [TestMethod]
    public void EndOfSequenceAndTruncationAreFlagged()
    {
        using var model = Model();
        var rollouts = Sample(model, Prompts, k: 8, temperature: 3.0, maxNew: 30);
        var eos = model.Config.EosTokenIds.ToHashSet();
        foreach (var r in rollouts)
        {
            Assert.HasCount(r.Completion.Length, r.SampledLogProbs);
            if (r.Terminated)
            {
                Assert.IsTrue(eos.Contains(r.Completion[^1]), "a terminated completion ends with its EOS token (kept as a target, as TRL does)");
                Assert.IsFalse(r.Completion[..^1].Any(eos.Contains));
            }
            else
            {
                Assert.HasCount(30, r.Completion, "a completion that did not stop was cut at the limit");
                Assert.IsTrue(r.Truncated);
                Assert.IsFalse(r.Completion.Any(eos.Contains));
            }
        }
        Assert.IsTrue(rollouts.Any(r => r.Terminated) && rollouts.Any(r => r.Truncated), "this seed gives both kinds");
    }

    [TestMethod]
    public void BetaZeroCreatesNoReferenceModel()
    {
        using var dir = new TempDirectory();
        using var model = Trainers.StylePreferenceTask.CreateBaseModel(dir.Path);
        var options = new GrpoTrainer.Options { BaseModel = model, Beta = 0 };
        Assert.IsNull(OnlineRlRun.Reference(options, model, out var owned, out var inMemory));
        Assert.IsNull(owned);
        Assert.IsNull(inMemory);

        options.Beta = 0.04;
        var reference = OnlineRlRun.Reference(options, model, out owned, out inMemory);
        Assert.AreSame(model.Network, reference!.Network, "a base model given in memory is the reference (not copied, not modified)");
        Assert.IsNull(owned);

        options.BaseModel = null;
        reference = OnlineRlRun.Reference(options, model, out owned, out _);
        using (owned)
        {
            Assert.IsNotNull(owned, "from a path: a frozen copy");
            Assert.AreNotSame(model.Network, reference!.Network);
        }
    }
}
