using Microsoft.ML.Data;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Trainers;
using Microsoft.ML.Dpo.Training;
using Microsoft.ML.Runtime;

namespace Microsoft.ML.Dpo.Feedback;

/// <summary>
/// Trains a reward model on (prompt, chosen, rejected) text columns: a causal language model with a scalar head
/// (<c>score.weight</c>, Linear hidden → 1) on the hidden state of the last real token, fitted with the Bradley–Terry loss
/// −log σ(r_chosen − r_rejected) through the same training loop as SFT and DPO. Both the model and the head are trained.
/// Create it with <c>mlContext.Alignment().Trainers.RewardModel(options)</c>; the fitted <see cref="RewardModelTransformer"/>
/// adds reward columns and is an <see cref="IJudge"/>.
/// </summary>
public sealed class RewardModelTrainer : IEstimator<RewardModelTransformer>
{
    /// <summary>Options of <see cref="RewardModelTrainer"/>.</summary>
    public sealed class Options : PreferenceTrainerOptions
    {
        /// <summary>The output column with the reward of the chosen completion. Default "chosen_reward".</summary>
        public string ChosenRewardColumnName { get; set; } = "chosen_reward";
        /// <summary>The output column with the reward of the rejected completion. Default "rejected_reward".</summary>
        public string RejectedRewardColumnName { get; set; } = "rejected_reward";

        /// <summary>Creates options with a reward-model learning rate of 1e-5 (small models on a CPU learn faster with ~1e-3).</summary>

        /// <inheritdoc />
        public override void Validate()
        {
            base.Validate();
            if (EvaluationPrompts is not null)
                throw new NotSupportedException("EvaluationPrompts (evaluation by generation) is not supported by the reward-model trainer: a reward model scores text and does not generate it. Use ValidationData for held-out pairs.");
        }
    }

    readonly IHostEnvironment? env;
    readonly Options options;

    internal RewardModelTrainer(IHostEnvironment? env, Options options)
    {
        this.env = env;
        this.options = options ?? throw new ArgumentNullException(nameof(options));
    }

    /// <summary>Checks the input columns and adds the two reward columns.</summary>
    public SchemaShape GetOutputSchema(SchemaShape inputSchema)
    {
        options.CheckColumns(inputSchema);
        return SchemaShapes.WithColumns(inputSchema,
            [(options.ChosenRewardColumnName, NumberDataViewType.Single), (options.RejectedRewardColumnName, NumberDataViewType.Single)]);
    }

    /// <summary>Trains a reward model on a copy of the base model.</summary>
    public RewardModelTransformer Fit(IDataView input)
    {
        options.Validate();
        using var runLog = new FineTuningRun.RunLog(env, options, nameof(RewardModelTrainer));
        Action<string> log = runLog.Write;
        TrainingCheckpoint.Prepare(options, log);
        var report = new DataPreparationReport();
        var pairs = options.ReadPairs(input, report);
        var model = FineTuningRun.LoadPolicy(options);
        FineTuningRun.WarnBeyondContext(options, model, log);
        ScoreHead? head = null;
        try
        {
            var examples = FineTuningRun.TokenizePairs(model, pairs, options, report, log);
            log($"Reward model data: {report}.");
            TorchSharp.torch.manual_seed(options.Seed);
            head = ScoreHead.Create(model.Network);
            double learningRate = Trainers.TrainingDefaults.ResolveLearningRate(options, Trainers.TrainingStage.RewardModeling, model, log);
            string fingerprint = FineTuningRun.Fingerprint(model, FineTuningRun.Summary(options, learningRate) + ";reward-model",
                examples.SelectMany(e => new[] { e.Prompt, e.Chosen, e.Rejected }));
            var objective = FineTuningRun.WithRouterLosses(new RewardObjective(model.Network, head, model.PadTokenId), model.Network, options);
            var trainable = FineTuningRun.Trainable(model).Concat(head.parameters().Where(p => p.requires_grad)).ToList();
            model.Network.train();
            var summary = new TrainingLoop<TokenizedPreference>(options, trainable, objective, Checkpoint(model, head), fingerprint, log, learningRate: learningRate).Run(examples);
            model.Network.eval();

            IReadOnlyDictionary<string, double>? validation = null;
            if (options.ValidationData is { } validationData)
            {
                var validationExamples = FineTuningRun.TokenizePairs(model, options.ReadPairs(validationData, new DataPreparationReport()), options, new DataPreparationReport());
                validation = Evaluation.Average(objective, validationExamples, options.BatchSize, "eval/");
                log("Reward model validation: " + string.Join(" ", validation.Select(kv => $"{kv.Key}={kv.Value:G4}")));
            }
            var columns = new[]
            {
                new RewardOutputColumn(options.ChosenRewardColumnName, options.PromptColumnName, options.ChosenColumnName),
                new RewardOutputColumn(options.RejectedRewardColumnName, options.PromptColumnName, options.RejectedColumnName),
            };
            return new RewardModelTransformer(model, head, columns, options.MaxLength, options.MaxPromptLength, ownsModel: true)
            {
                TrainingSummary = summary, DataReport = report, ValidationMetrics = validation,
            };
        }
        catch
        {
            head?.Dispose();
            model.Dispose();
            throw;
        }
    }

    /// <summary>Checkpoints hold the model as a Hugging Face directory with the head beside it (<see cref="RewardModelTransformer.HeadFileName"/>).</summary>
    TrainingCheckpoint? Checkpoint(LanguageModel model, ScoreHead head)
    {
        if (options.CheckpointDirectory is null) return null;
        return new TrainingCheckpoint(options.CheckpointDirectory,
            dir => RewardModelTransformer.SaveDirectory(model, head, Path.Combine(dir, "model"), settings: null),
            dir =>
            {
                string modelDir = Path.Combine(dir, "model");
                var saved = Checkpoints.Safetensors.LoadDirectory(modelDir);
                try
                {
                    using var _ = TorchSharp.torch.no_grad();
                    foreach (var (name, parameter) in model.Network.named_parameters())
                        parameter.copy_(saved.TryGetValue(name, out var t) ? t : throw new InvalidDataException($"Checkpoint in '{dir}' lacks tensor '{name}'."));
                }
                finally
                {
                    foreach (var t in saved.Values) t.Dispose();
                }
                RewardModelTransformer.LoadHead(head, modelDir);
            });
    }
}
