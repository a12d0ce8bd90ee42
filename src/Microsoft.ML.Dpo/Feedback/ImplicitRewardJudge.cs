using Microsoft.ML.Dpo.Trainers;

namespace Microsoft.ML.Dpo.Feedback;

/// <summary>
/// A judge from a DPO-trained model: the score is DPO's implicit reward β·(log π(y|x) − log π_ref(y|x))
/// (<see cref="LanguageModelTransformer.ImplicitReward"/>; "your language model is secretly a reward model"). The transformer
/// must know its reference model. Computed on the calling thread.
/// </summary>
public sealed class ImplicitRewardJudge : IJudge
{
    readonly LanguageModelTransformer model;

    /// <summary>Creates a judge over a fitted DPO transformer (not disposed by the judge).</summary>
    /// <param name="model">A transformer with a reference model (<see cref="LanguageModelTransformer.HasReference"/>).</param>
    public ImplicitRewardJudge(LanguageModelTransformer model)
    {
        this.model = model ?? throw new ArgumentNullException(nameof(model));
        if (!model.HasReference)
            throw new ArgumentException("This transformer has no reference model, so it has no implicit reward (train it with DPO, or load a model saved with its reference).", nameof(model));
    }

    /// <inheritdoc />
    public Task<IReadOnlyList<double?>> ScoreAsync(IReadOnlyList<(string Prompt, string Completion)> items, CancellationToken cancellationToken = default)
    {
        JudgeExtensions.CheckItems(items);
        var scores = new double?[items.Count];
        for (int i = 0; i < items.Count; i++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            scores[i] = JudgeExtensions.Usable(model.ImplicitReward(items[i].Prompt, items[i].Completion));
        }
        return Task.FromResult<IReadOnlyList<double?>>(scores);
    }
}
