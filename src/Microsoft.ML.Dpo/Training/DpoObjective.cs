using TorchSharp;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Losses;
using Microsoft.ML.Dpo.Modeling;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Training;

/// <summary>How the DPO step turns token log-probs into the loss's inputs, and what it does between steps.</summary>
/// <param name="LdAlpha">LD-DPO's α: log-probs become <c>shared + α·tail</c>; null for plain sums.</param>
/// <param name="UseWeighting">WPO: weight each pair by its completions' aligned probabilities.</param>
/// <param name="SyncSteps">TR-DPO: update the live reference every this many steps (0: never).</param>
/// <param name="SyncAlpha">TR-DPO's mixing weight α of the policy in the updated reference.</param>
/// <param name="PaddingFree">Pack the chosen and rejected sequences into one padding-free row (<see cref="SequenceBatch.Pack"/>).</param>
internal sealed record DpoStepOptions(double? LdAlpha = null, bool UseWeighting = false, int SyncSteps = 0, double SyncAlpha = 0.6, bool PaddingFree = false);

/// <summary>
/// The DPO step: chosen and rejected sequences through the policy in one concatenated forward pass, completion-token
/// log-probs summed (or length-desensitised, LD-DPO), reference log-probs from <see cref="ReferenceLogProbs"/>, then
/// <see cref="PreferenceLoss"/> over the configured kinds. TRL's metrics (entropy, mean logits, token accuracy) come from
/// the same completion-position logits, under no_grad.
/// </summary>
internal sealed class DpoObjective(CausalLM policy, ReferenceLogProbs? reference, PreferenceLossOptions loss, DpoStepOptions step, int padId,
    LikelihoodDisplacementGuard? guard = null) : ITrainingObjective<TokenizedPreference>
{
    public ObjectiveResult Compute(IReadOnlyList<TokenizedPreference> examples)
    {
        using var batch = SequenceBatch.Create(SequenceScoring.PairRows(examples), padId, policy.Device, completionOnlyLoss: true, step.PaddingFree);
        var scores = SequenceScoring.Score(policy, batch,
            new ScoringRequest(SharedPrefix: step.LdAlpha.HasValue, WpoWeights: step.UseWeighting, Statistics: true));   // all [2B]
        Tensor logps = ReferenceLogProbs.LengthDesensitized(scores.Sum, scores.SharedSum, step.LdAlpha);
        var (policyChosen, policyRejected) = SequenceLogProbs.SplitPairs(logps);
        var (chosenCount, rejectedCount) = SequenceLogProbs.SplitPairs(scores.Count);
        Tensor? referenceChosen = null, referenceRejected = null;
        if (loss.RequiresReference)
        {
            if (reference is null) throw new InvalidOperationException($"{loss} needs a reference model.");
            (referenceChosen, referenceRejected) = reference.For(examples, batch, step.LdAlpha);
        }
        Tensor? nll = loss.RequiresChosenNll ? PreferenceLoss.ChosenNegativeLogLikelihood(SequenceLogProbs.SplitPairs(scores.Sum).chosen, chosenCount) : null;
        Tensor? pairWeights = null;
        if (scores.WpoLogWeight is { } logWeight)
        {
            var (chosenWeight, rejectedWeight) = SequenceLogProbs.SplitPairs(logWeight.exp());
            pairWeights = chosenWeight * rejectedWeight;
        }
        using var output = PreferenceLoss.Compute(loss, new PreferenceLossInput
        {
            PolicyChosenLogps = policyChosen, PolicyRejectedLogps = policyRejected,
            ReferenceChosenLogps = referenceChosen, ReferenceRejectedLogps = referenceRejected,
            ChosenTokenCounts = chosenCount, RejectedTokenCounts = rejectedCount, ChosenNll = nll, PairWeights = pairWeights,
        });
        Tensor lossValue = output.Losses.mean();
        var metrics = new Dictionary<string, double>();
        using (no_grad())
        {
            metrics["loss"] = lossValue.ToDouble();
            if (nll is not null) metrics["nll_loss"] = nll.ToDouble();
            if (pairWeights is not null) metrics["wpo_weight"] = pairWeights.mean().ToDouble();
            metrics["rewards/chosen"] = output.ChosenRewards.mean().ToDouble();
            metrics["rewards/rejected"] = output.RejectedRewards.mean().ToDouble();
            metrics["rewards/accuracies"] = (output.ChosenRewards > output.RejectedRewards).to(float32).mean().ToDouble();
            metrics["rewards/margins"] = (output.ChosenRewards - output.RejectedRewards).mean().ToDouble();
            metrics["logps/chosen"] = policyChosen.mean().ToDouble();
            metrics["logps/rejected"] = policyRejected.mean().ToDouble();
            AddStatistics(metrics, scores);
        }
        return new ObjectiveResult(lossValue, metrics, batch.Tokens);
    }

    /// <summary>
    /// TRL's statistics of a pair batch scored with <see cref="ScoringRequest.Statistics"/>: <c>logits/chosen</c>,
    /// <c>logits/rejected</c> (mean logit over the vocabulary at completion tokens), <c>entropy</c> (chosen and rejected) and
    /// <c>mean_token_accuracy</c> (greedy prediction = chosen token). Call under no_grad.
    /// </summary>
    internal static void AddStatistics(Dictionary<string, double> metrics, CompletionScores scores)
    {
        static double Ratio(Tensor numerator, Tensor denominator) { double d = denominator.sum().ToDouble(); return d > 0 ? numerator.sum().ToDouble() / d : 0; }
        var (chosenCount, rejectedCount) = SequenceLogProbs.SplitPairs(scores.Count);
        var (logitsChosen, logitsRejected) = SequenceLogProbs.SplitPairs(scores.LogitMeanSum!);
        metrics["logits/chosen"] = Ratio(logitsChosen, chosenCount);
        metrics["logits/rejected"] = Ratio(logitsRejected, rejectedCount);
        metrics["entropy"] = Ratio(scores.EntropySum!, scores.Count);
        metrics["mean_token_accuracy"] = Ratio(SequenceLogProbs.SplitPairs(scores.CorrectCount!).chosen, chosenCount);
    }

    public bool SupportsPaddingFree => true;

    public long? BatchTokens(IReadOnlyList<TokenizedPreference> batch) => SequenceBatch.ProcessedTokens(SequenceScoring.PairRows(batch), step.PaddingFree);

    ModelFlops? flops;

    /// <summary>Each pair's two sequences through the policy (forward + backward) and, with a live reference, its forward.</summary>
    public StepFlops? Flops(IReadOnlyList<TokenizedPreference> batch) =>
        (flops ??= ModelFlops.Of(policy)).Pairs(batch.Select(e => (e.Prompt.Length, e.Chosen.Length, e.Rejected.Length)),
            liveReference: loss.RequiresReference && reference is ReferenceLogProbs.Live);

    /// <summary>TR-DPO: every <see cref="DpoStepOptions.SyncSteps"/> steps the live reference moves toward the policy.</summary>
    public void AfterStep(int stepsDone)
    {
        if (step.SyncSteps > 0 && stepsDone % step.SyncSteps == 0)
            (reference as ReferenceLogProbs.Live ?? throw new InvalidOperationException("Reference syncing needs a live reference model."))
                .Sync(policy, step.SyncAlpha);
    }

    public void AfterReport(int stepsDone, IReadOnlyDictionary<string, double> metrics) => guard?.Observe(stepsDone, metrics);

    public string? ShardingCaveat => (loss.Kinds ?? [loss.Kind]).Any(k => k is PreferenceLossKind.Aot or PreferenceLossKind.AotUnpaired)
        ? "The aot and aot_unpaired losses sort the log-ratios over the micro-batch, so a shard sorts fewer of them."
        : loss.RequiresChosenNll
        ? "The sft (RPO, the default --rpo-alpha 1) and cpo terms are token means over the chosen completions of one forward pass, so a shard weighs its examples by its own token count (--rpo-alpha 0 is exact)."
        : null;
}
