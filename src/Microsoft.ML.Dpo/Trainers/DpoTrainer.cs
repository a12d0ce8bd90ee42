using Microsoft.ML.Runtime;
using Microsoft.ML.Data;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Training;

namespace Microsoft.ML.Dpo.Trainers;

/// <summary>Where the DPO reference log-probabilities come from.</summary>
public enum ReferenceModelSource
{
    /// <summary>A frozen copy of the starting policy (the default).</summary>
    FrozenCopyOfBase,
    /// <summary>A separately given model (<see cref="DpoTrainer.Options.ReferenceModel"/> or <see cref="DpoTrainer.Options.ReferenceModelPath"/>).</summary>
    Separate,
}

/// <summary>
/// Direct Preference Optimization (Rafailov et al., 2023) of a causal language model on (prompt, chosen, rejected) text
/// columns, against a frozen reference model; no reward model and no reinforcement-learning loop.
/// Create it with <c>mlContext.Alignment().Trainers.Dpo(options)</c>.
/// </summary>
public sealed class DpoTrainer : IEstimator<LanguageModelTransformer>
{
    /// <summary>Options of <see cref="DpoTrainer"/>.</summary>
    public sealed class Options : PreferenceTrainerOptions
    {
        /// <summary>β: the strength of the KL regularisation toward the reference (larger keeps the policy closer). Default 0.1.</summary>
        public double Beta { get; set; } = 0.1;
        /// <summary>The preference loss. Default <see cref="PreferenceLossKind.Sigmoid"/> (DPO).</summary>
        public PreferenceLossKind LossKind { get; set; } = PreferenceLossKind.Sigmoid;
        /// <summary>Label smoothing ε for Sigmoid (conservative DPO) and Robust. Default 0.</summary>
        public double LabelSmoothing { get; set; }
        /// <summary>SimPO's target reward margin γ. Default 0.5.</summary>
        public double SimPOGamma { get; set; } = 0.5;
        /// <summary>Weight α of an added NLL loss on the chosen completion (RPO); 0 disables it. Default 0.</summary>
        public double NllWeight { get; set; }
        /// <summary>Where the reference comes from. Default <see cref="ReferenceModelSource.FrozenCopyOfBase"/>.</summary>
        public ReferenceModelSource Reference { get; set; } = ReferenceModelSource.FrozenCopyOfBase;
        /// <summary>With <see cref="ReferenceModelSource.Separate"/>: the reference model directory or file.</summary>
        public string? ReferenceModelPath { get; set; }
        /// <summary>With <see cref="ReferenceModelSource.Separate"/>: a reference model in memory (not modified, not disposed).</summary>
        public LanguageModel? ReferenceModel { get; set; }
        /// <summary>
        /// Compute the reference log-probs in one pass before training, then free the reference model. They are cached in
        /// <see cref="TrainingOptions.CheckpointDirectory"/> (keyed by reference weights and data) so a resumed or repeated run
        /// does not recompute them. Default false.
        /// </summary>
        public bool PrecomputeReferenceLogProbs { get; set; }

        /// <summary>Creates options with DPO's customary learning rate (1e-6; small models on a CPU learn faster with ~1e-4).</summary>
        public Options() => LearningRate = 1e-6;

        internal PreferenceLossOptions LossOptions => new() { Kind = LossKind, Beta = Beta, LabelSmoothing = LabelSmoothing, Gamma = SimPOGamma };

        /// <inheritdoc />
        public override void Validate()
        {
            base.Validate();
            LossOptions.Validate();
            if (NllWeight < 0) throw new ArgumentOutOfRangeException(nameof(NllWeight), NllWeight, "NllWeight must not be negative.");
            if (Reference == ReferenceModelSource.Separate && ReferenceModel is null && string.IsNullOrWhiteSpace(ReferenceModelPath))
                throw new ArgumentException("Reference = Separate needs ReferenceModel or ReferenceModelPath.", nameof(ReferenceModelPath));
        }
    }

    readonly IHostEnvironment? env;
    readonly Options options;

    internal DpoTrainer(IHostEnvironment? env, Options options)
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
        using var runLog = new FineTuningRun.RunLog(env, options, nameof(DpoTrainer));
        Action<string> log = runLog.Write;
        TrainingCheckpoint.Prepare(options, log);
        var report = new DataPreparationReport();
        var pairs = options.ReadPairs(input, report);
        var policy = FineTuningRun.LoadPolicy(options);
        FineTuningRun.WarnBeyondContext(options, policy, log);
        LanguageModel? ownedReference = null;
        try
        {
            var examples = FineTuningRun.TokenizePairs(policy, pairs, options, report);
            log($"DPO data: {report}.");
            List<TokenizedPreference>? validation = null;
            if (options.ValidationData is { } validationData)
                validation = FineTuningRun.TokenizePairs(policy, options.ReadPairs(validationData, new DataPreparationReport()), options, new DataPreparationReport());

            var loss = options.LossOptions;
            // The reference: a separate model, the LoRA policy with its adapters disabled, the caller's untouched base model,
            // or a frozen copy of the starting policy.
            var adapters = options.Reference == ReferenceModelSource.FrozenCopyOfBase ? policy.Lora : null;
            LanguageModel? reference = null;
            if (loss.RequiresReference && adapters is null)
            {
                if (options.Reference == ReferenceModelSource.Separate)
                    reference = options.ReferenceModel ?? (ownedReference = LanguageModel.Load(options.ReferenceModelPath!, options.Precision, options.Device));
                else if (options.BaseModel is not null)
                    reference = options.BaseModel;
                else if (!options.PrecomputeReferenceLogProbs)
                    reference = ownedReference = policy.Clone();
                else
                    reference = policy; // before training the policy *is* the reference: no copy needed for one pass
                reference.Network.eval();
            }

            // Where reference log-probs come from: a network, and a scope to enter around its forward (LoRA: adapters off).
            CausalLM? referenceNetwork = adapters is not null && loss.RequiresReference ? policy.Network : reference?.Network;
            Func<IDisposable>? enterReference = adapters is not null ? adapters.Disable : null;
            ReferenceLogProbs? referenceLogProbs = null, validationReferenceLogProbs = null;
            if (referenceNetwork is not null && options.PrecomputeReferenceLogProbs)
            {
                using (enterReference?.Invoke())
                {
                    string? key = options.CheckpointDirectory is null ? null : WeightsFingerprint.Of(referenceNetwork);   // hashed once for both sets
                    ReferenceLogProbs.Precomputed Precompute(List<TokenizedPreference> set) => ReferenceLogProbs.Precomputed.Compute(
                        referenceNetwork, set, options.BatchSize, policy.PadTokenId, options.CheckpointDirectory, log, options.CancellationToken, key);
                    referenceLogProbs = Precompute(examples);
                    if (validation is not null) validationReferenceLogProbs = Precompute(validation);
                }
                if (ownedReference is not null) { ownedReference.Dispose(); ownedReference = null; }
                if (adapters is null) reference = options.ReferenceModel ?? options.BaseModel; // kept only when the caller owns it
            }
            else if (referenceNetwork is not null)
            {
                referenceLogProbs = validationReferenceLogProbs = new ReferenceLogProbs.Live(referenceNetwork, enterReference);
            }

            string fingerprint = FineTuningRun.Fingerprint(policy, FineTuningRun.Summary(options) + $";dpo;{loss};nll={options.NllWeight:R};ref={options.Reference}",
                examples.SelectMany(e => new[] { e.Prompt, e.Chosen, e.Rejected }));
            var objective = FineTuningRun.WithRouterLosses(new DpoObjective(policy.Network, referenceLogProbs, loss, options.NllWeight, policy.PadTokenId), policy.Network, options);
            policy.Network.train();
            var summary = new TrainingLoop<TokenizedPreference>(options, FineTuningRun.Trainable(policy), objective,
                FineTuningRun.Checkpoint(options, policy), fingerprint, log).Run(examples);
            policy.Network.eval();

            IReadOnlyDictionary<string, double>? validationMetrics = null;
            if (validation is not null)
            {
                var validationObjective = FineTuningRun.WithRouterLosses(
                    new DpoObjective(policy.Network, validationReferenceLogProbs, loss, options.NllWeight, policy.PadTokenId), policy.Network, options);
                validationMetrics = Evaluation.Average(validationObjective, validation, options.BatchSize, "eval/");
                log("DPO validation: " + string.Join(" ", validationMetrics.Select(kv => $"{kv.Key}={kv.Value:G4}")));
            }

            // With LoRA and no separate reference, the fitted model's own disabled adapters give the reference.
            string? referencePath = options.Reference == ReferenceModelSource.Separate ? options.ReferenceModelPath : adapters is not null ? null : options.BaseModelPath;
            var transformer = new LanguageModelTransformer(policy, reference ?? ownedReference, options.Beta, options.PromptColumnName,
                ownsReference: ownedReference is not null, referencePath: reference is null && ownedReference is null ? referencePath : null)
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
}
