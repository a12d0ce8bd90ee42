using TorchSharp;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Modeling;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Training;

/// <summary>Supervised fine-tuning: mean cross-entropy over the target tokens (completion tokens, or all tokens).</summary>
/// <remarks>With <c>paddingFree</c> the micro-batch is packed into one row (<see cref="SequenceBatch.Pack"/>).</remarks>
internal sealed class SftObjective(CausalLM model, int padId, bool completionOnlyLoss, bool paddingFree = false) : ITrainingObjective<TokenizedCompletion>
{
    public ObjectiveResult Compute(IReadOnlyList<TokenizedCompletion> examples)
    {
        using var batch = SequenceBatch.Create(examples.Select(e => (e.Prompt, e.Completion)).ToList(), padId, model.Device, completionOnlyLoss, paddingFree);
        var (sum, count) = SequenceScoring.CompletionLogProbs(model, batch);
        Tensor loss = -sum.sum() / count.sum().clamp_min(1);
        double value = loss.ToDouble();
        return new ObjectiveResult(loss, new Dictionary<string, double> { ["loss"] = value, ["perplexity"] = Math.Exp(Math.Min(value, 50)) }, batch.Tokens);
    }

    public bool SupportsPaddingFree => true;

    public long? BatchTokens(IReadOnlyList<TokenizedCompletion> batch) => SequenceBatch.ProcessedTokens(batch.Select(e => (e.Prompt, e.Completion)), paddingFree);

    ModelFlops? flops;

    /// <summary>Forward + backward of each sequence, the output layer at its target positions.</summary>
    public StepFlops? Flops(IReadOnlyList<TokenizedCompletion> batch)
    {
        flops ??= ModelFlops.Of(model);
        return new StepFlops(batch.Sum(e => flops.Training(e.Prompt.Length + e.Completion.Length,
            completionOnlyLoss ? ModelFlops.HeadPositions(e.Prompt.Length, e.Completion.Length) : Math.Max(0, e.Prompt.Length + e.Completion.Length - 1))), 0);
    }

    /// <summary>The target tokens <see cref="SequenceBatch.Collate"/> marks: the loss is a mean over them (the first token of a row is never one).</summary>
    public double LossDenominator(IReadOnlyList<TokenizedCompletion> batch) => Math.Max(1, batch.Sum(e =>
    {
        int total = e.Prompt.Length + e.Completion.Length;
        return completionOnlyLoss ? e.Completion.Length - (e.Prompt.Length == 0 && e.Completion.Length > 0 ? 1 : 0) : Math.Max(0, total - 1);
    }));
}
