using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Losses;
using Microsoft.ML.Dpo.Modeling;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Training;

/// <summary>What <see cref="SequenceScoring.Score"/> computes besides the summed log-probs and counts.</summary>
/// <param name="SharedPrefix">
/// The per-row sum over the first min(n<sub>chosen</sub>, n<sub>rejected</sub>) completion tokens of its pair (LD-DPO);
/// the batch must be a DPO batch (B chosen rows, then B rejected rows).
/// </param>
/// <param name="WpoWeights">WPO's per-row log-weight: the mean over completion tokens of <c>log p − (lse(2z) − 2·lse(z))</c>.</param>
/// <param name="Statistics">Per-row entropy, mean logit and greedy-accuracy sums at the completion positions (TRL's metrics).</param>
/// <param name="Temperature">Divide the logits by this before the softmax (online RL scores its samples at the sampling temperature, as TRL does); null: 1.</param>
internal readonly record struct ScoringRequest(bool SharedPrefix = false, bool WpoWeights = false, bool Statistics = false, double? Temperature = null);

/// <summary>Per-row results of <see cref="SequenceScoring.Score"/>, all [N]; only <see cref="Sum"/> and <see cref="SharedSum"/> carry grad.</summary>
internal sealed record CompletionScores(Tensor Sum, Tensor Count)
{
    /// <summary>Each completion token's log-prob [M] (with grad), row-major: row 0's tokens in order, then row 1's, ...</summary>
    public Tensor? TokenLogProbs { get; init; }
    /// <summary>Summed log-probs of the completion tokens that both completions of the pair have (LD-DPO's shared part).</summary>
    public Tensor? SharedSum { get; init; }
    /// <summary>WPO's length-normalised, sampling-aligned log-probability (detached); the weight is its exp.</summary>
    public Tensor? WpoLogWeight { get; init; }
    /// <summary>Σ over completion tokens of the predictive entropy (detached).</summary>
    public Tensor? EntropySum { get; init; }
    /// <summary>Σ over completion tokens of the mean logit over the vocabulary (detached).</summary>
    public Tensor? LogitMeanSum { get; init; }
    /// <summary>Number of completion tokens whose greedy (argmax) prediction is the label.</summary>
    public Tensor? CorrectCount { get; init; }
}

/// <summary>Log-probabilities of the completion tokens of a batch under a model.</summary>
internal static class SequenceScoring
{
    /// <summary>Positions scored per chunk for the statistics, so their [chunk, V] temporaries stay small.</summary>
    const long StatisticsChunk = 512;

    /// <summary>
    /// Per-row sum of completion-token log-probs and the number of completion tokens, both [N].
    /// The output layer — the largest matmul for big vocabularies — runs only at the positions that predict a completion
    /// token, not at prompt or padding positions.
    /// </summary>
    public static (Tensor Sum, Tensor Count) CompletionLogProbs(CausalLM model, SequenceBatch batch)
    {
        using var scope = NewDisposeScope();
        var scores = Score(model, batch, default);
        return (scores.Sum.MoveToOuterDisposeScope(), scores.Count.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// <see cref="CompletionLogProbs"/> plus what <paramref name="request"/> asks for, from the same forward pass and the
    /// same completion-position logits [M, V] (the statistics under no_grad, a chunk of positions at a time).
    /// </summary>
    public static CompletionScores Score(CausalLM model, SequenceBatch batch, ScoringRequest request)
    {
        using var scope = NewDisposeScope();
        Tensor hidden = model.HiddenStates(batch.InputIds, batch.AttentionMask);        // [N, T, H]
        Tensor targets = batch.CompletionMask[.., 1..];                                 // [N, T-1]: token t+1 is a target
        Tensor position = targets.nonzero();                                           // [M, 2]: (row, t), row-major
        Tensor row = position[.., 0], t = position[.., 1];
        Tensor predicting = hidden[.., ..^1].index(row, t);                             // [M, H]: hidden state at t predicts t+1
        Tensor logits = model.LogitsFromHidden(predicting.unsqueeze(0));                // [1, M, V]
        if (request.Temperature is double temperature && temperature != 1) logits = logits / temperature;
        Tensor labels = batch.InputIds[.., 1..].index(row, t);                          // [M]
        Tensor tokenLogps = SequenceLogProbs.TokenLogProbs(logits, labels.unsqueeze(0))[0];   // [M], widened to float32 (float64 stays) inside
        var dtype = tokenLogps.dtype;
        // The sequence of each target: its row, or in a packed batch the sequence of its row it lies in.
        Tensor sequence = batch.SequenceIndex is { } index ? index[.., 1..].index(row, t) : row;   // [M]
        Tensor PerRow(Tensor perToken) => zeros(batch.Sequences, dtype: perToken.dtype, device: perToken.device).index_add(0, sequence, perToken, 1);
        Tensor targetCount = batch.SequenceIndex is null ? targets.sum(1) : PerRow(ones_like(sequence));   // [N] int64
        Tensor count = targetCount.to(dtype);                                           // [N]
        var result = new CompletionScores(PerRow(tokenLogps), count) { TokenLogProbs = tokenLogps };

        if (request.SharedPrefix)
        {
            // Rank of each completion token within its row (1-based), against the shorter completion of the pair.
            Tensor rank = targets.to(ScalarType.Int64).cumsum(1).index(row, t);          // [M]
            if (batch.TargetsBefore is { } before) rank = rank - before.index(sequence);
            var (chosenCount, rejectedCount) = SequenceLogProbs.SplitPairs(targetCount);
            Tensor shared = minimum(chosenCount, rejectedCount);
            Tensor inShared = rank.le(cat([shared, shared]).index(sequence));            // [M]
            result = result with { SharedSum = PerRow(tokenLogps.masked_fill(inShared.logical_not(), 0.0)) };
        }

        if (request.WpoWeights || request.Statistics)
        {
            using var _ = no_grad();
            long m = labels.shape[0];
            var compute = dtype;
            Tensor aligned = zeros(m, dtype: compute, device: tokenLogps.device);
            Tensor entropy = zeros_like(aligned), logitMean = zeros_like(aligned), correct = zeros_like(aligned);
            for (long start = 0; start < m; start += StatisticsChunk)
            {
                using var chunkScope = NewDisposeScope();
                long length = Math.Min(StatisticsChunk, m - start);
                Tensor z = logits[0].narrow(0, start, length).to_type(compute);         // [m, V]
                Tensor lse = z.logsumexp(-1);                                           // [m]
                if (request.WpoWeights)
                {
                    // WPO (Zhou et al., 2024, eq. 2): log p aligned to greedy-ish sampling, log p − log Σ p².
                    Tensor logDenominator = (z * 2).logsumexp(-1) - lse * 2;
                    aligned.narrow(0, start, length).copy_(tokenLogps.detach().narrow(0, start, length) - logDenominator);
                }
                if (request.Statistics)
                {
                    Tensor p = (z - lse.unsqueeze(-1)).exp();
                    entropy.narrow(0, start, length).copy_(lse - (p * z).sum(-1));
                    logitMean.narrow(0, start, length).copy_(z.mean([-1L]));
                    correct.narrow(0, start, length).copy_(z.argmax(-1).eq(labels.narrow(0, start, length)).to_type(compute));
                }
            }
            if (request.WpoWeights) result = result with { WpoLogWeight = PerRow(aligned) / count.clamp_min(1) };
            if (request.Statistics)
                result = result with { EntropySum = PerRow(entropy), LogitMeanSum = PerRow(logitMean), CorrectCount = PerRow(correct) };
        }

        foreach (var tensor in new[] { result.Sum, result.Count, result.TokenLogProbs, result.SharedSum, result.WpoLogWeight, result.EntropySum, result.LogitMeanSum, result.CorrectCount })
            tensor?.MoveToOuterDisposeScope();
        return result;
    }

    /// <summary>The rows of a DPO batch: the B chosen sequences, then the B rejected ones.</summary>
    public static List<(int[] Prompt, int[] Completion)> PairRows(IReadOnlyList<TokenizedPreference> batch) =>
        batch.Select(p => (p.Prompt, p.Chosen)).Concat(batch.Select(p => (p.Prompt, p.Rejected))).ToList();
}
