namespace Microsoft.ML.Dpo.Feedback;

/// <summary>
/// Scores completions of prompts: the "judge" step of AI-feedback pipelines (UltraFeedback, Zephyr), whose scores
/// <see cref="CompletionRanker"/> turns into <see cref="Data.ScoredPrompt"/>s for <see cref="Data.PreferenceBinarizer"/>.
/// Higher is better; the scale is the judge's own (a reward, a 1–10 rating, a probability), so compare scores of one judge only.
/// </summary>
/// <remarks>
/// A judge returns null (or NaN) for an item it could not score — e.g. an LLM answer without a readable rating. Such items are
/// counted by the judge and by <see cref="CompletionRanker"/>, and binarization excludes them; they are never treated as a score.
/// Judges over local TorchSharp models compute synchronously on the calling thread and return a completed task.
/// </remarks>
public interface IJudge
{
    /// <summary>Scores each (prompt, completion) item.</summary>
    /// <param name="items">The items to score.</param>
    /// <param name="cancellationToken">Cancels the scoring.</param>
    /// <returns>One score per item, in order; null where no usable score was obtained.</returns>
    Task<IReadOnlyList<double?>> ScoreAsync(IReadOnlyList<(string Prompt, string Completion)> items, CancellationToken cancellationToken = default);
}

/// <summary>Convenience members of <see cref="IJudge"/>.</summary>
public static class JudgeExtensions
{
    /// <summary>Scores a single completion; null when the judge gave no usable score.</summary>
    /// <param name="judge">The judge.</param>
    /// <param name="prompt">The prompt.</param>
    /// <param name="completion">The completion.</param>
    /// <param name="cancellationToken">Cancels the scoring.</param>
    public static async Task<double?> ScoreAsync(this IJudge judge, string prompt, string completion, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(judge);
        var scores = await judge.ScoreAsync([(prompt, completion)], cancellationToken).ConfigureAwait(false);
        return scores[0];
    }

    /// <summary>Normalizes a raw score: NaN and infinities become null.</summary>
    internal static double? Usable(double value) => double.IsFinite(value) ? value : null;

    /// <summary>Checks the items of a scoring call.</summary>
    internal static void CheckItems(IReadOnlyList<(string Prompt, string Completion)> items)
    {
        ArgumentNullException.ThrowIfNull(items);
        for (int i = 0; i < items.Count; i++)
            if (items[i].Prompt is null || items[i].Completion is null)
                throw new ArgumentException($"Item {i} has a null prompt or completion.", nameof(items));
    }
}
