using System.Security.Cryptography;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Losses;
using Microsoft.ML.Dpo.Modeling;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Training;

/// <summary>Where the DPO step gets the reference model's log-probabilities of the chosen and rejected completions.</summary>
internal abstract class ReferenceLogProbs
{
    /// <summary>
    /// Reference (chosen, rejected) summed log-probs [B] for the batch; with <paramref name="ldAlpha"/> LD-DPO's
    /// <c>shared + α·tail</c>, the tail being the tokens beyond the shorter completion of the pair.
    /// </summary>
    public abstract (Tensor Chosen, Tensor Rejected) For(IReadOnlyList<TokenizedPreference> examples, SequenceBatch batch, double? ldAlpha);

    /// <summary>LD-DPO's length-desensitised log-probs: <c>shared + α·(sum − shared)</c>, or the sum without α.</summary>
    public static Tensor LengthDesensitized(Tensor sum, Tensor? shared, double? ldAlpha) =>
        ldAlpha is double alpha ? shared! + (sum - shared!) * alpha : sum;

    /// <summary>
    /// A frozen model run on every batch (no gradients); <paramref name="enter"/>, when given, is held open around each
    /// forward (e.g. a LoRA policy with its adapters disabled serves as its own reference).
    /// </summary>
    public sealed class Live(CausalLM reference, Func<IDisposable>? enter = null) : ReferenceLogProbs
    {
        public override (Tensor Chosen, Tensor Rejected) For(IReadOnlyList<TokenizedPreference> examples, SequenceBatch batch, double? ldAlpha)
        {
            using var _ = no_grad();
            using var around = enter?.Invoke();
            using var notRecorded = reference.PauseRouterRecording();      // a LoRA policy's reference pass adds no router loss
            var scores = SequenceScoring.Score(reference, batch, new ScoringRequest(SharedPrefix: ldAlpha.HasValue));
            return SequenceLogProbs.SplitPairs(LengthDesensitized(scores.Sum, scores.SharedSum, ldAlpha));
        }

        /// <summary>
        /// TR-DPO's update (Gorbatovski et al., 2024, "Learn Your Reference Model for Real Good Alignment"):
        /// <c>ref ← α·policy + (1 − α)·ref</c>, parameter by parameter (α = 1 copies the policy).
        /// </summary>
        public void Sync(CausalLM policy, double alpha)
        {
            using var _ = no_grad();
            var target = reference.named_parameters().ToList();
            var source = policy.named_parameters().ToDictionary(p => p.name, p => p.parameter);
            foreach (var (name, parameter) in target)
            {
                if (!source.TryGetValue(name, out var from) || !from.shape.SequenceEqual(parameter.shape))
                    throw new InvalidOperationException($"Reference syncing needs the reference and the policy to have the same parameters; the policy has no '{name}' of shape [{string.Join(", ", parameter.shape)}].");
                if (alpha == 1) parameter.copy_(from);
                else parameter.mul_(1 - alpha).add_(from, alpha: alpha);
            }
        }
    }

    /// <summary>
    /// Values computed once before training (one pass of the reference over the data), looked up by example index.
    /// The reference model can be freed afterwards. Besides the sums and counts, the shared-part sums of LD-DPO are kept.
    /// </summary>
    public sealed class Precomputed(float[] chosenSum, float[] chosenCount, float[] rejectedSum, float[] rejectedCount,
                                    float[] chosenShared, float[] rejectedShared) : ReferenceLogProbs
    {
        public override (Tensor Chosen, Tensor Rejected) For(IReadOnlyList<TokenizedPreference> examples, SequenceBatch batch, double? ldAlpha)
        {
            var device = batch.InputIds.device;
            float[] Pick(float[] sum, float[] shared) => examples.Select(e => ldAlpha is double a ? shared[e.Index] + (float)a * (sum[e.Index] - shared[e.Index]) : sum[e.Index]).ToArray();
            return (tensor(Pick(chosenSum, chosenShared), device: device), tensor(Pick(rejectedSum, rejectedShared), device: device));
        }

        /// <summary>
        /// Runs <paramref name="reference"/> over all examples, or reads the result from <paramref name="cacheDirectory"/>
        /// when a previous run with the same model weights and data stored it there. <paramref name="referenceFingerprint"/>
        /// (<see cref="WeightsFingerprint.Of"/>) keys that cache; pass it when computing several sets with one reference, so
        /// the weights are hashed once.
        /// </summary>
        public static Precomputed Compute(CausalLM reference, IReadOnlyList<TokenizedPreference> examples, int batchSize, int padId,
            string? cacheDirectory, Action<string>? log, CancellationToken cancellation, string? referenceFingerprint = null, (int Index, int Count)? shard = null)
        {
            var world = Distributed.DistributedWorld.Current;
            string? cacheFile = null;
            if (cacheDirectory != null)
            {
                string key = CacheKey(referenceFingerprint ?? WeightsFingerprint.Of(reference), examples);
                cacheFile = Path.Combine(cacheDirectory, $"reference_logps.{key}.bin");
                if (shard is (int index, int count))
                {
                    // Offline shard i of n: its batches only, written as a shard file; training does not start.
                    var part = ComputeShard(reference, examples, batchSize, padId, index, count, cancellation);
                    string path = ReferenceShards.ShardPath(cacheFile, index, count);
                    var arrays = part.Arrays;
                    ReferenceShards.Write(path, key, index, count, examples, ShardPositions(examples.Count, batchSize, index, count),
                        k => [.. arrays.Select(a => a[k])]);
                    throw new ReferenceShardWrittenException(path);
                }
                var cached = TryRead(cacheFile, examples.Count);
                if (cached is null && ReferenceShards.TryMerge(cacheFile, key, examples) is { } merged)
                {
                    cached = new Precomputed(merged[0], merged[1], merged[2], merged[3], merged[4], merged[5]);
                    if (world.IsMain) cached.Write(cacheFile);
                    log?.Invoke($"Reference log-probs joined from the shard files beside {cacheFile}.");
                }
                var missing = new double[] { cached is null ? 1 : 0 };
                world.AllReduceMax(missing);          // data parallel: all ranks read it, or all compute their shares
                if (cached is not null && missing[0] == 0)
                {
                    log?.Invoke($"Reference log-probs read from {cacheFile}.");
                    return cached;
                }
            }
            var result = ComputeShard(reference, examples, batchSize, padId, world.Rank, world.Size, cancellation);
            if (world.IsDistributed) result = result.GatherShards(examples, batchSize, world);
            if (cacheFile != null && world.IsMain) result.Write(cacheFile);
            return result;
        }

        /// <summary>The batches <c>b</c> of <paramref name="batchSize"/> examples with <c>b mod parts = part</c>: a shard's share (exactly the values of the whole run, which has the same batches).</summary>
        internal static IEnumerable<int> ShardPositions(int count, int batchSize, int part, int parts)
        {
            for (int start = part * batchSize; start < count; start += parts * batchSize)
                for (int i = start; i < Math.Min(count, start + batchSize); i++) yield return i;
        }

        /// <summary>Runs the reference over the examples of shard <paramref name="part"/> of <paramref name="parts"/> (the other entries stay 0).</summary>
        internal static Precomputed ComputeShard(CausalLM reference, IReadOnlyList<TokenizedPreference> examples, int batchSize, int padId,
            int part, int parts, CancellationToken cancellation)
        {
            int n = examples.Count;
            float[] cs = new float[n], cc = new float[n], rs = new float[n], rc = new float[n], csh = new float[n], rsh = new float[n];
            using (no_grad())
            {
                for (int start = part * batchSize; start < n; start += parts * batchSize)
                {
                    cancellation.ThrowIfCancellationRequested();
                    using var scope = NewDisposeScope();
                    var slice = examples.Skip(start).Take(batchSize).ToList();
                    using var batch = SequenceBatch.Collate(SequenceScoring.PairRows(slice), padId, reference.Device);
                    var scores = SequenceScoring.Score(reference, batch, new ScoringRequest(SharedPrefix: true));
                    float[] Host(Tensor x) => x.to(float32).cpu().data<float>().ToArray();
                    float[] s = Host(scores.Sum), c = Host(scores.Count), sh = Host(scores.SharedSum!);
                    for (int i = 0; i < slice.Count; i++)
                    {
                        int k = slice[i].Index, j = slice.Count + i;
                        (cs[k], cc[k], rs[k], rc[k], csh[k], rsh[k]) = (s[i], c[i], s[j], c[j], sh[i], sh[j]);
                    }
                }
            }
            return new Precomputed(cs, cc, rs, rc, csh, rsh);
        }

        float[][] Arrays => [chosenSum, chosenCount, rejectedSum, rejectedCount, chosenShared, rejectedShared];

        /// <summary>Every rank's share, gathered onto every rank (rank r computed the batches <c>b mod size = r</c>).</summary>
        Precomputed GatherShards(IReadOnlyList<TokenizedPreference> examples, int batchSize, Distributed.DistributedWorld world)
        {
            var owned = Enumerable.Range(0, world.Size).Select(r => ShardPositions(examples.Count, batchSize, r, world.Size).Select(p => examples[p].Index).ToArray()).ToArray();
            int width = owned.Max(o => o.Length) * 6;
            var mine = new float[width];
            var arrays = Arrays;
            for (int i = 0; i < owned[world.Rank].Length; i++)
                for (int a = 0; a < 6; a++) mine[i * 6 + a] = arrays[a][owned[world.Rank][i]];
            var all = new float[width * world.Size];
            world.AllGather<float>(mine, all);
            var merged = arrays.Select(x => new float[x.Length]).ToArray();
            for (int r = 0; r < world.Size; r++)
                for (int i = 0; i < owned[r].Length; i++)
                    for (int a = 0; a < 6; a++) merged[a][owned[r][i]] = all[r * width + i * 6 + a];
            return new Precomputed(merged[0], merged[1], merged[2], merged[3], merged[4], merged[5]);
        }

        void Write(string path)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            string temp = path + ".tmp";
            using (var writer = new BinaryWriter(File.Create(temp)))
            {
                writer.Write(chosenSum.Length);
                foreach (var array in new[] { chosenSum, chosenCount, rejectedSum, rejectedCount, chosenShared, rejectedShared })
                    foreach (float v in array) writer.Write(v);
            }
            File.Move(temp, path, overwrite: true);
        }

        static Precomputed? TryRead(string path, int count)
        {
            if (!File.Exists(path)) return null;
            using var reader = new BinaryReader(File.OpenRead(path));
            if (reader.BaseStream.Length != 4 + 24L * count || reader.ReadInt32() != count) return null;   // 6 arrays; older caches are recomputed
            float[] Read() { var a = new float[count]; for (int i = 0; i < count; i++) a[i] = reader.ReadSingle(); return a; }
            return new Precomputed(Read(), Read(), Read(), Read(), Read(), Read());
        }

        /// <summary>A hash of the reference weights and the tokenized data: a changed model or data set never reuses a stale cache.</summary>
        static string CacheKey(string referenceFingerprint, IReadOnlyList<TokenizedPreference> examples)
        {
            using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            hash.AppendData(System.Text.Encoding.UTF8.GetBytes(referenceFingerprint));
            foreach (var e in examples)
                foreach (var ids in new[] { e.Prompt, e.Chosen, e.Rejected })
                {
                    hash.AppendData(BitConverter.GetBytes(ids.Length));
                    hash.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(ids.AsSpan()));
                }
            return Convert.ToHexString(hash.GetHashAndReset())[..16].ToLowerInvariant();
        }
    }
}

/// <summary>Hashes a model's configuration and weights.</summary>
internal static class WeightsFingerprint
{
    /// <summary>A SHA-256 (hex) of the configuration and every tensor of the model, in name order.</summary>
    public static string Of(CausalLM model)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(System.Text.Encoding.UTF8.GetBytes(model.Config.ToJson()));
        using var scope = NewDisposeScope();
        foreach (var (name, tensor) in model.state_dict().OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            hash.AppendData(System.Text.Encoding.UTF8.GetBytes(name));
            hash.AppendData(tensor.to(float32).cpu().contiguous().bytes);
        }
        return Convert.ToHexString(hash.GetHashAndReset());
    }
}
