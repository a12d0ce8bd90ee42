using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Losses;
using Microsoft.ML.Dpo.Modeling;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Training;

/// <summary>Log-probabilities of the completion tokens of a batch under a model.</summary>
internal static class SequenceScoring
{
    /// <summary>
    /// Per-row sum of completion-token log-probs and the number of completion tokens, both [N].
    /// The output layer — the largest matmul for big vocabularies — runs only at the positions that predict a completion
    /// token, not at prompt or padding positions.
    /// </summary>
    public static (Tensor Sum, Tensor Count) CompletionLogProbs(CausalLM model, SequenceBatch batch)
    {
        using var scope = NewDisposeScope();
        Tensor hidden = model.HiddenStates(batch.InputIds, batch.AttentionMask);        // [N, T, H]
        Tensor targets = batch.CompletionMask[.., 1..];                                 // [N, T-1]: token t+1 is a target
        Tensor position = targets.nonzero();                                           // [M, 2]: (row, t)
        Tensor row = position[.., 0], t = position[.., 1];
        Tensor predicting = hidden[.., ..^1].index(row, t);                             // [M, H]: hidden state at t predicts t+1
        Tensor logits = model.LogitsFromHidden(predicting.unsqueeze(0));                // [1, M, V]
        Tensor labels = batch.InputIds[.., 1..].index(row, t).unsqueeze(0);             // [1, M]
        Tensor tokenLogps = SequenceLogProbs.TokenLogProbs(logits, labels)[0];   // [M], widened to float32 (float64 stays) inside
        Tensor sum = zeros(batch.Rows, dtype: tokenLogps.dtype, device: tokenLogps.device).index_add(0, row, tokenLogps, 1);
        Tensor count = targets.sum(1).to(tokenLogps.dtype);
        return (sum.MoveToOuterDisposeScope(), count.MoveToOuterDisposeScope());
    }

    /// <summary>The rows of a DPO batch: the B chosen sequences, then the B rejected ones.</summary>
    public static List<(int[] Prompt, int[] Completion)> PairRows(IReadOnlyList<TokenizedPreference> batch) =>
        batch.Select(p => (p.Prompt, p.Chosen)).Concat(batch.Select(p => (p.Prompt, p.Rejected))).ToList();
}
