using System.Runtime.InteropServices;
using System.Text;
using TorchSharp;
using Microsoft.ML.Dpo.Distributed;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Training;

/// <summary>
/// Data parallelism for the training loop (DDP's scheme): every rank holds the whole model; each global micro-batch of
/// <see cref="TrainingOptions.BatchSize"/> examples is cut into contiguous per-rank shards (rank 0 first, so the shards'
/// union is the single-process micro-batch), a rank runs its shard in chunks of <see cref="TrainingOptions.PerRankBatchSize"/>,
/// and before each optimizer step the gradients are summed over ranks in flat buckets. Each chunk's loss — a mean over its
/// examples (or tokens, <see cref="ITrainingObjective{TExample}.LossDenominator"/>) — is weighted by its share of the global
/// micro-batch's denominator before backward, so the summed gradient is the gradient of the single-process loss. Scalars
/// (loss, metrics, tokens, a cancellation flag) travel in one small all-reduce per micro-batch: every rank sees the same
/// global loss, so a NaN on any rank stops all ranks at the same step, and Ctrl+C on any rank stops all after the same step.
/// </summary>
/// <remarks>Only the parameters passed in are reduced (with LoRA: the adapters).</remarks>
internal sealed class DataParallel<TExample>
{
    const long BucketElements = 1L << 23;   // 32 MiB of float32 per all-reduce
    readonly DistributedWorld world;
    readonly int chunkSize;
    string[]? metricNames;
    NcclCommunicator? nccl;
    bool ncclChecked;

    DataParallel(DistributedWorld world, int chunkSize) => (this.world, this.chunkSize) = (world, chunkSize);

    /// <summary>True when a rank asked to stop (cancellation) at the last micro-batch.</summary>
    public bool Cancelled { get; private set; }

    /// <summary>Rank 0 logs, writes metrics and checkpoints.</summary>
    public bool IsMain => world.IsMain;

    /// <summary>
    /// The data-parallel step for <paramref name="options"/> in <paramref name="world"/>, or null for a single process that
    /// runs whole micro-batches (the loop then works exactly as without this class).
    /// </summary>
    public static DataParallel<TExample>? For(TrainingOptions options, DistributedWorld world, ITrainingObjective<TExample> objective, Action<string>? log)
    {
        int shard = (options.BatchSize + world.Size - 1) / world.Size;
        int chunk = options.PerRankBatchSize > 0 ? Math.Min(options.PerRankBatchSize, shard) : shard;
        if (world.Size == 1 && chunk >= options.BatchSize) return null;
        if (options.BatchSize < world.Size)
            throw new ArgumentOutOfRangeException(nameof(options.BatchSize), options.BatchSize, $"BatchSize (--batch-size) is the global batch and must be at least the number of ranks ({world.Size}).");
        if (objective.ShardingCaveat is { } caveat && world.IsMain)
            log?.Invoke($"warning: {caveat} With {world.Size} rank(s) of {chunk} example(s) per forward pass, the loss is not exactly that of one batch of {options.BatchSize}.");
        if (world.IsMain && world.IsDistributed)
            log?.Invoke($"Data parallel: {world.Size} ranks ({world.Backend}), global batch {options.BatchSize}, up to {shard} example(s) per rank in forward passes of {chunk}.");
        return new DataParallel<TExample>(world, chunk);
    }

    /// <summary>
    /// Forward and backward of this rank's shard of <paramref name="batch"/> (the global micro-batch), scaled for
    /// <paramref name="accumulation"/> micro-batches per step and multiplied by <paramref name="lossScale"/> (float16 loss scaling);
    /// returns the global (unscaled) loss, metrics (weighted means) and tokens.
    /// </summary>
    public (double Loss, IReadOnlyDictionary<string, double> Metrics, long Tokens) Backward(ITrainingObjective<TExample> objective,
        IReadOnlyList<TExample> batch, int accumulation, bool cancellationRequested, double lossScale = 1)
    {
        double denominator = Math.Max(objective.LossDenominator(batch), double.Epsilon);
        int shardSize = (batch.Count + world.Size - 1) / world.Size;
        var shard = batch.Skip(world.Rank * shardSize).Take(shardSize).ToList();
        double loss = 0;
        long tokens = 0;
        var sums = new Dictionary<string, double>();
        for (int start = 0; start < shard.Count; start += chunkSize)
        {
            using var scope = NewDisposeScope();
            var chunk = shard.GetRange(start, Math.Min(chunkSize, shard.Count - start));
            double weight = objective.LossDenominator(chunk) / denominator;
            ObjectiveResult result = objective.Compute(chunk);
            double value = result.Loss.ToDouble();
            (result.Loss * (weight * lossScale / accumulation)).backward();
            loss += weight * value;
            tokens += result.Tokens;
            foreach (var (name, v) in result.Metrics) sums[name] = sums.GetValueOrDefault(name) + weight * v;
        }

        metricNames ??= AgreedMetricNames(sums.Keys);
        foreach (string name in sums.Keys)
            if (Array.IndexOf(metricNames, name) < 0) throw new InvalidOperationException($"Rank {world.Rank} reports metric '{name}' that rank 0 does not; the ranks run different objectives.");
        var scalars = new double[3 + metricNames.Length];
        (scalars[0], scalars[1], scalars[2]) = (loss, tokens, cancellationRequested ? 1 : 0);
        for (int i = 0; i < metricNames.Length; i++) scalars[3 + i] = sums.GetValueOrDefault(metricNames[i]);
        world.AllReduceSum(scalars);
        Cancelled = scalars[2] > 0;
        var metrics = new Dictionary<string, double>();
        for (int i = 0; i < metricNames.Length; i++) metrics[metricNames[i]] = scalars[3 + i];
        return (scalars[0], metrics, (long)scalars[1]);
    }

    /// <summary>Rank 0's metric names, broadcast once (rank 0 always has examples: its shard comes first).</summary>
    string[] AgreedMetricNames(IEnumerable<string> mine)
    {
        byte[] text = world.IsMain ? Encoding.UTF8.GetBytes(string.Join('\n', mine.OrderBy(n => n, StringComparer.Ordinal))) : [];
        var length = new double[] { text.Length };
        world.AllReduceMax(length);
        Array.Resize(ref text, (int)length[0]);
        world.Broadcast(text);
        return Encoding.UTF8.GetString(text).Split('\n', StringSplitOptions.RemoveEmptyEntries);
    }

    /// <summary>Makes every rank start from rank 0's trainable weights (they load the same files; this removes any doubt).</summary>
    public void BroadcastParameters(IReadOnlyList<Parameter> trainable)
    {
        if (!world.IsDistributed) return;
        using var _ = no_grad();
        foreach (var bucket in Buckets(trainable))
        {
            using var scope = NewDisposeScope();
            var flat = cat(bucket.Select(p => p.detach().flatten().to(float32).cpu()).ToArray()).contiguous();
            Span<byte> bytes = flat.bytes;
            world.Broadcast(bytes);
            flat.bytes = bytes;     // a no-op where the span is the tensor's own memory
            Unflatten(bucket, flat, (p, part) => p.copy_(part));
        }
    }

    /// <summary>
    /// Sums the gradients over ranks, in place, bucket by bucket. A parameter that has a gradient on some rank gets one on
    /// every rank (zeros where its rank saw no example); one without a gradient anywhere keeps none, as in one process.
    /// </summary>
    public void SyncGradients(IReadOnlyList<Parameter> trainable)
    {
        if (!world.IsDistributed) return;
        using var _ = no_grad();
        var flags = trainable.Select(p => p.grad is null ? 0.0 : 1.0).ToArray();
        world.AllReduceMax(flags);
        var reduced = trainable.Where((p, i) => flags[i] > 0).ToList();
        foreach (var p in reduced)
            if (p.grad is null) p.grad = zeros_like(p);
        bool onCuda = reduced.Count > 0 && reduced[0].device.type == DeviceType.CUDA;
        if (!ncclChecked) { nccl = NcclCommunicator.Available(onCuda) ? NcclCommunicator.Create(world) : null; ncclChecked = true; }
        foreach (var bucket in Buckets(reduced))
        {
            using var scope = NewDisposeScope();
            if (nccl is not null)
            {
                var flat = cat(bucket.Select(p => p.grad!.flatten().to(float32)).ToArray()).contiguous();
                nccl.AllReduceSum(NcclCommunicator.DataPointer(flat), flat.numel());
                Unflatten(bucket, flat, (p, part) => p.grad!.copy_(part));
            }
            else
            {
                var flat = cat(bucket.Select(p => p.grad!.flatten().to(float32).cpu()).ToArray()).contiguous();
                Span<byte> bytes = flat.bytes;
                world.AllReduceSum(MemoryMarshal.Cast<byte, float>(bytes));
                flat.bytes = bytes;
                Unflatten(bucket, flat, (p, part) => p.grad!.copy_(part));
            }
        }
    }

    static void Unflatten(List<Parameter> bucket, Tensor flat, Action<Parameter, Tensor> write)
    {
        long offset = 0;
        foreach (var p in bucket)
        {
            long n = p.numel();
            write(p, flat.narrow(0, offset, n).view(p.shape).to(p.dtype, p.device));
            offset += n;
        }
    }

    static IEnumerable<List<Parameter>> Buckets(IEnumerable<Parameter> parameters)
    {
        var bucket = new List<Parameter>();
        long size = 0;
        foreach (var p in parameters)
        {
            if (bucket.Count > 0 && size + p.numel() > BucketElements) { yield return bucket; bucket = []; size = 0; }
            bucket.Add(p);
            size += p.numel();
        }
        if (bucket.Count > 0) yield return bucket;
    }
}
