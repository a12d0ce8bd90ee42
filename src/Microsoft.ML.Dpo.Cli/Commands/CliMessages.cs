using System.Text.RegularExpressions;
using Microsoft.ML.Dpo;

namespace MlDpo.Commands;

/// <summary>
/// Turns the library's messages, which name C# options (<c>set SkipMalformedRows</c>, <c>MaxLength</c>,
/// <c>ExistingCheckpoint = Resume</c>), into the command line's words (<c>pass --skip-invalid</c>, <c>--max-length</c>,
/// <c>--resume</c>) before <see cref="Cli.SetAction"/> prints them. Parts written for C# only (<c>(C#: …)</c>) are dropped,
/// and so are .NET's <c>(Parameter 'X')</c> suffixes.
/// </summary>
internal static class CliMessages
{
    /// <summary>C# option (property) names and the flag that sets them.</summary>
    internal static readonly IReadOnlyDictionary<string, string> Flags = new Dictionary<string, string>(StringComparer.Ordinal)
    {
        // data files
        ["SkipMalformedRows"] = "--skip-invalid",
        ["SkipInvalidRows"] = "--skip-invalid",
        ["PromptColumnName"] = "--prompt-column",
        ["ChosenColumnName"] = "--chosen-column",
        ["RejectedColumnName"] = "--rejected-column",
        ["CompletionColumnName"] = "--completion-column",
        ["MessagesColumnName"] = "--messages-column",
        ["ChatTemplateName"] = "--chat-template",
        // training
        ["BaseModelPath"] = "--model",
        ["Epochs"] = "--epochs",
        ["BatchSize"] = "--batch-size",
        ["PerRankBatchSize"] = "--per-rank-batch-size",
        ["PaddingFree"] = "--padding-free",
        ["MaxTokensPerBatch"] = "--max-tokens-per-batch",
        ["BestModelMetric"] = "--save-best",
        ["GreaterIsBetter"] = "--save-best-mode",
        ["EarlyStoppingPatience"] = "--early-stopping-patience",
        ["EarlyStoppingThreshold"] = "--early-stopping-threshold",
        ["LearningRate"] = "--learning-rate",
        ["WarmupSteps"] = "--warmup-steps",
        ["WarmupRatio"] = "--warmup-ratio",
        ["MaxSteps"] = "--max-steps",
        ["PeakFlops"] = "--peak-flops",
        ["GradientCheckpointing"] = "--gradient-checkpointing",
        ["ReleaseFreedMemory"] = "--release-freed-memory",
        ["MaxLength"] = "--max-length",
        ["MaxPromptLength"] = "--max-prompt-length",
        ["Truncation"] = "--truncation-mode",
        ["LoggingInterval"] = "--logging-steps",
        ["CheckpointDirectory"] = "--checkpoint-dir",
        ["CheckpointInterval"] = "--checkpoint-steps",
        ["RouterAuxLossCoefficient"] = "--router-aux-loss-coef",
        ["RouterZLossCoefficient"] = "--router-z-loss-coef",
        ["MixedPrecision"] = "--mixed-precision",
        ["ChunkedLogProbs"] = "--chunked-log-probs",
        ["LogProbChunkSize"] = "--log-prob-chunk-size",
        // DPO
        ["Beta"] = "--beta",
        ["LossKind"] = "--loss",
        ["LossKinds"] = "--loss",
        ["LossWeights"] = "--loss-weights",
        ["RpoAlpha"] = "--rpo-alpha",
        ["LabelSmoothing"] = "--label-smoothing",
        ["SimPOGamma"] = "--simpo-gamma",
        ["DiscoPopTau"] = "--discopop-tau",
        ["CpoAlpha"] = "--cpo-alpha",
        ["FDivergence"] = "--f-divergence",
        ["AlphaDivergenceCoefficient"] = "--alpha-divergence-coef",
        ["LdAlpha"] = "--ld-alpha",
        ["UseWeighting"] = "--use-weighting",
        ["SyncReferenceSteps"] = "--sync-ref-steps",
        ["SyncReferenceAlpha"] = "--sync-ref-alpha",
        ["PrecomputeReferenceLogProbs"] = "--precompute-reference",
        ["ReferenceModelPath"] = "--reference",
        ["EvaluationPrompts"] = "--eval-data",
        ["EvaluationSteps"] = "--eval-steps",
        // generation
        ["MaxNewTokens"] = "--max-new-tokens",
        ["Temperature"] = "--temperature",
        ["TopK"] = "--top-k",
        ["TopP"] = "--top-p",
        ["RepetitionPenalty"] = "--repetition-penalty",
    };

    // Phrases first (their words would otherwise be translated one by one), then qualified names, then bare names.
    static readonly (Regex Pattern, string Replacement)[] Phrases =
    [
        (new(@"\s*\(Parameter '[^']*'\)"), ""),
        (new(@";\s*C#:[^()]*\)"), ")"),
        (new(@"\s*\(C#:[^()]*\)"), ""),
        (new(@"\s*\(mldpo:[^()]*\)"), ""),
        (new(@"\bset (SkipMalformedRows|SkipInvalidRows)\b"), "pass --skip-invalid"),
        (new(@"\bset Format in the options\b"), "pass --data-format json or --data-format parquet"),
        (new(@"\b(?:set )?ExistingCheckpoint = Resume\b"), "--resume"),
        (new(@"\b(?:set )?ExistingCheckpoint = Restart\b"), "--restart"),
        (new(@"\(Resume = false\)"), "(without --resume)"),
        (new(@"\bset PrecomputeReferenceLogProbs = false\b"), "leave out --precompute-reference"),
        (new(@"\b(?:OutputOverwrite\.Always)\b"), "--force"),
        (new(@"\bReference = Separate\b"), "--reference"),
    ];

    static readonly Regex LossKindName = new(@"\bPreferenceLossKind\.(\w+)\b");
    static readonly Regex Qualified = new(@"\b(?:PreferenceLossOptions|DpoTrainer\.Options|SftTrainer\.Options|Options|GenerationOptions|DataFileOptions)\.(\w+)\b");
    // Not inside a path ("/data/Beta/x.jsonl") or a longer name.
    static readonly Regex Bare = new(@"(?<![/\\.\w-])(" + string.Join("|", Flags.Keys.OrderByDescending(k => k.Length)) + @")\b(?![/\\]|\.\w)");
    static readonly Regex Quoted = new(@"'[^']*'");
    static readonly Regex Repeated = new(@"(--[a-z][a-z-]*) \((?:\1|\1, \1)\)|\((--[a-z][a-z-]*), \2\)");

    /// <summary>The message in the command line's words.</summary>
    public static string ForCli(string message)
    {
        string text = message.ReplaceLineEndings(" ");
        foreach (var (pattern, replacement) in Phrases) text = pattern.Replace(text, replacement);
        // Names inside quotes are the user's (paths, fields, values): only the text between quoted parts is translated.
        var parts = new System.Text.StringBuilder();
        int at = 0;
        foreach (Match quoted in Quoted.Matches(text))
        {
            parts.Append(Names(text[at..quoted.Index])).Append(quoted.Value);
            at = quoted.Index + quoted.Length;
        }
        text = parts.Append(Names(text[at..])).ToString();
        // "MaxLength, --max-length" and "--x (--x)" read twice once translated.
        text = Repeated.Replace(text, m => m.Groups[1].Success ? m.Groups[1].Value : $"({m.Groups[2].Value})");
        return text.Trim();
    }

    static string Names(string text)
    {
        text = LossKindName.Replace(text, m => Enum.TryParse<PreferenceLossKind>(m.Groups[1].Value, out var kind) ? PreferenceLossNames.Name(kind) : m.Value);
        text = Qualified.Replace(text, m => Flags.TryGetValue(m.Groups[1].Value, out string? flag) ? flag : m.Value);
        return Bare.Replace(text, m => Flags[m.Value]);
    }
}
