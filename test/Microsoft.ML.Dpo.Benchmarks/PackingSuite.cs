using System.Text.Json.Nodes;
using Microsoft.ML.Dpo.Runtime;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Losses;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Benchmarks;

/// <summary>
/// Padding-free packing (issue 18) on a length-skewed batch: sequence lengths drawn uniformly from 32–1024 (seeded), the
/// 23M-parameter Llama of the generation suite (hidden 384, 6 layers, vocab 32,000). Real tokens per second of a training
/// step (forward, backward, AdamW) padded vs packed, for SFT (6 sequences) and DPO (3 pairs, precomputed reference), in
/// alternating runs, medians; and, for the attention choice, the trunk alone (hidden states, backward) packed with
/// per-sequence attention vs the same packed row through the dense block-diagonal mask.
/// </summary>
internal sealed class PackingSuite : IBenchmarkSuite
{
    public string Name => "packing";
    public string Description => "padding-free vs padded SFT and DPO steps on lengths uniform in 32-1024 (real tokens/s), per-sequence vs block-diagonal attention";

    const int MinLength = 32, MaxLength = 1024, SftRows = 6, DpoPairs = 3, Seed = 18;

    static CausalLMConfig Model()
    {
        var config = GenerationSuite.Llama21M();
        config.MaxPositionEmbeddings = 2048;
        return config;
    }

    public JsonObject Run(BenchmarkOptions options)
    {
        int repeats = options.Quick ? 2 : options.Repeats;
        var config = Model();
        var random = new Random(Seed);
        int[] Ids(int n) => Enumerable.Range(0, n).Select(_ => random.Next(3, config.VocabSize)).ToArray();
        // SFT: a 16-token prompt and the rest completion; DPO: a shared prompt of 16–64 tokens, each completion to its own length.
        var completions = Enumerable.Range(0, SftRows).Select(i => new TokenizedCompletion(Ids(16), Ids(random.Next(MinLength, MaxLength + 1) - 16), i, i)).ToList();
        var pairs = Enumerable.Range(0, DpoPairs).Select(i =>
        {
            int prompt = random.Next(16, 65);
            return new TokenizedPreference(Ids(prompt), Ids(random.Next(MinLength, MaxLength + 1) - prompt), Ids(random.Next(MinLength, MaxLength + 1) - prompt), i, i);
        }).ToList();
        var results = new JsonObject
        {
            ["model"] = "llama, hidden 384, 6 layers, vocab 32000, random weights, float32",
            ["lengths"] = $"uniform {MinLength}-{MaxLength}, seed {Seed}",
            ["repeats"] = repeats,
        };

        manual_seed(7);
        using var policy = CausalLM.Create(config);
        using var optimizer = optim.AdamW(policy.parameters(), lr: 1e-6);
        ReferenceLogProbs reference;
        using (var frozen = CausalLM.Create(config))
            reference = ReferenceLogProbs.Precomputed.Compute(frozen, pairs, DpoPairs, padId: 0, cacheDirectory: null, log: null, CancellationToken.None);

        void Compare(string name, long realTokens, long paddedTokens, Func<bool, Action> step)
        {
            Action padded = step(false), packed = step(true);
            padded(); packed();                                                        // warm-up
            var paddedTimes = new List<double>();
            var packedTimes = new List<double>();
            for (int i = 0; i < repeats; i++)
            {
                paddedTimes.AddRange(Measure.Seconds(padded, 1, warmup: 0));
                packedTimes.AddRange(Measure.Seconds(packed, 1, warmup: 0));
            }
            double a = Measure.Median(paddedTimes), b = Measure.Median(packedTimes);
            results[name] = new JsonObject
            {
                ["realTokens"] = realTokens, ["paddedTokens"] = paddedTokens,
                ["paddedSeconds"] = Measure.ToJson(paddedTimes), ["packedSeconds"] = Measure.ToJson(packedTimes),
                ["paddedRealTokensPerSecond"] = Math.Round(realTokens / a, 1), ["packedRealTokensPerSecond"] = Math.Round(realTokens / b, 1),
                ["speedup"] = Math.Round(a / b, 3),
            };
            Console.WriteLine($"  {name}: {realTokens} real of {paddedTokens} padded tokens; padded {realTokens / a:F0} tok/s, packed {realTokens / b:F0} tok/s: {a / b:F2}x");
        }

        Action TrainStep<T>(ITrainingObjective<T> objective, IReadOnlyList<T> batch) => () =>
        {
            using var scope = NewDisposeScope();
            objective.Compute(batch).Loss.backward();
            optimizer.step();
            optimizer.zero_grad();
        };

        var sftRows = completions.Select(e => (e.Prompt, e.Completion)).ToList();
        Compare("sft", SequenceBatch.ProcessedTokens(sftRows, true), SequenceBatch.ProcessedTokens(sftRows, false),
            packed => TrainStep(new SftObjective(policy, 0, completionOnlyLoss: true, paddingFree: packed), completions));
        var dpoRows = SequenceScoring.PairRows(pairs);
        var loss = new PreferenceLossOptions();
        Compare("dpo", SequenceBatch.ProcessedTokens(dpoRows, true), SequenceBatch.ProcessedTokens(dpoRows, false),
            packed => TrainStep(new DpoObjective(policy, reference, loss, new DpoStepOptions(PaddingFree: packed), 0), pairs));

        // Attention inside a packed row: per sequence (the layout the batch carries) vs the dense [T, T] block-diagonal mask
        // (the same segment ids without the layout). The trunk only, so the comparison is the attention's.
        {
            using var batch = SequenceBatch.Pack(sftRows, 0, policy.Device);
            using var plainMask = batch.AttentionMask.clone();                         // segment ids, no layout attached
            Action Trunk(Tensor mask) => () =>
            {
                using var scope = NewDisposeScope();
                policy.HiddenStates(batch.InputIds, mask).square().mean().backward();
                optimizer.zero_grad();
            };
            Action perSequence = Trunk(batch.AttentionMask), dense = Trunk(plainMask);
            perSequence(); dense();
            var perSequenceTimes = new List<double>();
            var denseTimes = new List<double>();
            for (int i = 0; i < repeats; i++)
            {
                perSequenceTimes.AddRange(Measure.Seconds(perSequence, 1, warmup: 0));
                denseTimes.AddRange(Measure.Seconds(dense, 1, warmup: 0));
            }
            double a = Measure.Median(denseTimes), b = Measure.Median(perSequenceTimes);
            results["attention"] = new JsonObject
            {
                ["rowTokens"] = batch.InputIds.shape[1],
                ["blockDiagonalMaskSeconds"] = Measure.ToJson(denseTimes), ["perSequenceSeconds"] = Measure.ToJson(perSequenceTimes),
                ["perSequenceSpeedup"] = Math.Round(a / b, 3),
            };
            Console.WriteLine($"  trunk of the packed SFT row ({batch.InputIds.shape[1]} tokens): block-diagonal mask {a:F2} s, per-sequence attention {b:F2} s: {a / b:F2}x");
        }

        if (ProcessMemory.PeakResidentBytes() is long peak)
        {
            results["peakRssMiB"] = Math.Round(peak / 1048576.0, 1);
            Console.WriteLine($"  peak RSS {peak / 1048576.0:F0} MiB");
        }
        return results;
    }
}
