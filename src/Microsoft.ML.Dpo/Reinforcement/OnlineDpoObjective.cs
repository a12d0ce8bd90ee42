using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Generation;
using Microsoft.ML.Dpo.Losses;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tokenization;
using Microsoft.ML.Dpo.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Reinforcement;

/// <summary>
/// Online DPO (Guo et al., 2024, "Direct Language Model Alignment from Online AI Feedback"): for each prompt two completions are
/// sampled from the current policy, the rewards (any judge) pick the better one, and the DPO step (<see cref="DpoObjective"/>, the
/// same loss units as offline DPO) is taken on the fresh pair. Pairs the judge cannot separate (equal or missing scores) carry no
/// preference and are left out, and counted (<c>pairs/tied_share</c>).
/// </summary>
internal sealed class OnlineDpoObjective(CausalLM policy, TextTokenizer tokenizer, ReferenceLogProbs reference, PreferenceLossOptions loss,
    IReadOnlyList<RewardFunction> rewards, GenerationOptions generation, int seed, int padId, CancellationToken cancellation) : ITrainingObjective<TokenizedPrompt>
{
    readonly DpoObjective dpo = new(policy, reference, loss, new DpoStepOptions(), padId);

    /// <summary>Judge calls made so far (one per sampled completion and reward).</summary>
    public long JudgedCompletions { get; private set; }

    public ObjectiveResult Compute(IReadOnlyList<TokenizedPrompt> prompts)
    {
        long s = seed;
        foreach (var p in prompts) s = unchecked(s * 1_000_003 + p.Index);
        var options = new GenerationOptions
        {
            MaxNewTokens = generation.MaxNewTokens, Temperature = generation.Temperature, TopP = generation.TopP, TopK = generation.TopK, Seed = s & long.MaxValue,
        };
        List<Rollout> rollouts;
        using (no_grad())
        using (policy.PauseRouterRecording())   // an MoE policy's sampling passes add no router loss
            rollouts = RolloutSampler.Sample(policy, tokenizer, prompts, 2, options);
        var metrics = new Dictionary<string, double>();
        var scores = RewardScoring.Score(rewards, rollouts.Select(r => (r.Prompt.Text, r.Text)).ToList(), metrics, cancellation);
        JudgedCompletions += rollouts.Count * rewards.Count;
        var pairs = new List<TokenizedPreference>();
        for (int g = 0; g < prompts.Count; g++)
        {
            double a = scores[2 * g], b = scores[2 * g + 1];
            if (a == b) continue;
            var (chosen, rejected) = a > b ? (rollouts[2 * g], rollouts[2 * g + 1]) : (rollouts[2 * g + 1], rollouts[2 * g]);
            pairs.Add(new TokenizedPreference(prompts[g].Ids, chosen.Completion, rejected.Completion, prompts[g].Row, prompts[g].Index));
        }
        metrics["pairs/tied_share"] = 1 - (double)pairs.Count / prompts.Count;
        metrics["completions/mean_length"] = rollouts.Average(r => (double)r.Completion.Length);
        if (pairs.Count == 0)
        {
            // No preference in this batch: a zero loss that still reaches the graph, so the step changes nothing.
            Tensor zero = policy.parameters().First(p => p.requires_grad).sum() * 0;
            metrics["loss"] = 0;
            return new ObjectiveResult(zero, metrics, 0);
        }
        var result = dpo.Compute(pairs);
        foreach (var (name, value) in result.Metrics) metrics[name] = value;
        return result with { Metrics = metrics };
    }
}
