using Microsoft.ML.Data;

namespace Microsoft.ML.Dpo.Data;

/// <summary>The standard text column names of the data views this library loads, and its trainers read by default.</summary>
public static class StandardColumns
{
    /// <summary>The prompt: "prompt".</summary>
    public const string Prompt = "prompt";
    /// <summary>The preferred completion: "chosen".</summary>
    public const string Chosen = "chosen";
    /// <summary>The dispreferred completion: "rejected".</summary>
    public const string Rejected = "rejected";
    /// <summary>The SFT target completion: "completion".</summary>
    public const string Completion = "completion";
    /// <summary>Whether an unpaired (KTO) completion is desirable: "label" (Boolean).</summary>
    public const string Label = "label";
}

/// <summary>
/// Loads preference and SFT data files into ML.NET data views with the <see cref="StandardColumns"/>, as extensions of
/// <c>mlContext.Data</c>: <c>mlContext.Data.LoadPreferencePairs("ultrafeedback.parquet")</c>. The file is read (and checked) when
/// the method is called; the view holds the examples in memory.
/// </summary>
public static class PreferenceDataCatalog
{
    /// <summary>
    /// Loads a preference data file (JSON Lines, JSON array or Parquet; standard, conversational, implicit-prompt or scored layout,
    /// see <see cref="PreferenceLayout"/>) as a view with text columns <c>prompt</c>, <c>chosen</c> and <c>rejected</c>. Scored files
    /// (UltraFeedback) are binarized with <see cref="PreferenceDataLoadOptions.Binarization"/>.
    /// </summary>
    /// <param name="catalog">The data catalog (<c>mlContext.Data</c>).</param>
    /// <param name="path">The data file.</param>
    /// <param name="options">Format, layout, rendering, binarization and error handling; the defaults when null.</param>
    /// <param name="report">Filled with what was read, produced and skipped, when given.</param>
    /// <returns>The pairs as a data view.</returns>
    /// <exception cref="InvalidDataException">A record is malformed (and skipping is off); the message names the file, line and field.</exception>
    public static IDataView LoadPreferencePairs(this DataOperationsCatalog catalog, string path, PreferenceDataLoadOptions? options = null, DataLoadReport? report = null) =>
        catalog.LoadFromPreferencePairs(PreferenceDataFile.ReadPreferencePairs(path, options, report));

    /// <summary>
    /// Loads an SFT data file (JSON Lines, JSON array or Parquet; see <see cref="CompletionLayout"/>) as a view with text columns
    /// <c>prompt</c> and <c>completion</c>.
    /// </summary>
    /// <param name="catalog">The data catalog (<c>mlContext.Data</c>).</param>
    /// <param name="path">The data file.</param>
    /// <param name="options">Format, layout, rendering and error handling; the defaults when null.</param>
    /// <param name="report">Filled with what was read, produced and skipped, when given.</param>
    /// <returns>The examples as a data view.</returns>
    /// <exception cref="InvalidDataException">A record is malformed (and skipping is off); the message names the file, line and field.</exception>
    public static IDataView LoadCompletions(this DataOperationsCatalog catalog, string path, CompletionDataLoadOptions? options = null, DataLoadReport? report = null) =>
        catalog.LoadFromCompletions(PreferenceDataFile.ReadCompletions(path, options, report));

    /// <summary>
    /// Loads unpaired preferences for KTO (JSON Lines, JSON array or Parquet): records with <c>prompt</c>, <c>completion</c> and a
    /// boolean <c>label</c>, or preference pairs in any layout, unpaired (chosen: desirable, rejected: undesirable; see
    /// <see cref="PreferenceDataFile.ReadUnpairedPreferences"/>), as a view with text columns <c>prompt</c>, <c>completion</c> and
    /// the Boolean column <c>label</c>.
    /// </summary>
    /// <param name="catalog">The data catalog (<c>mlContext.Data</c>).</param>
    /// <param name="path">The data file.</param>
    /// <param name="options">Format, rendering and error handling; the defaults when null.</param>
    /// <param name="report">Filled with what was read, produced and skipped, when given.</param>
    /// <returns>The examples as a data view.</returns>
    /// <exception cref="InvalidDataException">A record is malformed (and skipping is off); the message names the file, line and field.</exception>
    public static IDataView LoadUnpairedPreferences(this DataOperationsCatalog catalog, string path, PreferenceDataLoadOptions? options = null, DataLoadReport? report = null) =>
        catalog.LoadFromUnpairedPreferences(PreferenceDataFile.ReadUnpairedPreferences(path, options, report));

    /// <summary>A view of <paramref name="examples"/> with text columns <c>prompt</c>, <c>completion</c> and the Boolean column <c>label</c>.</summary>
    /// <param name="catalog">The data catalog (<c>mlContext.Data</c>).</param>
    /// <param name="examples">The examples.</param>
    /// <returns>The data view.</returns>
    public static IDataView LoadFromUnpairedPreferences(this DataOperationsCatalog catalog, IEnumerable<UnpairedPreference> examples)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        ArgumentNullException.ThrowIfNull(examples);
        return catalog.LoadFromEnumerable(examples.Select(e => new UnpairedRow { Prompt = e.Prompt, Completion = e.Completion, Label = e.Label }).ToList());
    }

    /// <summary>
    /// Loads the prompts of any data file with a <c>prompt</c> field (prompt-only, preference or SFT files; see
    /// <see cref="PreferenceDataFile.ReadPrompts"/>) as a view with the text column <c>prompt</c>, for GRPO and RLOO.
    /// </summary>
    /// <param name="catalog">The data catalog (<c>mlContext.Data</c>).</param>
    /// <param name="path">The data file.</param>
    /// <param name="options">Format, rendering and error handling; the defaults when null.</param>
    /// <param name="report">Filled with what was read, produced and skipped, when given.</param>
    /// <returns>The prompts as a data view.</returns>
    public static IDataView LoadPrompts(this DataOperationsCatalog catalog, string path, CompletionDataLoadOptions? options = null, DataLoadReport? report = null)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        return catalog.LoadFromEnumerable(PreferenceDataFile.ReadPrompts(path, options, report).Select(p => new PromptRow { Prompt = p.Prompt }).ToList());
    }

    /// <summary>
    /// Binarizes prompts with scored completions (see <see cref="PreferenceBinarizer"/>; Zephyr, Notus) into a view with text columns
    /// <c>prompt</c>, <c>chosen</c> and <c>rejected</c>.
    /// </summary>
    /// <param name="catalog">The data catalog (<c>mlContext.Data</c>).</param>
    /// <param name="prompts">The prompts and their scored completions.</param>
    /// <param name="options">Strategy, score source, margin and seed; the defaults when null.</param>
    /// <param name="report">Filled with what was produced and dropped, when given.</param>
    /// <returns>The pairs as a data view.</returns>
    public static IDataView BinarizePreferences(this DataOperationsCatalog catalog, IEnumerable<ScoredPrompt> prompts, BinarizationOptions? options = null, BinarizationReport? report = null) =>
        catalog.LoadFromPreferencePairs(PreferenceBinarizer.Binarize(prompts, options, report));

    /// <summary>A view of <paramref name="pairs"/> with text columns <c>prompt</c>, <c>chosen</c> and <c>rejected</c>.</summary>
    /// <param name="catalog">The data catalog (<c>mlContext.Data</c>).</param>
    /// <param name="pairs">The pairs.</param>
    /// <returns>The data view.</returns>
    public static IDataView LoadFromPreferencePairs(this DataOperationsCatalog catalog, IEnumerable<PreferencePair> pairs)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        ArgumentNullException.ThrowIfNull(pairs);
        return catalog.LoadFromEnumerable(pairs.Select(p => new PairRow { Prompt = p.Prompt, Chosen = p.Chosen, Rejected = p.Rejected }).ToList());
    }

    /// <summary>A view of <paramref name="examples"/> with text columns <c>prompt</c> and <c>completion</c>.</summary>
    /// <param name="catalog">The data catalog (<c>mlContext.Data</c>).</param>
    /// <param name="examples">The examples.</param>
    /// <returns>The data view.</returns>
    public static IDataView LoadFromCompletions(this DataOperationsCatalog catalog, IEnumerable<CompletionExample> examples)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        ArgumentNullException.ThrowIfNull(examples);
        return catalog.LoadFromEnumerable(examples.Select(e => new CompletionRow { Prompt = e.Prompt, Completion = e.Completion }).ToList());
    }

    sealed class PairRow
    {
        [ColumnName(StandardColumns.Prompt)] public string Prompt { get; set; } = "";
        [ColumnName(StandardColumns.Chosen)] public string Chosen { get; set; } = "";
        [ColumnName(StandardColumns.Rejected)] public string Rejected { get; set; } = "";
    }

    sealed class UnpairedRow
    {
        [ColumnName(StandardColumns.Prompt)] public string Prompt { get; set; } = "";
        [ColumnName(StandardColumns.Completion)] public string Completion { get; set; } = "";
        [ColumnName(StandardColumns.Label)] public bool Label { get; set; }
    }

    sealed class PromptRow
    {
        [ColumnName(StandardColumns.Prompt)] public string Prompt { get; set; } = "";
    }

    sealed class CompletionRow
    {
        [ColumnName(StandardColumns.Prompt)] public string Prompt { get; set; } = "";
        [ColumnName(StandardColumns.Completion)] public string Completion { get; set; } = "";
    }
}
