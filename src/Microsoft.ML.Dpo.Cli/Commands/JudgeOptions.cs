using System.CommandLine;
using System.Text.RegularExpressions;
using Microsoft.ML.Dpo;
using Microsoft.ML.Dpo.Feedback;

namespace MlDpo.Commands;

/// <summary>
/// <c>--judge KIND[:ARGUMENT]</c>, a judge that scores answers, shared by the verbs that evaluate by generation (it decides
/// which of two answers is better, for <c>eval/win_rate</c>) and by the online RL verbs (the judge in the loop, a reward):
/// <c>reward-model:DIR</c>, <c>rating:DIR</c>, <c>chat:DIR</c>, <c>implicit:MODEL,REFERENCE</c> and <c>regex:PATTERN</c>.
/// </summary>
internal sealed class JudgeOptions
{
    /// <summary>The judge kinds, as <c>--judge</c> names them.</summary>
    public static readonly string[] Kinds = ["reward-model", "rating", "chat", "implicit", "regex"];

    /// <summary>The judge kinds and what each scores, for the help text.</summary>
    public const string KindsHelp = "reward-model:DIR (a reward model trained with the library), " +
        "rating:DIR (a local model's probability-weighted 1-5 rating), chat:DIR (a local chat model as an LLM judge through IChatClient), " +
        "implicit:MODEL,REFERENCE (DPO's implicit reward log π − log π_ref), regex:PATTERN (1 when the answer matches the .NET regular expression, else 0)";

    public readonly Option<string?> Judge;

    /// <summary>The option with the help text of evaluation: the judge of eval/win_rate.</summary>
    public JudgeOptions() : this("The judge of eval/win_rate (which answer is better): " + KindsHelp + ". Default: none (no win rate).") { }

    /// <summary>The option with its own help text (the online RL verbs: the judge as a reward).</summary>
    public JudgeOptions(string description) => Judge = Cli.Optional<string?>("--judge", description);

    public void AddTo(Command command) => command.Options.Add(Judge);

    /// <summary>The judge <c>--judge</c> names, or null; models it loads are added to <paramref name="owned"/> (dispose them after use).</summary>
    public IJudge? Create(ParseResult result, List<IDisposable> owned, string device = "auto") =>
        result.GetValue(Judge) is { } spec ? Parse(spec, owned, device) : null;

    /// <summary>Parses a <c>--judge</c> value; a bad one is one <see cref="CliException"/> naming the value and the kinds.</summary>
    public static IJudge Parse(string spec, List<IDisposable> owned, string device = "auto")
    {
        int colon = spec.IndexOf(':');
        string kind = (colon < 0 ? spec : spec[..colon]).Trim().ToLowerInvariant();
        string argument = colon < 0 ? "" : spec[(colon + 1)..];
        if (!Kinds.Contains(kind))
            throw new CliException($"--judge: '{spec}' names no judge kind; use one of {string.Join(", ", Kinds.Select(k => k + ":..."))}.");
        if (argument.Length == 0) throw new CliException($"--judge {kind} needs an argument: --judge {kind}:{(kind == "regex" ? "PATTERN" : kind == "implicit" ? "MODEL,REFERENCE" : "DIR")}.");
        switch (kind)
        {
            case "regex":
                try { var regex = new Regex(argument, RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1)); return new RegexJudge(regex); }
                catch (ArgumentException e) { throw new CliException($"--judge regex:{argument}: not a valid regular expression: {e.Message}"); }
            case "reward-model":
                return Own(RewardModelTransformer.Load(Directory(argument), device), owned);
            case "rating":
                return new LanguageModelJudge(Own(LanguageModel.Load(Directory(argument), device: device), owned));
            case "chat":
                return new ChatClientJudge(Own(new LanguageModelChatClient(Own(LanguageModel.Load(Directory(argument), device: device), owned)), owned));
            default:
                var parts = argument.Split(',', StringSplitOptions.TrimEntries);
                if (parts.Length != 2 || parts.Any(p => p.Length == 0))
                    throw new CliException($"--judge implicit:{argument}: expected two model folders, implicit:MODEL,REFERENCE.");
                return new ImplicitRewardJudge(Own(LanguageModel.Load(Directory(parts[0]), device: device), owned), Own(LanguageModel.Load(Directory(parts[1]), device: device), owned));
        }
    }

    /// <summary>The model folders a <c>--judge</c> value names (none for regex:), to keep an output folder from replacing them.</summary>
    public static IReadOnlyList<string> ModelPaths(string? spec)
    {
        if (spec is null) return [];
        int colon = spec.IndexOf(':');
        string kind = (colon < 0 ? spec : spec[..colon]).Trim().ToLowerInvariant();
        string argument = colon < 0 ? "" : spec[(colon + 1)..];
        return kind switch
        {
            "reward-model" or "rating" or "chat" when argument.Length > 0 => [argument],
            "implicit" => argument.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries),
            _ => [],
        };
    }

    static string Directory(string path) =>
        System.IO.Directory.Exists(path) || File.Exists(path) ? path : throw new CliException($"--judge: model '{path}' does not exist.");

    static T Own<T>(T value, List<IDisposable> owned) where T : IDisposable
    {
        owned.Add(value);
        return value;
    }

    /// <summary>Scores 1 when the answer matches the pattern, 0 otherwise: a style check as a judge.</summary>
    sealed class RegexJudge(Regex regex) : IJudge
    {
        public Task<IReadOnlyList<double?>> ScoreAsync(IReadOnlyList<(string Prompt, string Completion)> items, CancellationToken cancellationToken = default) =>
            Task.FromResult<IReadOnlyList<double?>>(items.Select(i => (double?)(regex.IsMatch(i.Completion) ? 1 : 0)).ToList());
    }
}
