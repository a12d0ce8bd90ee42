using System.CommandLine;
using Microsoft.ML.Dpo.Data;

namespace MlDpo.Commands;

/// <summary>
/// The data-file flags the verbs that read pairs or completions share: the format override and the column mapping
/// (<see cref="DataFileOptions.Format"/>, <see cref="DataFileOptions.PromptColumnName"/>, ...).
/// </summary>
internal sealed class DataFlags
{
    public readonly Option<string> Format = Cli.Choice("--data-format", "The data file's format: auto (from the extension: .jsonl, .ndjson, .json, " +
        ".parquet, .pq), json (JSON Lines or one JSON array) or parquet.", "auto", "auto", "json", "parquet");
    public readonly Option<string> Prompt = Cli.Option("--prompt-column", "The data's field (JSON) or column (Parquet) that holds the prompt, e.g. question.", StandardColumns.Prompt);
    public readonly Option<string> Chosen = Cli.Option("--chosen-column", "The field that holds the preferred answer, e.g. response_j.", StandardColumns.Chosen);
    public readonly Option<string> Rejected = Cli.Option("--rejected-column", "The field that holds the dispreferred answer, e.g. response_k.", StandardColumns.Rejected);
    public readonly Option<string> Completion = Cli.Option("--completion-column", "The field that holds the completion, e.g. response.", StandardColumns.Completion);
    public readonly Option<string> Messages = Cli.Option("--messages-column", "The field that holds the conversation (a list of {role, content}), e.g. conversations.", "messages");

    /// <summary>Adds the flags of preference data (format, prompt, chosen, rejected).</summary>
    public void AddPreference(Command command)
    {
        foreach (Option option in new Option[] { Format, Prompt, Chosen, Rejected }) command.Options.Add(option);
    }

    /// <summary>Adds the flags of SFT data (format, prompt, completion, messages).</summary>
    public void AddCompletion(Command command)
    {
        foreach (Option option in new Option[] { Format, Prompt, Completion, Messages }) command.Options.Add(option);
    }

    /// <summary>Sets the format and the column names of <paramref name="options"/>.</summary>
    public PreferenceDataLoadOptions Apply(ParseResult result, PreferenceDataLoadOptions options)
    {
        options.Format = FormatOf(result);
        options.PromptColumnName = result.GetValue(Prompt)!;
        options.ChosenColumnName = result.GetValue(Chosen)!;
        options.RejectedColumnName = result.GetValue(Rejected)!;
        return options;
    }

    /// <summary>Sets the format and the column names of <paramref name="options"/>.</summary>
    public CompletionDataLoadOptions Apply(ParseResult result, CompletionDataLoadOptions options)
    {
        options.Format = FormatOf(result);
        options.PromptColumnName = result.GetValue(Prompt)!;
        options.CompletionColumnName = result.GetValue(Completion)!;
        options.MessagesColumnName = result.GetValue(Messages)!;
        return options;
    }

    /// <summary>The --data-format value.</summary>
    public DataFileFormat FormatOf(ParseResult result) => result.GetValue(Format) switch
    {
        "json" => DataFileFormat.Json,
        "parquet" => DataFileFormat.Parquet,
        _ => DataFileFormat.Auto,
    };
}
