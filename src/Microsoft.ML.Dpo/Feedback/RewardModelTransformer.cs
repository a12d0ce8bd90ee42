using System.Text.Json;
using Microsoft.ML.Data;
using Microsoft.ML.Dpo.Checkpoints;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Feedback;

/// <summary>One reward column a <see cref="RewardModelTransformer"/> adds: the reward of a completion column given a prompt column.</summary>
/// <param name="OutputColumnName">The output column (Single).</param>
/// <param name="PromptColumnName">The prompt (text) input column.</param>
/// <param name="CompletionColumnName">The completion (text) input column.</param>
public sealed record RewardOutputColumn(string OutputColumnName, string PromptColumnName, string CompletionColumnName);

/// <summary>How well a reward model orders preference pairs.</summary>
/// <param name="Pairs">Pairs evaluated.</param>
/// <param name="Accuracy">Share of pairs whose chosen completion gets the higher reward (ties count as wrong).</param>
/// <param name="MeanMargin">Mean of r_chosen − r_rejected.</param>
public sealed record RewardModelMetrics(int Pairs, double Accuracy, double MeanMargin);

/// <summary>
/// A fitted reward model: a causal language model with a scalar head. As an ML.NET transformer it adds reward columns, computed
/// lazily per row; as an <see cref="IJudge"/> it scores (prompt, completion) items. Saved as a Hugging Face model directory with the
/// head in <see cref="HeadFileName"/> (tensor <c>score.weight</c>, as in <c>LlamaForSequenceClassification</c>).
/// </summary>
public sealed class RewardModelTransformer : ComputedColumnsTransformer, IJudge, IDisposable
{
    /// <summary>The file, beside the model's weights, holding the head's <c>score.weight</c>.</summary>
    public const string HeadFileName = "score.safetensors";
    /// <summary>The file with the transformer's settings (columns, length limits).</summary>
    public const string SettingsFileName = "reward_model.json";

    sealed record Settings(List<RewardOutputColumn> Columns, int MaxLength, int MaxPromptLength, int ScoringBatchSize);

    readonly ScoreHead head;
    readonly bool ownsModel;

    internal RewardModelTransformer(LanguageModel model, ScoreHead head, IReadOnlyList<RewardOutputColumn> columns, int maxLength, int maxPromptLength, bool ownsModel)
    {
        Model = model;
        this.head = head;
        OutputColumns = columns;
        MaxLength = maxLength;
        MaxPromptLength = maxPromptLength;
        this.ownsModel = ownsModel;
    }

    /// <summary>The language model under the head (its tokenizer tokenizes the inputs).</summary>
    public LanguageModel Model { get; }

    /// <summary>The reward columns <see cref="ComputedColumnsTransformer.Transform"/> adds.</summary>
    public IReadOnlyList<RewardOutputColumn> OutputColumns { get; }

    /// <summary>Longest prompt + completion scored, in tokens (longer inputs are truncated as in training).</summary>
    public int MaxLength { get; }

    /// <summary>Longest prompt scored, in tokens (its end is kept).</summary>
    public int MaxPromptLength { get; }

    /// <summary>Items scored per forward pass by <see cref="Score(IReadOnlyList{ValueTuple{string, string}})"/>. Default 16.</summary>
    public int ScoringBatchSize { get; init; } = 16;

    /// <summary>What training did, when this transformer came from <c>Fit</c>.</summary>
    public TrainingSummary? TrainingSummary { get; internal init; }

    /// <summary>What data preparation skipped or truncated, when this transformer came from <c>Fit</c>.</summary>
    public DataPreparationReport? DataReport { get; internal init; }

    /// <summary>Metrics on the validation data (prefixed "eval/": loss, accuracy, rewards/...), when validation data was given.</summary>
    public IReadOnlyDictionary<string, double>? ValidationMetrics { get; internal init; }

    /// <summary>A transformer over the same model (not owning it) that adds <paramref name="columns"/> instead.</summary>
    /// <param name="columns">The reward columns.</param>
    public RewardModelTransformer WithOutputColumns(params RewardOutputColumn[] columns)
    {
        if (columns is null || columns.Length == 0) throw new ArgumentException("At least one output column is needed.", nameof(columns));
        return new RewardModelTransformer(Model, head, columns, MaxLength, MaxPromptLength, ownsModel: false) { ScoringBatchSize = ScoringBatchSize };
    }

    /// <summary>The reward of <paramref name="completion"/> as an answer to <paramref name="prompt"/>.</summary>
    /// <param name="prompt">The prompt.</param>
    /// <param name="completion">The completion.</param>
    public float Score(string prompt, string completion) => Score([(prompt, completion)])[0];

    /// <summary>The rewards of several (prompt, completion) items, scored in batches.</summary>
    /// <param name="items">The items.</param>
    public IReadOnlyList<float> Score(IReadOnlyList<(string Prompt, string Completion)> items)
    {
        JudgeExtensions.CheckItems(items);
        var rewards = new List<float>(items.Count);
        for (int start = 0; start < items.Count; start += ScoringBatchSize)
        {
            var rows = items.Skip(start).Take(ScoringBatchSize).Select(i =>
            {
                Model.EncodeExample(i.Prompt, [i.Completion], MaxLength, MaxPromptLength, TruncationMode.KeepEnd, out var prompt, out var completion);
                return (prompt, completion[0]);
            }).ToList();
            using var _ = no_grad();
            using var scope = NewDisposeScope();
            using var batch = SequenceBatch.Collate(rows, Model.PadTokenId, Model.Network.Device);
            rewards.AddRange(RewardHeadMath.Rewards(Model.Network, head, batch).to(float32).cpu().data<float>().ToArray());
        }
        return rewards;
    }

    /// <inheritdoc />
    public Task<IReadOnlyList<double?>> ScoreAsync(IReadOnlyList<(string Prompt, string Completion)> items, CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        return Task.FromResult<IReadOnlyList<double?>>(Score(items).Select(r => JudgeExtensions.Usable(r)).ToList());
    }

    /// <summary>Pairwise accuracy and mean margin on preference data (e.g. held-out pairs).</summary>
    /// <param name="data">Rows with prompt, chosen and rejected text columns.</param>
    /// <param name="promptColumnName">The prompt column.</param>
    /// <param name="chosenColumnName">The chosen column.</param>
    /// <param name="rejectedColumnName">The rejected column.</param>
    public RewardModelMetrics Evaluate(IDataView data, string promptColumnName = "prompt", string chosenColumnName = "chosen", string rejectedColumnName = "rejected")
    {
        ArgumentNullException.ThrowIfNull(data);
        var pairs = ExampleReader.ReadPreferencePairs(data, promptColumnName, chosenColumnName, rejectedColumnName, skipInvalidRows: false, new DataPreparationReport());
        return Evaluate(pairs);
    }

    /// <summary>Pairwise accuracy and mean margin on preference pairs.</summary>
    /// <param name="pairs">The pairs.</param>
    public RewardModelMetrics Evaluate(IReadOnlyList<PreferencePair> pairs)
    {
        ArgumentNullException.ThrowIfNull(pairs);
        if (pairs.Count == 0) return new RewardModelMetrics(0, double.NaN, double.NaN);
        var chosen = Score(pairs.Select(p => (p.Prompt, p.Chosen)).ToList());
        var rejected = Score(pairs.Select(p => (p.Prompt, p.Rejected)).ToList());
        double correct = 0, margin = 0;
        for (int i = 0; i < pairs.Count; i++)
        {
            if (chosen[i] > rejected[i]) correct++;
            margin += chosen[i] - rejected[i];
        }
        return new RewardModelMetrics(pairs.Count, correct / pairs.Count, margin / pairs.Count);
    }

    /// <summary>
    /// Saves the model as a Hugging Face directory (config, weights, tokenizer) with the head (<see cref="HeadFileName"/>) and the
    /// settings (<see cref="SettingsFileName"/>) beside them, atomically. The directory also loads as a plain causal LM.
    /// </summary>
    /// <param name="directory">The directory (an existing one is replaced only as <see cref="OutputFolder"/> allows).</param>
    /// <param name="overwrite">Whether an existing folder holding files this library did not write may be replaced.</param>
    /// <exception cref="OutputFolderException">The folder may not be replaced; nothing was written.</exception>
    public void Save(string directory, OutputOverwrite overwrite = OutputOverwrite.OwnOutputOnly) =>
        SaveDirectory(Model, head, directory, new Settings(OutputColumns.ToList(), MaxLength, MaxPromptLength, ScoringBatchSize), overwrite);

    /// <summary>Loads a reward model saved by <see cref="Save"/>.</summary>
    /// <param name="directory">The directory.</param>
    /// <param name="device">"auto", "cpu", "cuda" or "cuda:N".</param>
    public static RewardModelTransformer Load(string directory, string device = "auto")
    {
        string settingsFile = Path.Combine(directory, SettingsFileName);
        if (!File.Exists(settingsFile)) throw new FileNotFoundException($"'{directory}' is not a saved reward model: it lacks {SettingsFileName}.", settingsFile);
        var settings = JsonSerializer.Deserialize<Settings>(File.ReadAllText(settingsFile))
            ?? throw new InvalidDataException($"'{settingsFile}' is empty.");
        var model = LanguageModel.Load(directory, device: device);
        ScoreHead? head = null;
        try
        {
            head = ScoreHead.Create(model.Network);
            LoadHead(head, directory);
            return new RewardModelTransformer(model, head, settings.Columns, settings.MaxLength, settings.MaxPromptLength, ownsModel: true)
            {
                ScoringBatchSize = settings.ScoringBatchSize,
            };
        }
        catch
        {
            head?.Dispose();
            model.Dispose();
            throw;
        }
    }

    internal static void SaveDirectory(LanguageModel model, ScoreHead head, string directory, object? settings, OutputOverwrite overwrite = OutputOverwrite.OwnOutputOnly) =>
        model.SaveWith(directory, overwrite, temp =>
        {
            SaveHead(head, temp);
            if (settings is not null) File.WriteAllText(Path.Combine(temp, SettingsFileName), JsonSerializer.Serialize(settings, settings.GetType(), new JsonSerializerOptions { WriteIndented = true }));
        }, null);

    internal static void SaveHead(ScoreHead head, string directory)
    {
        using var scope = NewDisposeScope();
        Safetensors.Save(Path.Combine(directory, HeadFileName), head.Tensors().ToList());
    }

    internal static void LoadHead(ScoreHead head, string directory)
    {
        string path = Path.Combine(directory, HeadFileName);
        if (!File.Exists(path)) throw new FileNotFoundException($"'{directory}' has no reward head ({HeadFileName}).", path);
        var tensors = Safetensors.Load(path);
        try { head.Load(tensors, path); }
        finally { foreach (var t in tensors.Values) t.Dispose(); }
    }

    private protected override IReadOnlyList<ComputedColumn> ComputedColumns => OutputColumns.Select(c =>
        new ComputedColumn(c.OutputColumnName, NumberDataViewType.Single, [c.PromptColumnName, c.CompletionColumnName], v => (object)Score(v[0], v[1]))).ToList();

    private protected override string SaveInstructions =>
        "Save pipelines that contain a RewardModelTransformer with mlContext.Alignment().Model.Save(model, inputSchema, path), or the reward model alone with its Save(directory) method.";

    /// <summary>Frees the model and the head (when this transformer owns them).</summary>
    public void Dispose()
    {
        if (!ownsModel) return;
        head.Dispose();
        Model.Dispose();
    }
}
