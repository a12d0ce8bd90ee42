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

/// <summary>
/// Mixed-precision training (<see cref="TrainingOptions.MixedPrecision"/>): the dtype the matmuls compute in over float32
/// master weights. Not the dtype of the weights themselves (<see cref="ModelPrecision"/>).
/// </summary>
public enum MixedPrecisionKind
{
    /// <summary>Every matmul in the weights' dtype (the default).</summary>
    None,
    /// <summary>bfloat16 matmuls (float32's range, 8 bits of mantissa): no loss scaling is needed.</summary>
    BFloat16,
    /// <summary>float16 matmuls (10 bits of mantissa, range ±65,504) with dynamic loss scaling.</summary>
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
    /// <summary>
    /// Passes over the training data. Default 3, Hugging Face's and TRL's <c>num_train_epochs</c> (with 1, a new user's SFT and DPO
    /// of a small model trained from scratch changed nothing: the README's *Defaults that work*).
    /// </summary>
    public int Epochs { get; set; } = 3;
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
    /// <summary>
    /// Padding-free batches for SFT, DPO, ORPO and KTO: the sequences of a micro-batch are packed one after another into a
    /// single row, positions restart at 0 for each, and attention runs sequence by sequence, so padding costs nothing
    /// (every architecture; log-probabilities, losses and gradients equal the padded batch's up to float rounding).
    /// Online RL, reward models, evaluation by generation and the precomputed reference pass stay padded. Default false.
    /// </summary>
    public bool PaddingFree { get; set; }
    /// <summary>
    /// Forms micro-batches by a token budget instead of <see cref="BatchSize"/> examples: examples are taken in the
    /// (seeded) shuffled order and a micro-batch closes before the example that would take it over this many tokens, as
    /// the step processes them — real tokens with <see cref="PaddingFree"/>, rows × the longest row when padded (a DPO
    /// pair counts both sequences). An example longer than the budget is a micro-batch alone. Every example is seen once
    /// per epoch, and a resumed run sees the same micro-batches. 0 (the default): off. Not with online RL.
    /// </summary>
    public int MaxTokensPerBatch { get; set; }
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
    /// <summary>Optimizer steps of linear warm-up from zero to <see cref="LearningRate"/>; when above 0 it overrides <see cref="WarmupRatio"/>. Default 0.</summary>
    public int WarmupSteps { get; set; }
    /// <summary>
    /// The share of the run's optimizer steps spent in linear warm-up when <see cref="WarmupSteps"/> is 0: ⌈ratio × total steps⌉
    /// (TRL's <c>warmup_ratio</c>), in [0, 1). Null (the default) is automatic, <see cref="Trainers.TrainingDefaults.WarmupRatio"/>
    /// of the trainer's stage: 0.1 for DPO (<see cref="Trainers.TrainingDefaults.DpoWarmupRatio"/>), 0 for the others.
    /// </summary>
    public double? WarmupRatio { get; set; }
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
    /// <summary>
    /// Mixed-precision training, distinct from <see cref="Precision"/> (the dtype of the weights themselves): the matmuls of
    /// the linear projections, LoRA adapters and output head run in bfloat16 or float16 over float32 master weights, which
    /// receive float32 gradients; AdamW's state, embeddings, norms, softmax, log-probabilities and the loss stay float32.
    /// <see cref="MixedPrecisionKind.Float16"/> adds dynamic loss scaling (PyTorch GradScaler's rule: start at 65,536; a
    /// step whose gradients overflow is skipped and logged, and the scale halved; doubled after 2,000 steps without overflow;
    /// saved in checkpoints). Needs <see cref="Precision"/> = Float32. On a CPU it pays only where the CPU multiplies
    /// bfloat16 natively (see the README's Performance section). Default <see cref="MixedPrecisionKind.None"/>.
    /// </summary>
    public MixedPrecisionKind MixedPrecision { get; set; }
    /// <summary>Float16 loss scaling's first scale (GradScaler's 2¹⁶); internal: tests start higher to provoke overflows.</summary>
    internal double InitialLossScale { get; set; } = LossScaler.InitialScale;
    /// <summary>Float16 loss scaling's steps without overflow before the scale doubles (GradScaler's 2,000); internal, for tests.</summary>
    internal int LossScaleGrowthInterval { get; set; } = LossScaler.GrowthInterval;
    /// <summary>
    /// Compute the completion tokens' log-probabilities chunk by chunk, so that no [tokens, vocabulary] logits tensor is
    /// kept for the whole step: the output head runs on <see cref="LogProbChunkSize"/> positions at a time and again in the
    /// backward pass (a fused linear + log-softmax + gather; the results equal the unchunked ones up to rounding).
    /// True: always; false: never; null (the default): when the vocabulary exceeds 32,768 tokens (Qwen's 151,936, Llama 3's
    /// 128,256, Gemma's 256,000 and GPT-2's 50,257 are chunked; Llama 2's and Mistral's 32,000 are not). Applies to every
    /// trainer that scores tokens (SFT, the DPO family, ORPO, KTO, online RL), to the policy and the reference.
    /// </summary>
    public bool? ChunkedLogProbs { get; set; }
    /// <summary>The vocabulary size above which <see cref="ChunkedLogProbs"/> = null chunks: 32,768.</summary>
    public const int ChunkedLogProbsVocabularyThreshold = 32_768;
    /// <summary>
    /// Positions per chunk of <see cref="ChunkedLogProbs"/>: the logits' temporaries are a few [chunk, vocabulary] tensors.
    /// Smaller saves memory, larger runs the output head in fewer, larger matrix products. Default 256.
    /// </summary>
    public int LogProbChunkSize { get; set; } = LogProbChunking.DefaultChunkSize;
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
    /// The peak FLOP/s of one device (one rank), e.g. its dense fp32 or bf16 tensor throughput, for the <c>mfu</c> metric
    /// (model FLOPs utilization: the achieved model FLOP/s — see <c>flops_per_second</c> — over this times the ranks). Null (the
    /// default): no <c>mfu</c>, only the achieved FLOP/s, since no peak is known reliably for every CPU and GPU (the benchmarks
    /// measure libtorch's own matmul throughput instead).
    /// </summary>
    public double? PeakFlops { get; set; }
    /// <summary>
    /// Gradient checkpointing: the training forward passes keep only each decoder layer's input, and the backward pass
    /// recomputes the layer's activations (Hugging Face's <c>gradient_checkpointing</c>). Less memory for activations
    /// (they grow with batch × length × layers), at the cost of one more forward pass per step; the gradients are the
    /// same. On a GPU it needs LoRA dropout and MoE router jitter at 0 (their random draws cannot be replayed there).
    /// Default false.
    /// </summary>
    public bool GradientCheckpointing { get; set; }
    /// <summary>
    /// On Linux with glibc: from the start of training, every freed block of 1 MiB or more goes back to the system at once.
    /// glibc otherwise keeps a step's freed activations in its heaps, where they fragment: the peak resident memory of a
    /// LoRA-DPO step of a 0.5B model measured 6.5 GB without this and 3.1 GB with it, for 1.03–1.35× the step time (page
    /// faults on fresh blocks; the README's Performance section). It applies to the whole process for the rest of its life
    /// (glibc's mallopt); elsewhere it does nothing (logged). Default true.
    /// </summary>
    public bool ReleaseFreedMemory { get; set; } = true;
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
        if (MaxTokensPerBatch < 0) throw new ArgumentOutOfRangeException(nameof(MaxTokensPerBatch), MaxTokensPerBatch, "MaxTokensPerBatch must not be negative (0: batches of BatchSize examples).");
        Positive(LogProbChunkSize, nameof(LogProbChunkSize));
        if (PerRankBatchSize < 0) throw new ArgumentOutOfRangeException(nameof(PerRankBatchSize), PerRankBatchSize, "PerRankBatchSize must not be negative (0: the whole share of each rank).");
        if (WeightDecay < 0) throw new ArgumentOutOfRangeException(nameof(WeightDecay), WeightDecay, "WeightDecay must not be negative.");
        if (WarmupSteps < 0) throw new ArgumentOutOfRangeException(nameof(WarmupSteps), WarmupSteps, "WarmupSteps must not be negative.");
        if (WarmupRatio is double ratio && !(ratio >= 0 && ratio < 1)) throw new ArgumentOutOfRangeException(nameof(WarmupRatio), ratio, "WarmupRatio must be in [0, 1).");
        if (MaxPromptLength >= MaxLength) throw new ArgumentOutOfRangeException(nameof(MaxPromptLength), MaxPromptLength, $"MaxPromptLength must be less than MaxLength ({MaxLength}).");
        if (PeakFlops is double peak) Positive(peak, nameof(PeakFlops));
        if (Resume && CheckpointDirectory is null) throw new ArgumentException("Resume requires CheckpointDirectory.", nameof(Resume));
        if (!Enum.IsDefined(MixedPrecision)) throw new ArgumentOutOfRangeException(nameof(MixedPrecision), MixedPrecision, "MixedPrecision must be None, BFloat16 or Float16.");
        if (MixedPrecision != MixedPrecisionKind.None && Precision != ModelPrecision.Float32)
            throw new ArgumentException($"MixedPrecision {MixedPrecision} computes in half precision over float32 master weights, so it needs Precision = Float32, not {Precision}; choose one of the two.", nameof(MixedPrecision));
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
