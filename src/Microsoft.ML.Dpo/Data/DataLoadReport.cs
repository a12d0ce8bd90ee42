namespace Microsoft.ML.Dpo.Data;

/// <summary>Records of one kind that were skipped while loading a data file.</summary>
/// <param name="Reason">Why they were skipped, naming the field (e.g. "field 'chosen': missing").</param>
/// <param name="Count">How many records were skipped for this reason.</param>
/// <param name="FirstRows">The first few of their line numbers (JSON Lines) or row numbers (Parquet, JSON arrays), 1-based.</param>
public sealed record SkippedRecords(string Reason, long Count, IReadOnlyList<long> FirstRows);

/// <summary>What loading a data file read, produced and skipped.</summary>
public sealed class DataLoadReport
{
    readonly Dictionary<string, (long Count, List<long> Rows)> skipped = new(StringComparer.Ordinal);
    readonly List<string> order = new();

    /// <summary>The file that was loaded.</summary>
    public string Path { get; internal set; } = "";
    /// <summary>The format it was read as.</summary>
    public DataFileFormat Format { get; internal set; }
    /// <summary>The preference layout it was read with (null for SFT files).</summary>
    public PreferenceLayout? PreferenceLayout { get; internal set; }
    /// <summary>The SFT layout it was read with (null for preference files).</summary>
    public CompletionLayout? CompletionLayout { get; internal set; }
    /// <summary>Records read (blank lines are not records).</summary>
    public long RowsRead { get; internal set; }
    /// <summary>Malformed records skipped (only with <see cref="DataFileOptions.SkipMalformedRows"/>).</summary>
    public long RowsSkipped { get; internal set; }
    /// <summary>Examples produced: preference pairs, or SFT examples.</summary>
    public long ExamplesProduced { get; internal set; }
    /// <summary>The skipped records grouped by reason, in the order the reasons were first met.</summary>
    public IReadOnlyList<SkippedRecords> Skipped => order.Select(r => new SkippedRecords(r, skipped[r].Count, skipped[r].Rows.ToArray())).ToArray();
    /// <summary>What binarization dropped, for <see cref="Data.PreferenceLayout.ScoredCompletions"/> files; null otherwise.</summary>
    public BinarizationReport? Binarization { get; internal set; }

    internal void Skip(string reason, long row, int keep)
    {
        RowsSkipped++;
        if (!skipped.TryGetValue(reason, out var entry))
        {
            entry = (0, new List<long>());
            order.Add(reason);
        }
        if (entry.Rows.Count < keep) entry.Rows.Add(row);
        skipped[reason] = (entry.Count + 1, entry.Rows);
    }

    /// <inheritdoc />
    public override string ToString()
    {
        var text = new System.Text.StringBuilder();
        text.Append($"{Path}: {RowsRead} records read, {ExamplesProduced} examples, {RowsSkipped} skipped");
        foreach (var s in Skipped)
            text.Append($"; {s.Count} × {s.Reason} (first at {string.Join(", ", s.FirstRows)})");
        if (Binarization is not null) text.Append("; binarization: ").Append(Binarization);
        return text.ToString();
    }
}
