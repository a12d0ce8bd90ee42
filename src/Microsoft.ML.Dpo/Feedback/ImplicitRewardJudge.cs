using Microsoft.ML.Dpo.Trainers;

namespace Microsoft.ML.Dpo.Feedback;

/// <summary>
/// A judge from a DPO-trained model: the score is DPO's implicit reward β·(log π(y|x) − log π_ref(y|x))
/// (<see cref="LanguageModelTransformer.ImplicitReward"/>; "your language model is secretly a reward model"). The transformer
/// must know its reference model. Computed on the calling thread.
/// </summary>
public sealed class ImplicitRewardJudge : IJudge
{
    readonly LanguageModelTransformer? model;
    readonly (LanguageModel Policy, LanguageModel Reference, double Beta)? models;

    /// <summary>Creates a judge over a fitted DPO transformer (not disposed by the judge).</summary>
    /// <param name="model">A transformer with a reference model (<see cref="LanguageModelTransformer.HasReference"/>).</param>
    public ImplicitRewardJudge(LanguageModelTransformer model)
    {
        this.model = model ?? throw new ArgumentNullException(nameof(model));
        if (!model.HasReference)
            throw new ArgumentException("This transformer has no reference model, so it has no implicit reward (train it with DPO, or load a model saved with its reference).", nameof(model));
    }

    /// <summary>Creates a judge over a policy and its reference model (neither disposed by the judge): β·(log π(y|x) − log π_ref(y|x)).</summary>
    /// <param name="policy">The aligned model.</param>
    /// <param name="reference">The model it was aligned from (same vocabulary).</param>
    /// <param name="beta">β; it scales every score alike, so a win rate does not depend on it. Default 1.</param>
    public ImplicitRewardJudge(LanguageModel policy, LanguageModel reference, double beta = 1)
    {
        ArgumentNullException.ThrowIfNull(policy);
        ArgumentNullException.ThrowIfNull(reference);
        if (!(beta > 0 && double.IsFinite(beta))) throw new ArgumentOutOfRangeException(nameof(beta), beta, "beta must be a finite positive number.");
        models = (policy, reference, beta);
    }

    double Score(string prompt, string completion) => model is not null
        ? model.ImplicitReward(prompt, completion)
        : models!.Value.Beta * (LanguageModelTransformer.LogProbability(models.Value.Policy, prompt, completion) - (double)LanguageModelTransformer.LogProbability(models.Value.Reference, prompt, completion));

    /// <inheritdoc />
    public Task<IReadOnlyList<double?>> ScoreAsync(IReadOnlyList<(string Prompt, string Completion)> items, CancellationToken cancellationToken = default)
    {
        JudgeExtensions.CheckItems(items);
        var scores = new double?[items.Count];
        for (int i = 0; i < items.Count; i++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            scores[i] = JudgeExtensions.Usable(Score(items[i].Prompt, items[i].Completion));
        }
        return Task.FromResult<IReadOnlyList<double?>>(scores);
    }
}
