using Microsoft.ML.Runtime;
using Microsoft.ML.Data;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Tokenization;
using Microsoft.ML.Dpo.Training;

namespace Microsoft.ML.Dpo.Trainers;

/// <summary>
/// Supervised fine-tuning (SFT) of a causal language model on (prompt, completion) text columns. The loss is the
/// cross-entropy of the completion tokens (or of all tokens). Create it with <c>mlContext.Alignment().Trainers.Sft(options)</c>.
/// </summary>
public sealed class SftTrainer : IEstimator<LanguageModelTransformer>
{
    /// <summary>Options of <see cref="SftTrainer"/>.</summary>
    public sealed class Options : LanguageModelTrainerOptions
    {
        /// <summary>The prompt column (text). Default "prompt".</summary>
        public string PromptColumnName { get; set; } = "prompt";
        /// <summary>The completion column (text). Default "completion".</summary>
        public string CompletionColumnName { get; set; } = "completion";
        /// <summary>
        /// A text column holding whole conversations as JSON arrays of <c>{"role", "content"}</c> messages, used instead of the
        /// prompt and completion columns when set: each is rendered with the chat template (everything before the last
        /// assistant turn is the prompt, that turn the completion). Default null.
        /// </summary>
        public string? MessagesColumnName { get; set; }
        /// <summary>A built-in chat template for <see cref="MessagesColumnName"/> (chatml, llama2, zephyr, plain); null (the default) uses the
        /// model's own template (its Jinja <c>chat_template</c>, rendered as transformers renders it).</summary>
        public string? ChatTemplateName { get; set; }
        /// <summary>Learn only the completion tokens (true, the default) or the prompt tokens too.</summary>
        public bool CompletionOnlyLoss { get; set; } = true;
    }

    readonly IHostEnvironment? env;
    readonly Options options;

    internal SftTrainer(IHostEnvironment? env, Options options)
    {
        this.env = env;
        this.options = options ?? throw new ArgumentNullException(nameof(options));
    }

    /// <summary>Checks the input columns and adds the generated response column.</summary>
    public SchemaShape GetOutputSchema(SchemaShape inputSchema)
    {
        if (options.MessagesColumnName is { } messages) TextColumns.Check(inputSchema, ("messages", messages));
        else TextColumns.Check(inputSchema, ("prompt", options.PromptColumnName), ("completion", options.CompletionColumnName));
        return SchemaShapes.WithColumns(inputSchema, [(LanguageModelTransformer.DefaultResponseColumn, TextDataViewType.Instance)]);
    }

    /// <summary>Fine-tunes a copy of the base model on <paramref name="input"/>.</summary>
    public LanguageModelTransformer Fit(IDataView input)
    {
        options.Validate();
        using var runLog = new FineTuningRun.RunLog(env, options, nameof(SftTrainer));
        Action<string> log = runLog.Write;
        TrainingCheckpoint.Prepare(options, log);
        var report = new DataPreparationReport();
        var policy = FineTuningRun.LoadPolicy(options);
        FineTuningRun.WarnBeyondContext(options, policy, log);
        try
        {
            var rows = Read(input, policy, report, options.CancellationToken);
            var examples = Tokenize(policy, rows, report, log);
            log($"SFT data: {report}.");
            double learningRate = TrainingDefaults.ResolveLearningRate(options, TrainingStage.SupervisedFineTuning, policy, log);
            string fingerprint = FineTuningRun.Fingerprint(policy, FineTuningRun.Summary(options, learningRate) + $";sft;completionOnly={options.CompletionOnlyLoss}",
                examples.SelectMany(e => new[] { e.Prompt, e.Completion }));
            var objective = FineTuningRun.WithRouterLosses(new SftObjective(policy.Network, policy.PadTokenId, options.CompletionOnlyLoss, options.PaddingFree), policy.Network, options);
            var evaluation = FineTuningRun.CreateEvaluation(options, log);
            evaluation?.GenerateReferenceAnswers(policy);   // the starting model's answers
            var summary = FineTuningRun.Train(options, policy, objective, fingerprint, log, evaluation, examples, learningRate);
            IReadOnlyDictionary<string, double>? validation = null;
            if (options.ValidationData is { } validationData)
            {
                var validationReport = new DataPreparationReport();
                var validationRows = Read(validationData, policy, validationReport, options.CancellationToken);
                validation = Evaluation.Average(objective, Tokenize(policy, validationRows, validationReport), options.BatchSize, "eval/");
                log("SFT validation: " + string.Join(" ", validation.Select(kv => $"{kv.Key}={kv.Value:G4}")));
            }
            return new LanguageModelTransformer(policy, reference: null, beta: 0, options.PromptColumnName)
            {
                TrainingSummary = summary, DataReport = report, ValidationMetrics = validation,
            };
        }
        catch
        {
            policy.Dispose();
            throw;
        }
    }

    List<CompletionExample> Read(IDataView data, LanguageModel model, DataPreparationReport report, CancellationToken cancellation)
    {
        if (options.MessagesColumnName is null)
            return ExampleReader.ReadCompletions(data, options.PromptColumnName, options.CompletionColumnName, options.SkipInvalidRows, report, cancellation);
        var template = options.ChatTemplateName is { } name ? ChatTemplate.FromName(name) : model.RequireTokenizer().ChatTemplate;
        return ExampleReader.ReadChatConversations(data, options.MessagesColumnName, template.SplitForTraining, options.SkipInvalidRows, report, cancellation);
    }

    List<TokenizedCompletion> Tokenize(LanguageModel model, List<CompletionExample> rows, DataPreparationReport report, Action<string>? log = null)
    {
        var examples = new List<TokenizedCompletion>(rows.Count);
        var progress = new PreparationProgress(log, "Tokenizing", rows.Count);
        foreach (var row in rows)
        {
            options.CancellationToken.ThrowIfCancellationRequested(); // between rows: Ctrl+C stops a long tokenization
            progress.Advance();
            if (model.EncodeExample(row.Prompt, [row.Completion], options.MaxLength, options.MaxPromptLength, options.Truncation, out var prompt, out var completions))
                report.Truncated++;
            examples.Add(new TokenizedCompletion(prompt, completions[0], row.Row, examples.Count));
        }
        report.Kept = examples.Count;
        return examples;
    }
}
