using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Reinforcement;

/// <summary>How GRPO scales the group-centred rewards (TRL's <c>scale_rewards</c>).</summary>
public enum RewardScaling
{
    /// <summary>Divide by the standard deviation of the completion's group (<c>"group"</c>, TRL's default and the GRPO paper's).</summary>
    Group,
    /// <summary>Divide by the standard deviation of the whole batch (<c>"batch"</c>, as PPO Lite recommends).</summary>
    Batch,
    /// <summary>Do not scale (<c>"none"</c>, Dr. GRPO: scaling by the std biases toward questions that are too easy or too hard).</summary>
    None,
}

/// <summary>Advantage estimators of online RL: one reward per completion [N] in, one advantage per completion [N] out.</summary>
/// <remarks>Rows are prompt-major: the <c>k</c> completions of prompt 0 first. Standard deviations are unbiased (torch's default).</remarks>
internal static class Advantages
{
    /// <summary>Added to the standard deviation before dividing, as TRL does.</summary>
    public const double StdEpsilon = 1e-4;

    /// <summary>
    /// GRPO (Shao et al., 2024): <c>A_i = r_i − mean(group)</c>, divided by <c>std + 1e-4</c> of the group, of the batch, or not
    /// at all. Also returns the share of groups whose rewards are all equal (TRL's <c>frac_reward_zero_std</c>; they give no signal).
    /// </summary>
    public static (Tensor Advantages, double ZeroStdShare) GroupRelative(Tensor rewards, int k, RewardScaling scaling)
    {
        Check(rewards, k);
        using var scope = NewDisposeScope();
        Tensor grouped = rewards.view(-1, k);                                     // [G, k]
        Tensor centred = rewards - grouped.mean([1L]).repeat_interleave(k, 0);
        Tensor groupStd = grouped.std(1);                                        // [G], unbiased
        double zeroStd = groupStd.abs().lt(1e-6).to(float32).mean().ToDouble();
        Tensor advantages = scaling switch
        {
            RewardScaling.Group => centred / (groupStd.repeat_interleave(k, 0) + StdEpsilon),
            RewardScaling.Batch => centred / (rewards.std() + StdEpsilon),
            _ => centred,
        };
        return (advantages.MoveToOuterDisposeScope(), zeroStd);
    }

    /// <summary>
    /// RLOO (Ahmadian et al., 2024): each completion's baseline is the mean reward of the other <c>k − 1</c> completions of its
    /// prompt, <c>A_i = r_i − (Σ_group r − r_i) / (k − 1)</c>; with <paramref name="normalize"/> the advantages are then
    /// standardised over the batch, <c>(A − mean) / (std + 1e-8)</c> (TRL's <c>normalize_advantages</c>).
    /// </summary>
    public static Tensor LeaveOneOut(Tensor rewards, int k, bool normalize = false)
    {
        Check(rewards, k);
        using var scope = NewDisposeScope();
        Tensor groupSum = rewards.view(-1, k).sum(1).repeat_interleave(k, 0);
        Tensor advantages = rewards - (groupSum - rewards) / (k - 1);
        if (normalize) advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8);
        return advantages.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// RLOO's KL-shaped reward: <c>r_i − β · Σ_t (log π_old − log π_ref)</c>, the sequence-level KL estimate of each sampled
    /// completion (the k1 estimator summed over its tokens) folded into the reward before the baseline.
    /// </summary>
    public static Tensor KlShapedRewards(Tensor rewards, Tensor sampledLogProbs, Tensor referenceLogProbs, Tensor mask, double beta)
    {
        using var scope = NewDisposeScope();
        Tensor kl = ((sampledLogProbs - referenceLogProbs) * mask.to(sampledLogProbs.dtype)).sum(1).to(rewards.dtype);
        return (rewards - kl * beta).MoveToOuterDisposeScope();
    }

    static void Check(Tensor rewards, int k)
    {
        if (k < 2) throw new ArgumentOutOfRangeException(nameof(k), k, "Group advantages need at least 2 completions per prompt.");
        if (rewards.dim() != 1 || rewards.shape[0] % k != 0)
            throw new ArgumentException($"rewards must be [N] with N a multiple of {k} (prompt-major groups), but has shape [{string.Join(", ", rewards.shape)}].", nameof(rewards));
    }
}
