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

    /// <summary>Receives progress lines (the trainers also write them to ML.NET's log channel).</summary>
    public Action<string>? Log { get; set; }

    /// <inheritdoc />
    public override void Validate()
    {
        base.Validate();
        if (BaseModel is null && string.IsNullOrWhiteSpace(BaseModelPath))
            throw new ArgumentException("Set BaseModelPath (a Hugging Face directory or llama2.c file) or BaseModel.", nameof(BaseModelPath));
        Lora?.Validate();
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
