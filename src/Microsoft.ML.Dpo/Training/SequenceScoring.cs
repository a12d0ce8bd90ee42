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
    /// same completion-position logits (the statistics under no_grad, a chunk of positions at a time).
    /// </summary>
    /// <remarks>
    /// Under <see cref="LogProbChunking.Current"/> (<see cref="TrainingOptions.ChunkedLogProbs"/>; automatic: vocabularies
    /// above 32,768) the logits are never formed whole: <see cref="ChunkedLogProbs"/> runs the output head on a chunk of
    /// positions at a time and again in the backward pass, and fills the statistics from the same chunks. Otherwise the
    /// completion-position logits [M, V] are formed once and kept for the backward pass.
    /// </remarks>
    public static CompletionScores Score(CausalLM model, SequenceBatch batch, ScoringRequest request)
    {
        using var scope = NewDisposeScope();
        Tensor hidden = model.HiddenStates(batch.InputIds, batch.AttentionMask);        // [N, T, H]
        Tensor targets = batch.CompletionMask[.., 1..];                                 // [N, T-1]: token t+1 is a target
        Tensor position = targets.nonzero();                                           // [M, 2]: (row, t), row-major
        Tensor row = position[.., 0], t = position[.., 1];
        Tensor predicting = hidden[.., ..^1].index(row, t);                             // [M, H]: hidden state at t predicts t+1
        Tensor labels = batch.InputIds[.., 1..].index(row, t);                          // [M]
        double temperature = request.Temperature ?? 1;
        long m = labels.shape[0];
        var wide = Precision.Wide(predicting.dtype);
        Tensor? Stat(bool wanted) => wanted ? zeros(m, dtype: wide, device: predicting.device) : null;
        var statistics = request.WpoWeights || request.Statistics
            ? new TokenStatistics { LogSquaredMass = Stat(request.WpoWeights), Entropy = Stat(request.Statistics), LogitMean = Stat(request.Statistics), Correct = Stat(request.Statistics) }
            : null;
        var chunking = LogProbChunking.Current;
        Tensor tokenLogps = chunking.AppliesTo(model.Config.VocabSize) && model.FusedHead is OutputHead head
            ? ChunkedLogProbs.TokenLogProbs(head, predicting, labels, temperature, chunking.ChunkSize, statistics)   // [M], no [M, V] kept
            : FullLogitsTokenLogProbs(model, predicting, labels, temperature, statistics);
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

        if (statistics is not null)
        {
            if (request.WpoWeights) result = result with { WpoLogWeight = PerRow(tokenLogps.detach() - statistics.LogSquaredMass!) / count.clamp_min(1) };
            if (request.Statistics)
                result = result with { EntropySum = PerRow(statistics.Entropy!), LogitMeanSum = PerRow(statistics.LogitMean!), CorrectCount = PerRow(statistics.Correct!) };
        }

        foreach (var tensor in new[] { result.Sum, result.Count, result.TokenLogProbs, result.SharedSum, result.WpoLogWeight, result.EntropySum, result.LogitMeanSum, result.CorrectCount })
            tensor?.MoveToOuterDisposeScope();
        return result;
    }

    /// <summary>
    /// The plain path: logits [M, V] at the completion positions from <see cref="CausalLM.LogitsFromHidden"/> (kept for the
    /// backward pass), their per-token log-probs [M], and the statistics under no_grad a chunk of positions at a time.
    /// Used when chunking is off, or for a head <see cref="ChunkedLogProbs"/> cannot fuse (<see cref="CausalLM.FusedHead"/> null).
    /// </summary>
    static Tensor FullLogitsTokenLogProbs(CausalLM model, Tensor predicting, Tensor labels, double temperature, TokenStatistics? statistics)
    {
        using var scope = NewDisposeScope();
        Tensor logits = model.LogitsFromHidden(predicting.unsqueeze(0));                // [1, M, V]
        if (temperature != 1) logits = logits / temperature;
        Tensor tokenLogps = SequenceLogProbs.TokenLogProbs(logits, labels.unsqueeze(0))[0];   // [M], widened to float32 (float64 stays) inside
        if (statistics is not null)
        {
            using var _ = no_grad();
            long m = labels.shape[0];
            for (long start = 0; start < m; start += StatisticsChunk)
            {
                using var chunkScope = NewDisposeScope();
                long length = Math.Min(StatisticsChunk, m - start);
                Tensor z = logits[0].narrow(0, start, length).to_type(tokenLogps.dtype);   // [m, V]
                statistics.Fill(start, z, z.logsumexp(-1), labels.narrow(0, start, length));
            }
        }
        return tokenLogps.MoveToOuterDisposeScope();
    }

    /// <summary>The rows of a DPO batch: the B chosen sequences, then the B rejected ones.</summary>
    public static List<(int[] Prompt, int[] Completion)> PairRows(IReadOnlyList<TokenizedPreference> batch) =>
        batch.Select(p => (p.Prompt, p.Chosen)).Concat(batch.Select(p => (p.Prompt, p.Rejected))).ToList();
}
