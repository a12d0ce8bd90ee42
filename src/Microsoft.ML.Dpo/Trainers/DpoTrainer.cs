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
        /// <summary>
        /// β: the strength of the KL regularisation toward the reference (larger keeps the policy closer). Null (the default)
        /// chooses it by the model's origin and logs it (<see cref="TrainingDefaults.DpoBeta"/>): 0.3 for a model trained from
        /// scratch, else 0.1 (TRL's default).
        /// </summary>
        public double? Beta { get; set; }
        /// <summary>The preference loss. Default <see cref="PreferenceLossKind.Sigmoid"/> (DPO). Ignored when <see cref="LossKinds"/> is set.</summary>
        public PreferenceLossKind LossKind { get; set; } = PreferenceLossKind.Sigmoid;
        /// <summary>
        /// Several losses summed with <see cref="LossWeights"/> (CLI <c>--loss sigmoid,bco_pair,sft</c>), e.g. MPO's
        /// <c>[Sigmoid, BcoPair, Sft]</c> with <c>[0.8, 0.2, 1]</c>. Null (the default): <c>[LossKind]</c>.
        /// </summary>
        public IReadOnlyList<PreferenceLossKind>? LossKinds { get; set; }
        /// <summary>One weight per entry of <see cref="LossKinds"/> (CLI <c>--loss-weights</c>); null (the default): all 1.</summary>
        public IReadOnlyList<double>? LossWeights { get; set; }
        /// <summary>
        /// Weight α of an NLL term on the chosen completions (RPO, Pang et al., 2024): shorthand for adding
        /// <see cref="PreferenceLossKind.Sft"/> with weight α to the losses (CLI <c>--rpo-alpha</c>); 0 disables it. The remedy
        /// for likelihood displacement (the chosen answers' likelihood falling during DPO). Null (the default):
        /// <see cref="TrainingDefaults.RpoAlpha"/> (1) with the default loss (<see cref="LossKind"/> Sigmoid, <see cref="LossKinds"/>
        /// null), 0 with any loss or list of losses chosen explicitly.
        /// </summary>
        public double? RpoAlpha { get; set; }

        /// <summary>The NLL weight in effect: <see cref="RpoAlpha"/>, or its default for the chosen losses.</summary>
        internal double EffectiveRpoAlpha => RpoAlpha ?? (LossKinds is null && LossKind == PreferenceLossKind.Sigmoid ? TrainingDefaults.RpoAlpha : 0);
        /// <summary>Label smoothing ε for Sigmoid (conservative DPO), Robust, ExoPair, Aot, AotUnpaired, SimPO and Cpo (CLI <c>--label-smoothing</c>). Default 0.</summary>
        public double LabelSmoothing { get; set; }
        /// <summary>SimPO's target reward margin γ (CLI <c>--simpo-gamma</c>). Default 0.5.</summary>
        public double SimPOGamma { get; set; } = 0.5;
        /// <summary>DiscoPOP's temperature τ (CLI <c>--discopop-tau</c>). Default 0.05.</summary>
        public double DiscoPopTau { get; set; } = 0.05;
        /// <summary>The weight of CPO's own NLL term (CLI <c>--cpo-alpha</c>). Default 1.</summary>
        public double CpoAlpha { get; set; } = 1.0;
        /// <summary>The divergence regularising toward the reference (CLI <c>--f-divergence</c>). Default <see cref="FDivergenceKind.ReverseKL"/> (DPO).</summary>
        public FDivergenceKind FDivergence { get; set; } = FDivergenceKind.ReverseKL;
        /// <summary>The α of <see cref="FDivergenceKind.AlphaDivergence"/> (CLI <c>--alpha-divergence-coef</c>). Default 0.5.</summary>
        public double AlphaDivergenceCoefficient { get; set; } = 0.5;
        /// <summary>
        /// LD-DPO's α (Liu et al., 2024, "Length Desensitization in Direct Preference Optimization"; CLI <c>--ld-alpha</c>):
        /// the completion tokens beyond the shorter completion of each pair count α times in the policy's and the reference's
        /// log-probs, <c>shared + α·tail</c>. In [0, 1]; null (the default) is plain DPO (= 1).
        /// </summary>
        public double? LdAlpha { get; set; }
        /// <summary>
        /// WPO weighting (Zhou et al., 2024; CLI <c>--use-weighting</c>): each pair's loss is multiplied by the product of its
        /// completions' length-normalised, sampling-aligned probabilities. Not with Aot or AotUnpaired. Default false.
        /// </summary>
        public bool UseWeighting { get; set; }
        /// <summary>
        /// TR-DPO (Gorbatovski et al., 2024; CLI <c>--sync-ref-steps</c>): every this many optimizer steps the reference is
        /// updated to <c>α·policy + (1 − α)·reference</c> (α = <see cref="SyncReferenceAlpha"/>); 0 (the default) keeps it
        /// frozen. 1 with α &lt; 1 is the soft update every step; α = 1 is the hard copy every N steps. Not with LoRA (the
        /// reference is the base model with adapters off), <see cref="PrecomputeReferenceLogProbs"/> or <see cref="TrainingOptions.Resume"/>.
        /// </summary>
        public int SyncReferenceSteps { get; set; }
        /// <summary>TR-DPO's mixing weight α of the policy, in (0, 1] (CLI <c>--sync-ref-alpha</c>). Default 0.6 (TRL's <c>ref_model_mixup_alpha</c>).</summary>
        public double SyncReferenceAlpha { get; set; } = 0.6;
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

        /// <summary>The losses with β as given, or TRL's 0.1 when automatic (for checks that do not depend on β's value; training uses <see cref="LossOptionsWith"/>).</summary>
        internal PreferenceLossOptions LossOptions => LossOptionsWith(Beta ?? TrainingDefaults.PretrainedDpoBeta);

        /// <summary>The losses with the resolved β.</summary>
        internal PreferenceLossOptions LossOptionsWith(double beta)
        {
            var kinds = (LossKinds ?? [LossKind]).ToList();
            var weights = (LossWeights ?? (LossKinds is null ? [1.0] : LossKinds.Select(_ => 1.0).ToArray())).ToList();
            double rpoAlpha = EffectiveRpoAlpha;
            if (rpoAlpha > 0)
            {
                if (kinds.Contains(PreferenceLossKind.Sft))
                    throw new ArgumentException("RpoAlpha adds PreferenceLossKind.Sft to the losses, which already list it; give its weight in LossWeights or RpoAlpha, not both.", nameof(RpoAlpha));
                kinds.Add(PreferenceLossKind.Sft);
                weights.Add(rpoAlpha);
            }
            bool single = kinds.Count == 1 && weights.Count == 1 && weights[0] == 1;
            return new()
            {
                Kind = single ? kinds[0] : PreferenceLossKind.Sigmoid, Kinds = single ? null : kinds, Weights = single ? null : weights,
                Beta = beta, LabelSmoothing = LabelSmoothing, Gamma = SimPOGamma, DiscoPopTau = DiscoPopTau, CpoAlpha = CpoAlpha,
                FDivergence = FDivergence, AlphaDivergenceCoefficient = AlphaDivergenceCoefficient,
            };
        }

        internal DpoStepOptions StepOptions => new(LdAlpha, UseWeighting, SyncReferenceSteps, SyncReferenceAlpha, PaddingFree);

        /// <inheritdoc />
        public override void Validate()
        {
            base.Validate();
            if (LossKinds is not null && LossKind != PreferenceLossKind.Sigmoid && !LossKinds.Contains(LossKind))
                throw new ArgumentException($"LossKind is {LossKind} but LossKinds is [{string.Join(", ", LossKinds)}]; set one of them.", nameof(LossKind));
            if (LossWeights is not null && LossWeights.Count != (LossKinds?.Count ?? 1))
                throw new ArgumentException($"LossWeights has {LossWeights.Count} entries for {LossKinds?.Count ?? 1} loss kind(s); give one weight per kind.", nameof(LossWeights));
            if (RpoAlpha is double alpha && (!(alpha >= 0) || double.IsInfinity(alpha))) throw new ArgumentOutOfRangeException(nameof(RpoAlpha), alpha, "RpoAlpha must be a finite number ≥ 0.");
            var loss = LossOptions;
            loss.Validate();
            if (LdAlpha is double ld && !(ld >= 0 && ld <= 1))
                throw new ArgumentOutOfRangeException(nameof(LdAlpha), ld, "LdAlpha must lie in [0, 1]: 1 is plain DPO, 0 ignores the tokens beyond the shorter completion.");
            var sorting = loss.Terms.Select(t => t.Kind).Where(k => k is PreferenceLossKind.Aot or PreferenceLossKind.AotUnpaired).ToList();
            if (UseWeighting && sorting.Count > 0)
                throw new ArgumentException($"UseWeighting (WPO) cannot be combined with PreferenceLossKind.{sorting[0]}: it sorts the pairs over the batch, which would misalign the per-pair weights.", nameof(UseWeighting));
            if (SyncReferenceSteps < 0) throw new ArgumentOutOfRangeException(nameof(SyncReferenceSteps), SyncReferenceSteps, "SyncReferenceSteps must not be negative (0 keeps the reference frozen).");
            if (!(SyncReferenceAlpha > 0 && SyncReferenceAlpha <= 1))
                throw new ArgumentOutOfRangeException(nameof(SyncReferenceAlpha), SyncReferenceAlpha, "SyncReferenceAlpha must lie in (0, 1]: the policy's weight in the updated reference.");
            if (SyncReferenceSteps > 0)
            {
                if (PrecomputeReferenceLogProbs)
                    throw new ArgumentException("SyncReferenceSteps (TR-DPO) updates the reference during training, so precomputed reference log-probs would be stale; set PrecomputeReferenceLogProbs = false.", nameof(SyncReferenceSteps));
                if (Lora is not null)
                    throw new NotSupportedException("SyncReferenceSteps (TR-DPO) is not supported with LoRA: the reference is the base model with the adapters switched off, and syncing it would need a second reference adapter, which is not implemented. Train all weights, or leave SyncReferenceSteps at 0.");
                if (!loss.RequiresReference)
                    throw new ArgumentException($"SyncReferenceSteps (TR-DPO) updates the reference model, but {loss} is reference-free.", nameof(SyncReferenceSteps));
                if (Resume)
                    throw new NotSupportedException("SyncReferenceSteps (TR-DPO) cannot resume: checkpoints do not store the updated reference weights, so a resumed run would compare with a different reference. Start afresh (Resume = false).");
            }
            if (Reference == ReferenceModelSource.Separate && ReferenceModel is null && string.IsNullOrWhiteSpace(ReferenceModelPath))
                throw new ArgumentException("Reference = Separate needs ReferenceModel or ReferenceModelPath.", nameof(ReferenceModelPath));
        }
    }

    readonly IHostEnvironment? env;
    readonly Options options;
    (int Index, int Count)? referenceShard;   // set by PrecomputeReferenceShard for one pass through Fit

    /// <summary>
    /// Computes shard <paramref name="index"/> of <paramref name="count"/> of the precomputed reference log-probabilities of
    /// <paramref name="input"/> — the batches <c>b</c> of <see cref="TrainingOptions.BatchSize"/> pairs with <c>b mod count = index</c> —
    /// and writes it as a shard file (JSON lines keyed by record) into <see cref="TrainingOptions.CheckpointDirectory"/>; no
    /// training. Once every shard is there, <see cref="Fit"/> joins them into its reference cache (equal, bit for bit, to
    /// computing it in one pass) instead of running the reference. For array jobs (Slurm, Kubernetes indexed Jobs) without MPI.
    /// </summary>
    /// <returns>The shard file's path.</returns>
    public string PrecomputeReferenceShard(IDataView input, int index, int count)
    {
        if (count < 1 || index < 0 || index >= count) throw new ArgumentOutOfRangeException(nameof(index), $"Shard {index}/{count}: the index must lie in 0 … count − 1.");
        if (!options.PrecomputeReferenceLogProbs || options.CheckpointDirectory is null)
            throw new ArgumentException("Sharded reference precomputation needs PrecomputeReferenceLogProbs (--precompute-reference) and a CheckpointDirectory, where the shard files go.");
        referenceShard = (index, count);
        try
        {
            Fit(input).Dispose();
            throw new InvalidOperationException($"{options.LossOptions} uses no reference model, so there are no reference log-probs to precompute.");
        }
        catch (ReferenceShardWrittenException written)
        {
            return written.Path;
        }
        finally
        {
            referenceShard = null;
        }
    }

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
        LanguageModel? ownedReference = null, syncedReference = null;
        try
        {
            var examples = FineTuningRun.TokenizePairs(policy, pairs, options, report, log);
            log($"DPO data: {report}.");
            List<TokenizedPreference>? validation = null;
            if (options.ValidationData is { } validationData)
                validation = FineTuningRun.TokenizePairs(policy, options.ReadPairs(validationData, new DataPreparationReport()), options, new DataPreparationReport());

            var loss = options.LossOptionsWith(TrainingDefaults.ResolveDpoBeta(options.Beta, policy, log));
            // The reference: a separate model, the LoRA policy with its adapters disabled, the caller's untouched base model,
            // or a frozen copy of the starting policy.
            var adapters = options.Reference == ReferenceModelSource.FrozenCopyOfBase ? policy.Lora : null;
            LanguageModel? reference = null;
            if (loss.RequiresReference && adapters is null)
            {
                if (options.Reference == ReferenceModelSource.Separate)
                    reference = options.ReferenceModel ?? (ownedReference = LanguageModel.Load(options.ReferenceModelPath!, options.Precision, Distributed.DistributedWorld.Current.DeviceFor(options.Device)));
                else if (options.BaseModel is not null)
                    reference = options.BaseModel;
                else if (!options.PrecomputeReferenceLogProbs)
                    reference = ownedReference = policy.Clone();
                else
                    reference = policy; // before training the policy *is* the reference: no copy needed for one pass
                reference.Network.eval();
            }

            // Evaluation by generation compares with the reference's answers, generated now, before a precomputation frees it.
            var evaluation = FineTuningRun.CreateEvaluation(options, log);
            evaluation?.GenerateReferenceAnswers(options.Reference == ReferenceModelSource.Separate && reference is not null ? reference : policy);   // else the start is the reference

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
                        referenceNetwork, set, options.BatchSize, policy.PadTokenId, options.CheckpointDirectory, log, options.CancellationToken, key,
                        ReferenceEquals(set, examples) ? referenceShard : null);
                    referenceLogProbs = Precompute(examples);
                    if (validation is not null) validationReferenceLogProbs = Precompute(validation);
                }
                if (ownedReference is not null) { ownedReference.Dispose(); ownedReference = null; }
                if (adapters is null) reference = options.ReferenceModel ?? options.BaseModel; // kept only when the caller owns it
            }
            else if (referenceNetwork is not null && options.SyncReferenceSteps > 0)
            {
                // TR-DPO moves the reference during training: train against a private copy (the caller's models stay untouched),
                // validate against the starting reference, and give the fitted model the starting reference too.
                if (ownedReference is not null) { syncedReference = ownedReference; ownedReference = null; reference = null; }   // a copy the run made: sync it
                else syncedReference = reference!.Clone();                                                                 // the caller's model: sync a copy
                syncedReference.Network.eval();
                referenceLogProbs = new ReferenceLogProbs.Live(syncedReference.Network);
                validationReferenceLogProbs = reference is not null ? new ReferenceLogProbs.Live(reference.Network) : null;
            }
            else if (referenceNetwork is not null)
            {
                referenceLogProbs = validationReferenceLogProbs = new ReferenceLogProbs.Live(referenceNetwork, enterReference);
            }

            var step = options.StepOptions;
            double learningRate = TrainingDefaults.ResolveLearningRate(options, TrainingStage.PreferenceOptimization, policy, log);
            if (options.RpoAlpha is null && options.EffectiveRpoAlpha > 0)
                log($"Loss: sigmoid DPO plus the NLL of the chosen answers at weight {options.EffectiveRpoAlpha:G} (RPO, the default; RpoAlpha = 0 or --rpo-alpha 0 for plain DPO).");
            double warmupRatio = TrainingDefaults.ResolveWarmupRatio(options, TrainingStage.PreferenceOptimization, log);
            string fingerprint = FineTuningRun.Fingerprint(policy, FineTuningRun.Summary(options, learningRate, warmupRatio) + $";dpo;{loss};{step};ref={options.Reference}",
                examples.SelectMany(e => new[] { e.Prompt, e.Chosen, e.Rejected }));
            var guard = loss.RequiresReference ? new LikelihoodDisplacementGuard(runLog.Warn) : null;
            var objective = FineTuningRun.WithRouterLosses(new DpoObjective(policy.Network, referenceLogProbs, loss, step, policy.PadTokenId, guard), policy.Network, options);
            var summary = FineTuningRun.Train(options, policy, objective, fingerprint, log, evaluation, examples, learningRate, warmupRatio);
            if (syncedReference is not null)
            {
                syncedReference.Dispose();
                syncedReference = null;
            }

            IReadOnlyDictionary<string, double>? validationMetrics = null;
            if (validation is not null)
            {
                if (validationReferenceLogProbs is null && loss.RequiresReference)
                {
                    // TR-DPO with a reference the run owned (a copy of the start, or loaded from ReferenceModelPath): validate against the start, reloaded.
                    ownedReference = LanguageModel.Load(options.Reference == ReferenceModelSource.Separate ? options.ReferenceModelPath! : options.BaseModelPath!, options.Precision, Distributed.DistributedWorld.Current.DeviceFor(options.Device));
                    ownedReference.Network.eval();
                    validationReferenceLogProbs = new ReferenceLogProbs.Live(ownedReference.Network);
                }
                var validationObjective = FineTuningRun.WithRouterLosses(
                    new DpoObjective(policy.Network, validationReferenceLogProbs, loss, step with { SyncSteps = 0 }, policy.PadTokenId), policy.Network, options);
                validationMetrics = Evaluation.Average(validationObjective, validation, options.BatchSize, "eval/");
                log("DPO validation: " + string.Join(" ", validationMetrics.Select(kv => $"{kv.Key}={kv.Value:G4}")));
            }

            // With LoRA and no separate reference, the fitted model's own disabled adapters give the reference.
            string? referencePath = options.Reference == ReferenceModelSource.Separate ? options.ReferenceModelPath : adapters is not null ? null : options.BaseModelPath;
            var transformer = new LanguageModelTransformer(policy, reference ?? ownedReference, loss.Beta, options.PromptColumnName,
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
            syncedReference?.Dispose();
            throw;
        }
    }
}
