using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Feedback;
using Microsoft.ML.Dpo.Generation;

namespace Microsoft.ML.Dpo.Trainers;

/// <summary>Options of <see cref="IterativeDpo.Run"/>.</summary>
public sealed class IterativeDpoOptions
{
    /// <summary>Rounds of sample → judge → binarize → DPO. Default 3.</summary>
    public int Rounds { get; set; } = 3;
    /// <summary>Completions sampled per prompt in each round. Default 4.</summary>
    public int CompletionsPerPrompt { get; set; } = 4;
    /// <summary>How the completions are sampled. Default: temperature 1, 64 new tokens.</summary>
    public GenerationOptions Generation { get; set; } = new() { Temperature = 1.0, MaxNewTokens = 64 };
    /// <summary>How the judged completions become pairs. Default best vs. worst.</summary>
    public BinarizationOptions Binarization { get; set; } = new() { Strategy = BinarizationStrategy.BestVsWorst };
    /// <summary>
    /// The DPO options of every round; <see cref="LanguageModelTrainerOptions.BaseModel"/> and the paths are set per round (each
    /// round starts from, and is regularised toward, the previous round's policy).
    /// </summary>
    public DpoTrainer.Options Dpo { get; set; } = new();
    /// <summary>Receives one line per round (pairs made, ties dropped).</summary>
    public Action<string>? Log { get; set; }
}

/// <summary>
/// Iterative DPO (Xu et al., 2023; Yuan et al., 2024's self-rewarding loop with an external judge): rounds of sampling from the
/// current policy, judging the samples (<see cref="CompletionRanker"/>), binarizing them (<see cref="PreferenceBinarizer"/>) and
/// offline DPO on the pairs, each round's policy the next round's starting point and reference.
/// </summary>
public static class IterativeDpo
{
    /// <summary>
    /// Runs the rounds from <paramref name="start"/> (not modified) and returns every round's model, the last one the result. Each
    /// model's reference is the one before it (the first's is <paramref name="start"/>), so all stay valid together: dispose them all when done.
    /// </summary>
    /// <param name="mlContext">The ML.NET context.</param>
    /// <param name="start">The starting policy (e.g. the SFT model).</param>
    /// <param name="prompts">The prompts sampled every round.</param>
    /// <param name="judge">Scores the samples: a reward model, a <see cref="ChatClientJudge"/>, ...</param>
    /// <param name="options">Rounds, sampling, binarization and the DPO options.</param>
    /// <exception cref="InvalidOperationException">A round produced no pair (every prompt's samples tied).</exception>
    public static IReadOnlyList<LanguageModelTransformer> Run(MLContext mlContext, LanguageModel start, IReadOnlyList<string> prompts, IJudge judge, IterativeDpoOptions options)
    {
        ArgumentNullException.ThrowIfNull(mlContext);
        ArgumentNullException.ThrowIfNull(start);
        ArgumentNullException.ThrowIfNull(prompts);
        ArgumentNullException.ThrowIfNull(judge);
        ArgumentNullException.ThrowIfNull(options);
        if (options.Rounds < 1) throw new ArgumentOutOfRangeException(nameof(options), options.Rounds, "Rounds must be at least 1.");
        var models = new List<LanguageModelTransformer>();
        try
        {
            for (int round = 1; round <= options.Rounds; round++)
            {
                var policy = models.Count > 0 ? models[^1].Model : start;
                var generation = options.Generation;
                var sampled = CompletionRanker.SampleCompletions(policy, prompts, options.CompletionsPerPrompt, new GenerationOptions
                {
                    MaxNewTokens = generation.MaxNewTokens, Temperature = generation.Temperature, TopK = generation.TopK, TopP = generation.TopP,
                    Seed = generation.Seed + 1_000 * round,
                });
                var ranked = CompletionRanker.RankAsync(judge, sampled).GetAwaiter().GetResult();
                var report = new BinarizationReport();
                var pairs = PreferenceBinarizer.Binarize(ranked, options.Binarization, report);
                options.Log?.Invoke($"iterative DPO round {round}: {pairs.Count} pairs from {prompts.Count} prompts ({report}).");
                if (pairs.Count == 0) throw new InvalidOperationException($"Iterative DPO round {round}: the judge gave no prompt two distinct scores, so there is no pair to learn from.");
                var dpo = options.Dpo;
                var roundOptions = new DpoTrainer.Options
                {
                    BaseModel = policy, Beta = dpo.Beta, LossKind = dpo.LossKind, LearningRate = dpo.LearningRate, Epochs = dpo.Epochs, BatchSize = dpo.BatchSize,
                    MaxLength = dpo.MaxLength, MaxPromptLength = dpo.MaxPromptLength, Seed = dpo.Seed + round, Lora = dpo.Lora, RpoAlpha = dpo.RpoAlpha,
                    WarmupSteps = dpo.WarmupSteps, WarmupRatio = dpo.WarmupRatio, Device = dpo.Device, Log = dpo.Log, LoggingInterval = dpo.LoggingInterval, CancellationToken = dpo.CancellationToken,
                };
                models.Add(mlContext.Alignment().Trainers.Dpo(roundOptions).Fit(mlContext.Data.LoadFromPreferencePairs(pairs)));
            }
            return models;
        }
        catch
        {
            foreach (var model in models) model.Dispose();
            throw;
        }
    }
}
