using TorchSharp;
using System.Diagnostics;
using Microsoft.ML.Dpo.Generation;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tokenization;
using Microsoft.ML.Dpo.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Reinforcement;

/// <summary>The policy-gradient algorithm of an <see cref="OnlineRlObjective"/>.</summary>
internal enum OnlineRlAlgorithm { Grpo, Rloo }

/// <summary>What an online RL step does (the trainers' options, resolved).</summary>
internal sealed record OnlineRlSettings(OnlineRlAlgorithm Algorithm, int NumGenerations, GenerationOptions Generation, double Beta, int Seed,
    int NumIterations = 1, double EpsilonLow = 0.2, double EpsilonHigh = 0.2, GrpoLossType LossType = GrpoLossType.Dapo,
    RewardScaling Scaling = RewardScaling.Group, bool NormalizeAdvantages = false, bool MaskTruncatedCompletions = false);

/// <summary>Where reference log-probs come from: a network, and a scope to enter around its forward (LoRA: adapters off).</summary>
internal sealed record ReferencePolicy(CausalLM Network, Func<IDisposable>? Enter = null);

/// <summary>
/// Online RL as a training objective of the one loop: each micro-batch of prompts is turned into a fresh rollout batch — K
/// completions per prompt sampled from the current policy (<see cref="RolloutSampler"/>), rewarded
/// (<see cref="RewardScoring"/>), given advantages (<see cref="Advantages"/>) — and the loss (<see cref="PolicyLosses"/>) is
/// computed on it by a forward pass of the policy. With <see cref="OnlineRlSettings.NumIterations"/> μ &gt; 1 the trainer presents
/// each micro-batch μ times in a row and the rollouts of its first presentation are reused, their sampling-time log-probs serving
/// as π_old (GRPO's μ).
/// </summary>
internal sealed class OnlineRlObjective(CausalLM policy, TextTokenizer tokenizer, ReferencePolicy? reference, IReadOnlyList<RewardFunction> rewards,
    OnlineRlSettings settings, int padId, CancellationToken cancellation) : ITrainingObjective<TokenizedPrompt>
{
    sealed record RolloutBatch(int[] Key, List<Rollout> Rollouts, float[] ReferenceLogProbs, double[] Advantages, Dictionary<string, double> Metrics)
    {
        public int Uses;
    }

    RolloutBatch? current;

    /// <summary>Seconds spent sampling and rewarding so far (the rest of a step is the policy's forward and backward pass).</summary>
    public double GenerationSeconds { get; private set; }

    /// <summary>Rollout batches sampled so far.</summary>
    public int RolloutBatches { get; private set; }

    public ObjectiveResult Compute(IReadOnlyList<TokenizedPrompt> prompts)
    {
        var key = prompts.Select(p => p.Index).ToArray();
        if (current is null || current.Uses >= settings.NumIterations || !current.Key.SequenceEqual(key)) current = Sample(prompts, key);
        current.Uses++;
        var rollouts = current.Rollouts;
        var device = policy.Device;

        using var batch = RolloutSampler.Batch(rollouts, padId, device);
        Tensor completionMask = RolloutSampler.CompletionMask(rollouts, device);                       // [N, L]
        Tensor lossMask = settings.MaskTruncatedCompletions
            ? completionMask.logical_and(tensor(rollouts.Select(r => !r.Truncated).ToArray(), device: device).unsqueeze(1))
            : completionMask;
        var scores = SequenceScoring.Score(policy, batch, new ScoringRequest(Statistics: true, Temperature: settings.Generation.Temperature));
        Tensor logProbs = RolloutSampler.Padded(scores.TokenLogProbs!, completionMask);               // [N, L], with grad
        Tensor advantages = tensor(current.Advantages, device: device).to(logProbs.dtype);
        var metrics = new Dictionary<string, double>(current.Metrics);
        Tensor loss;
        if (settings.Algorithm == OnlineRlAlgorithm.Grpo)
        {
            Tensor old = RolloutSampler.SampledLogProbs(rollouts, device).to(logProbs.dtype);
            Tensor? referenceLogProbs = settings.Beta != 0 ? ReferenceTensor(current, completionMask).to(logProbs.dtype) : null;
            var output = PolicyLosses.Grpo(new PolicyLossInput(logProbs, old, referenceLogProbs, advantages, lossMask),
                settings.EpsilonLow, settings.EpsilonHigh, settings.Beta, settings.LossType, settings.Generation.MaxNewTokens);
            loss = output.Loss;
            if (settings.Beta != 0) metrics["kl"] = output.Kl;
            metrics["clip_ratio/low_mean"] = output.ClipLow;
            metrics["clip_ratio/high_mean"] = output.ClipHigh;
            metrics["clip_ratio/region_mean"] = output.ClipRegion;
        }
        else
            loss = PolicyLosses.Reinforce(logProbs, advantages, lossMask);
        using (no_grad())
        {
            metrics["loss"] = loss.ToDouble();
            double count = scores.Count.sum().ToDouble();
            metrics["entropy"] = count > 0 ? scores.EntropySum!.sum().ToDouble() / count : 0;
        }
        return new ObjectiveResult(loss, metrics, batch.Tokens);
    }

    RolloutBatch Sample(IReadOnlyList<TokenizedPrompt> prompts, int[] key)
    {
        var clock = Stopwatch.StartNew();
        // Seeded by the prompts of the batch, so a resumed run samples what the uninterrupted one did.
        long seed = settings.Seed;
        foreach (int index in key) seed = unchecked(seed * 1_000_003 + index);
        var generation = Clone(settings.Generation, seed & long.MaxValue);
        List<Rollout> rollouts;
        using (no_grad())
        using (policy.PauseRouterRecording())   // an MoE policy's sampling passes add no router loss
            rollouts = RolloutSampler.Sample(policy, tokenizer, prompts, settings.NumGenerations, generation);

        var metrics = new Dictionary<string, double>();
        var total = RewardScoring.Score(rewards, rollouts.Select(r => (r.Prompt.Text, r.Text)).ToList(), metrics, cancellation);
        var lengths = rollouts.Select(r => (double)r.Completion.Length).ToArray();
        metrics["completions/mean_length"] = lengths.Average();
        metrics["completions/min_length"] = lengths.Min();
        metrics["completions/max_length"] = lengths.Max();
        metrics["completions/clipped_ratio"] = rollouts.Average(r => r.Truncated ? 1.0 : 0.0);
        var terminated = rollouts.Where(r => r.Terminated).Select(r => (double)r.Completion.Length).ToArray();
        metrics["completions/mean_terminated_length"] = terminated.Length > 0 ? terminated.Average() : 0;

        float[] referenceLogProbs = [];
        double[] advantages;
        using (var scope = NewDisposeScope())
        using (no_grad())
        {
            var device = policy.Device;
            Tensor mask = RolloutSampler.CompletionMask(rollouts, device);
            if (settings.Beta != 0)
            {
                var network = reference ?? throw new InvalidOperationException("β ≠ 0 needs a reference model.");
                using var batch = RolloutSampler.Batch(rollouts, padId, device);
                using (network.Enter?.Invoke())
                using (network.Network.PauseRouterRecording())
                {
                    var scores = SequenceScoring.Score(network.Network, batch, new ScoringRequest(Temperature: settings.Generation.Temperature));
                    referenceLogProbs = RolloutSampler.Padded(scores.TokenLogProbs!, mask).to(float32).cpu().data<float>().ToArray();
                }
            }
            Tensor rewardTensor = tensor(total, device: device);
            Tensor result;
            if (settings.Algorithm == OnlineRlAlgorithm.Grpo)
            {
                (result, double zeroStd) = Advantages.GroupRelative(rewardTensor, settings.NumGenerations, settings.Scaling);
                metrics["frac_reward_zero_std"] = zeroStd;
            }
            else
            {
                if (settings.Beta != 0)
                {
                    Tensor old = RolloutSampler.SampledLogProbs(rollouts, device).to(float64);
                    Tensor referenceTensor = tensor(referenceLogProbs, mask.shape, device: device).to(float64);
                    Tensor kl = ((old - referenceTensor) * mask.to(float64)).sum(1);
                    metrics["kl"] = kl.mean().ToDouble();
                    rewardTensor = Advantages.KlShapedRewards(rewardTensor, old, referenceTensor, mask, settings.Beta);
                }
                result = Advantages.LeaveOneOut(rewardTensor, settings.NumGenerations, settings.NormalizeAdvantages);
            }
            advantages = result.to(float64).cpu().data<double>().ToArray();
        }
        GenerationSeconds += clock.Elapsed.TotalSeconds;
        RolloutBatches++;
        return new RolloutBatch(key, rollouts, referenceLogProbs, advantages, metrics);
    }

    static Tensor ReferenceTensor(RolloutBatch batch, Tensor mask) => tensor(batch.ReferenceLogProbs, mask.shape, device: mask.device);

    static GenerationOptions Clone(GenerationOptions o, long seed) => new()
    {
        MaxNewTokens = o.MaxNewTokens, Temperature = o.Temperature, TopK = o.TopK, TopP = o.TopP, RepetitionPenalty = o.RepetitionPenalty,
        Seed = seed, StopStrings = o.StopStrings, StopAtEos = true, TruncateLongPrompts = o.TruncateLongPrompts,
    };
}
