using System.Text.RegularExpressions;
using Microsoft.ML.Dpo.Feedback;

namespace Microsoft.ML.Dpo.Reinforcement;

/// <summary>
/// A reward of online reinforcement learning (GRPO, RLOO): anything that scores (prompt, completion) items — a reward model,
/// any <see cref="IJudge"/> (an LLM judge through <c>IChatClient</c>, the local judges), or a C# function for verifiable
/// rewards. Several rewards are summed with their <see cref="Weight"/>s (TRL's <c>reward_funcs</c> and <c>reward_weights</c>);
/// an item a reward cannot score (null or NaN) contributes 0 to the sum and is counted, as TRL's <c>nansum</c> does.
/// </summary>
public sealed class RewardFunction
{
    readonly Func<IReadOnlyList<(string Prompt, string Completion)>, CancellationToken, Task<IReadOnlyList<double?>>> score;

    RewardFunction(string name, double weight, Func<IReadOnlyList<(string Prompt, string Completion)>, CancellationToken, Task<IReadOnlyList<double?>>> score)
    {
        if (string.IsNullOrWhiteSpace(name)) throw new ArgumentException("A reward needs a name (its metrics are rewards/NAME/mean and rewards/NAME/std).", nameof(name));
        if (!double.IsFinite(weight)) throw new ArgumentOutOfRangeException(nameof(weight), weight, "A reward's weight must be a finite number.");
        Name = name;
        Weight = weight;
        this.score = score;
    }

    /// <summary>The name in the metrics: <c>rewards/NAME/mean</c>, <c>rewards/NAME/std</c>.</summary>
    public string Name { get; }

    /// <summary>The weight of this reward in the sum. Default 1.</summary>
    public double Weight { get; }

    /// <summary>A reward from any judge: a reward model (<see cref="RewardModelTransformer"/>), <see cref="ChatClientJudge"/>, <see cref="TransformerJudge"/>, ...</summary>
    /// <param name="judge">The judge.</param>
    /// <param name="name">The reward's name. Default "judge".</param>
    /// <param name="weight">Its weight. Default 1.</param>
    public static RewardFunction FromJudge(IJudge judge, string name = "judge", double weight = 1)
    {
        ArgumentNullException.ThrowIfNull(judge);
        return new RewardFunction(name, weight, judge.ScoreAsync);
    }

    /// <summary>A reward computed by a C# function of one (prompt, completion) item: a verifiable reward.</summary>
    /// <param name="function">Returns the reward; NaN for an item it cannot score.</param>
    /// <param name="name">The reward's name.</param>
    /// <param name="weight">Its weight. Default 1.</param>
    public static RewardFunction FromFunction(Func<string, string, double> function, string name, double weight = 1)
    {
        ArgumentNullException.ThrowIfNull(function);
        return new RewardFunction(name, weight, (items, _) =>
            Task.FromResult<IReadOnlyList<double?>>(items.Select(i => JudgeExtensions.Usable(function(i.Prompt, i.Completion))).ToList()));
    }

    /// <summary>A reward computed by a C# function of a whole batch of items (e.g. to call a service once per batch).</summary>
    /// <param name="function">Returns one reward per item, in order; NaN for an item it cannot score.</param>
    /// <param name="name">The reward's name.</param>
    /// <param name="weight">Its weight. Default 1.</param>
    public static RewardFunction FromBatch(Func<IReadOnlyList<(string Prompt, string Completion)>, IReadOnlyList<double>> function, string name, double weight = 1)
    {
        ArgumentNullException.ThrowIfNull(function);
        return new RewardFunction(name, weight, (items, _) =>
        {
            var scores = function(items);
            if (scores is null || scores.Count != items.Count)
                throw new InvalidOperationException($"Reward '{name}' returned {scores?.Count ?? 0} scores for {items.Count} completions; it must return one per completion.");
            return Task.FromResult<IReadOnlyList<double?>>(scores.Select(JudgeExtensions.Usable).ToList());
        });
    }

    /// <summary>1 when the completion, trimmed of white space at its end, ends with <paramref name="suffix"/>; else 0.</summary>
    /// <param name="suffix">The required ending (e.g. a sign-off).</param>
    /// <param name="weight">Its weight. Default 1.</param>
    public static RewardFunction EndsWith(string suffix, double weight = 1)
    {
        if (string.IsNullOrEmpty(suffix)) throw new ArgumentException("The required ending must not be empty.", nameof(suffix));
        return FromFunction((_, completion) => completion.TrimEnd().EndsWith(suffix, StringComparison.Ordinal) ? 1 : 0, "ends_with", weight);
    }

    /// <summary>1 when <paramref name="pattern"/> (a .NET regular expression) matches the completion; else 0.</summary>
    /// <param name="pattern">The pattern; anchor it (<c>^…$</c>) to require the whole completion to match.</param>
    /// <param name="weight">Its weight. Default 1.</param>
    /// <exception cref="ArgumentException">The pattern is not a valid regular expression.</exception>
    public static RewardFunction Matches(string pattern, double weight = 1)
    {
        var regex = new Regex(pattern, RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1));
        return FromFunction((_, completion) => regex.IsMatch(completion) ? 1 : 0, "regex", weight);
    }

    /// <summary>A copy under another name (e.g. to tell two rewards of the same kind apart in the metrics).</summary>
    /// <param name="name">The new name.</param>
    public RewardFunction WithName(string name) => new(name, Weight, score);

    /// <summary>Scores the items; null where this reward gave no usable score.</summary>
    internal async Task<IReadOnlyList<double?>> ScoreAsync(IReadOnlyList<(string Prompt, string Completion)> items, CancellationToken cancellation)
    {
        var scores = await score(items, cancellation).ConfigureAwait(false);
        if (scores.Count != items.Count)
            throw new InvalidOperationException($"Reward '{Name}' returned {scores.Count} scores for {items.Count} completions.");
        return scores.Select(s => s is double v && double.IsFinite(v) ? s : null).ToList();
    }
}

/// <summary>The weighted sum of several rewards over a rollout batch, with TRL's per-reward metrics.</summary>
internal static class RewardScoring
{
    /// <summary>
    /// Σ_f weight_f · reward_f per completion (unscored items contribute 0), and metrics: <c>rewards/NAME/mean</c>,
    /// <c>rewards/NAME/std</c> (over the scored items; std unbiased, as torch's), <c>rewards/NAME/unscored</c> when any,
    /// <c>reward</c> and <c>reward_std</c> of the sum.
    /// </summary>
    public static double[] Score(IReadOnlyList<RewardFunction> rewards, IReadOnlyList<(string Prompt, string Completion)> items,
        Dictionary<string, double> metrics, CancellationToken cancellation)
    {
        var total = new double[items.Count];
        foreach (var reward in rewards)
        {
            var scores = reward.ScoreAsync(items, cancellation).GetAwaiter().GetResult();
            var scored = scores.Where(s => s.HasValue).Select(s => s!.Value).ToArray();
            for (int i = 0; i < total.Length; i++) total[i] += reward.Weight * (scores[i] ?? 0);
            if (scored.Length > 0) metrics[$"rewards/{reward.Name}/mean"] = scored.Average();
            metrics[$"rewards/{reward.Name}/std"] = UnbiasedStd(scored);
            if (scored.Length < scores.Count) metrics[$"rewards/{reward.Name}/unscored"] = scores.Count - scored.Length;
        }
        metrics["reward"] = total.Average();
        metrics["reward_std"] = UnbiasedStd(total);
        return total;
    }

    /// <summary>The sample standard deviation (n − 1 in the denominator, torch's default); 0 below two values (torch: NaN).</summary>
    public static double UnbiasedStd(IReadOnlyList<double> values)
    {
        if (values.Count < 2) return 0;
        double mean = values.Average();
        return Math.Sqrt(values.Sum(v => (v - mean) * (v - mean)) / (values.Count - 1));
    }
}
