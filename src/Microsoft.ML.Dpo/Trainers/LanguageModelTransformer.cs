using Microsoft.ML.Data;
using Microsoft.ML.Dpo.Checkpoints;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Generation;
using Microsoft.ML.Dpo.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Trainers;

/// <summary>What a <see cref="LanguageModelTransformer"/> output column holds.</summary>
public enum LanguageModelOutputKind
{
    /// <summary>The generated response to a prompt column (text).</summary>
    Response,
    /// <summary>log π(response | prompt): the summed log-probability of a response column given a prompt column (float).</summary>
    LogProbability,
    /// <summary>DPO's implicit reward β·(log π(y|x) − log π_ref(y|x)) of a response given a prompt (float).</summary>
    ImplicitReward,
}

/// <summary>One output column of a <see cref="LanguageModelTransformer"/>.</summary>
/// <param name="Kind">What the column holds.</param>
/// <param name="OutputColumnName">Its name.</param>
/// <param name="PromptColumnName">The prompt (text) input column.</param>
/// <param name="ResponseColumnName">The response (text) input column, for scores; null for generation.</param>
public sealed record LanguageModelOutputColumn(LanguageModelOutputKind Kind, string OutputColumnName, string PromptColumnName, string? ResponseColumnName = null);

/// <summary>
/// A fitted (SFT- or DPO-trained) language model as an ML.NET transformer. It adds output columns on demand, computed
/// lazily per row: a generated response, the log-probability of a given response, and — when a reference model is
/// known — DPO's implicit reward ("your language model is secretly a reward model"). Derived transformers made with
/// <see cref="WithOutputColumns"/> or <see cref="WithGenerationOptions"/> share the model and do not own it: dispose the
/// one returned by <c>Fit</c> (or by <c>Load</c>) when done.
/// </summary>
public sealed class LanguageModelTransformer : ComputedColumnsTransformer, IDisposable
{
    /// <summary>The name of the response column added by default.</summary>
    public const string DefaultResponseColumn = "response";

    readonly bool ownsModel, ownsReference;
    LanguageModel? reference;

    internal LanguageModelTransformer(LanguageModel model, LanguageModel? reference, double beta, string promptColumn,
        bool ownsReference = false, string? referencePath = null)
        : this(model, reference, beta, [new LanguageModelOutputColumn(LanguageModelOutputKind.Response, DefaultResponseColumn, promptColumn)],
               new GenerationOptions(), ownsModel: true, ownsReference, referencePath)
    {
    }

    internal LanguageModelTransformer(LanguageModel model, LanguageModel? reference, double beta, IReadOnlyList<LanguageModelOutputColumn> columns,
        GenerationOptions generation, bool ownsModel, bool ownsReference, string? referencePath)
    {
        if (columns.Count == 0) throw new ArgumentException("At least one output column is needed.", nameof(columns));
        this.ownsModel = ownsModel;
        Model = model;
        this.reference = reference;
        Beta = beta;
        OutputColumns = columns;
        Generation = generation;
        this.ownsReference = ownsReference;
        ReferencePath = referencePath;
    }

    /// <summary>The trained policy (network and tokenizer).</summary>
    public LanguageModel Model { get; }

    /// <summary>β used for implicit rewards (the DPO β of training; 0 after SFT).</summary>
    public double Beta { get; }

    /// <summary>Where the reference model is loaded from when it is not in memory (for implicit rewards), if known.</summary>
    public string? ReferencePath { get; }

    /// <summary>The columns <see cref="ComputedColumnsTransformer.Transform"/> adds.</summary>
    public IReadOnlyList<LanguageModelOutputColumn> OutputColumns { get; }

    /// <summary>How responses are generated.</summary>
    public GenerationOptions Generation { get; }

    /// <summary>What training did (steps, final metrics, metrics file), when this transformer came from <c>Fit</c>.</summary>
    public TrainingSummary? TrainingSummary { get; internal init; }

    /// <summary>What data preparation skipped or truncated, when this transformer came from <c>Fit</c>.</summary>
    public DataPreparationReport? DataReport { get; internal init; }

    /// <summary>Metrics on the validation data (prefixed "eval/"), when validation data was given.</summary>
    public IReadOnlyDictionary<string, double>? ValidationMetrics { get; internal init; }

    /// <summary>
    /// Whether a reference model is available for implicit rewards: one in memory, a <see cref="ReferencePath"/>, or — for a
    /// model with LoRA adapters — the same model with its adapters disabled.
    /// </summary>
    public bool HasReference => reference is not null || ReferencePath is not null || Model.Lora is not null;

    /// <summary>The reference model in memory, loading it from <see cref="ReferencePath"/> on first use.</summary>
    internal LanguageModel? Reference => reference ??= ReferencePath is null ? null : LanguageModel.Load(ReferencePath, device: Model.Network.Device.ToString());

    bool OwnsReference => ownsReference || (ownsModel && reference is not null && ReferencePath is not null);

    /// <summary>A transformer over the same model that adds <paramref name="columns"/> (replacing the current set).</summary>
    public LanguageModelTransformer WithOutputColumns(params LanguageModelOutputColumn[] columns) =>
        new(Model, reference, Beta, columns, Generation, ownsModel: false, ownsReference: false, ReferencePath);

    /// <summary>A transformer over the same model that generates with <paramref name="options"/>.</summary>
    public LanguageModelTransformer WithGenerationOptions(GenerationOptions options) =>
        new(Model, reference, Beta, OutputColumns, options ?? throw new ArgumentNullException(nameof(options)), ownsModel: false, ownsReference: false, ReferencePath);

    /// <summary>Generates a response to <paramref name="prompt"/> (the decoded new text).</summary>
    public string Generate(string prompt, GenerationOptions? options = null) => Model.CreateGenerator().Generate([prompt], options ?? Generation)[0];

    /// <summary>
    /// The responses of one batch of rows (each row's prompt first), generated together; null for a row whose prompt cannot
    /// share the batch's new-token budget (see <see cref="TextGenerator.FitsBatch"/>), which is generated alone when reached.
    /// </summary>
    object?[] GenerateBatch(IReadOnlyList<string[]> rows)
    {
        var generator = Model.CreateGenerator();
        var ids = rows.Select(r => Model.EncodePrompt(r[0])).ToArray();
        var together = Enumerable.Range(0, ids.Length).Where(i => generator.FitsBatch(ids[i].Length, Generation)).ToList();
        var results = new object?[rows.Count];
        if (together.Count == 0) return results;
        var texts = generator.GenerateText(together.Select(i => ids[i]).ToList(), Generation);
        for (int j = 0; j < together.Count; j++) results[together[j]] = texts[j];
        return results;
    }

    /// <summary>log π(response | prompt) under the trained model: the sum over the response tokens (EOS included).</summary>
    public float LogProbability(string prompt, string response) => LogProbability(Model, prompt, response);

    /// <summary>
    /// β·(log π(response|prompt) − log π_ref(response|prompt)); needs a reference model. Without one in memory or at
    /// <see cref="ReferencePath"/>, a LoRA model is its own reference with its adapters disabled.
    /// </summary>
    public float ImplicitReward(string prompt, string response)
    {
        float policy = LogProbability(Model, prompt, response);
        float referenceLogProbability;
        if (Reference is { } referenceModel)
            referenceLogProbability = LogProbability(referenceModel, prompt, response);
        else if (Model.Lora is { } adapters)
            using (adapters.Disable()) referenceLogProbability = LogProbability(Model, prompt, response);
        else
            throw new InvalidOperationException("No reference model is known for this transformer: implicit rewards need one (train with DPO, or load a model saved with its reference).");
        return (float)(Beta * (policy - referenceLogProbability));
    }

    /// <summary>
    /// Exports the trained model as a Hugging Face directory (config, safetensors weights, tokenizer; with the run's
    /// <c>metrics.jsonl</c> when this transformer came from a <c>Fit</c> with a checkpoint directory), atomically. LoRA
    /// adapters are merged into the weights: the directory is a plain model. An existing folder is replaced only when it is
    /// empty or this library wrote it, unless <paramref name="overwrite"/> is <see cref="OutputOverwrite.Always"/>; a folder
    /// that is or contains the current directory, the model's source, the reference or the checkpoint folder never is.
    /// </summary>
    /// <exception cref="OutputFolderException">The folder may not be replaced; nothing was written.</exception>
    public void ExportHuggingFace(string directory, OutputOverwrite overwrite = OutputOverwrite.OwnOutputOnly)
    {
        string? metrics = TrainingSummary?.MetricsFile;
        Model.SaveWith(directory, overwrite, temp =>
        {
            if (metrics is not null && File.Exists(metrics)) File.Copy(metrics, Path.Combine(temp, "metrics.jsonl"));
        }, ProtectedPaths);
    }

    /// <summary>
    /// Exports the LoRA adapters as a PEFT adapter directory (<c>adapter_config.json</c>, <c>adapter_model.safetensors</c>),
    /// atomically, replacing an existing folder as <see cref="ExportHuggingFace"/> does.
    /// </summary>
    /// <exception cref="InvalidOperationException">The model was not trained with LoRA.</exception>
    /// <exception cref="OutputFolderException">The folder may not be replaced; nothing was written.</exception>
    public void ExportAdapter(string directory, OutputOverwrite overwrite = OutputOverwrite.OwnOutputOnly)
    {
        var adapters = Model.Lora ?? throw new InvalidOperationException("This model has no LoRA adapters (train with Options.Lora set); use ExportHuggingFace.");
        OutputFolder.EnsureReplaceable(directory, overwrite, ProtectedPaths.Concat(Model.ProtectedPaths));
        adapters.Save(directory, overwrite);
    }

    /// <summary>What an export must never replace besides the model's own source: the reference and the checkpoint folder.</summary>
    IEnumerable<string?> ProtectedPaths =>
        [ReferencePath, reference?.SourcePath, TrainingSummary?.MetricsFile is { } m ? Path.GetDirectoryName(Path.GetFullPath(m)) : null];

    internal static float LogProbability(LanguageModel model, string prompt, string response)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        using var batch = SequenceBatch.Collate([(model.EncodePrompt(prompt), model.EncodeCompletion(response))], model.PadTokenId, model.Network.Device);
        var (sum, _) = SequenceScoring.CompletionLogProbs(model.Network, batch);
        return sum.to(float32).item<float>();
    }

    private protected override IReadOnlyList<ComputedColumn> ComputedColumns => OutputColumns.Select(ToComputed).ToList();

    private protected override string SaveInstructions =>
        "Save pipelines that contain a LanguageModelTransformer with mlContext.Alignment().Model.Save(model, inputSchema, path); load them with mlContext.Alignment().Model.Load(path, out schema).";

    ComputedColumn ToComputed(LanguageModelOutputColumn column) => column.Kind switch
    {
        LanguageModelOutputKind.Response => new(column.OutputColumnName, TextDataViewType.Instance, [column.PromptColumnName], v => Generate(v[0]),
            GenerateBatch, Generation.TransformBatchSize),
        LanguageModelOutputKind.LogProbability => new(column.OutputColumnName, NumberDataViewType.Single, [column.PromptColumnName, RequireResponse(column)], v => LogProbability(v[0], v[1])),
        _ => new(column.OutputColumnName, NumberDataViewType.Single, [column.PromptColumnName, RequireResponse(column)], v => ImplicitReward(v[0], v[1])),
    };

    static string RequireResponse(LanguageModelOutputColumn column) => column.ResponseColumnName
        ?? throw new ArgumentException($"Output column '{column.OutputColumnName}' ({column.Kind}) needs a response column.");

    /// <summary>Frees the model (and the reference model when this transformer loaded or copied it).</summary>
    public void Dispose()
    {
        if (ownsModel) Model.Dispose();
        if (OwnsReference) reference?.Dispose();
    }
}
