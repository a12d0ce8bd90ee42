using Microsoft.ML.Runtime;
using Microsoft.ML.Data;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Training;

namespace Microsoft.ML.Dpo.Trainers;

/// <summary>
/// ORPO, odds-ratio preference optimization (Hong et al., 2024), on (prompt, chosen, rejected) text columns: one stage, no
/// reference model — the SFT loss on the chosen answers plus λ times an odds-ratio term that makes the chosen answers more
/// likely than the rejected ones (<see cref="Losses.OrpoLoss"/>, as TRL's ORPOTrainer). It can start from a base model instead of an
/// SFT model. Create it with <c>mlContext.Alignment().Trainers.Orpo(options)</c>.
/// </summary>
public sealed class OrpoTrainer : IEstimator<LanguageModelTransformer>
{
    /// <summary>Options of <see cref="OrpoTrainer"/>.</summary>
    public sealed class Options : PreferenceTrainerOptions
    {
        /// <summary>λ, the weight of the odds-ratio term against the NLL (TRL's <c>beta</c>, CLI <c>--beta</c>). Default 0.1.</summary>
        public double Beta { get; set; } = 0.1;

        /// <summary>Creates options with TRL's ORPO learning rate (1e-6; the small presets trained from scratch learn with ~1e-3, the CLI's default).</summary>

        /// <inheritdoc />
        public override void Validate()
        {
            base.Validate();
            if (!(Beta >= 0 && double.IsFinite(Beta))) throw new ArgumentOutOfRangeException(nameof(Beta), Beta, "Beta (ORPO's λ) must be a finite number ≥ 0.");
        }
    }

    readonly IHostEnvironment? env;
    readonly Options options;

    internal OrpoTrainer(IHostEnvironment? env, Options options)
    {
        this.env = env;
        this.options = options ?? throw new ArgumentNullException(nameof(options));
    }

    /// <summary>Checks the input columns and adds the generated response column.</summary>
    public SchemaShape GetOutputSchema(SchemaShape inputSchema)
    {
        options.CheckColumns(inputSchema);
        return SchemaShapes.WithColumns(inputSchema, [(LanguageModelTransformer.DefaultResponseColumn, TextDataViewType.Instance)]);
    }

    /// <summary>Aligns a copy of the base model to the preferences in <paramref name="input"/>.</summary>
    public LanguageModelTransformer Fit(IDataView input)
    {
        options.Validate();
        using var runLog = new FineTuningRun.RunLog(env, options, nameof(OrpoTrainer));
        Action<string> log = runLog.Write;
        TrainingCheckpoint.Prepare(options, log);
        var report = new DataPreparationReport();
        var pairs = options.ReadPairs(input, report);
        var policy = FineTuningRun.LoadPolicy(options);
        FineTuningRun.WarnBeyondContext(options, policy, log);
        try
        {
            var examples = FineTuningRun.TokenizePairs(policy, pairs, options, report);
            log($"ORPO data: {report}.");
            var evaluation = FineTuningRun.CreateEvaluation(options, log);
            evaluation?.GenerateReferenceAnswers(policy);   // the starting model's answers
            double learningRate = TrainingDefaults.ResolveLearningRate(options, TrainingStage.OddsRatioPreferenceOptimization, policy, log);
            string fingerprint = FineTuningRun.Fingerprint(policy, FineTuningRun.Summary(options, learningRate) + $";orpo;beta={options.Beta:R}",
                examples.SelectMany(e => new[] { e.Prompt, e.Chosen, e.Rejected }));
            var objective = FineTuningRun.WithRouterLosses(new OrpoObjective(policy.Network, options.Beta, policy.PadTokenId, options.PaddingFree), policy.Network, options);
            var summary = FineTuningRun.Train(options, policy, objective, fingerprint, log, evaluation, examples, learningRate);
            IReadOnlyDictionary<string, double>? validationMetrics = null;
            if (options.ValidationData is { } validationData)
            {
                var validation = FineTuningRun.TokenizePairs(policy, options.ReadPairs(validationData, new DataPreparationReport()), options, new DataPreparationReport());
                validationMetrics = Evaluation.Average(objective, validation, options.BatchSize, "eval/");
                log("ORPO validation: " + string.Join(" ", validationMetrics.Select(kv => $"{kv.Key}={kv.Value:G4}")));
            }
            return new LanguageModelTransformer(policy, reference: null, beta: 0, options.PromptColumnName)
            {
                TrainingSummary = summary, DataReport = report, ValidationMetrics = validationMetrics,
            };
        }
        catch
        {
            policy.Dispose();
            throw;
        }
    }
}
