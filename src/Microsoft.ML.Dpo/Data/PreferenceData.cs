using Microsoft.ML.Data;

namespace Microsoft.ML.Dpo.Data;

/// <summary>One preference example: a prompt, the preferred completion and the dispreferred one.</summary>
/// <param name="Prompt">The prompt (already rendered with a chat template when the data was conversational).</param>
/// <param name="Chosen">The preferred completion.</param>
/// <param name="Rejected">The dispreferred completion.</param>
/// <param name="Row">The record's 1-based line or row number in its source file, or its 1-based row in the data view, for error messages.</param>
public sealed record PreferencePair(string Prompt, string Chosen, string Rejected, long Row = -1);

/// <summary>One supervised example: a prompt and the completion to learn.</summary>
/// <param name="Prompt">The prompt.</param>
/// <param name="Completion">The target completion.</param>
/// <param name="Row">The record's 1-based line or row number in its source file, or its 1-based row in the data view, for error messages.</param>
public sealed record CompletionExample(string Prompt, string Completion, long Row = -1);

/// <summary>One unpaired preference example (KTO): a prompt, a completion and whether the completion is desirable.</summary>
/// <param name="Prompt">The prompt (already rendered with a chat template when the data was conversational).</param>
/// <param name="Completion">The completion.</param>
/// <param name="Label">True for a desirable completion, false for an undesirable one.</param>
/// <param name="Row">The record's 1-based line or row number in its source file, or its 1-based row in the data view, for error messages.</param>
public sealed record UnpairedPreference(string Prompt, string Completion, bool Label, long Row = -1);

/// <summary>What data preparation skipped or changed, reported after reading and tokenizing a data set.</summary>
public sealed class DataPreparationReport
{
    /// <summary>Rows read from the input.</summary>
    public long RowsRead { get; internal set; }
    /// <summary>Rows skipped because a required value was null or empty (only when skipping invalid rows is enabled).</summary>
    public long InvalidRowsSkipped { get; internal set; }
    /// <summary>Preference rows skipped because the chosen and rejected completions were identical.</summary>
    public long IdenticalPairsSkipped { get; internal set; }
    /// <summary>Examples whose prompt or completion was truncated to fit the length limits.</summary>
    public long Truncated { get; internal set; }
    /// <summary>Examples kept for training.</summary>
    public long Kept { get; internal set; }

    /// <inheritdoc />
    public override string ToString() =>
        $"{RowsRead} rows read, {Kept} kept; skipped: {InvalidRowsSkipped} invalid, {IdenticalPairsSkipped} identical chosen/rejected; {Truncated} truncated";
}

/// <summary>Reads examples from an <see cref="IDataView"/> with the checks every trainer applies.</summary>
public static class ExampleReader
{
    /// <summary>
    /// Reads (prompt, chosen, rejected) rows. A null or empty value fails with the row index and column, unless
    /// <paramref name="skipInvalidRows"/> is set (then the row is skipped and counted). Rows whose chosen and rejected
    /// completions are identical carry no preference and are skipped and counted.
    /// </summary>
    public static List<PreferencePair> ReadPreferencePairs(IDataView data, string promptColumn, string chosenColumn, string rejectedColumn,
        bool skipInvalidRows, DataPreparationReport report, CancellationToken cancellation = default)
    {
        var columns = TextColumns.Resolve(data.Schema, ("prompt", promptColumn), ("chosen", chosenColumn), ("rejected", rejectedColumn));
        var pairs = new List<PreferencePair>();
        foreach (var (row, v) in TextColumns.Read(data, columns, cancellation))
        {
            report.RowsRead++;
            if (!Valid(row, columns, v, skipInvalidRows)) { report.InvalidRowsSkipped++; continue; }
            if (v[1] == v[2]) { report.IdenticalPairsSkipped++; continue; }
            pairs.Add(new PreferencePair(v[0], v[1], v[2], row));
        }
        return pairs;
    }

    /// <summary>Reads (prompt, completion) rows with the same null/empty handling as <see cref="ReadPreferencePairs"/>.</summary>
    public static List<CompletionExample> ReadCompletions(IDataView data, string promptColumn, string completionColumn,
        bool skipInvalidRows, DataPreparationReport report, CancellationToken cancellation = default)
    {
        var columns = TextColumns.Resolve(data.Schema, ("prompt", promptColumn), ("completion", completionColumn));
        var examples = new List<CompletionExample>();
        foreach (var (row, v) in TextColumns.Read(data, columns, cancellation))
        {
            report.RowsRead++;
            if (!Valid(row, columns, v, skipInvalidRows)) { report.InvalidRowsSkipped++; continue; }
            examples.Add(new CompletionExample(v[0], v[1], row));
        }
        return examples;
    }

    /// <summary>
    /// Reads a column of conversations — each value a JSON array of <c>{"role", "content"}</c> messages ending with the
    /// assistant turn to learn — and splits each with <paramref name="split"/> (typically a chat template's
    /// <c>SplitForTraining</c>) into a prompt and a completion. A malformed value fails with its row and column unless
    /// <paramref name="skipInvalidRows"/> is set (then it is skipped and counted).
    /// </summary>
    public static List<CompletionExample> ReadConversations(IDataView data, string messagesColumn,
        Func<IReadOnlyList<(string Role, string Content)>, (string Prompt, string Completion)> split,
        bool skipInvalidRows, DataPreparationReport report, CancellationToken cancellation = default) =>
        ReadChatConversations(data, messagesColumn, turns => split(turns.Select(t => (t.Role, t.Content)).ToList()), skipInvalidRows, report, cancellation);

    /// <summary>
    /// Like <see cref="ReadConversations"/>, with each message's other fields (tool calls, names...) kept for a model's own
    /// chat template: <paramref name="split"/> gets the messages as <see cref="Tokenization.ChatTurn"/>s.
    /// </summary>
    public static List<CompletionExample> ReadChatConversations(IDataView data, string messagesColumn,
        Func<IReadOnlyList<Tokenization.ChatTurn>, (string Prompt, string Completion)> split,
        bool skipInvalidRows, DataPreparationReport report, CancellationToken cancellation = default)
    {
        var columns = TextColumns.Resolve(data.Schema, ("messages", messagesColumn));
        var examples = new List<CompletionExample>();
        foreach (var (row, v) in TextColumns.Read(data, columns, cancellation))
        {
            report.RowsRead++;
            if (!Valid(row, columns, v, skipInvalidRows)) { report.InvalidRowsSkipped++; continue; }
            try
            {
                var (prompt, completion) = split(RecordLayouts.TurnsFromJson(v[0], messagesColumn));
                examples.Add(new CompletionExample(prompt, completion, row));
            }
            catch (Exception e) when (e is System.Text.Json.JsonException or RecordException or ArgumentException)
            {
                if (!skipInvalidRows)
                    throw new InvalidDataException($"Row {row} of the input data (1-based): the conversation in column '{messagesColumn}' is malformed: {e.Message.ReplaceLineEndings(" ")} Fix the data, or set SkipInvalidRows to skip such rows.", e);
                report.InvalidRowsSkipped++;
            }
        }
        return examples;
    }

    /// <summary>
    /// Reads (prompt, completion, label) rows — text, text and Boolean columns — with the same null/empty handling as
    /// <see cref="ReadCompletions"/>.
    /// </summary>
    public static List<UnpairedPreference> ReadUnpairedPreferences(IDataView data, string promptColumn, string completionColumn, string labelColumn,
        bool skipInvalidRows, DataPreparationReport report, CancellationToken cancellation = default)
    {
        var columns = TextColumns.Resolve(data.Schema, ("prompt", promptColumn), ("completion", completionColumn));
        var label = data.Schema.GetColumnOrNull(labelColumn)
            ?? throw new ArgumentOutOfRangeException("label", $"The label column '{labelColumn}' was not found in the input data. Columns present: {string.Join(", ", data.Schema.Where(c => !c.IsHidden).Select(c => $"'{c.Name}' ({c.Type})"))}.");
        if (label.Type is not BooleanDataViewType)
            throw new ArgumentOutOfRangeException("label", $"The label column '{labelColumn}' has type {label.Type}; a Boolean column is required (true: desirable, false: undesirable).");
        var examples = new List<UnpairedPreference>();
        using var cursor = data.GetRowCursor([.. columns, label]);
        var text = columns.Select(c => cursor.GetGetter<ReadOnlyMemory<char>>(c)).ToArray();
        var flag = cursor.GetGetter<bool>(label);
        ReadOnlyMemory<char> value = default;
        bool desirable = false;
        long row = 0;
        while (cursor.MoveNext())
        {
            cancellation.ThrowIfCancellationRequested();
            row++;
            report.RowsRead++;
            var values = new string[2];
            for (int i = 0; i < 2; i++) { text[i](ref value); values[i] = value.ToString(); }
            flag(ref desirable);
            if (!Valid(row, columns, values, skipInvalidRows)) { report.InvalidRowsSkipped++; continue; }
            examples.Add(new UnpairedPreference(values[0], values[1], desirable, row));
        }
        return examples;
    }

    /// <summary>
    /// Reads the prompt column alone (online RL: the policy writes the completions), with the same null/empty handling as
    /// <see cref="ReadPreferencePairs"/>; other columns (a pairs file's chosen and rejected) are ignored.
    /// </summary>
    public static List<(string Prompt, long Row)> ReadPrompts(IDataView data, string promptColumn, bool skipInvalidRows, DataPreparationReport report,
        CancellationToken cancellation = default)
    {
        var columns = TextColumns.Resolve(data.Schema, ("prompt", promptColumn));
        var prompts = new List<(string, long)>();
        foreach (var (row, v) in TextColumns.Read(data, columns, cancellation))
        {
            report.RowsRead++;
            if (!Valid(row, columns, v, skipInvalidRows)) { report.InvalidRowsSkipped++; continue; }
            prompts.Add((v[0], row));
        }
        return prompts;
    }

    static bool Valid(long row, DataViewSchema.Column[] columns, string[] values, bool skip)
    {
        for (int i = 0; i < values.Length; i++)
        {
            if (!string.IsNullOrEmpty(values[i])) continue;
            if (skip) return false;
            throw new InvalidDataException($"Row {row} of the input data (1-based): the value of column '{columns[i].Name}' is empty. Fix the data, or set SkipInvalidRows to skip such rows.");
        }
        return true;
    }
}
