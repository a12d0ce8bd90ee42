using System.Text.Json;

namespace Microsoft.ML.Dpo.Data;

/// <summary>
/// Reads preference and supervised fine-tuning (SFT) data files — JSON Lines (read line by line), JSON arrays and Parquet — in the
/// layouts of <see cref="PreferenceLayout"/> and <see cref="CompletionLayout"/>, into examples with standard prompt/chosen/rejected or
/// prompt/completion texts. A malformed record fails with the file, its line (Parquet: row) number and the field, unless
/// <see cref="DataFileOptions.SkipMalformedRows"/> is set; then it is skipped and counted in the <see cref="DataLoadReport"/>.
/// For ML.NET data views use <see cref="PreferenceDataCatalog"/>.
/// </summary>
public static class PreferenceDataFile
{
    /// <summary>
    /// Reads the preference pairs of <paramref name="path"/>. A <see cref="PreferenceLayout.ScoredCompletions"/> file is binarized with
    /// <see cref="PreferenceDataLoadOptions.Binarization"/> (see <see cref="PreferenceBinarizer"/>).
    /// </summary>
    /// <param name="path">The data file.</param>
    /// <param name="options">Format, layout, rendering and error handling; the defaults when null.</param>
    /// <param name="report">Filled with what was read, produced and skipped, when given.</param>
    /// <returns>The pairs; <see cref="PreferencePair.Row"/> is the record's 1-based line (or row) number.</returns>
    /// <exception cref="InvalidDataException">A record is malformed (and skipping is off); the message names the file, line and field.</exception>
    public static List<PreferencePair> ReadPreferencePairs(string path, PreferenceDataLoadOptions? options = null, DataLoadReport? report = null)
    {
        options ??= new PreferenceDataLoadOptions();
        report ??= new DataLoadReport();
        var pairs = new List<PreferencePair>();
        List<ScoredPrompt>? scored = null;
        Read(path, options, report, options.Layout, RecordLayouts.DetectPreference, layout => report.PreferenceLayout = layout, (record, row, layout) =>
        {
            if (layout == PreferenceLayout.ScoredCompletions) (scored ??= new()).Add(RecordLayouts.ReadScored(record, row));
            else pairs.Add(NonEmpty(RecordLayouts.ReadPair(record, row, layout, options)));
        });
        if (scored is not null)
        {
            report.Binarization = new BinarizationReport();
            pairs = PreferenceBinarizer.Binarize(scored, options.Binarization, report.Binarization);
        }
        report.ExamplesProduced = pairs.Count;
        return pairs;
    }

    /// <summary>Reads a <see cref="PreferenceLayout.ScoredCompletions"/> file (UltraFeedback) without binarizing it.</summary>
    /// <param name="path">The data file.</param>
    /// <param name="options">Format and error handling; the layout must be <see cref="PreferenceLayout.Auto"/> or <see cref="PreferenceLayout.ScoredCompletions"/>.</param>
    /// <param name="report">Filled with what was read and skipped, when given.</param>
    /// <returns>The prompts with their scored completions; <see cref="ScoredPrompt.Row"/> is the record's line (or row) number.</returns>
    /// <exception cref="InvalidDataException">The file is not in the scored layout, or a record is malformed (and skipping is off).</exception>
    public static List<ScoredPrompt> ReadScoredPrompts(string path, PreferenceDataLoadOptions? options = null, DataLoadReport? report = null)
    {
        options ??= new PreferenceDataLoadOptions();
        report ??= new DataLoadReport();
        if (options.Layout is not (PreferenceLayout.Auto or PreferenceLayout.ScoredCompletions))
            throw new ArgumentException($"Scored prompts are read from the {PreferenceLayout.ScoredCompletions} layout, not {options.Layout}.", nameof(options));
        var prompts = new List<ScoredPrompt>();
        Read(path, options, report, options.Layout, DetectScored, layout => report.PreferenceLayout = layout,
            (record, row, _) => prompts.Add(RecordLayouts.ReadScored(record, row)));
        report.ExamplesProduced = prompts.Count;
        return prompts;

        static PreferenceLayout DetectScored(JsonElement record)
        {
            var layout = RecordLayouts.DetectPreference(record);
            if (layout != PreferenceLayout.ScoredCompletions)
                throw new RecordException("completions", $"missing: the record is in the {layout} layout, not {PreferenceLayout.ScoredCompletions}");
            return layout;
        }
    }

    /// <summary>Reads the SFT examples (prompt, completion) of <paramref name="path"/>.</summary>
    /// <param name="path">The data file.</param>
    /// <param name="options">Format, layout, rendering and error handling; the defaults when null.</param>
    /// <param name="report">Filled with what was read, produced and skipped, when given.</param>
    /// <returns>The examples; <see cref="CompletionExample.Row"/> is the record's 1-based line (or row) number.</returns>
    /// <exception cref="InvalidDataException">A record is malformed (and skipping is off); the message names the file, line and field.</exception>
    public static List<CompletionExample> ReadCompletions(string path, CompletionDataLoadOptions? options = null, DataLoadReport? report = null)
    {
        options ??= new CompletionDataLoadOptions();
        report ??= new DataLoadReport();
        var examples = new List<CompletionExample>();
        Read(path, options, report, options.Layout, RecordLayouts.DetectCompletion, layout => report.CompletionLayout = layout,
            (record, row, layout) => examples.Add(NonEmpty(RecordLayouts.ReadCompletion(record, row, layout, options))));
        report.ExamplesProduced = examples.Count;
        return examples;
    }

    /// <summary>
    /// Reads the unpaired preferences (KTO) of <paramref name="path"/>: records with <c>prompt</c>, <c>completion</c> (strings, or
    /// message lists rendered as an SFT record is) and a boolean <c>label</c>; a file of preference pairs instead (any layout of
    /// <see cref="ReadPreferencePairs"/>) is converted with <see cref="Unpair"/>. Which one is decided by the first record.
    /// </summary>
    /// <param name="path">The data file.</param>
    /// <param name="options">Format, rendering and error handling (and, for a file of pairs, its layout); the defaults when null.</param>
    /// <param name="report">Filled with what was read, produced and skipped, when given.</param>
    /// <returns>The examples; <see cref="UnpairedPreference.Row"/> is the record's 1-based line (or row) number.</returns>
    /// <exception cref="InvalidDataException">A record is malformed (and skipping is off); the message names the file, line and field.</exception>
    public static List<UnpairedPreference> ReadUnpairedPreferences(string path, PreferenceDataLoadOptions? options = null, DataLoadReport? report = null)
    {
        options ??= new PreferenceDataLoadOptions();
        report ??= new DataLoadReport();
        if (!FirstRecordIsUnpaired(path, options))
        {
            var unpaired = Unpair(ReadPreferencePairs(path, options, report));
            report.ExamplesProduced = unpaired.Count;
            return unpaired;
        }
        var examples = new List<UnpairedPreference>();
        Read(path, options, report, CompletionLayout.Auto, record => RecordLayouts.IsUnpaired(record) ? CompletionLayout.PromptCompletion : throw new RecordException("label", "missing"),
            layout => report.CompletionLayout = layout, (record, row, _) =>
            {
                var e = RecordLayouts.ReadUnpaired(record, row, options);
                RequireText(e.Prompt, StandardColumns.Prompt);
                RequireText(e.Completion, StandardColumns.Completion);
                examples.Add(e);
            });
        report.ExamplesProduced = examples.Count;
        return examples;
    }

    /// <summary>
    /// Unpairs preference pairs as TRL's <c>unpair_preference_dataset</c> does: each pair gives its chosen completion as a
    /// desirable example and its rejected one as an undesirable example, with the same prompt and row.
    /// </summary>
    /// <param name="pairs">The pairs.</param>
    /// <returns>Two examples per pair, in order.</returns>
    public static List<UnpairedPreference> Unpair(IEnumerable<PreferencePair> pairs)
    {
        ArgumentNullException.ThrowIfNull(pairs);
        return pairs.SelectMany(p => new[] { new UnpairedPreference(p.Prompt, p.Chosen, true, p.Row), new UnpairedPreference(p.Prompt, p.Rejected, false, p.Row) }).ToList();
    }

    static bool FirstRecordIsUnpaired(string path, DataFileOptions options)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        foreach (var record in DataRecords.Read(path, DataRecords.ResolveFormat(path, options.Format), out _))
            if (record.Error is null) return RecordLayouts.IsUnpaired(record.Value);
        return false;
    }

    /// <summary>
    /// Reads the prompts of <paramref name="path"/> for online RL (GRPO, RLOO): the <c>prompt</c> field of every record — a string,
    /// or a message list rendered with the generation prompt — so prompt-only files, preference files and SFT files all serve.
    /// </summary>
    /// <param name="path">The data file.</param>
    /// <param name="options">Format, rendering and error handling (the layout is ignored); the defaults when null.</param>
    /// <param name="report">Filled with what was read, produced and skipped, when given.</param>
    /// <returns>The prompts with their record's 1-based line (or row) number.</returns>
    /// <exception cref="InvalidDataException">A record has no usable prompt (and skipping is off); the message names the file, line and field.</exception>
    public static List<(string Prompt, long Row)> ReadPrompts(string path, CompletionDataLoadOptions? options = null, DataLoadReport? report = null)
    {
        options ??= new CompletionDataLoadOptions();
        report ??= new DataLoadReport();
        var prompts = new List<(string, long)>();
        Read(path, options, report, CompletionLayout.PromptCompletion, _ => CompletionLayout.PromptCompletion, _ => { }, (record, row, _) =>
        {
            string prompt = RecordLayouts.ReadPrompt(record, options);
            RequireText(prompt, "prompt");
            prompts.Add((prompt, row));
        });
        report.ExamplesProduced = prompts.Count;
        return prompts;
    }

    /// <summary>
    /// Writes <paramref name="pairs"/> as JSON Lines in the <see cref="PreferenceLayout.Standard"/> layout — one
    /// <c>{"prompt": …, "chosen": …, "rejected": …}</c> object per line, UTF-8 — which <see cref="ReadPreferencePairs"/> reads back.
    /// The file is written to a temporary name first and then renamed, so a failed write leaves no partial file.
    /// </summary>
    /// <param name="path">The output file (its folder is created if needed; an existing file is replaced).</param>
    /// <param name="pairs">The pairs.</param>
    /// <returns>How many pairs were written.</returns>
    public static long WritePreferencePairs(string path, IEnumerable<PreferencePair> pairs)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentNullException.ThrowIfNull(pairs);
        string full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        string temp = full + ".tmp-" + Guid.NewGuid().ToString("N")[..8];
        long count = 0;
        try
        {
            using (var stream = File.Create(temp))
            {
                var options = new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
                foreach (var pair in pairs)
                {
                    using (var writer = new Utf8JsonWriter(stream, options))
                    {
                        writer.WriteStartObject();
                        writer.WriteString(StandardColumns.Prompt, pair.Prompt);
                        writer.WriteString(StandardColumns.Chosen, pair.Chosen);
                        writer.WriteString(StandardColumns.Rejected, pair.Rejected);
                        writer.WriteEndObject();
                    }
                    stream.WriteByte((byte)'\n');
                    count++;
                }
            }
            File.Move(temp, full, overwrite: true);
        }
        finally
        {
            if (File.Exists(temp)) File.Delete(temp);
        }
        return count;
    }

    // The trainers refuse empty texts; refusing them here names the file and line (the trainers only know the data view's row).
    static PreferencePair NonEmpty(PreferencePair p)
    {
        RequireText(p.Prompt, StandardColumns.Prompt);
        RequireText(p.Chosen, StandardColumns.Chosen);
        RequireText(p.Rejected, StandardColumns.Rejected);
        return p;
    }

    static CompletionExample NonEmpty(CompletionExample e)
    {
        RequireText(e.Prompt, StandardColumns.Prompt);
        RequireText(e.Completion, StandardColumns.Completion);
        return e;
    }

    static void RequireText(string value, string field)
    {
        if (string.IsNullOrEmpty(value)) throw new RecordException(field, "empty");
    }

    /// <summary>
    /// The record with its fields renamed to the standard names (<see cref="DataFileOptions.PromptColumnName"/>, ...); a field that
    /// already has a standard name which another field is mapped to is dropped, so the mapped field is the one read.
    /// </summary>
    static JsonElement Rename(JsonElement record, Dictionary<string, string> renames)
    {
        if (record.ValueKind != JsonValueKind.Object) return record;
        var buffer = new System.Buffers.ArrayBufferWriter<byte>();
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            var targets = new HashSet<string>(renames.Values, StringComparer.Ordinal);
            foreach (var property in record.EnumerateObject())
            {
                if (renames.TryGetValue(property.Name, out string? standard)) writer.WritePropertyName(standard);
                else if (targets.Contains(property.Name)) continue;
                else writer.WritePropertyName(property.Name);
                property.Value.WriteTo(writer);
            }
            writer.WriteEndObject();
        }
        using var document = JsonDocument.Parse(buffer.WrittenMemory);
        return document.RootElement.Clone();
    }

    /// <summary>The error's key with its field under the name the file uses ("question" rather than "prompt").</summary>
    static string InFileNames(RecordException e, Dictionary<string, string> fileNames)
    {
        if (e.Field is not { } field) return e.Key;
        int end = field.IndexOfAny(['[', '.']);
        string head = end < 0 ? field : field[..end];
        return fileNames.TryGetValue(head, out string? given) ? new RecordException(given + field[head.Length..], e.Reason, e.Detail).Key : e.Key;
    }

    /// <summary>
    /// Reads every record: detects the layout from the first record that parses (unless given), then reads each record with it.
    /// A <see cref="RecordException"/> becomes an <see cref="InvalidDataException"/> naming the file, line and field, or a skip.
    /// </summary>
    static void Read<TLayout>(string path, DataFileOptions options, DataLoadReport report, TLayout requested,
        Func<JsonElement, TLayout> detect, Action<TLayout> detected, Action<JsonElement, long, TLayout> read) where TLayout : struct, Enum
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var format = DataRecords.ResolveFormat(path, options.Format);
        report.Path = path;
        report.Format = format;
        var renames = options.ColumnRenames();
        var fileNames = renames.ToDictionary(r => r.Value, r => r.Key, StringComparer.Ordinal);
        TLayout? layout = EqualityComparer<TLayout>.Default.Equals(requested, default) ? null : requested;
        if (layout is { } given) detected(given);
        long? detectedAt = null;
        var progress = new PreparationProgress(options.Log, $"Reading {path}", unit: "records");
        foreach (var record in DataRecords.Read(path, format, out string unit))
        {
            options.CancellationToken.ThrowIfCancellationRequested();   // between records: Ctrl+C stops reading a long file
            progress.Advance();
            report.RowsRead++;
            try
            {
                if (record.Error is not null) throw record.Error;
                var value = renames.Count == 0 ? record.Value : Rename(record.Value, renames);
                if (layout is null)
                {
                    layout = detect(value);
                    detectedAt = record.Number;
                    detected(layout.Value);
                }
                read(value, record.Number, layout.Value);
            }
            catch (RecordException e)
            {
                string key = fileNames.Count == 0 ? e.Key : InFileNames(e, fileNames);
                if (options.SkipMalformedRows)
                {
                    report.Skip(key, record.Number, options.ReportedRowsPerReason);
                    continue;
                }
                string where = layout is null ? "" : detectedAt is { } at ? $" (layout {layout}, detected from {unit} {at})" : $" (layout {layout})";
                string detail = e.Detail is null ? "" : $" ({e.Detail})";
                throw new InvalidDataException(
                    $"{path}, {unit} {record.Number}: {key}{detail}{where}. Fix the record, or set SkipMalformedRows to skip such records.", e);
            }
        }
    }
}
