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
/// </remarks>
internal sealed class TrainingLoop<TExample>(TrainingOptions options, IReadOnlyList<Parameter> trainable,
    ITrainingObjective<TExample> objective, TrainingCheckpoint? checkpoint, string fingerprint, Action<string>? log = null,
    Func<int, bool, IReadOnlyDictionary<string, double>?>? evaluate = null, Func<bool>? stopRequested = null, DistributedWorld? world = null,
    Func<int, int[]>? order = null, double? learningRate = null)
{
    readonly DataParallel<TExample>? parallel = DataParallel<TExample>.For(options, world ??= DistributedWorld.Current, objective, log);
    readonly bool main = world.IsMain;
    // The objective as the training passes run it: with gradient checkpointing, its forward passes checkpoint their layers.
    readonly ITrainingObjective<TExample> training = CheckpointedObjective<TExample>.Wrap(objective, options.GradientCheckpointing);
    readonly double peakLearningRate = learningRate ?? options.LearningRate
        ?? throw new ArgumentException("TrainingOptions.LearningRate is null: the trainer resolves the automatic rate (TrainingDefaults) and passes it.", nameof(learningRate));

    public TrainingSummary Run(IReadOnlyList<TExample> examples)
    {
        if (examples.Count == 0) throw new InvalidOperationException("There is no training example left after data preparation.");
        int[] EpochOrder(int epoch) => order?.Invoke(epoch) ?? ShuffledOrder(examples.Count, options.Seed, epoch);
        int batchesPerEpoch = (EpochOrder(0).Length + options.BatchSize - 1) / options.BatchSize;
        int stepsPerEpoch = (batchesPerEpoch + options.GradientAccumulationSteps - 1) / options.GradientAccumulationSteps;
        int totalSteps = stepsPerEpoch * options.Epochs;
        if (options.MaxSteps > 0) totalSteps = Math.Min(totalSteps, options.MaxSteps);

        using var optimizer = optim.AdamW(trainable, lr: peakLearningRate, weight_decay: options.WeightDecay);
        var state = new TrainingState(0, 0, 0, totalSteps, fingerprint);
        if (options.Resume && checkpoint?.TryLoad(optimizer, fingerprint) is { } resumed)
        {
            state = resumed;
            if (main) log?.Invoke($"Resumed from {checkpoint.Path} at step {state.Step}.");
        }
        if (world!.IsDistributed) AgreeOnStart(state.Step);
        parallel?.BroadcastParameters(trainable);
        using var metrics = new MetricsLog(main ? options.CheckpointDirectory : null, resumedStep: state.Step);
        var lastMetrics = (IReadOnlyDictionary<string, double>)new Dictionary<string, double>();
        var clock = Stopwatch.StartNew();
        int startStep = state.Step;
        long tokens = 0, stepTokens = 0;
        bool stopped = false;

        for (int epoch = state.Epoch; epoch < options.Epochs && state.Step < totalSteps && !stopped; epoch++)
        {
            int[] indices = EpochOrder(epoch);
            int firstBatch = epoch == state.Epoch ? state.NextBatchInEpoch : 0;
            int accumulated = 0;
            for (int b = firstBatch; b < batchesPerEpoch && state.Step < totalSteps; b++)
            {
                var batch = indices.Skip(b * options.BatchSize).Take(options.BatchSize).Select(i => examples[i]).ToList();
                if (parallel is not null)
                {
                    // This rank's shard, forward and backward; the loss, metrics and tokens returned are the global ones.
                    var (loss, batchMetrics, batchTokens) = parallel.Backward(training, batch, options.GradientAccumulationSteps, options.CancellationToken.IsCancellationRequested);
                    if (!double.IsFinite(loss))
                        throw Diverged($"The loss became {loss} at step {state.Step + 1} (epoch {epoch + 1}, micro-batch {b + 1})");
                    metrics.Add(batchMetrics);
                    tokens += batchTokens;
                    stepTokens += batchTokens;
                }
                else using (var scope = NewDisposeScope())
                {
                    ObjectiveResult result = training.Compute(batch);
                    double loss = result.Loss.ToDouble();
                    if (!double.IsFinite(loss))
                        throw Diverged($"The loss became {loss} at step {state.Step + 1} (epoch {epoch + 1}, micro-batch {b + 1})");
                    (result.Loss / options.GradientAccumulationSteps).backward();
                    metrics.Add(result.Metrics);
                    tokens += result.Tokens;
                    stepTokens += result.Tokens;
                }
                accumulated++;
                bool lastOfEpoch = b == batchesPerEpoch - 1;
                if (accumulated < options.GradientAccumulationSteps && !lastOfEpoch) continue;

                // One optimizer step.
                Modeling.Checkpointing.ThrowIfBackwardFailed();   // gradient checkpointing: a recomputation that failed left the gradients incomplete
                parallel?.SyncGradients(trainable);
                double gradNorm = ClipGradients();
                if (!double.IsFinite(gradNorm))
                    throw Diverged($"The gradient norm became {gradNorm} at step {state.Step + 1} (epoch {epoch + 1}, micro-batch {b + 1})");
                double lr = peakLearningRate * LearningRateSchedule.Factor(options.Schedule, state.Step, options.WarmupSteps, totalSteps);
                foreach (var group in optimizer.ParamGroups) group.LearningRate = lr;
                optimizer.step();
                optimizer.zero_grad();
                accumulated = 0;
                state = state with { Step = state.Step + 1, Epoch = lastOfEpoch ? epoch + 1 : epoch, NextBatchInEpoch = lastOfEpoch ? 0 : b + 1,
                                     Tokens = state.Tokens + stepTokens };
                stepTokens = 0;
                objective.AfterStep(state.Step);
                if (main && evaluate?.Invoke(state.Step, state.Step == totalSteps) is { } evaluation) metrics.Add(evaluation);
                stopped = state.Step < totalSteps && StopRequestedOnAnyRank();
                metrics.Add("grad_norm", gradNorm);
                metrics.Add("learning_rate", lr);

                if (main && (state.Step % options.LoggingInterval == 0 || state.Step == totalSteps || stopped))
                {
                    metrics.Add("tokens_per_second", tokens / Math.Max(1e-9, clock.Elapsed.TotalSeconds));
                    metrics.Add("num_tokens", state.Tokens);   // real tokens trained on so far, this run and the resumed ones (TRL's num_tokens)
                    lastMetrics = Report(metrics, state, stepsPerEpoch, totalSteps, startStep, clock.Elapsed);
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

    IReadOnlyDictionary<string, double> Report(MetricsLog metrics, TrainingState state, int stepsPerEpoch, int totalSteps, int startStep, TimeSpan elapsed)
    {
        double epoch = (double)state.Step / stepsPerEpoch;
        var means = metrics.Flush(state.Step, epoch);
        int done = state.Step - startStep;
        TimeSpan? remaining = done > 0 ? TimeSpan.FromTicks(elapsed.Ticks / done * (totalSteps - state.Step)) : null;
        options.Progress?.Report(new TrainingProgress(state.Step, totalSteps, epoch, means, elapsed) { EstimatedRemaining = remaining });
        log?.Invoke($"step {state.Step}/{totalSteps} " + string.Join(" ", means.Select(kv => $"{kv.Key}={kv.Value:G4}")));
        return means;
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
