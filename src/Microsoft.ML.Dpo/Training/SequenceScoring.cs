using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Losses;
using Microsoft.ML.Dpo.Modeling;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Training;

/// <summary>Log-probabilities of the completion tokens of a batch under a model.</summary>
internal static class SequenceScoring
{
    /// <summary>Per-row sum of completion-token log-probs and the number of completion tokens, both [N].</summary>
    public static (Tensor Sum, Tensor Count) CompletionLogProbs(CausalLM model, SequenceBatch batch)
    {
        using var scope = NewDisposeScope();
        Tensor logits = model.Forward(batch.InputIds, batch.AttentionMask);            // [N, T, V]
        var (sum, count) = SequenceLogProbs.FromLogits(logits, batch.InputIds, batch.CompletionMask);
        return (sum.MoveToOuterDisposeScope(), count.MoveToOuterDisposeScope());
    }

    /// <summary>The rows of a DPO batch: the B chosen sequences, then the B rejected ones.</summary>
    public static List<(int[] Prompt, int[] Completion)> PairRows(IReadOnlyList<TokenizedPreference> batch) =>
        batch.Select(p => (p.Prompt, p.Chosen)).Concat(batch.Select(p => (p.Prompt, p.Rejected))).ToList();
}
