using TorchSharp;
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

    /// <summary>Disposes the batch tensors.</summary>
    public void Dispose()
    {
        InputIds.Dispose();
        AttentionMask.Dispose();
        CompletionMask.Dispose();
    }
}
