using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Training;

/// <summary>The part of training that differs between SFT, DPO and reward modelling: a micro-batch in, a loss out.</summary>
/// <typeparam name="TExample">A tokenized example.</typeparam>
internal interface ITrainingObjective<TExample>
{
    /// <summary>
    /// Runs the forward pass on <paramref name="batch"/> and returns the mean loss over it (a scalar that requires grad)
    /// with metrics to report. Called inside the loop's dispose scope.
    /// </summary>
    ObjectiveResult Compute(IReadOnlyList<TExample> batch);

    /// <summary>Called after each optimizer step (<paramref name="step"/> steps done), e.g. to update a reference model.</summary>
    void AfterStep(int step) { }

    /// <summary>Called with the averaged metrics of each report, e.g. to watch for a failure mode.</summary>
    void AfterReport(int step, IReadOnlyDictionary<string, double> metrics) { }

    /// <summary>
    /// What <see cref="Compute"/>'s mean loss divides by for <paramref name="batch"/>: the number of examples (the default),
    /// or of target tokens for a token-mean loss. Data parallelism weights each shard's loss by its share of this.
    /// </summary>
    double LossDenominator(IReadOnlyList<TExample> batch) => batch.Count;

    /// <summary>
    /// The model FLOPs of <paramref name="batch"/> (<see cref="ModelFlops"/>: policy forward + backward, and a live reference's
    /// forward apart), for the throughput and MFU metrics; null when the objective does not count them.
    /// </summary>
    StepFlops? Flops(IReadOnlyList<TExample> batch) => null;

    /// <summary>Why a micro-batch's loss is not the weighted mean of its shards' losses (terms over the whole batch), or null when it is.</summary>
    string? ShardingCaveat => null;

    /// <summary>Whether the objective packs its batches when <see cref="TrainingOptions.PaddingFree"/> is set (the loop refuses the option otherwise).</summary>
    bool SupportsPaddingFree => false;

    /// <summary>
    /// The tokens <see cref="Compute"/> processes for <paramref name="batch"/> (real tokens when packed, rows × longest row
    /// when padded), which <see cref="TrainingOptions.MaxTokensPerBatch"/> budgets; null when the objective cannot say
    /// (the loop then refuses token-budget batching).
    /// </summary>
    long? BatchTokens(IReadOnlyList<TExample> batch) => null;
}

/// <summary>The loss of a micro-batch, its metrics (means over the micro-batch) and how many tokens it processed.</summary>
internal sealed record ObjectiveResult(Tensor Loss, IReadOnlyDictionary<string, double> Metrics, long Tokens);
