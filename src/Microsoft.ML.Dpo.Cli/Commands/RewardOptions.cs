using System.CommandLine;
using System.Globalization;
using System.Text.RegularExpressions;
using Microsoft.ML.Dpo.Feedback;
using Microsoft.ML.Dpo.Reinforcement;

namespace MlDpo.Commands;

/// <summary>
/// The reward options of the online RL verbs (<c>grpo</c>, <c>rloo</c>, <c>online-dpo</c>): verifiable rewards written on the
/// command line (<c>--reward-function ends-with:TEXT</c> or <c>regex:PATTERN</c>, repeatable), a reward model trained by
/// <c>mldpo reward</c> (<c>--reward-model DIR</c>), any judge of <c>mldpo evaluate</c> in the loop (<c>--judge KIND:ARGUMENT</c>,
/// <see cref="JudgeOptions"/>: an LLM judge through IChatClient is RLAIF), and their weights.
/// </summary>
internal sealed class RewardOptions
{
    public readonly Option<string[]> Functions = new("--reward-function")
    {
        Description = "A verifiable reward, repeatable: ends-with:TEXT (1 when the answer, trimmed at its end, ends with TEXT, else 0) or " +
            "regex:PATTERN (1 when the .NET regular expression matches the answer; anchor it with ^...$ to require the whole answer).",
        AllowMultipleArgumentsPerToken = false,
    };
    public readonly Option<string?> RewardModel = Cli.Optional<string?>("--reward-model", "A reward model directory written by mldpo reward (scores each answer).");
    public readonly JudgeOptions Judge = new("A judge in the loop, as a reward (its score of each sampled answer; the same kinds as mldpo evaluate --judge): " +
        JudgeOptions.KindsHelp + ". chat:DIR is RLAIF: an LLM rates every answer through IChatClient. Default: none.");
    public readonly Option<string?> Weights = Cli.Optional<string?>("--reward-weights",
        "Comma-separated weights: one per --reward-function (in order), then one for --reward-model, then one for --judge (default: 1 each).");

    public void AddTo(Command command)
    {
        command.Options.Add(Functions);
        command.Options.Add(RewardModel);
        Judge.AddTo(command);
        command.Options.Add(Weights);
    }

    /// <summary>The model folders the rewards read (reward model, judge models), which the output folder must not replace.</summary>
    public IEnumerable<string?> ModelPaths(ParseResult result) => [result.GetValue(RewardModel), .. JudgeOptions.ModelPaths(result.GetValue(Judge.Judge))];

    /// <summary>The rewards the options name; the models loaded for them are added to <paramref name="owned"/>, to be disposed after training.</summary>
    public List<RewardFunction> Build(ParseResult result, string device, List<IDisposable> owned)
    {
        var specs = result.GetValue(Functions) ?? [];
        string? modelDir = result.GetValue(RewardModel);
        string? judgeSpec = result.GetValue(Judge.Judge);
        int count = specs.Length + (modelDir is null ? 0 : 1) + (judgeSpec is null ? 0 : 1);
        if (count == 0) throw new CliException("Give a reward: --reward-function ends-with:TEXT or regex:PATTERN, --reward-model DIR, or --judge KIND:ARGUMENT (see --help).");
        var weights = ParseWeights(result.GetValue(Weights), count);
        var rewards = new List<RewardFunction>();
        for (int i = 0; i < specs.Length; i++)
        {
            var reward = Parse(specs[i], weights[i]);
            rewards.Add(specs.Length > 1 ? reward.WithName($"{reward.Name}_{i + 1}") : reward);
        }
        if (modelDir is not null)
        {
            if (!Directory.Exists(modelDir)) throw new CliException($"--reward-model: directory '{modelDir}' does not exist.");
            if (!File.Exists(Path.Combine(modelDir, RewardModelTransformer.SettingsFileName)))
                throw new CliException($"--reward-model: '{modelDir}' is not a reward model written by mldpo reward (it lacks {RewardModelTransformer.SettingsFileName}).");
            var model = RewardModelTransformer.Load(modelDir, device);
            owned.Add(model);
            rewards.Add(RewardFunction.FromJudge(model, "reward_model", weights[specs.Length]));
        }
        if (judgeSpec is not null)
            rewards.Add(RewardFunction.FromJudge(JudgeOptions.Parse(judgeSpec, owned, device), "judge", weights[^1]));
        return rewards;
    }

    /// <summary>One --reward-function value: ends-with:TEXT or regex:PATTERN.</summary>
    internal static RewardFunction Parse(string spec, double weight = 1)
    {
        int colon = spec.IndexOf(':');
        string kind = colon < 0 ? spec : spec[..colon], argument = colon < 0 ? "" : spec[(colon + 1)..];
        switch (kind)
        {
            case "ends-with":
                if (argument.Length == 0) throw new CliException("--reward-function ends-with: needs the text, e.g. ends-with:\"Best regards.\"");
                return RewardFunction.EndsWith(argument, weight);
            case "regex":
                if (argument.Length == 0) throw new CliException("--reward-function regex: needs a pattern, e.g. regex:^Answer: [0-9]+$");
                try { return RewardFunction.Matches(argument, weight); }
                catch (ArgumentException e) { throw new CliException($"--reward-function regex:{argument}: not a valid regular expression: {e.Message}"); }
            default:
                throw new CliException($"--reward-function '{spec}': expected ends-with:TEXT or regex:PATTERN.");
        }
    }

    static double[] ParseWeights(string? value, int count)
    {
        if (value is null) return Enumerable.Repeat(1.0, count).ToArray();
        var items = value.Split(',', StringSplitOptions.TrimEntries);
        if (items.Length != count)
            throw new CliException($"--reward-weights has {items.Length} value(s) for {count} reward(s); give one per --reward-function, then one for --reward-model, then one for --judge.");
        return items.Select(item => double.TryParse(item, NumberStyles.Float, CultureInfo.InvariantCulture, out double w) && double.IsFinite(w)
            ? w : throw new CliException($"--reward-weights: '{item}' is not a number.")).ToArray();
    }
}
