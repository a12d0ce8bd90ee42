using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Generation;

namespace Microsoft.ML.Dpo.Feedback;

/// <summary>A prompt with several candidate completions, before judging.</summary>
/// <param name="Prompt">The prompt.</param>
/// <param name="Completions">The candidate completions.</param>
/// <param name="Row">The prompt's row in its source, or -1; carried into the scored prompt and the pairs.</param>
public sealed record PromptCompletions(string Prompt, IReadOnlyList<string> Completions, long Row = -1);

/// <summary>What <see cref="CompletionRanker.RankAsync"/> scored.</summary>
public sealed class RankingReport
{
    /// <summary>Prompts read.</summary>
    public long Prompts { get; internal set; }
    /// <summary>Completions sent to the judge.</summary>
    public long Completions { get; internal set; }
    /// <summary>Completions that received a usable score.</summary>
    public long Scored { get; internal set; }
    /// <summary>Completions the judge could not score (null or NaN): kept with a NaN score, which binarization excludes and counts.</summary>
    public long Unscored { get; internal set; }

    /// <inheritdoc />
    public override string ToString() => $"{Prompts} prompts, {Completions} completions: {Scored} scored, {Unscored} without a usable score";
}

/// <summary>
/// The "judge → binarize" step of distilled preference data (Zephyr's dDPO recipe): sample several completions per prompt
/// (<see cref="SampleCompletions"/>), score them with an <see cref="IJudge"/> (<see cref="RankAsync"/>), then hand the
/// <see cref="ScoredPrompt"/>s to <see cref="PreferenceBinarizer.Binarize"/>.
/// </summary>
public static class CompletionRanker
{
    /// <summary>
    /// Scores every completion of every prompt with <paramref name="judge"/>, in batches, and returns the prompts with their
    /// completions' overall scores (NaN where the judge gave no usable score).
    /// </summary>
    /// <param name="judge">The judge.</param>
    /// <param name="prompts">Prompts and their candidate completions.</param>
    /// <param name="batchSize">Items per judge call. Default 32.</param>
    /// <param name="report">Filled with counts, when given.</param>
    /// <param name="cancellationToken">Cancels the scoring.</param>
    /// <returns>The scored prompts, in input order, ready for <see cref="PreferenceBinarizer"/>.</returns>
    public static async Task<List<ScoredPrompt>> RankAsync(IJudge judge, IEnumerable<PromptCompletions> prompts, int batchSize = 32,
        RankingReport? report = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(judge);
        ArgumentNullException.ThrowIfNull(prompts);
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        report ??= new RankingReport();
        var list = prompts.ToList();
        var items = new List<(string Prompt, string Completion)>();
        foreach (var p in list)
        {
            if (p.Prompt is null || p.Completions is null) throw new ArgumentException("A prompt or its completion list is null.", nameof(prompts));
            foreach (var c in p.Completions) items.Add((p.Prompt, c ?? throw new ArgumentException($"Prompt '{p.Prompt}' has a null completion.", nameof(prompts))));
        }
        var scores = new List<double?>(items.Count);
        for (int start = 0; start < items.Count; start += batchSize)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var batch = items.GetRange(start, Math.Min(batchSize, items.Count - start));
            var batchScores = await judge.ScoreAsync(batch, cancellationToken).ConfigureAwait(false);
            if (batchScores.Count != batch.Count)
                throw new InvalidOperationException($"The judge returned {batchScores.Count} scores for {batch.Count} items.");
            scores.AddRange(batchScores);
        }
        var result = new List<ScoredPrompt>(list.Count);
        int k = 0;
        foreach (var p in list)
        {
            var completions = new List<ScoredCompletion>(p.Completions.Count);
            foreach (var c in p.Completions)
            {
                double score = scores[k++] is double s && double.IsFinite(s) ? s : double.NaN;
                if (double.IsNaN(score)) report.Unscored++; else report.Scored++;
                completions.Add(new ScoredCompletion(c, score));
            }
            report.Prompts++;
            report.Completions += completions.Count;
            result.Add(new ScoredPrompt(p.Prompt, completions, p.Row));
        }
        return result;
    }

    /// <summary>
    /// Samples <paramref name="completionsPerPrompt"/> completions of each prompt from <paramref name="model"/> (sample j uses
    /// seed <c>options.Seed + j</c>, so the draws differ and the whole call is reproducible).
    /// </summary>
    /// <param name="model">The model that writes the candidates (e.g. the SFT model).</param>
    /// <param name="prompts">The prompts (already rendered with the chat template, if the model uses one).</param>
    /// <param name="completionsPerPrompt">Candidates per prompt (Zephyr's UltraFeedback data had 4).</param>
    /// <param name="options">Generation options; sampling needs <see cref="GenerationOptions.Temperature"/> &gt; 0 (default here: 1.0, 64 new tokens).</param>
    /// <param name="batchSize">Prompts generated together. Default 16.</param>
    public static List<PromptCompletions> SampleCompletions(LanguageModel model, IReadOnlyList<string> prompts, int completionsPerPrompt,
        GenerationOptions? options = null, int batchSize = 16)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(prompts);
        ArgumentOutOfRangeException.ThrowIfLessThan(completionsPerPrompt, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        options ??= new GenerationOptions { Temperature = 1.0, MaxNewTokens = 64 };
        var generator = model.CreateGenerator();
        var completions = prompts.Select(_ => new List<string>(completionsPerPrompt)).ToArray();
        for (int j = 0; j < completionsPerPrompt; j++)
        {
            var draw = Copy(options, options.Seed + j);
            for (int start = 0; start < prompts.Count; start += batchSize)
            {
                var chunk = prompts.Skip(start).Take(batchSize).ToList();
                var texts = generator.Generate(chunk, draw);
                for (int i = 0; i < texts.Count; i++) completions[start + i].Add(texts[i]);
            }
        }
        return prompts.Select((p, i) => new PromptCompletions(p, completions[i], i)).ToList();
    }

    static GenerationOptions Copy(GenerationOptions o, long seed) => new()
    {
        MaxNewTokens = o.MaxNewTokens, Temperature = o.Temperature, TopK = o.TopK, TopP = o.TopP, RepetitionPenalty = o.RepetitionPenalty,
        Seed = seed, StopStrings = o.StopStrings, StopAtEos = o.StopAtEos, TruncateLongPrompts = o.TruncateLongPrompts,
    };
}
