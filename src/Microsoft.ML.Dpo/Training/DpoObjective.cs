using TorchSharp;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Losses;
using Microsoft.ML.Dpo.Modeling;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Training;

/// <summary>
/// The DPO step: chosen and rejected sequences through the policy in one concatenated forward pass, completion-token
/// log-probs summed (per-token mean for IPO and SimPO), reference log-probs from <see cref="ReferenceLogProbs"/>, then
/// <see cref="PreferenceLoss"/> plus an optional NLL term on the chosen completion (RPO).
/// </summary>
internal sealed class DpoObjective(CausalLM policy, ReferenceLogProbs? reference, PreferenceLossOptions loss, double nllWeight, int padId)
    : ITrainingObjective<TokenizedPreference>
{
    /// <summary>IPO and SimPO compare length-normalised log-probs.</summary>
    bool UsesMean => loss.Kind is PreferenceLossKind.Ipo or PreferenceLossKind.SimPO;

    public ObjectiveResult Compute(IReadOnlyList<TokenizedPreference> examples)
    {
        using var batch = SequenceBatch.Collate(SequenceScoring.PairRows(examples), padId, policy.Device);
        var (sum, count) = SequenceScoring.CompletionLogProbs(policy, batch);                 // [2B]
        var (policyChosen, policyRejected) = SequenceLogProbs.SplitPairs(UsesMean ? SequenceLogProbs.Mean(sum, count) : sum);
        Tensor? referenceChosen = null, referenceRejected = null;
        if (loss.RequiresReference)
        {
            if (reference is null) throw new InvalidOperationException($"{loss.Kind} needs a reference model.");
            (referenceChosen, referenceRejected) = reference.For(examples, batch, UsesMean);
        }
        using var output = PreferenceLoss.Compute(loss, policyChosen, policyRejected, referenceChosen, referenceRejected);
        Tensor perPair = output.Losses;
        var metrics = new Dictionary<string, double>();
        if (nllWeight > 0)
        {
            var (chosenSum, _) = SequenceLogProbs.SplitPairs(sum);
            var (chosenCount, _) = SequenceLogProbs.SplitPairs(count);
            Tensor nll = PreferenceLoss.NegativeLogLikelihood(chosenSum, chosenCount);
            perPair = perPair + nllWeight * nll;
            metrics["nll_loss"] = nll.mean().ToDouble();
        }
        Tensor lossValue = perPair.mean();
        using (no_grad())
        {
            var (sumChosen, sumRejected) = SequenceLogProbs.SplitPairs(sum);
            metrics["loss"] = lossValue.ToDouble();
            metrics["rewards/chosen"] = output.ChosenRewards.mean().ToDouble();
            metrics["rewards/rejected"] = output.RejectedRewards.mean().ToDouble();
            metrics["rewards/accuracies"] = (output.ChosenRewards > output.RejectedRewards).to(float32).mean().ToDouble();
            metrics["rewards/margins"] = (output.ChosenRewards - output.RejectedRewards).mean().ToDouble();
            metrics["logps/chosen"] = sumChosen.mean().ToDouble();
            metrics["logps/rejected"] = sumRejected.mean().ToDouble();
        }
        return new ObjectiveResult(lossValue, metrics, batch.Tokens);
    }
}
