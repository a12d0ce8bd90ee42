using System.Security.Cryptography;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Losses;
using Microsoft.ML.Dpo.Modeling;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Training;

/// <summary>Where the DPO step gets the reference model's log-probabilities of the chosen and rejected completions.</summary>
internal abstract class ReferenceLogProbs
{
    /// <summary>Reference (chosen, rejected) log-probs [B] for the batch: sums, or per-token means when <paramref name="mean"/>.</summary>
    public abstract (Tensor Chosen, Tensor Rejected) For(IReadOnlyList<TokenizedPreference> examples, SequenceBatch batch, bool mean);

    /// <summary>
    /// A frozen model run on every batch (no gradients); <paramref name="enter"/>, when given, is held open around each
    /// forward (e.g. a LoRA policy with its adapters disabled serves as its own reference).
    /// </summary>
    public sealed class Live(CausalLM reference, Func<IDisposable>? enter = null) : ReferenceLogProbs
    {
        public override (Tensor Chosen, Tensor Rejected) For(IReadOnlyList<TokenizedPreference> examples, SequenceBatch batch, bool mean)
        {
            using var _ = no_grad();
            using var around = enter?.Invoke();
            using var notRecorded = reference.PauseRouterRecording();      // a LoRA policy's reference pass adds no router loss
            var (sum, count) = SequenceScoring.CompletionLogProbs(reference, batch);
            return SequenceLogProbs.SplitPairs(mean ? SequenceLogProbs.Mean(sum, count) : sum);
        }
    }

    /// <summary>
    /// Values computed once before training (one pass of the reference over the data), looked up by example index.
    /// The reference model can be freed afterwards.
    /// </summary>
    public sealed class Precomputed(float[] chosenSum, float[] chosenCount, float[] rejectedSum, float[] rejectedCount) : ReferenceLogProbs
    {
        public override (Tensor Chosen, Tensor Rejected) For(IReadOnlyList<TokenizedPreference> examples, SequenceBatch batch, bool mean)
        {
            var device = batch.InputIds.device;
            float[] Pick(float[] sum, float[] count) => examples.Select(e => mean ? sum[e.Index] / Math.Max(1, count[e.Index]) : sum[e.Index]).ToArray();
            return (tensor(Pick(chosenSum, chosenCount), device: device), tensor(Pick(rejectedSum, rejectedCount), device: device));
        }

        /// <summary>
        /// Runs <paramref name="reference"/> over all examples, or reads the result from <paramref name="cacheDirectory"/>
        /// when a previous run with the same model weights and data stored it there. <paramref name="referenceFingerprint"/>
        /// (<see cref="WeightsFingerprint.Of"/>) keys that cache; pass it when computing several sets with one reference, so
        /// the weights are hashed once.
        /// </summary>
        public static Precomputed Compute(CausalLM reference, IReadOnlyList<TokenizedPreference> examples, int batchSize, int padId,
            string? cacheDirectory, Action<string>? log, CancellationToken cancellation, string? referenceFingerprint = null)
        {
            string? cacheFile = null;
            if (cacheDirectory != null)
            {
                cacheFile = Path.Combine(cacheDirectory, $"reference_logps.{CacheKey(referenceFingerprint ?? WeightsFingerprint.Of(reference), examples)}.bin");
                if (TryRead(cacheFile, examples.Count) is { } cached)
                {
                    log?.Invoke($"Reference log-probs read from {cacheFile}.");
                    return cached;
                }
            }
            int n = examples.Count;
            float[] cs = new float[n], cc = new float[n], rs = new float[n], rc = new float[n];
            using (no_grad())
            {
                for (int start = 0; start < n; start += batchSize)
                {
                    cancellation.ThrowIfCancellationRequested();
                    using var scope = NewDisposeScope();
                    var slice = examples.Skip(start).Take(batchSize).ToList();
                    using var batch = SequenceBatch.Collate(SequenceScoring.PairRows(slice), padId, reference.Device);
                    var (sum, count) = SequenceScoring.CompletionLogProbs(reference, batch);
                    float[] s = sum.to(float32).cpu().data<float>().ToArray(), c = count.to(float32).cpu().data<float>().ToArray();
                    for (int i = 0; i < slice.Count; i++)
                    {
                        int k = slice[i].Index;
                        (cs[k], cc[k], rs[k], rc[k]) = (s[i], c[i], s[slice.Count + i], c[slice.Count + i]);
                    }
                }
            }
            var result = new Precomputed(cs, cc, rs, rc);
            if (cacheFile != null) result.Write(cacheFile);
            return result;
        }

        void Write(string path)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            string temp = path + ".tmp";
            using (var writer = new BinaryWriter(File.Create(temp)))
            {
                writer.Write(chosenSum.Length);
                foreach (var array in new[] { chosenSum, chosenCount, rejectedSum, rejectedCount })
                    foreach (float v in array) writer.Write(v);
            }
            File.Move(temp, path, overwrite: true);
        }

        static Precomputed? TryRead(string path, int count)
        {
            if (!File.Exists(path)) return null;
            using var reader = new BinaryReader(File.OpenRead(path));
            if (reader.BaseStream.Length != 4 + 16L * count || reader.ReadInt32() != count) return null;
            float[] Read() { var a = new float[count]; for (int i = 0; i < count; i++) a[i] = reader.ReadSingle(); return a; }
            return new Precomputed(Read(), Read(), Read(), Read());
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
