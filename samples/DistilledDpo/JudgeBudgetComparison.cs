using System.Diagnostics;
using System.Globalization;
using System.Text;
using Microsoft.ML;
using Microsoft.ML.Dpo;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Feedback;
using Microsoft.ML.Dpo.Generation;
using Microsoft.ML.Dpo.Reinforcement;
using Microsoft.ML.Dpo.Samples;
using Microsoft.ML.Dpo.Trainers;
using MlDpo.Commands;

namespace DistilledDpo;

/// <summary>One arm of the equal-judge-budget comparison, measured on the held-out prompts.</summary>
/// <param name="Name">The arm ("dSFT", "offline DPO", "online DPO", "RLOO", "GRPO").</param>
/// <param name="JudgeCalls">Rating requests the arm's own teacher answered while training (one per judged completion).</param>
/// <param name="WinRateOverSft">Judged win rate of the arm's greedy answers over the dSFT model's (ties count half).</param>
/// <param name="PreferredStyleRate">Share of greedy answers that are exactly a preferred answer.</param>
/// <param name="KlToSft">
/// KL(π ‖ π_SFT) in nats per answer: the mean, over <see cref="JudgeBudgetComparison.KlSamplesPerPrompt"/> answers y sampled from
/// the arm's model π at temperature 1 for every held-out prompt x, of log π(y|x) − log π_SFT(y|x) (sequence log-probs, EOS included):
/// the k1 Monte-Carlo estimate of the sequence-level KL divergence.
/// </param>
/// <param name="Seconds">Wall time of the arm: sampling, judging and training (the offline arm: sampling, rating, binarizing, dDPO).</param>
/// <param name="Setup">How the arm spent its budget, in words.</param>
public sealed record ComparisonArm(string Name, long JudgeCalls, double WinRateOverSft, double PreferredStyleRate, double KlToSft, double Seconds, string Setup);

/// <summary>
/// The DPO paper's comparison (Rafailov et al., 2023, §6) in miniature, at an equal budget of judge calls: offline DPO spends
/// its budget rating <c>k</c> sampled completions per training prompt up front; online DPO spends 2 per prompt per rollout; RLOO
/// and GRPO spend K per prompt per rollout. Every online arm starts from the dSFT model, is rewarded by its own instance of the
/// same rubric teacher through <see cref="ChatClientJudge"/>, and is stopped after exactly the offline arm's number of calls.
/// </summary>
public static class JudgeBudgetComparison
{
    /// <summary>Answers sampled per held-out prompt for the KL estimate.</summary>
    public const int KlSamplesPerPrompt = 4;

    /// <summary>Prompts per online-DPO step (two completions each).</summary>
    const int OnlineDpoBatch = 8;
    /// <summary>Prompts per RLOO and GRPO step.</summary>
    const int RlBatch = 4;
    /// <summary>Completions per prompt of RLOO and GRPO (K).</summary>
    const int RlGenerations = 4;

    /// <summary>Trains the online arms from <paramref name="sft"/> on <paramref name="prompts"/> with <paramref name="budget"/> judge calls each.</summary>
    /// <param name="ml">The ML.NET context.</param>
    /// <param name="sft">The dSFT model (not modified; the reference of online DPO and RLOO).</param>
    /// <param name="prompts">The training prompts (the offline arm's).</param>
    /// <param name="budget">Judge calls per arm: the offline arm's count.</param>
    /// <param name="arms">Which online arms to run ("online-dpo", "rloo", "grpo").</param>
    /// <param name="seed">The seed of every arm.</param>
    /// <param name="display">Shows training progress.</param>
    /// <returns>Each arm's model, its teacher's call count, its wall time and its setup in words; dispose the models.</returns>
    internal static List<(string Name, LanguageModelTransformer Model, long Calls, double Seconds, string Setup)> TrainOnlineArms(
        MLContext ml, LanguageModel sft, IReadOnlyList<string> prompts, long budget, IReadOnlyCollection<string> arms, int seed, TrainingDisplay display)
    {
        var data = ml.Data.LoadFromCompletions(prompts.Select(p => new CompletionExample(p, "")));
        var results = new List<(string, LanguageModelTransformer, long, double, string)>();
        try
        {
            foreach (string arm in arms)
            {
                var (name, generations, batch) = arm switch
                {
                    "online-dpo" => ("online DPO", 2, OnlineDpoBatch),
                    "rloo" => ("RLOO", RlGenerations, RlBatch),
                    "grpo" => ("GRPO", RlGenerations, RlBatch),
                    _ => throw new ArgumentException($"Unknown arm '{arm}'; arms: online-dpo, rloo, grpo."),
                };
                long perStep = (long)generations * batch;
                if (budget % perStep != 0)
                    throw new ArgumentException($"The judge budget {budget} is not a whole number of {name} steps ({batch} prompts × {generations} completions = {perStep} calls each); " +
                        "use an even --completions so every arm can spend exactly the offline arm's budget.");
                int steps = checked((int)(budget / perStep));
                int epochs = (int)Math.Ceiling((double)steps * batch / prompts.Count);
                using var teacher = new RubricTeacher();
                var rewards = new[] { RewardFunction.FromJudge(new ChatClientJudge(teacher), "rubric") };
                OnlineRlTrainerOptions options = arm switch
                {
                    // The settings of the online-DPO test (β 0.1, lr 5e-4), at the offline arm's sampling temperature and length.
                    "online-dpo" => new OnlineDpoTrainer.Options { Beta = 0.1, LearningRate = 5e-4 },
                    // RLOO's default KL shaping (β 0.05) toward the dSFT model; GRPO without a KL term (TRL's default β 0).
                    "rloo" => new RlooTrainer.Options { Beta = 0.05, LearningRate = 5e-4, NumGenerations = generations },
                    _ => new GrpoTrainer.Options { Beta = 0, LearningRate = 1e-3, NumGenerations = generations },
                };
                options.BaseModel = sft;
                options.Rewards = rewards;
                options.MaxCompletionLength = 32;
                options.Temperature = 1.0;
                options.BatchSize = batch;
                options.Epochs = epochs;
                options.MaxSteps = steps;
                options.MaxLength = 128;
                options.MaxPromptLength = 96;
                options.Seed = seed;
                options.LoggingInterval = 5;
                options.Progress = display.Progress;
                options.Log = display.Log;
                var clock = Stopwatch.StartNew();
                IEstimator<LanguageModelTransformer> trainer = options switch
                {
                    OnlineDpoTrainer.Options o => ml.Alignment().Trainers.OnlineDpo(o),
                    RlooTrainer.Options o => ml.Alignment().Trainers.Rloo(o),
                    GrpoTrainer.Options o => ml.Alignment().Trainers.Grpo(o),
                    _ => throw new InvalidOperationException(),
                };
                var model = display.Run(name, () => trainer.Fit(data));
                results.Add((name, model, teacher.Calls, clock.Elapsed.TotalSeconds,
                    $"{steps} steps × {batch} prompts × {generations} completions, lr {options.LearningRate:G3}, β {options.Beta:G3}"));
            }
            return results;
        }
        catch
        {
            foreach (var r in results) r.Item2.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The k1 estimate of KL(π ‖ π_SFT) on <paramref name="prompts"/>: <see cref="KlSamplesPerPrompt"/> answers sampled from
    /// <paramref name="policy"/> per prompt (temperature 1, at most <paramref name="maxNewTokens"/> new tokens, ending at EOS), and
    /// the mean of log π(y|x) − log π_SFT(y|x) over them (<see cref="ImplicitRewardJudge"/> with β = 1 computes the log-ratio).
    /// </summary>
    public static double KlToSft(LanguageModel policy, LanguageModel sft, IReadOnlyList<string> prompts, int maxNewTokens, int seed)
    {
        var repeated = prompts.SelectMany(p => Enumerable.Repeat(p, KlSamplesPerPrompt)).ToList();
        var samples = policy.CreateGenerator().Generate(repeated, new GenerationOptions { Temperature = 1.0, MaxNewTokens = maxNewTokens, Seed = seed, StopAtEos = true });
        var ratios = new ImplicitRewardJudge(policy, sft, beta: 1).ScoreAsync(repeated.Zip(samples).ToList()).GetAwaiter().GetResult();
        return ratios.Where(r => r.HasValue).Average(r => r!.Value);
    }

    /// <summary>The comparison as a Markdown table.</summary>
    public static string ToMarkdown(IReadOnlyList<ComparisonArm> arms, long budget, int heldOutPrompts)
    {
        var text = new StringBuilder();
        text.AppendLine(CultureInfo.InvariantCulture, $"Equal judge budget: {budget} rating calls per arm; {heldOutPrompts} held-out prompts; KL = mean over {KlSamplesPerPrompt} sampled answers per prompt of log π(y|x) − log π_SFT(y|x).");
        text.AppendLine();
        text.AppendLine("| arm | judge calls | judged win rate over dSFT | preferred style (held-out) | KL to dSFT (nats/answer) | wall time | budget spent as |");
        text.AppendLine("| --- | ---: | ---: | ---: | ---: | ---: | --- |");
        foreach (var a in arms)
            text.AppendLine(CultureInfo.InvariantCulture,
                $"| {a.Name} | {a.JudgeCalls} | {(a.Name == "dSFT" ? "—" : a.WinRateOverSft.ToString("P0", CultureInfo.InvariantCulture))} | {a.PreferredStyleRate.ToString("P0", CultureInfo.InvariantCulture)} | " +
                $"{a.KlToSft:F2} | {a.Seconds:F0} s | {a.Setup} |");
        return text.ToString();
    }
}
