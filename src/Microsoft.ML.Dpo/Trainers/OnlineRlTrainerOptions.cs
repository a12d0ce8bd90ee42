using Microsoft.ML.Data;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Generation;
using Microsoft.ML.Dpo.Reinforcement;
using Microsoft.ML.Dpo.Training;
using Microsoft.ML.Runtime;

namespace Microsoft.ML.Dpo.Trainers;

/// <summary>
/// Options shared by the online RL trainers (GRPO, RLOO): prompts in, K completions per prompt sampled from the current policy,
/// rewarded by <see cref="Rewards"/>. <see cref="TrainingOptions.BatchSize"/> counts prompts: a micro-batch holds
/// BatchSize × <see cref="NumGenerations"/> completions (TRL's <c>per_device_train_batch_size</c> counts completions instead).
/// </summary>
public abstract class OnlineRlTrainerOptions : LanguageModelTrainerOptions
{
    /// <summary>The prompt column (text). Default "prompt". Other columns (e.g. a pairs file's chosen and rejected) are ignored.</summary>
    public string PromptColumnName { get; set; } = "prompt";
    /// <summary>The rewards, summed with their weights (at least one): reward models, judges, C# functions (<see cref="RewardFunction"/>).</summary>
    public IReadOnlyList<RewardFunction> Rewards { get; set; } = [];
    /// <summary>Completions sampled per prompt, K (TRL's <c>num_generations</c>); at least 2. Default 8.</summary>
    public int NumGenerations { get; set; } = 8;
    /// <summary>The most new tokens per completion (TRL's <c>max_completion_length</c>); longer ones are cut and flagged. Default 256.</summary>
    public int MaxCompletionLength { get; set; } = 256;
    /// <summary>Sampling temperature (&gt; 0); the log-probs of the loss use the same temperature, as TRL does. Default 1.</summary>
    public double Temperature { get; set; } = 1.0;
    /// <summary>Nucleus sampling: only the most likely tokens whose probabilities sum to P (1: off). Default 1.</summary>
    public double TopP { get; set; } = 1.0;
    /// <summary>Sample only among the K most likely tokens (0: off). Default 0.</summary>
    public int TopK { get; set; }
    /// <summary>Leave completions cut at <see cref="MaxCompletionLength"/> out of the loss (TRL's <c>mask_truncated_completions</c>). Default false.</summary>
    public bool MaskTruncatedCompletions { get; set; }

    /// <summary>β, the weight of the KL penalty toward the reference model (the starting policy; with LoRA, the adapters off); 0 creates no reference at all.</summary>
    public abstract double Beta { get; set; }

    /// <summary>Creates options with TRL's learning rate for online RL (1e-6; small models on a CPU learn faster with ~1e-4).</summary>

    /// <inheritdoc />
    public override void Validate()
    {
        base.Validate();
        if (Rewards is null || Rewards.Count == 0) throw new ArgumentException("Give at least one reward (Rewards): a reward model, a judge or a C# function (RewardFunction).", nameof(Rewards));
        if (NumGenerations < 2) throw new ArgumentOutOfRangeException(nameof(NumGenerations), NumGenerations, "NumGenerations must be at least 2: the advantages compare the completions of a prompt.");
        if (MaxCompletionLength < 1) throw new ArgumentOutOfRangeException(nameof(MaxCompletionLength), MaxCompletionLength, "MaxCompletionLength must be at least 1.");
        if (!(Temperature > 0) || double.IsInfinity(Temperature)) throw new ArgumentOutOfRangeException(nameof(Temperature), Temperature, "Temperature must be a finite number > 0: online RL samples.");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentOutOfRangeException(nameof(TopP), TopP, "TopP must lie in (0, 1].");
        if (TopK < 0) throw new ArgumentOutOfRangeException(nameof(TopK), TopK, "TopK must not be negative (0 disables it).");
        if (!(Beta >= 0) || double.IsInfinity(Beta)) throw new ArgumentOutOfRangeException(nameof(Beta), Beta, "Beta must be a finite number ≥ 0.");
    }

    internal GenerationOptions Generation => new() { MaxNewTokens = MaxCompletionLength, Temperature = Temperature, TopP = TopP, TopK = TopK };

    internal string Summary => $"k={NumGenerations};maxnew={MaxCompletionLength};t={Temperature:R};topp={TopP:R};topk={TopK};beta={Beta:R};masktrunc={MaskTruncatedCompletions};" +
        "rewards=" + string.Join(",", Rewards.Select(r => $"{r.Name}*{r.Weight:R}"));
}

/// <summary>What GRPO and RLOO share around the loop: prompts, the reference, the epoch order, the fitted transformer.</summary>
internal static class OnlineRlRun
{
    /// <summary>
    /// The reference model of a run: none when β = 0 (nothing is created), the policy with its adapters off under LoRA, the
    /// caller's base model when given in memory (not modified), else a frozen copy of the start. <paramref name="owned"/> is the copy, if one was made.
    /// </summary>
    public static ReferencePolicy? Reference(OnlineRlTrainerOptions options, LanguageModel policy, out LanguageModel? owned, out LanguageModel? inMemory)
    {
        owned = inMemory = null;
        if (options.Beta == 0) return null;
        if (policy.Lora is { } adapters) return new ReferencePolicy(policy.Network, adapters.Disable);
        inMemory = options.BaseModel ?? (owned = policy.Clone());
        inMemory.Network.eval();
        return new ReferencePolicy(inMemory.Network);
    }

    /// <summary>
    /// The example order of an epoch: the loop's seeded shuffle, cut into micro-batches of <paramref name="batchSize"/> prompts,
    /// each presented <paramref name="iterations"/> times in a row (TRL's repeat sampler); a short last batch is filled from the epoch's start.
    /// </summary>
    public static int[] RepeatedOrder(int count, int seed, int epoch, int batchSize, int iterations)
    {
        var shuffled = TrainingLoop<int>.ShuffledOrder(count, seed, epoch);
        if (iterations == 1) return shuffled;
        var order = new List<int>();
        for (int start = 0; start < count; start += batchSize)
        {
            var chunk = Enumerable.Range(start, batchSize).Select(i => shuffled[i % count]).ToArray();
            for (int r = 0; r < iterations; r++) order.AddRange(chunk);
        }
        return order.ToArray();
    }

    /// <summary>Fits a GRPO or RLOO run.</summary>
    public static LanguageModelTransformer Fit(IHostEnvironment? env, IDataView input, OnlineRlTrainerOptions options, string component, OnlineRlSettings settings) =>
        Fit(env, input, options, component, settings.ToString(), settings.NumIterations, (policy, tokenizer, reference) =>
            new OnlineRlObjective(policy.Network, tokenizer, reference, options.Rewards, settings, policy.PadTokenId, options.CancellationToken));

    /// <summary>
    /// Reads and tokenizes the prompts, creates the reference (<see cref="Reference"/>), and runs the loop with the objective
    /// <paramref name="objective"/> makes, presenting each micro-batch <paramref name="iterations"/> times in a row.
    /// </summary>
    public static LanguageModelTransformer Fit(IHostEnvironment? env, IDataView input, OnlineRlTrainerOptions options, string component, string summary, int iterations,
        Func<LanguageModel, Tokenization.TextTokenizer, ReferencePolicy?, ITrainingObjective<TokenizedPrompt>> objective)
    {
        options.Validate();
        using var runLog = new FineTuningRun.RunLog(env, options, component);
        Action<string> log = runLog.Write;
        TrainingCheckpoint.Prepare(options, log);
        var report = new DataPreparationReport();
        var rows = ExampleReader.ReadPrompts(input, options.PromptColumnName, options.SkipInvalidRows, report, options.CancellationToken);
        var policy = FineTuningRun.LoadPolicy(options);
        LanguageModel? owned = null;
        try
        {
            var tokenizer = policy.RequireTokenizer();
            int context = policy.Network.Config.MaxPositionEmbeddings;
            int maxPrompt = Math.Min(options.MaxPromptLength, context - 1);
            var prompts = new List<TokenizedPrompt>(rows.Count);
            foreach (var (text, row) in rows)
            {
                options.CancellationToken.ThrowIfCancellationRequested();
                int[] ids = policy.EncodePrompt(text);
                if (ids.Length > maxPrompt) { ids = options.Truncation == TruncationMode.KeepEnd ? ids[^maxPrompt..] : ids[..maxPrompt]; report.Truncated++; }
                prompts.Add(new TokenizedPrompt(text, ids, row, prompts.Count));
            }
            report.Kept = prompts.Count;
            log($"{component} data: {report}.");
            var reference = Reference(options, policy, out owned, out var inMemory);
            log(reference is null ? "Reference model: none (β = 0)." : policy.Lora is not null ? "Reference model: the policy with its LoRA adapters off."
                : owned is not null ? "Reference model: a frozen copy of the starting model." : "Reference model: the base model given in memory.");
            double learningRate = TrainingDefaults.ResolveLearningRate(options, TrainingStage.OnlineReinforcement, policy, log);
            string fingerprint = FineTuningRun.Fingerprint(policy, FineTuningRun.Summary(options, learningRate) + $";{component};{options.Summary};{summary}", prompts.Select(p => p.Ids));
            var step = FineTuningRun.WithRouterLosses(objective(policy, tokenizer, reference), policy.Network, options);
            policy.Network.train();
            if (Distributed.DistributedWorld.Current.Size > 1)
                throw new NotSupportedException($"{component} does not run data parallel yet (each rank would sample its own rollouts, which is not checked against one process); launch it as one process.");
            var trained = new TrainingLoop<TokenizedPrompt>(options, FineTuningRun.Trainable(policy), step, FineTuningRun.Checkpoint(options, policy), fingerprint, log,
                order: epoch => RepeatedOrder(prompts.Count, options.Seed, epoch, options.BatchSize, iterations), learningRate: learningRate).Run(prompts);
            policy.Network.eval();
            var transformer = new LanguageModelTransformer(policy, owned ?? inMemory, options.Beta, options.PromptColumnName, ownsReference: owned is not null,
                referencePath: owned is null && inMemory is null && policy.Lora is null && options.Beta != 0 ? options.BaseModelPath : null)
            {
                TrainingSummary = trained, DataReport = report,
            };
            owned = null;
            return transformer;
        }
        catch
        {
            policy.Dispose();
            owned?.Dispose();
            throw;
        }
    }

    /// <summary>Checks that the prompt column exists and is text, and adds the response column.</summary>
    public static SchemaShape OutputSchema(SchemaShape inputSchema, OnlineRlTrainerOptions options)
    {
        TextColumns.Check(inputSchema, ("prompt", options.PromptColumnName));
        return SchemaShapes.WithColumns(inputSchema, [(LanguageModelTransformer.DefaultResponseColumn, TextDataViewType.Instance)]);
    }
}
