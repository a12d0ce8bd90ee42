using System.Diagnostics;
using System.Text.Json.Nodes;
using Microsoft.ML.Dpo.Generation;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Reinforcement;
using Microsoft.ML.Dpo.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Benchmarks;

/// <summary>
/// Online RL (GRPO): rollout tokens per second at batch 1 and with K = 8 samples of one prompt (prefilled once, decoded as one
/// batch of 8), and the share of a GRPO step spent sampling (and rewarding) against training (forward, backward, AdamW step).
/// </summary>
internal sealed class RlSuite : IBenchmarkSuite
{
    public string Name => "rl";
    public string Description => "GRPO: rollout tokens/s at batch 1 vs K = 8 per prompt, and a step's generation vs training time";

    const int PromptLength = 32, K = 8;

    public JsonObject Run(BenchmarkOptions options)
    {
        int newTokens = options.Quick ? 32 : 64;
        torch.manual_seed(1234);
        var config = GenerationSuite.Llama21M();
        var tokenizer = TextTokenizer.Gpt2();
        config.VocabSize = 50257;
        config.BosTokenId = 50256;
        config.EosTokenIds = [50256];
        using var model = CausalLM.Create(config);
        model.eval();
        long parameters = model.parameters().Sum(p => p.numel());
        Console.WriteLine($"-- Llama, random weights: {parameters:N0} parameters, GPT-2 vocabulary; prompt {PromptLength} tokens, {newTokens} new tokens");
        int[] prompt = Enumerable.Range(0, PromptLength).Select(i => 100 + (i * 97) % 40000).ToArray();
        var generator = new TextGenerator(model, tokenizer);
        var sampling = new GenerationOptions { MaxNewTokens = newTokens, Temperature = 1.0, StopAtEos = false, Seed = 1 };

        // Batch 1 and K = 8 alternately; tokens/s counts the new tokens of every row.
        generator.Sample([prompt], 1, sampling);
        generator.Sample([prompt], K, sampling);
        var single = new List<double>();
        var grouped = new List<double>();
        for (int r = 0; r < options.Repeats; r++)
        {
            single.Add(Time(() => generator.Sample([prompt], 1, sampling)));
            grouped.Add(Time(() => generator.Sample([prompt], K, sampling)));
        }
        double singleRate = newTokens / Measure.Median(single), groupRate = K * newTokens / Measure.Median(grouped);
        Console.WriteLine($"rollout tokens/s: batch 1 {singleRate:F0}, K = {K} of one prompt {groupRate:F0} ({groupRate / singleRate:F2}x)");

        // GRPO steps: 2 prompts × K completions, β = 0 (TRL's default), a reward that needs no model.
        var prompts = Enumerable.Range(0, 2).Select(i => new TokenizedPrompt($"p{i}", prompt.Select(t => t + i).ToArray(), i + 1, i)).ToList();
        var settings = new OnlineRlSettings(OnlineRlAlgorithm.Grpo, K, sampling, Beta: 0, Seed: 3);
        var reward = RewardFunction.FromFunction((_, completion) => completion.Count(c => c == 'e'), "letter_e");
        var objective = new OnlineRlObjective(model, tokenizer, null, [reward], settings, 50256, CancellationToken.None);
        var trainable = model.parameters().ToList();
        using var optimizer = optim.AdamW(trainable, lr: 1e-5);
        model.train();
        var stepSeconds = new List<double>();
        var generationShares = new List<double>();
        for (int r = 0; r <= options.Repeats; r++)
        {
            double generationBefore = objective.GenerationSeconds;
            double seconds = Time(() =>
            {
                using var scope = NewDisposeScope();
                var result = objective.Compute(prompts);
                result.Loss.backward();
                optimizer.step();
                optimizer.zero_grad();
            });
            if (r == 0) continue;   // warm-up
            stepSeconds.Add(seconds);
            generationShares.Add((objective.GenerationSeconds - generationBefore) / seconds);
        }
        model.eval();
        double share = Measure.Median(generationShares);
        Console.WriteLine($"GRPO step ({prompts.Count} prompts x {K}): {Measure.Median(stepSeconds):F2} s, generation {share:P0}, training {1 - share:P0}");
        return new JsonObject
        {
            ["parameters"] = parameters, ["promptLength"] = PromptLength, ["newTokens"] = newTokens, ["k"] = K,
            ["rolloutTokensPerSecondBatch1"] = Math.Round(singleRate, 1), ["rolloutTokensPerSecondK8"] = Math.Round(groupRate, 1),
            ["k8OverBatch1"] = Math.Round(groupRate / singleRate, 3),
            ["grpoStepSeconds"] = Measure.ToJson(stepSeconds), ["generationShareOfStep"] = Math.Round(share, 3), ["trainingShareOfStep"] = Math.Round(1 - share, 3),
        };
    }

    static double Time(Action action)
    {
        var clock = Stopwatch.StartNew();
        action();
        return clock.Elapsed.TotalSeconds;
    }
}
