using TorchSharp;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Losses;
using Microsoft.ML.Dpo.Modeling;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Training;

/// <summary>
/// The ORPO step: chosen and rejected sequences through the policy in one concatenated forward pass (as DPO's), the chosen
/// answers' token-mean NLL, and <see cref="OrpoLoss"/> on the length-averaged log-probs. No reference model. Logs TRL's
/// ORPO metrics: <c>nll_loss</c>, <c>log_odds_ratio</c>, <c>log_odds_chosen</c>, rewards λ·p̄ and the pair statistics.
/// </summary>
/// <remarks>With <c>paddingFree</c> the pairs are packed into one row (<see cref="SequenceBatch.Pack"/>).</remarks>
internal sealed class OrpoObjective(CausalLM policy, double lambda, int padId, bool paddingFree = false) : ITrainingObjective<TokenizedPreference>
{
    public ObjectiveResult Compute(IReadOnlyList<TokenizedPreference> examples)
    {
        using var batch = SequenceBatch.Create(SequenceScoring.PairRows(examples), padId, policy.Device, completionOnlyLoss: true, paddingFree);
        var scores = SequenceScoring.Score(policy, batch, new ScoringRequest(Statistics: true));
        var (chosenSum, rejectedSum) = SequenceLogProbs.SplitPairs(scores.Sum);
        var (chosenCount, rejectedCount) = SequenceLogProbs.SplitPairs(scores.Count);
        Tensor chosenMean = chosenSum / chosenCount.clamp_min(1), rejectedMean = rejectedSum / rejectedCount.clamp_min(1);
        var output = OrpoLoss.Compute(chosenMean, rejectedMean, PreferenceLoss.ChosenNegativeLogLikelihood(chosenSum, chosenCount), lambda);
        Tensor loss = output.Losses.mean();
        var metrics = new Dictionary<string, double>();
        using (no_grad())
        {
            Tensor chosenRewards = chosenMean.detach() * lambda, rejectedRewards = rejectedMean.detach() * lambda;
            metrics["loss"] = loss.ToDouble();
            metrics["nll_loss"] = output.Nll.ToDouble();
            metrics["log_odds_ratio"] = output.LogOddsRatio.mean().ToDouble();
            metrics["log_odds_chosen"] = output.LogOdds.mean().ToDouble();
            metrics["rewards/chosen"] = chosenRewards.mean().ToDouble();
            metrics["rewards/rejected"] = rejectedRewards.mean().ToDouble();
            metrics["rewards/accuracies"] = (chosenRewards > rejectedRewards).to(float32).mean().ToDouble();
            metrics["rewards/margins"] = (chosenRewards - rejectedRewards).mean().ToDouble();
            metrics["logps/chosen"] = chosenMean.mean().ToDouble();
            metrics["logps/rejected"] = rejectedMean.mean().ToDouble();
            DpoObjective.AddStatistics(metrics, scores);
        }
        return new ObjectiveResult(loss, metrics, batch.Tokens);
    }

    public bool SupportsPaddingFree => true;

    public long? BatchTokens(IReadOnlyList<TokenizedPreference> batch) => SequenceBatch.ProcessedTokens(SequenceScoring.PairRows(batch), paddingFree);
}
