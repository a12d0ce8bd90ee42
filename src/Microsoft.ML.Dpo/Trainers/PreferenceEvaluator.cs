using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Trainers;

/// <summary>How well a policy's implicit rewards rank held-out preference pairs (see <see cref="PreferenceEvaluator"/>).</summary>
/// <param name="Pairs">Pairs evaluated.</param>
/// <param name="PreferenceAccuracy">The share of pairs whose chosen reward is strictly greater than the rejected reward.</param>
/// <param name="MeanMargin">The mean of chosen reward − rejected reward.</param>
/// <param name="MeanChosenReward">The mean implicit reward β·(log π − log π_ref) of the chosen completions.</param>
/// <param name="MeanRejectedReward">The mean implicit reward of the rejected completions.</param>
/// <param name="Truncated">Pairs that were cut to fit the models' context (see <see cref="PreferenceEvaluator.Evaluate"/>).</param>
public sealed record PreferenceEvaluation(int Pairs, double PreferenceAccuracy, double MeanMargin, double MeanChosenReward, double MeanRejectedReward, int Truncated = 0);

/// <summary>A model's and a reference's answers to the same prompts, compared (see <see cref="PreferenceEvaluator.EvaluateByGeneration"/>).</summary>
/// <param name="Metrics">
/// <c>eval/mean_length</c>, <c>eval/reference_mean_length</c> (tokens), <c>eval/repeated_ngram_share</c>, <c>eval/degenerate_rate</c>,
/// <c>eval/reference_degenerate_rate</c>, and with a judge <c>eval/win_rate</c> (ties ½) and <c>eval/unjudged</c> — the names training logs.
/// </param>
/// <param name="Prompts">The prompts.</param>
/// <param name="Answers">The model's answers, one per prompt.</param>
/// <param name="ReferenceAnswers">The reference's answers, one per prompt.</param>
public sealed record GenerationComparison(IReadOnlyDictionary<string, double> Metrics, IReadOnlyList<string> Prompts, IReadOnlyList<string> Answers, IReadOnlyList<string> ReferenceAnswers);

/// <summary>
/// Scores preference pairs with DPO's implicit reward r(x, y) = β·(log π(y|x) − log π_ref(y|x)) — "your language model is secretly a
/// reward model" — and reports how often the chosen completion out-scores the rejected one. Log-probabilities are summed over the
/// completion tokens (EOS included), tokenized exactly as the trainers do, in batches and without gradients.
/// </summary>
public static class PreferenceEvaluator
{
    /// <summary>
    /// Evaluation by generation outside training, with the metrics training logs: <paramref name="policy"/> and
    /// <paramref name="reference"/> answer <paramref name="prompts"/>, and <paramref name="judge"/>, when given, decides which answer is better.
    /// </summary>
    /// <param name="policy">The trained model.</param>
    /// <param name="reference">The model to compare with (typically the one training started from).</param>
    /// <param name="prompts">The prompts.</param>
    /// <param name="judge">Any judge (a reward model, an <c>IChatClient</c> judge, a function); null: no win rate.</param>
    /// <param name="generation">Decoding; null: greedy, 64 new tokens.</param>
    /// <param name="cancellationToken">Cancels the judge.</param>
    public static GenerationComparison EvaluateByGeneration(LanguageModel policy, LanguageModel reference, IReadOnlyList<string> prompts,
        Feedback.IJudge? judge = null, Generation.GenerationOptions? generation = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(policy);
        ArgumentNullException.ThrowIfNull(reference);
        ArgumentNullException.ThrowIfNull(prompts);
        if (prompts.Count == 0) throw new ArgumentException("There are no prompts to answer.", nameof(prompts));
        generation ??= new Generation.GenerationOptions { MaxNewTokens = 64 };
        generation.Validate();
        var evaluation = new GenerationEvaluation(prompts, judge, generation, _ => { });
        evaluation.GenerateReferenceAnswers(reference);
        var metrics = evaluation.Evaluate(policy, 0, cancellationToken);
        return new GenerationComparison(metrics, prompts, evaluation.LastAnswers!, evaluation.ReferenceAnswers!);
    }

    /// <summary>Evaluates <paramref name="policy"/> against <paramref name="reference"/> on <paramref name="pairs"/>.</summary>
    /// <param name="policy">The trained model; its tokenizer tokenizes the pairs for both models.</param>
    /// <param name="reference">The reference model (typically the model DPO started from); same vocabulary as the policy.</param>
    /// <param name="pairs">The pairs, e.g. from <see cref="PreferenceDataFile.ReadPreferencePairs"/>.</param>
    /// <param name="beta">β of the implicit reward (the DPO β of training). Default 0.1.</param>
    /// <param name="batchSize">Pairs per forward pass (each pair is two sequences). Default 8.</param>
    /// <param name="cancellationToken">Stops between batches.</param>
    /// <returns>The metrics. A pair longer than the shorter context of the two models keeps the end of its prompt (at most half the
    /// context) and the start of its completions, and is counted in <see cref="PreferenceEvaluation.Truncated"/>.</returns>
    /// <exception cref="InvalidOperationException">The policy has no tokenizer, or the models' vocabularies differ.</exception>
    public static PreferenceEvaluation Evaluate(LanguageModel policy, LanguageModel reference, IEnumerable<PreferencePair> pairs,
        double beta = 0.1, int batchSize = 8, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(policy);
        ArgumentNullException.ThrowIfNull(reference);
        ArgumentNullException.ThrowIfNull(pairs);
        if (!(beta > 0) || !double.IsFinite(beta)) throw new ArgumentOutOfRangeException(nameof(beta), beta, "beta must be positive.");
        if (batchSize <= 0) throw new ArgumentOutOfRangeException(nameof(batchSize), batchSize, "batchSize must be positive.");
        policy.RequireTokenizer();
        if (policy.Network.Config.VocabSize != reference.Network.Config.VocabSize)
            throw new InvalidOperationException($"The policy ({policy.Network.Config.VocabSize} ids) and the reference ({reference.Network.Config.VocabSize} ids) have different vocabularies.");

        int context = Math.Min(policy.Network.Config.MaxPositionEmbeddings, reference.Network.Config.MaxPositionEmbeddings);
        var report = new DataPreparationReport();
        var examples = FineTuningRun.TokenizePairs(policy, pairs, context, Math.Max(1, context / 2), TruncationMode.KeepEnd, report);
        int truncated = (int)report.Truncated;

        double chosenSum = 0, rejectedSum = 0, marginSum = 0;
        int wins = 0;
        bool policyTraining = policy.Network.training, referenceTraining = reference.Network.training;
        policy.Network.eval();
        reference.Network.eval();
        try
        {
            using var _ = no_grad();
            for (int start = 0; start < examples.Count; start += batchSize)
            {
                cancellationToken.ThrowIfCancellationRequested();
                using var scope = NewDisposeScope();
                var slice = examples.GetRange(start, Math.Min(batchSize, examples.Count - start));
                var rows = SequenceScoring.PairRows(slice);
                double[] policyLogps = LogProbs(policy, rows), referenceLogps = LogProbs(reference, rows);
                for (int i = 0; i < slice.Count; i++)
                {
                    double chosen = beta * (policyLogps[i] - referenceLogps[i]);
                    double rejected = beta * (policyLogps[slice.Count + i] - referenceLogps[slice.Count + i]);
                    chosenSum += chosen;
                    rejectedSum += rejected;
                    marginSum += chosen - rejected;
                    if (chosen > rejected) wins++;
                }
            }
        }
        finally
        {
            policy.Network.train(policyTraining);
            reference.Network.train(referenceTraining);
        }
        int n = examples.Count;
        return n == 0
            ? new PreferenceEvaluation(0, double.NaN, double.NaN, double.NaN, double.NaN)
            : new PreferenceEvaluation(n, (double)wins / n, marginSum / n, chosenSum / n, rejectedSum / n, truncated);
    }

    /// <summary>Summed completion log-probs of the rows under <paramref name="model"/>, as doubles.</summary>
    static double[] LogProbs(LanguageModel model, List<(int[] Prompt, int[] Completion)> rows)
    {
        using var batch = SequenceBatch.Collate(rows, model.PadTokenId, model.Network.Device);
        var (sum, _) = SequenceScoring.CompletionLogProbs(model.Network, batch);
        return sum.to(float64).cpu().data<double>().ToArray();
    }
}
