using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Lora;
using Microsoft.ML.Dpo.Training;

namespace Microsoft.ML.Dpo.Trainers;

/// <summary>Options shared by the language-model trainers: the starting model, validation data, and the training schedule.</summary>
public abstract class LanguageModelTrainerOptions : TrainingOptions
{
    /// <summary>A Hugging Face model directory or llama2.c file to start from (ignored when <see cref="BaseModel"/> is set).</summary>
    public string? BaseModelPath { get; set; }

    /// <summary>A model already in memory to start from. It is not modified: training works on a copy.</summary>
    public LanguageModel? BaseModel { get; set; }

    /// <summary>Data to evaluate on after training (same columns as the training data); null for none.</summary>
    public IDataView? ValidationData { get; set; }

    /// <summary>
    /// Train low-rank adapters (LoRA) instead of all weights: null (the default) is full fine-tuning. With LoRA only the
    /// adapter parameters are trained, DPO's default reference is the same network with its adapters disabled (no copy),
    /// checkpoints hold just the adapters, and the fitted model keeps them (<see cref="LanguageModel.Lora"/>).
    /// </summary>
    public LoraOptions? Lora { get; set; }

    /// <summary>
    /// The weight of the load-balancing auxiliary loss (Switch Transformer; transformers' <c>load_balancing_loss_func</c>) added to
    /// the objective when the model is a sparse mixture of experts (mixtral, qwen3_moe), logged as <c>aux_loss</c>. Null (the
    /// default) uses the model config's <c>router_aux_loss_coef</c> (0.001 unless the checkpoint says otherwise); 0 turns it off.
    /// Unlike transformers and TRL, which add it only when the config sets <c>output_router_logits</c>, it is on by default.
    /// Ignored for dense models.
    /// </summary>
    public double? RouterAuxLossCoefficient { get; set; }

    /// <summary>
    /// The weight of the router z-loss (ST-MoE: mean of logsumexp(router logits)² over real tokens) for MoE models, logged as
    /// <c>router_z_loss</c>. Default 0 (off), as in transformers' Mixtral and Qwen3-MoE.
    /// </summary>
    public double RouterZLossCoefficient { get; set; }

    /// <summary>
    /// Held-out prompts for evaluation by generation (CLI <c>--eval-data</c>): the policy answers them every
    /// <see cref="EvaluationSteps"/> steps and at the end, the reference's answers (DPO's reference model; the starting model for
    /// the other trainers) are generated once before training, and the run logs <c>eval/mean_length</c> (tokens),
    /// <c>eval/repeated_ngram_share</c> (the share of word bigrams that repeat within an answer), <c>eval/degenerate_rate</c>
    /// (the share of answers that loop: half or more of their word bigrams or character 4-grams repeat),
    /// <c>eval/reference_mean_length</c>, with <see cref="EvaluationJudge"/> <c>eval/win_rate</c> over the reference (ties ½),
    /// and three side-by-side samples in the log. Null (the default): off.
    /// </summary>
    public IReadOnlyList<string>? EvaluationPrompts { get; set; }
    /// <summary>Optimizer steps between evaluations by generation (CLI <c>--eval-steps</c>); 0 (the default): at the end only.</summary>
    public int EvaluationSteps { get; set; }
    /// <summary>
    /// Decides which answer is better for <c>eval/win_rate</c>: any <see cref="Feedback.IJudge"/> — a reward model, an
    /// <c>IChatClient</c> judge (<see cref="Feedback.ChatClientJudge"/>), a fitted ML.NET model (<see cref="Feedback.TransformerJudge"/>)
    /// or your own (CLI <c>--judge</c>). Null (the default): no win rate, only lengths and degeneration.
    /// </summary>
    public Feedback.IJudge? EvaluationJudge { get; set; }
    /// <summary>Decoding for evaluation by generation; null (the default): greedy, 64 new tokens.</summary>
    public Generation.GenerationOptions? EvaluationGeneration { get; set; }
    /// <summary>
    /// An evaluation metric (e.g. <c>eval/win_rate</c>, <c>eval/degenerate_rate</c>) that chooses the best model (CLI
    /// <c>--save-best</c>; Hugging Face's <c>metric_for_best_model</c> with <c>load_best_model_at_end</c>): the trainable weights
    /// of the best evaluation are kept (in memory, on the CPU) and the fitted model gets them at the end. Needs
    /// <see cref="EvaluationPrompts"/>. Null (the default): the fitted model is the last step's.
    /// </summary>
    public string? BestModelMetric { get; set; }
    /// <summary>
    /// Whether larger values of <see cref="BestModelMetric"/> are better (CLI <c>--save-best-mode max|min</c>). Null (the
    /// default): false for lengths, losses and degeneration measures (names containing <c>loss</c>, <c>length</c>,
    /// <c>repeated</c>, <c>degenerate</c> or <c>unjudged</c>), true otherwise.
    /// </summary>
    public bool? GreaterIsBetter { get; set; }
    /// <summary>
    /// Stop training after this many evaluations in a row without an improvement of <see cref="BestModelMetric"/> by more
    /// than <see cref="EarlyStoppingThreshold"/> (CLI <c>--early-stopping-patience</c>; Hugging Face's <c>EarlyStoppingCallback</c>);
    /// a checkpoint is written at the step it stops. 0 (the default): never.
    /// </summary>
    public int EarlyStoppingPatience { get; set; }
    /// <summary>How much <see cref="BestModelMetric"/> must beat its best value to count as an improvement (CLI <c>--early-stopping-threshold</c>). Default 0.</summary>
    public double EarlyStoppingThreshold { get; set; }

    /// <summary>The direction of <see cref="BestModelMetric"/>: <see cref="GreaterIsBetter"/>, or inferred from the metric's name.</summary>
    internal bool BestIsGreater => GreaterIsBetter ?? !new[] { "loss", "length", "repeated", "degenerate", "unjudged" }.Any(w => BestModelMetric!.Contains(w, StringComparison.OrdinalIgnoreCase));

    /// <summary>Receives progress lines (the trainers also write them to ML.NET's log channel).</summary>
    public Action<string>? Log { get; set; }

    /// <inheritdoc />
    public override void Validate()
    {
        base.Validate();
        if (BaseModel is null && string.IsNullOrWhiteSpace(BaseModelPath))
            throw new ArgumentException("Set BaseModelPath (a Hugging Face directory or llama2.c file) or BaseModel.", nameof(BaseModelPath));
        Lora?.Validate();
        if (RouterAuxLossCoefficient is double aux && !(aux >= 0 && double.IsFinite(aux)))
            throw new ArgumentOutOfRangeException(nameof(RouterAuxLossCoefficient), aux, "RouterAuxLossCoefficient must be null or a finite number ≥ 0.");
        if (!(RouterZLossCoefficient >= 0 && double.IsFinite(RouterZLossCoefficient)))
            throw new ArgumentOutOfRangeException(nameof(RouterZLossCoefficient), RouterZLossCoefficient, "RouterZLossCoefficient must be a finite number ≥ 0.");
        if (EvaluationPrompts is { Count: 0 }) throw new ArgumentException("EvaluationPrompts is empty; give at least one prompt, or leave it null to turn evaluation by generation off.", nameof(EvaluationPrompts));
        if (EvaluationSteps < 0) throw new ArgumentOutOfRangeException(nameof(EvaluationSteps), EvaluationSteps, "EvaluationSteps must not be negative (0: evaluate at the end only).");
        EvaluationGeneration?.Validate();
        if (BestModelMetric is not null && EvaluationPrompts is null)
            throw new ArgumentException($"BestModelMetric ('{BestModelMetric}') chooses among evaluations by generation; set EvaluationPrompts (--eval-data) too.", nameof(BestModelMetric));
        if (BestModelMetric == "eval/win_rate" && EvaluationJudge is null)
            throw new ArgumentException("BestModelMetric 'eval/win_rate' needs a judge: set EvaluationJudge (--judge).", nameof(BestModelMetric));
        if (EarlyStoppingPatience < 0) throw new ArgumentOutOfRangeException(nameof(EarlyStoppingPatience), EarlyStoppingPatience, "EarlyStoppingPatience must not be negative (0: never stop early).");
        if (EarlyStoppingPatience > 0 && BestModelMetric is null)
            throw new ArgumentException("EarlyStoppingPatience watches BestModelMetric; set it (--save-best METRIC) too.", nameof(EarlyStoppingPatience));
        if (!(EarlyStoppingThreshold >= 0 && double.IsFinite(EarlyStoppingThreshold)))
            throw new ArgumentOutOfRangeException(nameof(EarlyStoppingThreshold), EarlyStoppingThreshold, "EarlyStoppingThreshold must be a finite number ≥ 0.");
    }
}

/// <summary>Options of the trainers that learn from (prompt, chosen, rejected) text columns: DPO and the reward model.</summary>
public abstract class PreferenceTrainerOptions : LanguageModelTrainerOptions
{
    /// <summary>The prompt column (text). Default "prompt".</summary>
    public string PromptColumnName { get; set; } = "prompt";
    /// <summary>The preferred completion column (text). Default "chosen".</summary>
    public string ChosenColumnName { get; set; } = "chosen";
    /// <summary>The dispreferred completion column (text). Default "rejected".</summary>
    public string RejectedColumnName { get; set; } = "rejected";

    /// <summary>Checks that the three columns exist and are text (errors name the column and list those present).</summary>
    internal void CheckColumns(SchemaShape inputSchema) =>
        TextColumns.Check(inputSchema, ("prompt", PromptColumnName), ("chosen", ChosenColumnName), ("rejected", RejectedColumnName));

    /// <summary>Reads the pairs with the trainers' null/empty/identical-pair handling.</summary>
    internal List<PreferencePair> ReadPairs(IDataView data, DataPreparationReport report) =>
        ExampleReader.ReadPreferencePairs(data, PromptColumnName, ChosenColumnName, RejectedColumnName, SkipInvalidRows, report, CancellationToken);
}
