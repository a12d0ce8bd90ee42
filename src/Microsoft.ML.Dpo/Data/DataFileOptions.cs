namespace Microsoft.ML.Dpo.Data;

/// <summary>The file format of a data file.</summary>
public enum DataFileFormat
{
    /// <summary>Chosen from the file name: <c>.parquet</c> is Parquet; <c>.jsonl</c>, <c>.ndjson</c> and <c>.json</c> are JSON.</summary>
    Auto,
    /// <summary>
    /// JSON: one object per line (JSON Lines), read line by line. A file whose first non-blank character is <c>[</c> is read as a
    /// single JSON array of objects instead.
    /// </summary>
    Json,
    /// <summary>Apache Parquet (as published by Hugging Face datasets), read one row group at a time; nested lists and structs are supported.</summary>
    Parquet,
}

/// <summary>How the records of a preference data file are laid out.</summary>
public enum PreferenceLayout
{
    /// <summary>Detected from the first record of the file; every other record must have the same layout.</summary>
    Auto,
    /// <summary><c>prompt</c>, <c>chosen</c> and <c>rejected</c> strings.</summary>
    Standard,
    /// <summary>
    /// <c>chosen</c> and <c>rejected</c> (and optionally <c>prompt</c>) as lists of <c>{role, content}</c> messages. The prompt is the
    /// conversation before the final assistant message, rendered by <see cref="DataFileOptions.RenderConversation"/> with a generation
    /// prompt; the completion is the final assistant message's content. Without <c>prompt</c>, chosen and rejected must share
    /// everything before their final assistant message. Lists that already start with the prompt messages are not prefixed again.
    /// A <c>prompt</c> string beside whole conversations (as in HuggingFaceH4/ultrafeedback_binarized) is ignored; beside lists of
    /// assistant messages only, it is taken as one user message.
    /// </summary>
    Conversational,
    /// <summary>
    /// <c>chosen</c> and <c>rejected</c> as whole transcripts with no <c>prompt</c> (Anthropic HH: "\n\nHuman: … \n\nAssistant: …"):
    /// the prompt is their longest common prefix, cut after the last <see cref="PreferenceDataLoadOptions.ImplicitPromptMarker"/>;
    /// the completions are what follows it.
    /// </summary>
    ImplicitPrompt,
    /// <summary>
    /// Several scored completions per prompt (UltraFeedback): <c>prompt</c> (or <c>instruction</c>) and <c>completions</c>, a list of
    /// <c>{response (or text, content), overall_score, annotations (or ratings)}</c>. Read as <see cref="ScoredPrompt"/>s and turned into
    /// pairs by <see cref="PreferenceBinarizer"/> with <see cref="PreferenceDataLoadOptions.Binarization"/>.
    /// </summary>
    ScoredCompletions,
}

/// <summary>How the records of a supervised fine-tuning (SFT) data file are laid out.</summary>
public enum CompletionLayout
{
    /// <summary>Detected from the first record of the file; every other record must have the same layout.</summary>
    Auto,
    /// <summary>
    /// <c>prompt</c> and <c>completion</c> strings; or both as lists of <c>{role, content}</c> messages (the conversation is the prompt
    /// messages followed by the completion messages, split as in <see cref="Messages"/>).
    /// </summary>
    PromptCompletion,
    /// <summary>
    /// <c>messages</c>, a list of <c>{role, content}</c>: the prompt is every message before the last (which must be an assistant message),
    /// rendered by <see cref="DataFileOptions.RenderConversation"/> with a generation prompt; the completion is the last message's content.
    /// </summary>
    Messages,
}

/// <summary>Options shared by the preference and SFT data file loaders.</summary>
public abstract class DataFileOptions
{
    /// <summary>The file format; <see cref="DataFileFormat.Auto"/> (the default) chooses it from the file extension.</summary>
    public DataFileFormat Format { get; set; } = DataFileFormat.Auto;

    /// <summary>
    /// When false (the default) a malformed record (invalid JSON, a missing field, a value of the wrong type) fails the load with the
    /// file, the line (Parquet: the row) and the field. When true such records are skipped and counted in <see cref="DataLoadReport"/>.
    /// </summary>
    public bool SkipMalformedRows { get; set; }

    /// <summary>
    /// Renders a conversation (role, content) to the prompt text; the flag asks for the generation prompt that opens the assistant's turn.
    /// Typically a tokenizer's chat template. When null, <see cref="ConversationRendering.PlainText"/> is used.
    /// </summary>
    public Func<IReadOnlyList<(string Role, string Content)>, bool, string>? RenderConversation { get; set; }

    /// <summary>
    /// The chat template that renders conversational records — normally the model's own (<c>tokenizer.ChatTemplate</c>).
    /// When set, a conversation is split as TRL's <c>maybe_apply_chat_template</c> splits it: the prompt is the rendering of the
    /// messages before the final assistant message with the generation prompt, and the completion is the rest of the full
    /// rendering (the reply and the template's end-of-turn text, e.g. <c>&lt;|eot_id|&gt;</c>); messages keep their other
    /// fields (tool calls...). Takes precedence over <see cref="RenderConversation"/>. Default null.
    /// </summary>
    public Tokenization.ChatTemplate? ChatTemplate { get; set; }

    /// <summary>Checked between records: cancelling it stops reading a long file with <see cref="OperationCanceledException"/>.</summary>
    public CancellationToken CancellationToken { get; set; }

    /// <summary>Receives a progress line ("Reading FILE: N records") every few seconds while a long file is read; null for none.</summary>
    public Action<string>? Log { get; set; }

    /// <summary>How many line (or row) numbers the report keeps for each kind of skipped record. Default 5.</summary>
    public int ReportedRowsPerReason { get; set; } = 5;

    /// <summary>
    /// The field (JSON) or column (Parquet) that holds the prompt, for data whose fields have other names (e.g. "question").
    /// Default "prompt". A record's field of the default name is then ignored; errors name the file's own field.
    /// </summary>
    public string PromptColumnName { get; set; } = StandardColumns.Prompt;

    /// <summary>The fields the loaders rename: (name in the file, standard name), only those that differ.</summary>
    internal abstract IEnumerable<(string Given, string Standard)> ColumnNames { get; }

    internal Dictionary<string, string> ColumnRenames()
    {
        var renames = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (given, standard) in ColumnNames)
        {
            if (string.IsNullOrWhiteSpace(given))
                throw new ArgumentException($"The column name for '{standard}' is empty; give the name of the field that holds it.");
            if (given == standard) continue;
            if (renames.TryGetValue(given, out string? other))
                throw new ArgumentException($"The field '{given}' is named as the column of both '{other}' and '{standard}'; give each its own field.");
            renames[given] = standard;
        }
        return renames;
    }

    internal Func<IReadOnlyList<(string Role, string Content)>, bool, string> Renderer => RenderConversation ?? ConversationRendering.PlainText;
}

/// <summary>Options for loading preference data files (see <see cref="PreferenceDataFile"/>).</summary>
public sealed class PreferenceDataLoadOptions : DataFileOptions
{
    /// <summary>The record layout; <see cref="PreferenceLayout.Auto"/> (the default) detects it from the first record.</summary>
    public PreferenceLayout Layout { get; set; } = PreferenceLayout.Auto;

    /// <summary>The marker that ends the prompt of an <see cref="PreferenceLayout.ImplicitPrompt"/> transcript. Default "\n\nAssistant:" (Anthropic HH).</summary>
    public string ImplicitPromptMarker { get; set; } = "\n\nAssistant:";

    /// <summary>How scored completions (<see cref="PreferenceLayout.ScoredCompletions"/>) are turned into pairs.</summary>
    public BinarizationOptions Binarization { get; set; } = new();

    /// <summary>The field (JSON) or column (Parquet) that holds the preferred completion (e.g. "response_j"). Default "chosen".</summary>
    public string ChosenColumnName { get; set; } = StandardColumns.Chosen;

    /// <summary>The field (JSON) or column (Parquet) that holds the dispreferred completion (e.g. "response_k"). Default "rejected".</summary>
    public string RejectedColumnName { get; set; } = StandardColumns.Rejected;

    internal override IEnumerable<(string Given, string Standard)> ColumnNames =>
        [(PromptColumnName, StandardColumns.Prompt), (ChosenColumnName, StandardColumns.Chosen), (RejectedColumnName, StandardColumns.Rejected)];
}

/// <summary>Options for loading supervised fine-tuning data files (see <see cref="PreferenceDataFile"/>).</summary>
public sealed class CompletionDataLoadOptions : DataFileOptions
{
    /// <summary>The record layout; <see cref="CompletionLayout.Auto"/> (the default) detects it from the first record.</summary>
    public CompletionLayout Layout { get; set; } = CompletionLayout.Auto;

    /// <summary>The field (JSON) or column (Parquet) that holds the completion (e.g. "response"). Default "completion".</summary>
    public string CompletionColumnName { get; set; } = StandardColumns.Completion;

    /// <summary>The field (JSON) or column (Parquet) that holds the conversation of the <see cref="CompletionLayout.Messages"/> layout (e.g. "conversations"). Default "messages".</summary>
    public string MessagesColumnName { get; set; } = "messages";

    internal override IEnumerable<(string Given, string Standard)> ColumnNames =>
        [(PromptColumnName, StandardColumns.Prompt), (CompletionColumnName, StandardColumns.Completion), (MessagesColumnName, "messages")];
}

/// <summary>Renders conversations to text when no chat template is supplied.</summary>
public static class ConversationRendering
{
    /// <summary>
    /// A plain format: each message on its own line as "Role: content" with the role capitalized ("system" becomes "System: …",
    /// "user" "User: …", "assistant" "Assistant: …"), lines separated by "\n". With <paramref name="addGenerationPrompt"/> a last line
    /// "Assistant: " follows (with its trailing space and no newline), so prompt + completion reads "User: hi\nAssistant: hello".
    /// </summary>
    /// <param name="turns">The messages, in order.</param>
    /// <param name="addGenerationPrompt">Whether to open the assistant's turn at the end.</param>
    /// <returns>The rendered text.</returns>
    public static string PlainText(IReadOnlyList<(string Role, string Content)> turns, bool addGenerationPrompt)
    {
        var text = new System.Text.StringBuilder();
        foreach (var (role, content) in turns)
            text.Append(Label(role)).Append(": ").Append(content).Append('\n');
        if (addGenerationPrompt) text.Append("Assistant: ");
        else if (text.Length > 0) text.Length--;
        return text.ToString();
    }

    static string Label(string role) =>
        role.Length == 0 ? role : char.ToUpperInvariant(role[0]) + role[1..];
}
