namespace Microsoft.ML.Dpo.Data;

/// <summary>How several scored completions of one prompt are turned into (chosen, rejected) pairs.</summary>
public enum BinarizationStrategy
{
    /// <summary>
    /// One pair per prompt: the best-scored completion against one drawn uniformly at random (seeded) among those with a strictly lower
    /// score. This is how Zephyr (Tunstall et al. 2023, "Zephyr: Direct Distillation of LM Alignment") binarized UltraFeedback.
    /// </summary>
    BestVsRandom,
    /// <summary>One pair per prompt: the best-scored completion against the worst-scored one.</summary>
    BestVsWorst,
    /// <summary>
    /// Every pair of completions whose scores differ by at least <see cref="BinarizationOptions.MinimumMargin"/> (and by more than zero),
    /// the higher-scored one chosen.
    /// </summary>
    AllPairs,
}

/// <summary>Which score of a completion binarization compares.</summary>
public enum ScoreSource
{
    /// <summary>The completion's overall score (UltraFeedback's <c>overall_score</c>, the critique score Zephyr used).</summary>
    OverallScore,
    /// <summary>
    /// The mean of the completion's per-aspect ratings (UltraFeedback's helpfulness, honesty, instruction following, truthfulness),
    /// as Notus (Argilla, 2023) re-binarized UltraFeedback after finding inconsistent overall scores. A completion with any unusable
    /// rating (missing, NaN, or not a number such as "N/A") has no usable mean.
    /// </summary>
    MeanOfAspectRatings,
}

/// <summary>Options of <see cref="PreferenceBinarizer"/>.</summary>
public sealed class BinarizationOptions
{
    /// <summary>How pairs are formed. Default <see cref="BinarizationStrategy.BestVsRandom"/> (Zephyr).</summary>
    public BinarizationStrategy Strategy { get; set; } = BinarizationStrategy.BestVsRandom;
    /// <summary>Which score is compared. Default <see cref="ScoreSource.OverallScore"/>.</summary>
    public ScoreSource Score { get; set; } = ScoreSource.OverallScore;
    /// <summary>For <see cref="BinarizationStrategy.AllPairs"/>: the least score difference that makes a pair. Default 0 (any strict difference).</summary>
    public double MinimumMargin { get; set; }
    /// <summary>
    /// The seed of <see cref="BinarizationStrategy.BestVsRandom"/>'s draws: the same prompts in the same order with the same seed give
    /// the same pairs. Default 42.
    /// </summary>
    public int Seed { get; set; } = 42;
}

/// <summary>One completion of a prompt with its scores.</summary>
/// <param name="Text">The completion text.</param>
/// <param name="OverallScore">The overall score; NaN when missing or unusable.</param>
/// <param name="AspectRatings">Per-aspect ratings (aspect name to rating; NaN for an unusable rating); null or empty when none.</param>
public sealed record ScoredCompletion(string Text, double OverallScore = double.NaN, IReadOnlyDictionary<string, double>? AspectRatings = null)
{
    /// <summary>The score compared by binarization under <paramref name="source"/>, or NaN when the completion has no usable score.</summary>
    /// <param name="source">Which score.</param>
    /// <returns>The finite score, or NaN.</returns>
    public double GetScore(ScoreSource source)
    {
        if (source == ScoreSource.OverallScore) return double.IsFinite(OverallScore) ? OverallScore : double.NaN;
        if (AspectRatings is null || AspectRatings.Count == 0) return double.NaN;
        double sum = 0;
        foreach (var rating in AspectRatings.Values)
        {
            if (!double.IsFinite(rating)) return double.NaN;
            sum += rating;
        }
        return sum / AspectRatings.Count;
    }
}

/// <summary>A prompt with several scored completions (the UltraFeedback layout).</summary>
/// <param name="Prompt">The prompt.</param>
/// <param name="Completions">Its completions and their scores.</param>
/// <param name="Row">The record's line or row number in the source file (1-based), or -1; carried into the pairs.</param>
public sealed record ScoredPrompt(string Prompt, IReadOnlyList<ScoredCompletion> Completions, long Row = -1);

/// <summary>A prompt that gave no pair because its usable completions had fewer than two distinct scores.</summary>
/// <param name="Prompt">The prompt.</param>
/// <param name="Row">Its <see cref="ScoredPrompt.Row"/>.</param>
/// <param name="UsableCompletions">How many of its completions had a usable score.</param>
public sealed record UnpairedPrompt(string Prompt, long Row, int UsableCompletions);

/// <summary>What binarization read, produced and dropped.</summary>
public sealed class BinarizationReport
{
    readonly List<UnpairedPrompt> unpaired = new();

    /// <summary>Prompts read.</summary>
    public long PromptsRead { get; internal set; }
    /// <summary>Pairs produced.</summary>
    public long PairsProduced { get; internal set; }
    /// <summary>Completions excluded because they had no usable score under the chosen <see cref="ScoreSource"/> (missing, NaN, unparsable).</summary>
    public long CompletionsWithoutScore { get; internal set; }
    /// <summary>
    /// Completions excluded because their text is empty: a pair with an empty side is refused by every trainer (an empty answer is
    /// almost always a generation that stopped at once, not a response), so such a completion never becomes the chosen or the rejected one.
    /// </summary>
    public long EmptyCompletions { get; internal set; }
    /// <summary>
    /// Ties never made into pairs: for <see cref="BinarizationStrategy.BestVsRandom"/> and <see cref="BinarizationStrategy.BestVsWorst"/>,
    /// completions other than the chosen one that share the best score; for <see cref="BinarizationStrategy.AllPairs"/>, pairs of
    /// completions with equal scores.
    /// </summary>
    public long TiesDropped { get; internal set; }
    /// <summary>For <see cref="BinarizationStrategy.AllPairs"/>: pairs whose score difference was positive but below the minimum margin.</summary>
    public long BelowMarginDropped { get; internal set; }
    /// <summary>How many prompts gave no pair (fewer than two distinct usable scores).</summary>
    public long PromptsWithoutPreference => unpaired.Count;
    /// <summary>The prompts that gave no pair, in input order.</summary>
    public IReadOnlyList<UnpairedPrompt> UnpairedPrompts => unpaired;

    internal void AddUnpaired(UnpairedPrompt prompt) => unpaired.Add(prompt);

    /// <inheritdoc />
    public override string ToString() =>
        $"{PromptsRead} prompts, {PairsProduced} pairs; {PromptsWithoutPreference} prompts without a preference, " +
        $"{CompletionsWithoutScore} completions without a usable score, {EmptyCompletions} empty completions, {TiesDropped} ties dropped, {BelowMarginDropped} below the margin";
}

/// <summary>
/// Turns prompts with several scored completions into preference pairs (binarization, as Zephyr (Tunstall et al. 2023) and
/// Notus (Argilla) did with UltraFeedback). The chosen completion has the highest score (the first such in input order); ties with it are
/// never paired. Completions without a usable score, or with empty text, are excluded and counted; prompts whose usable completions have fewer than two
/// distinct scores give no pair and are reported.
/// </summary>
public static class PreferenceBinarizer
{
    /// <summary>Binarizes <paramref name="prompts"/>.</summary>
    /// <param name="prompts">The prompts and their scored completions.</param>
    /// <param name="options">Strategy, score source, margin and seed; the defaults when null.</param>
    /// <param name="report">Filled with counts of what was produced and dropped, when given.</param>
    /// <returns>The pairs, in input order of prompts (for <see cref="BinarizationStrategy.AllPairs"/>: by descending chosen score, then
    /// descending rejected score, ties kept in input order).</returns>
    public static List<PreferencePair> Binarize(IEnumerable<ScoredPrompt> prompts, BinarizationOptions? options = null, BinarizationReport? report = null)
    {
        ArgumentNullException.ThrowIfNull(prompts);
        options ??= new BinarizationOptions();
        report ??= new BinarizationReport();
        if (options.MinimumMargin < 0 || double.IsNaN(options.MinimumMargin))
            throw new ArgumentOutOfRangeException(nameof(options), $"MinimumMargin must be zero or positive, not {options.MinimumMargin}.");
        var random = new Random(options.Seed);
        var pairs = new List<PreferencePair>();
        foreach (var prompt in prompts)
        {
            report.PromptsRead++;
            var scored = new List<(ScoredCompletion Completion, double Score)>();
            foreach (var completion in prompt.Completions)
            {
                if (string.IsNullOrEmpty(completion.Text)) { report.EmptyCompletions++; continue; }
                double score = completion.GetScore(options.Score);
                if (double.IsNaN(score)) report.CompletionsWithoutScore++;
                else scored.Add((completion, score));
            }
            if (scored.Select(s => s.Score).Distinct().Count() < 2)
            {
                report.AddUnpaired(new UnpairedPrompt(prompt.Prompt, prompt.Row, scored.Count));
                continue;
            }
            // Stable sort: equal scores keep their input order.
            var ranked = scored.OrderByDescending(s => s.Score).ToList();
            int before = pairs.Count;
            if (options.Strategy == BinarizationStrategy.AllPairs)
            {
                for (int i = 0; i < ranked.Count; i++)
                    for (int j = i + 1; j < ranked.Count; j++)
                    {
                        double margin = ranked[i].Score - ranked[j].Score;
                        if (margin == 0) report.TiesDropped++;
                        else if (margin < options.MinimumMargin) report.BelowMarginDropped++;
                        else pairs.Add(new PreferencePair(prompt.Prompt, ranked[i].Completion.Text, ranked[j].Completion.Text, prompt.Row));
                    }
            }
            else
            {
                var best = ranked[0];
                var lower = ranked.Where(s => s.Score < best.Score).ToList();
                report.TiesDropped += ranked.Count - 1 - lower.Count;
                var rejected = options.Strategy == BinarizationStrategy.BestVsWorst
                    ? lower.First(s => s.Score == lower[^1].Score)
                    : lower[random.Next(lower.Count)];
                pairs.Add(new PreferencePair(prompt.Prompt, best.Completion.Text, rejected.Completion.Text, prompt.Row));
            }
            report.PairsProduced += pairs.Count - before;
        }
        return pairs;
    }
}
