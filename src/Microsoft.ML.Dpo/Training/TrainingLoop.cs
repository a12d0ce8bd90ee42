using System.Diagnostics;
using Microsoft.ML.Dpo.Distributed;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Training;

/// <summary>What a finished run reports.</summary>
/// <param name="Steps">Optimizer steps taken (including those of a resumed run before this one).</param>
/// <param name="FinalMetrics">The metrics of the last report.</param>
/// <param name="MetricsFile">The metrics.jsonl path, when a checkpoint directory was given.</param>
public sealed record TrainingSummary(int Steps, IReadOnlyDictionary<string, double> FinalMetrics, string? MetricsFile)
{
    /// <summary>With a best-model metric (<c>BestModelMetric</c>, <c>--save-best</c>): the step whose weights the fitted model has.</summary>
    public int? BestStep { get; init; }
    /// <summary>With a best-model metric: its value at <see cref="BestStep"/>.</summary>
    public double? BestMetricValue { get; init; }
    /// <summary>Whether early stopping ended training before the planned last step.</summary>
    public bool StoppedEarly { get; init; }
}

/// <summary>
/// The one training loop behind SFT, DPO and reward-model training. Read top to bottom:
/// shuffle (seeded per epoch) → micro-batch → objective (forward + loss) → backward → every N micro-batches:
/// clip, schedule, AdamW step → report, checkpoint. NaN/Inf stops before the step (weights stay good);
/// cancellation writes a checkpoint first.
/// </summary>
/// <remarks>
/// Launched by MPI (<see cref="DistributedWorld.Current"/>), the loop is data parallel (<see cref="DataParallel{TExample}"/>):
/// every rank walks the same shuffled order, computes its shard of each micro-batch, and the gradients are summed over
/// ranks before clipping; rank 0 alone reports, writes metrics.jsonl and checkpoints.
/// <c>order</c>, when given, replaces the shuffle: it returns the example indices of an epoch (online RL presents each
/// micro-batch of prompts several times in a row, GRPO's μ); it must be deterministic so a resumed run sees the same order.
/// <c>evaluate</c>, when given, runs after each optimizer step with (steps done, whether it is the last step) and may return
/// metrics (e.g. evaluation by generation) that join the next report; <c>stopRequested</c>, when given and true after a step
/// (early stopping), ends training there (reported and checkpointed like a last step). <c>learningRate</c> is the peak rate
/// when the trainer resolved an automatic one (<see cref="TrainingOptions.LearningRate"/> null); otherwise the options' rate is used.
/// Mixed precision (<see cref="TrainingOptions.MixedPrecision"/>): each micro-batch's forward and backward run inside
/// <see cref="Modeling.ComputePrecision.Use"/>, so the matmuls compute in bfloat16 or float16 over the float32 trainable
/// weights; with float16 the loss is scaled (<see cref="LossScaler"/>) and a step whose unscaled gradients are inf or NaN
/// is skipped and logged instead of stopping training (a non-finite loss still stops it, as in float32).
/// </remarks>
internal sealed class TrainingLoop<TExample>(TrainingOptions options, IReadOnlyList<Parameter> trainable,
    ITrainingObjective<TExample> objective, TrainingCheckpoint? checkpoint, string fingerprint, Action<string>? log = null,
    Func<int, bool, IReadOnlyDictionary<string, double>?>? evaluate = null, Func<bool>? stopRequested = null, DistributedWorld? world = null,
    Func<int, int[]>? order = null, double? learningRate = null, double? warmupRatio = null)
{
    readonly DataParallel<TExample>? parallel = DataParallel<TExample>.For(options, world ??= DistributedWorld.Current, objective, log);
    readonly bool main = world.IsMain;
    readonly double peakLearningRate = learningRate ?? options.LearningRate
        ?? throw new ArgumentException("TrainingOptions.LearningRate is null: the trainer resolves the automatic rate (TrainingDefaults) and passes it.", nameof(learningRate));

    /// <summary>
    /// The warm-up steps of a run of <paramref name="totalSteps"/>: <see cref="TrainingOptions.WarmupSteps"/> when above 0, else
    /// ⌈ratio × total⌉ with <paramref name="resolvedRatio"/> (the trainer's, from <see cref="Trainers.TrainingDefaults.ResolveWarmupRatio"/>)
    /// or, from a trainer that resolved none, the options' own <see cref="TrainingOptions.WarmupRatio"/>. The ε keeps 0.1 × 30 at 3.
    /// </summary>
    internal static int WarmupSteps(TrainingOptions options, double? resolvedRatio, int totalSteps) =>
        options.WarmupSteps > 0 ? options.WarmupSteps
            : (int)Math.Ceiling((resolvedRatio ?? options.WarmupRatio ?? 0) * totalSteps - 1e-9);

    public TrainingSummary Run(IReadOnlyList<TExample> examples)
    {
        if (examples.Count == 0) throw new InvalidOperationException("There is no training example left after data preparation.");
        if (options.PaddingFree && !objective.SupportsPaddingFree)
            throw new NotSupportedException("PaddingFree (--padding-free) is for SFT, DPO, ORPO and KTO; this trainer's batches stay padded.");
        if (options.MaxTokensPerBatch > 0 && (order is not null || objective.BatchTokens([]) is null))
            throw new NotSupportedException("MaxTokensPerBatch (--max-tokens-per-batch) is for SFT, DPO, ORPO and KTO; this trainer forms batches of BatchSize examples.");
        int[] EpochOrder(int epoch) => order?.Invoke(epoch) ?? ShuffledOrder(examples.Count, options.Seed, epoch);
        // The micro-batches of every epoch (example indices), fixed before training: a resumed run cuts the same ones.
        var epochBatches = new List<int[]>[options.Epochs];
        List<int[]> Batches(int epoch) => epochBatches[epoch] ??= options.MaxTokensPerBatch > 0
            ? TokenBudgetBatches(EpochOrder(epoch), options.MaxTokensPerBatch, batch => objective.BatchTokens(batch.Select(i => examples[i]).ToList())!.Value)
            : EpochOrder(epoch).Chunk(options.BatchSize).ToList();
        int StepsOf(int epoch) => (Batches(epoch).Count + options.GradientAccumulationSteps - 1) / options.GradientAccumulationSteps;
        // Batches of a fixed size give every epoch the same number of steps; a token budget may not.
        int[] epochSteps = options.MaxTokensPerBatch > 0 ? Enumerable.Range(0, options.Epochs).Select(StepsOf).ToArray() : Enumerable.Repeat(StepsOf(0), options.Epochs).ToArray();
        int totalSteps = epochSteps.Sum();
        if (options.MaxSteps > 0) totalSteps = Math.Min(totalSteps, options.MaxSteps);
        int warmupSteps = WarmupSteps(options, warmupRatio, totalSteps);

        ScalarType? computeDType = options.MixedPrecision switch
        {
            MixedPrecisionKind.BFloat16 => ScalarType.BFloat16,
            MixedPrecisionKind.Float16 => ScalarType.Float16,
            _ => null,
        };
        if (computeDType is not null && trainable.FirstOrDefault(p => p.dtype != ScalarType.Float32) is { } narrow)
            throw new ArgumentException($"MixedPrecision {options.MixedPrecision} keeps float32 master weights, but the trainable weights are {narrow.dtype}; load the model in float32 (Precision = Float32).", nameof(options));
        if (options.ReleaseFreedMemory && !Runtime.ProcessMemory.ReleaseFreedBlocks() && main && OperatingSystem.IsLinux())
            log?.Invoke("ReleaseFreedMemory (--release-freed-memory) does nothing here: it sets glibc's malloc, and this Linux has another C library.");
        using var optimizer = new AdamWOptimizer(trainable, peakLearningRate, options.WeightDecay);
        bool float16 = options.MixedPrecision == MixedPrecisionKind.Float16;
        var state = new TrainingState(0, 0, 0, totalSteps, fingerprint, LossScale: float16 ? options.InitialLossScale : null);
        if (options.Resume && checkpoint?.TryLoad(optimizer, fingerprint) is { } resumed)
        {
            state = resumed;
            if (main) log?.Invoke($"Resumed from {checkpoint.Path} at step {state.Step}.");
        }
        var scaler = float16 ? new LossScaler(state.LossScale ?? options.InitialLossScale, state.LossScaleGoodSteps, options.LossScaleGrowthInterval) : null;
        if (world!.IsDistributed) AgreeOnStart(state.Step);
        parallel?.BroadcastParameters(trainable);
        using var metrics = new MetricsLog(main ? options.CheckpointDirectory : null, resumedStep: state.Step);
        var lastMetrics = (IReadOnlyDictionary<string, double>)new Dictionary<string, double>();
        var clock = Stopwatch.StartNew();
        int startStep = state.Step;
        long tokens = 0, stepTokens = 0;
        StepFlops? flops = null;   // model FLOPs of this run's micro-batches, when the objective counts them
        bool stopped = false;

        for (int epoch = state.Epoch; epoch < options.Epochs && state.Step < totalSteps && !stopped; epoch++)
        {
            var batches = Batches(epoch);
            int batchesPerEpoch = batches.Count;
            epochBatches[epoch] = null!;   // each epoch's plan is needed once more at most (a resume); drop it as it is used
            int firstBatch = epoch == state.Epoch ? state.NextBatchInEpoch : 0;
            int accumulated = 0;
            for (int b = firstBatch; b < batchesPerEpoch && state.Step < totalSteps; b++)
            {
                var batch = batches[b].Select(i => examples[i]).ToList();
                using (Modeling.ComputePrecision.Use(computeDType))
                using (Modeling.Checkpointing.Enable(options.GradientCheckpointing))   // passes with gradients checkpoint their layers
                if (parallel is not null)
                {
                    // This rank's shard, forward and backward; the loss, metrics and tokens returned are the global ones.
                    var (loss, batchMetrics, batchTokens) = parallel.Backward(objective, batch, options.GradientAccumulationSteps, options.CancellationToken.IsCancellationRequested,
                        scaler?.Scale ?? 1);
                    if (!double.IsFinite(loss))
                        throw Diverged($"The loss became {loss} at step {state.Step + 1} (epoch {epoch + 1}, micro-batch {b + 1})");
                    metrics.Add(batchMetrics);
                    tokens += batchTokens;
                    stepTokens += batchTokens;
                }
                else using (var scope = NewDisposeScope())
                {
                    ObjectiveResult result = objective.Compute(batch);
                    double loss = result.Loss.ToDouble();
                    if (!double.IsFinite(loss))
                        throw Diverged($"The loss became {loss} at step {state.Step + 1} (epoch {epoch + 1}, micro-batch {b + 1})");
                    (scaler is null ? result.Loss / options.GradientAccumulationSteps : result.Loss * (scaler.Scale / options.GradientAccumulationSteps)).backward();
                    metrics.Add(result.Metrics);
                    tokens += result.Tokens;
                    stepTokens += result.Tokens;
                }
                if (objective.Flops(batch) is { } batchFlops) flops = (flops ?? default) + batchFlops;   // the whole micro-batch (all ranks)
                accumulated++;
                bool lastOfEpoch = b == batchesPerEpoch - 1;
                if (accumulated < options.GradientAccumulationSteps && !lastOfEpoch) continue;

                // One optimizer step.
                Modeling.Checkpointing.ThrowIfBackwardFailed();   // gradient checkpointing: a recomputation that failed left the gradients incomplete
                parallel?.SyncGradients(trainable);
                scaler?.Unscale(trainable);
                double gradNorm = ClipGradients();
                bool skipped = false;
                if (!double.IsFinite(gradNorm))
                {
                    if (scaler is null)
                        throw Diverged($"The gradient norm became {gradNorm} at step {state.Step + 1} (epoch {epoch + 1}, micro-batch {b + 1})");
                    // Float16 overflow: the same on every rank (the gradients were summed first). Skip the step, lower the scale.
                    double overflowedAt = scaler.Scale;
                    if (!scaler.Overflowed())
                        throw Diverged($"The gradient norm became {gradNorm} at step {state.Step + 1} (epoch {epoch + 1}, micro-batch {b + 1}) under float16 loss scaling even at scale {overflowedAt:R}");
                    skipped = true;
                    if (main) log?.Invoke($"step {state.Step + 1}: float16 gradients overflowed at loss scale {overflowedAt:R}; the step is skipped and the scale lowered to {scaler.Scale:R}.");
                }
                else scaler?.Stepped();
                double lr = peakLearningRate * LearningRateSchedule.Factor(options.Schedule, state.Step, warmupSteps, totalSteps);
                foreach (var group in optimizer.ParamGroups) group.LearningRate = lr;
                if (!skipped) optimizer.step();
                optimizer.zero_grad();
                accumulated = 0;
                state = state with { Step = state.Step + 1, Epoch = lastOfEpoch ? epoch + 1 : epoch, NextBatchInEpoch = lastOfEpoch ? 0 : b + 1,
                                     Tokens = state.Tokens + stepTokens, LossScale = scaler?.Scale, LossScaleGoodSteps = scaler?.GoodSteps ?? 0 };
                stepTokens = 0;
                objective.AfterStep(state.Step);
                if (main && evaluate?.Invoke(state.Step, state.Step == totalSteps) is { } evaluation) metrics.Add(evaluation);
                stopped = state.Step < totalSteps && StopRequestedOnAnyRank();
                if (!skipped) metrics.Add("grad_norm", gradNorm);
                if (scaler is not null) metrics.Add("loss_scale", scaler.Scale);
                metrics.Add("learning_rate", lr);

                if (main && (state.Step % options.LoggingInterval == 0 || state.Step == totalSteps || stopped))
                {
                    metrics.Add("tokens_per_second", tokens / Math.Max(1e-9, clock.Elapsed.TotalSeconds));
                    metrics.Add("num_tokens", state.Tokens);   // real tokens trained on so far, this run and the resumed ones (TRL's num_tokens)
                    AddThroughput(metrics, flops, clock.Elapsed.TotalSeconds);
                    lastMetrics = Report(metrics, state, epochSteps, totalSteps, startStep, clock.Elapsed);
                    objective.AfterReport(state.Step, lastMetrics);
                }
                if (main && checkpoint != null && options.CheckpointInterval > 0 && state.Step % options.CheckpointInterval == 0 && state.Step < totalSteps)
                    checkpoint.Save(state, optimizer);
                if (parallel?.Cancelled ?? options.CancellationToken.IsCancellationRequested)
                {
                    if (main) checkpoint?.Save(state, optimizer);
                    world!.Barrier();   // data parallel: no rank ends the job before rank 0's checkpoint is written
                    if (main) log?.Invoke(checkpoint != null ? $"Cancelled at step {state.Step}; checkpoint written to {checkpoint.Path}." : $"Cancelled at step {state.Step}.");
                    throw new OperationCanceledException(options.CancellationToken.IsCancellationRequested ? options.CancellationToken : CancellationToken.None);
                }
                if (stopped) break;
            }
        }
        if (main) checkpoint?.Save(state, optimizer);
        return new TrainingSummary(state.Step, lastMetrics, metrics.FilePath) { StoppedEarly = stopped };

        // Early stopping is decided where evaluation runs (rank 0); data parallel, every rank learns it in the same step.
        bool StopRequestedOnAnyRank()
        {
            if (stopRequested is null) return false;   // the same on every rank: no collective needed
            bool stop = main && stopRequested();
            if (parallel is null) return stop;
            Span<double> flag = [stop ? 1 : 0];
            world!.AllReduceMax(flag);
            return flag[0] > 0;
        }

        TrainingDivergedException Diverged(string what)
        {
            optimizer.zero_grad();
            string kept = checkpoint is null ? "No checkpoint directory was set, so nothing was written; the weights in memory are those before this step."
                                             : File.Exists(Path.Combine(checkpoint.Path, "trainer_state.json")) ? $"The last good checkpoint is kept in {checkpoint.Path}." : "No checkpoint had been written yet.";
            return new TrainingDivergedException($"{what}; training stopped without applying it. {kept} Lower the learning rate or check the data.");
        }
    }

    /// <summary>
    /// The accounting metrics of a report, over this run so far: <c>flops_per_second</c> (model FLOPs, <see cref="ModelFlops"/>;
    /// all ranks), split into <c>flops_per_second/policy</c> and <c>flops_per_second/reference</c> when a live reference runs;
    /// <c>mfu</c> when <see cref="TrainingOptions.PeakFlops"/> is set; <c>peak_rss_mib</c>, this process's peak resident memory
    /// (Linux VmHWM; on a GPU it is host memory only — TorchSharp 0.107 exposes no CUDA allocator statistics).
    /// </summary>
    void AddThroughput(MetricsLog metrics, StepFlops? flops, double seconds)
    {
        if (flops is { } f && seconds > 0)
        {
            metrics.Add("flops_per_second", f.Total / seconds);
            if (f.Reference > 0)
            {
                metrics.Add("flops_per_second/policy", f.Policy / seconds);
                metrics.Add("flops_per_second/reference", f.Reference / seconds);
            }
            if (options.PeakFlops is double peak) metrics.Add("mfu", f.Total / seconds / (peak * world!.Size));
        }
        if (Runtime.ProcessMemory.PeakResidentBytes() is long rss) metrics.Add("peak_rss_mib", rss / 1048576.0);
    }

    /// <summary>Every rank must resume from the same step: a checkpoint folder that only some ranks see (not shared) is an error.</summary>
    void AgreeOnStart(int step)
    {
        var bounds = new double[] { step, -step };
        world!.AllReduceMax(bounds);
        if (bounds[0] != -bounds[1])
            throw new InvalidOperationException($"The ranks would resume from different steps ({-bounds[1]} to {bounds[0]}; this rank {step}): " +
                $"the checkpoint folder '{options.CheckpointDirectory}' must be one shared folder that every rank reads.");
    }

    double ClipGradients()
    {
        var withGrad = trainable.Where(p => p.grad is not null).ToList();
        if (withGrad.Count == 0) return 0;
        if (options.MaxGradNorm > 0) return nn.utils.clip_grad_norm_(withGrad, options.MaxGradNorm);
        using var scope = NewDisposeScope();
        return stack(withGrad.Select(p => p.grad!.norm()).ToArray()).norm().ToDouble();
    }

    IReadOnlyDictionary<string, double> Report(MetricsLog metrics, TrainingState state, int[] epochSteps, int totalSteps, int startStep, TimeSpan elapsed)
    {
        // Fractional epoch: whole epochs done, plus the share of the current one (epochs of a token budget differ in steps).
        double epoch = 0;
        int before = 0;
        foreach (int steps in epochSteps)
        {
            if (state.Step < before + steps) { epoch += (double)(state.Step - before) / Math.Max(1, steps); break; }
            epoch++;
            before += steps;
        }
        var means = metrics.Flush(state.Step, epoch);
        int done = state.Step - startStep;
        TimeSpan? remaining = done > 0 ? TimeSpan.FromTicks(elapsed.Ticks / done * (totalSteps - state.Step)) : null;
        options.Progress?.Report(new TrainingProgress(state.Step, totalSteps, epoch, means, elapsed) { EstimatedRemaining = remaining });
        log?.Invoke($"step {state.Step}/{totalSteps} " + string.Join(" ", means.Select(kv => $"{kv.Key}={kv.Value:G4}")));
        return means;
    }

    /// <summary>
    /// Micro-batches of <paramref name="order"/> under a token budget: examples are taken in order and a batch closes before
    /// the example that would take <paramref name="tokens"/> of it over <paramref name="budget"/>; an example over the budget
    /// alone is a batch of its own. Deterministic: the same order gives the same batches, every example in exactly one.
    /// </summary>
    internal static List<int[]> TokenBudgetBatches(int[] order, int budget, Func<IReadOnlyList<int>, long> tokens)
    {
        var batches = new List<int[]>();
        var current = new List<int>();
        foreach (int index in order)
        {
            current.Add(index);
            if (current.Count > 1 && tokens(current) > budget)
            {
                current.RemoveAt(current.Count - 1);
                batches.Add([.. current]);
                current.Clear();
                current.Add(index);
            }
        }
        if (current.Count > 0) batches.Add([.. current]);
        return batches;
    }

    /// <summary>The example order of an epoch: a Fisher–Yates shuffle seeded by (seed, epoch), so a resumed run sees the same order.</summary>
    internal static int[] ShuffledOrder(int count, int seed, int epoch)
    {
        var order = Enumerable.Range(0, count).ToArray();
        var random = new Random(unchecked(seed * 1_000_003 + epoch) & int.MaxValue); // not HashCode: it is salted per process
        for (int i = count - 1; i > 0; i--)
        {
            int j = random.Next(i + 1);
            (order[i], order[j]) = (order[j], order[i]);
        }
        return order;
    }
}
