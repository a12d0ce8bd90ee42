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
