using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Generation;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tokenization;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Reinforcement;

/// <summary>A prompt of an online RL run: its text (for the rewards) and ids (for sampling).</summary>
internal sealed record TokenizedPrompt(string Text, int[] Ids, long Row, int Index);

/// <summary>One sampled completion of a rollout batch.</summary>
/// <param name="Group">The index of its prompt in the batch (the K completions of a prompt form a group).</param>
/// <param name="Prompt">The prompt.</param>
/// <param name="Completion">The completion's ids, with the end-of-sequence token when it stopped there.</param>
/// <param name="Text">The completion's decoded text (end-of-sequence token left out).</param>
/// <param name="SampledLogProbs">Each completion token's log-probability under the policy when it was sampled.</param>
/// <param name="Terminated">Whether it stopped at end-of-sequence.</param>
internal sealed record Rollout(int Group, TokenizedPrompt Prompt, int[] Completion, string Text, float[] SampledLogProbs, bool Terminated)
{
    /// <summary>Whether it was cut at the completion-length limit (TRL's "clipped" completions).</summary>
    public bool Truncated => !Terminated;
}

/// <summary>
/// Samples K completions per prompt from the current policy with the KV-cache generator (each prompt prefilled once), and
/// batches them for scoring: one right-padded row per completion, the completion tokens as targets.
/// </summary>
internal static class RolloutSampler
{
    /// <summary>Samples <paramref name="k"/> completions of each prompt; rows are prompt-major (prompt 0's K first).</summary>
    public static List<Rollout> Sample(CausalLM policy, TextTokenizer tokenizer, IReadOnlyList<TokenizedPrompt> prompts, int k, GenerationOptions options)
    {
        var sampled = new TextGenerator(policy, tokenizer).Sample(prompts.Select(p => p.Ids).ToList(), k, options);
        var rollouts = new List<Rollout>(sampled.Count);
        for (int i = 0; i < sampled.Count; i++)
        {
            var s = sampled[i];
            var text = tokenizer.Decode(s.EndedAtEos ? s.Tokens[..^1] : s.Tokens);
            rollouts.Add(new Rollout(i / k, prompts[i / k], s.Tokens, text, s.LogProbs, s.EndedAtEos));
        }
        return rollouts;
    }

    /// <summary>The rollouts as a right-padded batch whose completion mask marks every sampled token.</summary>
    public static SequenceBatch Batch(IReadOnlyList<Rollout> rollouts, int padId, Device device) =>
        SequenceBatch.Collate(rollouts.Select(r => (r.Prompt.Ids, r.Completion)).ToList(), padId, device);

    /// <summary>
    /// Per-token values [M] (row-major over the completion tokens, the order of <see cref="Training.SequenceScoring"/>'s
    /// flat outputs) laid out as a right-aligned-to-start [N, L] tensor with L the longest completion; padding is 0.
    /// </summary>
    public static Tensor Padded(Tensor flat, Tensor completionMask) => zeros(completionMask.shape, flat.dtype, flat.device).masked_scatter(completionMask, flat);

    /// <summary>The [N, L] mask of real completion tokens (L = the longest completion).</summary>
    public static Tensor CompletionMask(IReadOnlyList<Rollout> rollouts, Device device)
    {
        int length = Math.Max(1, rollouts.Max(r => r.Completion.Length));
        var mask = new bool[rollouts.Count * length];
        for (int i = 0; i < rollouts.Count; i++)
            for (int j = 0; j < rollouts[i].Completion.Length; j++) mask[i * length + j] = true;
        return tensor(mask, new long[] { rollouts.Count, length }, device: device);
    }

    /// <summary>The sampling-time log-probs as an [N, L] tensor aligned with <see cref="CompletionMask"/>.</summary>
    public static Tensor SampledLogProbs(IReadOnlyList<Rollout> rollouts, Device device)
    {
        int length = Math.Max(1, rollouts.Max(r => r.Completion.Length));
        var values = new float[rollouts.Count * length];
        for (int i = 0; i < rollouts.Count; i++) rollouts[i].SampledLogProbs.CopyTo(values, i * length);
        return tensor(values, new long[] { rollouts.Count, length }, device: device);
    }
}
