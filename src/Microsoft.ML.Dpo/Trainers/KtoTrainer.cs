using System.Globalization;
using Microsoft.ML.Runtime;
using Microsoft.ML.Data;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Training;

namespace Microsoft.ML.Dpo.Trainers;

/// <summary>
/// KTO, Kahneman–Tversky optimization (Ethayarajh et al., 2024), on unpaired (prompt, completion, label) columns — a
/// thumbs-up or thumbs-down per completion instead of pairs — against a frozen reference model, as TRL's KTOTrainer
/// (<see cref="Losses.KtoLoss"/>): desirable completions are pushed above, undesirable ones below, a reference point
/// estimated from mismatched (prompt, other completion) pairs of the batch. Pairs convert with
/// <see cref="PreferenceDataFile.Unpair"/> (or <c>mlContext.Data.LoadUnpairedPreferences</c> on a pairs file).
/// Create it with <c>mlContext.Alignment().Trainers.Kto(options)</c>.
/// </summary>
public sealed class KtoTrainer : IEstimator<LanguageModelTransformer>
{
    /// <summary>Options of <see cref="KtoTrainer"/>.</summary>
    public sealed class Options : LanguageModelTrainerOptions
    {
        /// <summary>The prompt column (text). Default "prompt".</summary>
        public string PromptColumnName { get; set; } = StandardColumns.Prompt;
        /// <summary>The completion column (text). Default "completion".</summary>
        public string CompletionColumnName { get; set; } = StandardColumns.Completion;
        /// <summary>The label column (Boolean: true for a desirable completion). Default "label".</summary>
        public string LabelColumnName { get; set; } = StandardColumns.Label;
        /// <summary>β: the strength of the KL regularisation toward the reference (CLI <c>--beta</c>). Default 0.1 (TRL's).</summary>
        public double Beta { get; set; } = 0.1;
        /// <summary>w<sub>D</sub>, the weight of the desirable examples' losses (CLI <c>--desirable-weight</c>). Default 1.</summary>
        public double DesirableWeight { get; set; } = 1.0;
        /// <summary>w<sub>U</sub>, the weight of the undesirable examples' losses (CLI <c>--undesirable-weight</c>). Default 1.</summary>
        public double UndesirableWeight { get; set; } = 1.0;
        /// <summary>A separate reference model directory or file; null (the default): a frozen copy of the starting model (with LoRA: the model with its adapters off).</summary>
        public string? ReferenceModelPath { get; set; }
        /// <summary>A separate reference model in memory (not modified, not disposed); takes precedence over <see cref="ReferenceModelPath"/>.</summary>
        public LanguageModel? ReferenceModel { get; set; }

        /// <summary>Creates options with TRL's KTO learning rate (1e-6; the small presets trained from scratch learn with ~5e-4, the CLI's default).</summary>

        /// <inheritdoc />
        public override void Validate()
        {
            base.Validate();
            if (!(Beta > 0 && double.IsFinite(Beta))) throw new ArgumentOutOfRangeException(nameof(Beta), Beta, "Beta must be a finite positive number.");
            if (!(DesirableWeight >= 0 && double.IsFinite(DesirableWeight))) throw new ArgumentOutOfRangeException(nameof(DesirableWeight), DesirableWeight, "DesirableWeight must be a finite number ≥ 0.");
            if (!(UndesirableWeight >= 0 && double.IsFinite(UndesirableWeight))) throw new ArgumentOutOfRangeException(nameof(UndesirableWeight), UndesirableWeight, "UndesirableWeight must be a finite number ≥ 0.");
            if (BatchSize < 2)
                throw new ArgumentOutOfRangeException(nameof(BatchSize), BatchSize, "KTO needs BatchSize ≥ 2: its reference point pairs each prompt with another example's completion of the micro-batch (as TRL, which refuses a batch of 1).");
        }
    }

    readonly IHostEnvironment? env;
    readonly Options options;

    internal KtoTrainer(IHostEnvironment? env, Options options)
    {
        this.env = env;
        this.options = options ?? throw new ArgumentNullException(nameof(options));
    }

    /// <summary>Checks the input columns and adds the generated response column.</summary>
    public SchemaShape GetOutputSchema(SchemaShape inputSchema)
    {
        TextColumns.Check(inputSchema, ("prompt", options.PromptColumnName), ("completion", options.CompletionColumnName));
        var label = inputSchema.LastOrDefault(c => c.Name == options.LabelColumnName);
        if (label.Name is null)
            throw new ArgumentOutOfRangeException("label", $"The label column '{options.LabelColumnName}' was not found in the input data. Columns present: {string.Join(", ", inputSchema.Select(c => $"'{c.Name}'"))}.");
        if (label.ItemType is not BooleanDataViewType || label.Kind != SchemaShape.Column.VectorKind.Scalar)
            throw new ArgumentOutOfRangeException("label", $"The label column '{options.LabelColumnName}' has type {label.ItemType} ({label.Kind}); a scalar Boolean column is required.");
        return SchemaShapes.WithColumns(inputSchema, [(LanguageModelTransformer.DefaultResponseColumn, TextDataViewType.Instance)]);
    }

    /// <summary>Aligns a copy of the base model to the labelled completions in <paramref name="input"/>.</summary>
    public LanguageModelTransformer Fit(IDataView input)
    {
        options.Validate();
        using var runLog = new FineTuningRun.RunLog(env, options, nameof(KtoTrainer));
        Action<string> log = runLog.Write;
        TrainingCheckpoint.Prepare(options, log);
        var report = new DataPreparationReport();
        var rows = Read(input, report);
        var policy = FineTuningRun.LoadPolicy(options);
        FineTuningRun.WarnBeyondContext(options, policy, log);
        LanguageModel? ownedReference = null;
        try
        {
            var examples = Tokenize(policy, rows, report);
            log($"KTO data: {report}.");
            WarnImbalance(examples, runLog.Warn);
            // The reference: a separate model, the LoRA policy with its adapters off, the caller's untouched base model, or a frozen copy.
            var adapters = options.ReferenceModel is null && options.ReferenceModelPath is null ? policy.Lora : null;
            LanguageModel? reference = null;
            if (adapters is null)
            {
                reference = options.ReferenceModel
                    ?? (options.ReferenceModelPath is { } path ? ownedReference = LanguageModel.Load(path, options.Precision, options.Device)
                        : options.BaseModel ?? (ownedReference = policy.Clone()));
                reference.Network.eval();
            }
            var evaluation = FineTuningRun.CreateEvaluation(options, log);
            evaluation?.GenerateReferenceAnswers(reference ?? policy, adapters is null ? null : adapters.Disable);
            var step = new KtoStepOptions(options.Beta, options.DesirableWeight, options.UndesirableWeight,
                SequenceTruncation.WithinContext(options.MaxLength, options.MaxPromptLength, policy.Network.Config.MaxPositionEmbeddings).MaxLength, options.PaddingFree);
            double learningRate = TrainingDefaults.ResolveLearningRate(options, TrainingStage.KahnemanTverskyOptimization, policy, log);
            string fingerprint = FineTuningRun.Fingerprint(policy, FineTuningRun.Summary(options, learningRate) +
                string.Create(CultureInfo.InvariantCulture, $";kto;beta={options.Beta:R};wd={options.DesirableWeight:R};wu={options.UndesirableWeight:R};ref={options.ReferenceModelPath}"),
                examples.SelectMany(e => new[] { e.Prompt, e.Completion, new[] { e.Desirable ? 1 : 0 } }));
            var objective = FineTuningRun.WithRouterLosses(
                new KtoObjective(policy.Network, reference?.Network ?? policy.Network, adapters is null ? null : adapters.Disable, step, policy.PadTokenId), policy.Network, options);
            var summary = FineTuningRun.Train(options, policy, objective, fingerprint, log, evaluation, examples, learningRate);
            IReadOnlyDictionary<string, double>? validationMetrics = null;
            if (options.ValidationData is { } validationData)
            {
                var validationReport = new DataPreparationReport();
                var validation = Tokenize(policy, Read(validationData, validationReport), validationReport);
                validationMetrics = Evaluation.Average(objective, validation, options.BatchSize, "eval/");
                log("KTO validation: " + string.Join(" ", validationMetrics.Select(kv => $"{kv.Key}={kv.Value:G4}")));
            }
            var transformer = new LanguageModelTransformer(policy, reference, options.Beta, options.PromptColumnName,
                ownsReference: ownedReference is not null, referencePath: null)
            {
                TrainingSummary = summary, DataReport = report, ValidationMetrics = validationMetrics,
            };
            ownedReference = null;
            return transformer;
        }
        catch
        {
            policy.Dispose();
            ownedReference?.Dispose();
            throw;
        }
    }

    List<UnpairedPreference> Read(IDataView data, DataPreparationReport report) =>
        ExampleReader.ReadUnpairedPreferences(data, options.PromptColumnName, options.CompletionColumnName, options.LabelColumnName, options.SkipInvalidRows, report, options.CancellationToken);

    List<TokenizedUnpaired> Tokenize(LanguageModel model, List<UnpairedPreference> rows, DataPreparationReport report)
    {
        var examples = new List<TokenizedUnpaired>(rows.Count);
        foreach (var row in rows)
        {
            options.CancellationToken.ThrowIfCancellationRequested();
            if (model.EncodeExample(row.Prompt, [row.Completion], options.MaxLength, options.MaxPromptLength, options.Truncation, out var prompt, out var completions))
                report.Truncated++;
            examples.Add(new TokenizedUnpaired(prompt, completions[0], row.Label, row.Row, examples.Count));
        }
        report.Kept = examples.Count;
        return examples;
    }

    /// <summary>TRL's advice: the weighted desirable-to-undesirable ratio w<sub>D</sub>·n<sub>D</sub> / (w<sub>U</sub>·n<sub>U</sub>) should lie in [1, 4/3].</summary>
    void WarnImbalance(List<TokenizedUnpaired> examples, Action<string> warn)
    {
        int desirable = examples.Count(e => e.Desirable), undesirable = examples.Count - desirable;
        if (desirable == 0 || undesirable == 0)
        {
            warn($"The KTO data has {desirable} desirable and {undesirable} undesirable examples; KTO learns from both kinds.");
            return;
        }
        double ratio = options.DesirableWeight * desirable / (options.UndesirableWeight * undesirable);
        if (ratio < 1 || ratio > 4.0 / 3)
            warn(string.Create(CultureInfo.InvariantCulture, $"The weighted ratio of desirable to undesirable examples, DesirableWeight·{desirable} / (UndesirableWeight·{undesirable}) = {ratio:G3}, ") +
                 "lies outside [1, 4/3], the range the KTO paper and TRL recommend; adjust DesirableWeight or UndesirableWeight (--desirable-weight, --undesirable-weight).");
    }
}
