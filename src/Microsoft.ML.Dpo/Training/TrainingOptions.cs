using Microsoft.ML.Dpo.Data;

namespace Microsoft.ML.Dpo.Training;

/// <summary>How the learning rate evolves after warm-up.</summary>
public enum LearningRateScheduleKind
{
    /// <summary>Constant after warm-up.</summary>
    Constant,
    /// <summary>Linear decay to zero at the last step (the Hugging Face default).</summary>
    Linear,
    /// <summary>Half-cosine decay to zero at the last step.</summary>
    Cosine,
}

/// <summary>The numeric precision of model weights and activations.</summary>
public enum ModelPrecision
{
    /// <summary>32-bit floats (the default; the only precision that trains well on a CPU).</summary>
    Float32,
    /// <summary>bfloat16 weights and activations; norms and softmax are computed in float32.</summary>
    BFloat16,
    /// <summary>float16 weights and activations (GPU only in practice).</summary>
    Float16,
}

/// <summary>Which end of a too-long prompt is kept.</summary>
public enum TruncationMode
{
    /// <summary>Keep the end of the prompt (closest to the completion). The default.</summary>
    KeepEnd,
    /// <summary>Keep the start of the prompt.</summary>
    KeepStart,
}

/// <summary>What training does when its checkpoint folder already holds a checkpoint of an earlier run.</summary>
public enum ExistingCheckpointAction
{
    /// <summary>Fail before training, saying to resume or restart (the default), so an earlier run is never overwritten by accident.</summary>
    Refuse,
    /// <summary>Continue from the checkpoint (the same data and options are required); start afresh when there is none.</summary>
    Resume,
    /// <summary>Discard the checkpoint and the metrics of the earlier run, and start afresh.</summary>
    Restart,
}

/// <summary>
/// Options every fine-tuning trainer shares: the optimisation schedule, the length limits, checkpoints and logging.
/// The learning rate is chosen by the model's origin unless set (<see cref="Trainers.TrainingDefaults"/>).
/// </summary>
public class TrainingOptions
{
    /// <summary>Passes over the training data. Default 1.</summary>
    public int Epochs { get; set; } = 1;
    /// <summary>
    /// Examples per micro-batch (for DPO, pairs: each contributes a chosen and a rejected sequence), over all ranks of a
    /// data-parallel run (see <see cref="PerRankBatchSize"/>). Default 4.
    /// </summary>
    public int BatchSize { get; set; } = 4;
    /// <summary>
    /// Data parallelism (an MPI launch, <see cref="Distributed.DistributedWorld"/>): the most examples a rank runs in one
    /// forward pass. Each rank takes a contiguous share of ⌈<see cref="BatchSize"/> ÷ ranks⌉ examples of every micro-batch
    /// and runs it in passes of this size, which bounds its memory without changing the result. 0 (the default): the whole share at once.
    /// </summary>
    public int PerRankBatchSize { get; set; }
    /// <summary>Micro-batches whose gradients are summed before each optimizer step. Default 1.</summary>
    public int GradientAccumulationSteps { get; set; } = 1;
    /// <summary>
    /// Peak AdamW learning rate. Null (the default of SFT and DPO) chooses it by the model's origin and logs it
    /// (<see cref="Trainers.TrainingDefaults.LearningRate"/>): 3e-3 for a model trained from scratch (an <c>mldpo init</c> preset
    /// and what is trained from it), else 2e-5 for SFT and 1e-6 for DPO, TRL's defaults for pretrained models.
    /// </summary>
    public double? LearningRate { get; set; }
    /// <summary>AdamW decoupled weight decay. Default 0.</summary>
    public double WeightDecay { get; set; }
    /// <summary>Optimizer steps of linear warm-up from zero to <see cref="LearningRate"/>. Default 0.</summary>
    public int WarmupSteps { get; set; }
    /// <summary>Decay after warm-up. Default <see cref="LearningRateScheduleKind.Linear"/>.</summary>
    public LearningRateScheduleKind Schedule { get; set; } = LearningRateScheduleKind.Linear;
    /// <summary>Gradients are clipped to this global L2 norm; 0 or less disables clipping. Default 1.</summary>
    public double MaxGradNorm { get; set; } = 1.0;
    /// <summary>Seed for data order and initialisation; the same seed gives the same run. Default 42.</summary>
    public int Seed { get; set; } = 42;
    /// <summary>Longest prompt + completion in tokens; longer sequences are truncated and counted. Default 512.</summary>
    public int MaxLength { get; set; } = 512;
    /// <summary>Longest prompt in tokens, truncated per <see cref="Truncation"/>. Default 256.</summary>
    public int MaxPromptLength { get; set; } = 256;
    /// <summary>Which end of a too-long prompt is kept. Default <see cref="TruncationMode.KeepEnd"/>.</summary>
    public TruncationMode Truncation { get; set; } = TruncationMode.KeepEnd;
    /// <summary>Skip rows with a null or empty value (counted) instead of failing. Default false.</summary>
    public bool SkipInvalidRows { get; set; }
    /// <summary>"auto" (CUDA when available), "cpu", "cuda" or "cuda:N". Default "auto".</summary>
    public string Device { get; set; } = "auto";
    /// <summary>Weight precision. Default <see cref="ModelPrecision.Float32"/>.</summary>
    public ModelPrecision Precision { get; set; } = ModelPrecision.Float32;
    /// <summary>Folder for checkpoints and the metrics file (metrics.jsonl); null keeps nothing on disk. Default null.</summary>
    public string? CheckpointDirectory { get; set; }
    /// <summary>Optimizer steps between checkpoints (0: only at the end, on cancellation and before a failure). Default 0.</summary>
    public int CheckpointInterval { get; set; }
    /// <summary>
    /// What to do when <see cref="CheckpointDirectory"/> already holds a checkpoint of an earlier run: refuse (the default),
    /// resume it, or discard it and restart. Stale temporary folders of an interrupted checkpoint write are removed either way.
    /// </summary>
    public ExistingCheckpointAction ExistingCheckpoint { get; set; }
    /// <summary>
    /// Resume from the checkpoint in <see cref="CheckpointDirectory"/> when there is one: the same as
    /// <see cref="ExistingCheckpoint"/> = <see cref="ExistingCheckpointAction.Resume"/>. Default false.
    /// </summary>
    public bool Resume
    {
        get => ExistingCheckpoint == ExistingCheckpointAction.Resume;
        set => ExistingCheckpoint = value ? ExistingCheckpointAction.Resume
            : ExistingCheckpoint == ExistingCheckpointAction.Resume ? ExistingCheckpointAction.Refuse : ExistingCheckpoint;
    }
    /// <summary>Optimizer steps between metric reports. Default 10.</summary>
    public int LoggingInterval { get; set; } = 10;
    /// <summary>Stop after this many optimizer steps (0: no limit besides <see cref="Epochs"/>). Default 0.</summary>
    public int MaxSteps { get; set; }
    /// <summary>
    /// Gradient checkpointing: the training forward passes keep only each decoder layer's input, and the backward pass
    /// recomputes the layer's activations (Hugging Face's <c>gradient_checkpointing</c>). Less memory for activations
    /// (they grow with batch × length × layers), at the cost of one more forward pass per step; the gradients are the
    /// same. On a GPU it needs LoRA dropout and MoE router jitter at 0 (their random draws cannot be replayed there).
    /// Default false.
    /// </summary>
    public bool GradientCheckpointing { get; set; }
    /// <summary>Receives the metrics at every logging step.</summary>
    public IProgress<TrainingProgress>? Progress { get; set; }
    /// <summary>Cancels training; a checkpoint is written first when <see cref="CheckpointDirectory"/> is set.</summary>
    public CancellationToken CancellationToken { get; set; }

    /// <summary>Checks value ranges; throws <see cref="ArgumentOutOfRangeException"/> naming the option.</summary>
    public virtual void Validate()
    {
        static void Positive(double v, string name) { if (!(v > 0)) throw new ArgumentOutOfRangeException(name, v, $"{name} must be positive."); }
        Positive(Epochs, nameof(Epochs));
        Positive(BatchSize, nameof(BatchSize));
        Positive(GradientAccumulationSteps, nameof(GradientAccumulationSteps));
        if (LearningRate is double rate) Positive(rate, nameof(LearningRate));
        Positive(MaxLength, nameof(MaxLength));
        Positive(MaxPromptLength, nameof(MaxPromptLength));
        Positive(LoggingInterval, nameof(LoggingInterval));
        if (PerRankBatchSize < 0) throw new ArgumentOutOfRangeException(nameof(PerRankBatchSize), PerRankBatchSize, "PerRankBatchSize must not be negative (0: the whole share of each rank).");
        if (WeightDecay < 0) throw new ArgumentOutOfRangeException(nameof(WeightDecay), WeightDecay, "WeightDecay must not be negative.");
        if (WarmupSteps < 0) throw new ArgumentOutOfRangeException(nameof(WarmupSteps), WarmupSteps, "WarmupSteps must not be negative.");
        if (MaxPromptLength >= MaxLength) throw new ArgumentOutOfRangeException(nameof(MaxPromptLength), MaxPromptLength, $"MaxPromptLength must be less than MaxLength ({MaxLength}).");
        if (Resume && CheckpointDirectory is null) throw new ArgumentException("Resume requires CheckpointDirectory.", nameof(Resume));
    }
}

/// <summary>Metrics reported at a logging step.</summary>
/// <param name="Step">Optimizer steps done.</param>
/// <param name="TotalSteps">Optimizer steps planned.</param>
/// <param name="Epoch">The current epoch (fractional).</param>
/// <param name="Metrics">Named values averaged over the steps since the last report (loss, rewards/accuracies, ...).</param>
/// <param name="Elapsed">Wall time since training started (this run).</param>
public sealed record TrainingProgress(int Step, int TotalSteps, double Epoch, IReadOnlyDictionary<string, double> Metrics, TimeSpan Elapsed)
{
    /// <summary>The remaining time at the pace so far, or null before the first step.</summary>
    public TimeSpan? EstimatedRemaining { get; init; }
}

/// <summary>Thrown when the loss or gradient norm becomes NaN or infinite; the weights of the last good step are kept.</summary>
public sealed class TrainingDivergedException(string message) : Exception(message);
