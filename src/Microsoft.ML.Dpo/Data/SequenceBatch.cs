using TorchSharp;
using Microsoft.ML.Dpo.Modeling;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Data;

/// <summary>
/// A right-padded batch of prompt + completion sequences for training and scoring.
/// For DPO the rows are the B chosen sequences followed by the B rejected ones, so one forward pass serves both.
/// </summary>
internal sealed class SequenceBatch : IDisposable
{
    /// <summary>Token ids [N, T] (int64), padded on the right with the pad id.</summary>
    public required Tensor InputIds { get; init; }
    /// <summary>1 for real tokens, 0 for padding [N, T] (int64).</summary>
    public required Tensor AttentionMask { get; init; }
    /// <summary>True where the token is a completion token, i.e. a target of the loss [N, T] (bool).</summary>
    public required Tensor CompletionMask { get; init; }
    /// <summary>Real (non-padding) tokens in the batch.</summary>
    public long Tokens { get; init; }
    /// <summary>Rows in the batch.</summary>
    public int Rows => (int)InputIds.shape[0];
    /// <summary>Sequences in the batch: <see cref="Rows"/>, or more when the batch is packed.</summary>
    public int Sequences => SequenceIndex is null ? Rows : _sequences;
    /// <summary>
    /// Packed batches only: the sequence each token belongs to [R, T] (int64, in the order of the rows given to
    /// <see cref="Pack"/>); null for a padded batch, where sequence = row.
    /// </summary>
    public Tensor? SequenceIndex { get; private init; }
    /// <summary>Packed batches only: per sequence [N] (int64), the targets of its row that come before it.</summary>
    public Tensor? TargetsBefore { get; private init; }
    int _sequences;

    /// <summary>
    /// Builds the batch from (prompt, completion) id pairs. With <paramref name="completionOnlyLoss"/> false the prompt
    /// tokens are targets too (SFT's "all tokens" option). The first token is never a target: nothing predicts it.
    /// </summary>
    public static SequenceBatch Collate(IReadOnlyList<(int[] Prompt, int[] Completion)> rows, int padId, Device device, bool completionOnlyLoss = true)
    {
        int n = rows.Count;
        int t = Math.Max(1, rows.Max(r => r.Prompt.Length + r.Completion.Length));
        var ids = new long[n * t];
        var attention = new long[n * t];
        var completion = new bool[n * t];
        long tokens = 0;
        Array.Fill(ids, padId);
        for (int i = 0; i < n; i++)
        {
            var (prompt, answer) = rows[i];
            int o = i * t;
            for (int j = 0; j < prompt.Length; j++) { ids[o + j] = prompt[j]; attention[o + j] = 1; completion[o + j] = !completionOnlyLoss && j > 0; }
            for (int j = 0; j < answer.Length; j++) { int k = o + prompt.Length + j; ids[k] = answer[j]; attention[k] = 1; completion[k] = k > o; }
            tokens += prompt.Length + answer.Length;
        }
        return new SequenceBatch
        {
            InputIds = tensor(ids, new long[] { n, t }, device: device),
            AttentionMask = tensor(attention, new long[] { n, t }, device: device),
            CompletionMask = tensor(completion, new long[] { n, t }, device: device),
            Tokens = tokens,
        };
    }

    /// <summary>
    /// The tokens the batch of <paramref name="rows"/> holds: Σ lengths packed, rows × the longest row padded (an empty row
    /// counts one token, as both layouts keep one).
    /// </summary>
    public static long ProcessedTokens(IEnumerable<(int[] Prompt, int[] Completion)> rows, bool paddingFree)
    {
        long sum = 0, longest = 0, count = 0;
        foreach (var (prompt, completion) in rows)
        {
            long length = Math.Max(1, prompt.Length + completion.Length);
            (sum, longest, count) = (sum + length, Math.Max(longest, length), count + 1);
        }
        return paddingFree ? sum : count * longest;
    }

    /// <summary>
    /// <see cref="Collate"/> or <see cref="Pack"/>: the padding-free layout when <paramref name="paddingFree"/> is set.
    /// </summary>
    public static SequenceBatch Create(IReadOnlyList<(int[] Prompt, int[] Completion)> rows, int padId, Device device, bool completionOnlyLoss, bool paddingFree)
        => paddingFree ? Pack(rows, padId, device, completionOnlyLoss) : Collate(rows, padId, device, completionOnlyLoss);

    /// <summary>
    /// The padding-free layout of <see cref="Collate"/>'s rows: all sequences one after another in a single row [1, Σ L]; the
    /// attention mask numbers them 1, 2, … (so positions restart at 0 for each and attention stays inside each, see
    /// <see cref="CausalLM.PrepareInputs"/>) and carries the layout (<see cref="PackedSequences"/>), so every attention runs
    /// sequence by sequence. Targets are marked as in <see cref="Collate"/>: each sequence's first token is never one.
    /// Scoring (<see cref="Training.SequenceScoring.Score"/>) returns per-sequence results in the order of
    /// <paramref name="rows"/>, the same as for the padded batch.
    /// </summary>
    public static SequenceBatch Pack(IReadOnlyList<(int[] Prompt, int[] Completion)> rows, int padId, Device device, bool completionOnlyLoss = true)
    {
        int n = rows.Count;
        var lengths = rows.Select(r => Math.Max(1, r.Prompt.Length + r.Completion.Length)).ToArray();
        int t = lengths.Sum();
        var ids = new long[t];
        var segment = new long[t];
        var sequence = new long[t];
        var completion = new bool[t];
        var targetsBefore = new long[n];
        long tokens = 0, targets = 0;
        int o = 0;
        for (int i = 0; i < n; i++)
        {
            var (prompt, answer) = rows[i];
            targetsBefore[i] = targets;
            for (int j = 0; j < lengths[i]; j++) { ids[o + j] = padId; segment[o + j] = i + 1; sequence[o + j] = i; }   // an empty row keeps one pad token
            for (int j = 0; j < prompt.Length; j++) { ids[o + j] = prompt[j]; completion[o + j] = !completionOnlyLoss && j > 0; }
            for (int j = 0; j < answer.Length; j++) { int k = o + prompt.Length + j; ids[k] = answer[j]; completion[k] = k > o; }
            for (int j = 0; j < lengths[i]; j++) if (completion[o + j]) targets++;
            tokens += prompt.Length + answer.Length;
            o += lengths[i];
        }
        var mask = tensor(segment, new long[] { 1, t }, device: device);
        PackedSequences.Register(mask, new PackedSequences([lengths], t));
        return new SequenceBatch
        {
            InputIds = tensor(ids, new long[] { 1, t }, device: device),
            AttentionMask = mask,
            CompletionMask = tensor(completion, new long[] { 1, t }, device: device),
            SequenceIndex = tensor(sequence, new long[] { 1, t }, device: device),
            TargetsBefore = tensor(targetsBefore, device: device),
            Tokens = tokens,
            _sequences = n,
        };
    }

    /// <summary>Disposes the batch tensors.</summary>
    public void Dispose()
    {
        InputIds.Dispose();
        AttentionMask.Dispose();
        CompletionMask.Dispose();
        SequenceIndex?.Dispose();
        TargetsBefore?.Dispose();
    }
}
