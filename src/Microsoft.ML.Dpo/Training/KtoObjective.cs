using TorchSharp;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Losses;
using Microsoft.ML.Dpo.Modeling;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Training;

/// <summary>KTO's hyper-parameters.</summary>
/// <param name="Beta">KTO's β.</param>
/// <param name="DesirableWeight">The weight of desirable rows' losses.</param>
/// <param name="UndesirableWeight">The weight of undesirable rows' losses.</param>
/// <param name="MaxLength">The longest prompt + completion of a mismatched (KL) row.</param>
/// <param name="PaddingFree">Pack the rows (and the mismatched rows) into padding-free batches (<see cref="SequenceBatch.Pack"/>).</param>
internal sealed record KtoStepOptions(double Beta, double DesirableWeight, double UndesirableWeight, int MaxLength, bool PaddingFree = false);

/// <summary>
/// The KTO step: the batch's (prompt, completion) rows through the policy (with grad) and the reference; the reference point
/// from mismatched rows — each prompt with the previous row's completion, the first with the last's (TRL's KL dataset) —
/// through both models without grad; then <see cref="KtoLoss"/>. Logs TRL's KTO metrics: <c>kl</c>, rewards and log-probs
/// of the desirable (<c>chosen</c>) and undesirable (<c>rejected</c>) rows (means over the micro-batches that have such rows),
/// their counts, and the token statistics.
/// </summary>
internal sealed class KtoObjective(CausalLM policy, CausalLM reference, Func<IDisposable>? enterReference, KtoStepOptions step, int padId)
    : ITrainingObjective<TokenizedUnpaired>
{
    public ObjectiveResult Compute(IReadOnlyList<TokenizedUnpaired> examples)
    {
        int n = examples.Count;
        var rows = examples.Select(e => (e.Prompt, e.Completion)).ToList();
        var mismatched = examples.Select((e, i) => (e.Prompt, Fit(e.Prompt, examples[(i + n - 1) % n].Completion))).ToList();
        using var batch = SequenceBatch.Create(rows, padId, policy.Device, completionOnlyLoss: true, step.PaddingFree);
        using var klBatch = SequenceBatch.Create(mismatched, padId, policy.Device, completionOnlyLoss: true, step.PaddingFree);
        var scores = SequenceScoring.Score(policy, batch, new ScoringRequest(Statistics: true));
        Tensor policyKl, referenceLogps, referenceKl;
        using (no_grad())
        {
            policyKl = SequenceScoring.CompletionLogProbs(policy, klBatch).Sum;
            using var around = enterReference?.Invoke();
            using var notRecorded = reference.PauseRouterRecording();
            referenceLogps = SequenceScoring.CompletionLogProbs(reference, batch).Sum;
            referenceKl = SequenceScoring.CompletionLogProbs(reference, klBatch).Sum;
        }
        Tensor kl = KtoLoss.KlEstimate(policyKl, referenceKl);
        Tensor desirable = tensor(examples.Select(e => e.Desirable).ToArray(), device: policy.Device);
        var output = KtoLoss.Compute(scores.Sum, referenceLogps, desirable, kl, step.Beta, step.DesirableWeight, step.UndesirableWeight);
        Tensor loss = output.Losses.mean();
        var metrics = new Dictionary<string, double>();
        using (no_grad())
        {
            static double Ratio(Tensor numerator, Tensor denominator) { double d = denominator.sum().ToDouble(); return d > 0 ? numerator.sum().ToDouble() / d : 0; }
            metrics["loss"] = loss.ToDouble();
            metrics["kl"] = kl.ToDouble();
            int chosen = examples.Count(e => e.Desirable), rejected = n - chosen;
            metrics["count/chosen"] = chosen;
            metrics["count/rejected"] = rejected;
            Tensor undesirable = desirable.logical_not();
            if (chosen > 0)
            {
                metrics["rewards/chosen"] = output.Rewards.masked_select(desirable).mean().ToDouble();
                metrics["logps/chosen"] = scores.Sum.detach().masked_select(desirable).mean().ToDouble();
                metrics["logits/chosen"] = Ratio(scores.LogitMeanSum!.masked_select(desirable), scores.Count.masked_select(desirable));
            }
            if (rejected > 0)
            {
                metrics["rewards/rejected"] = output.Rewards.masked_select(undesirable).mean().ToDouble();
                metrics["logps/rejected"] = scores.Sum.detach().masked_select(undesirable).mean().ToDouble();
                metrics["logits/rejected"] = Ratio(scores.LogitMeanSum!.masked_select(undesirable), scores.Count.masked_select(undesirable));
            }
            if (chosen > 0 && rejected > 0) metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"];
            metrics["entropy"] = Ratio(scores.EntropySum!, scores.Count);
            metrics["mean_token_accuracy"] = Ratio(scores.CorrectCount!, scores.Count);
        }
        return new ObjectiveResult(loss, metrics, batch.Tokens);   // the tokens trained on (the KL rows get no gradient)
    }

    /// <summary>A mismatched completion cut to the room the prompt leaves (it was truncated for its own prompt).</summary>
    public bool SupportsPaddingFree => true;

    /// <summary>The rows and the mismatched (KL) rows, both of which the step runs through the policy.</summary>
    public long? BatchTokens(IReadOnlyList<TokenizedUnpaired> batch)
    {
        int n = batch.Count;
        var rows = batch.Select(e => (e.Prompt, e.Completion));
        var mismatched = batch.Select((e, i) => (e.Prompt, Fit(e.Prompt, batch[(i + n - 1) % n].Completion)));
        return SequenceBatch.ProcessedTokens(rows, step.PaddingFree) + SequenceBatch.ProcessedTokens(mismatched, step.PaddingFree);
    }

    int[] Fit(int[] prompt, int[] completion) => completion.Length + prompt.Length <= step.MaxLength ? completion : completion[..Math.Max(1, step.MaxLength - prompt.Length)];
}
