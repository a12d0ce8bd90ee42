using System.Security.Cryptography;
using System.Text.Json;
using Microsoft.ML.Dpo.Data;

namespace Microsoft.ML.Dpo.Training;

/// <summary>
/// Offline sharding of the reference precomputation (<c>mldpo dpo --precompute-reference --shard i/n</c>): shard <c>i</c>
/// runs the reference over the batches <c>b</c> with <c>b mod n = i</c> (the same batches as one whole run, so the values
/// are the same bit for bit) and writes them as JSON lines keyed by record (a hash of the pair's token ids) beside the
/// cache; a later run that finds all <c>n</c> shard files and no cache joins them by key into the cache. The jobs need no
/// MPI: Slurm array tasks or Kubernetes indexed Jobs, sharing the checkpoint folder (or copying the files into it).
/// </summary>
internal static class ReferenceShards
{
    /// <summary>The shard file of shard <paramref name="index"/> of <paramref name="count"/> for a cache file.</summary>
    public static string ShardPath(string cacheFile, int index, int count) =>
        Path.ChangeExtension(cacheFile, null) + $".shard-{index}-of-{count}.jsonl";

    /// <summary>A record's key: its tokenized prompt, chosen and rejected completion.</summary>
    public static string RecordKey(TokenizedPreference e)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var ids in new[] { e.Prompt, e.Chosen, e.Rejected })
        {
            hash.AppendData(BitConverter.GetBytes(ids.Length));
            hash.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(ids.AsSpan()));
        }
        return Convert.ToHexString(hash.GetHashAndReset())[..24].ToLowerInvariant();
    }

    sealed record Header(string CacheKey, int Shard, int Shards, int Examples);
    sealed record Row(string Key, long Row_, float[] Values);

    /// <summary>Writes the entries of <paramref name="positions"/> (6 values each, in the cache's order) atomically.</summary>
    public static void Write(string path, string cacheKey, int index, int count, IReadOnlyList<TokenizedPreference> examples,
        IEnumerable<int> positions, Func<int, float[]> values)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        string temp = path + ".tmp";
        using (var writer = new StreamWriter(temp))
        {
            writer.WriteLine(JsonSerializer.Serialize(new Header(cacheKey, index, count, examples.Count)));
            foreach (int p in positions)
                writer.WriteLine(JsonSerializer.Serialize(new { key = RecordKey(examples[p]), row = examples[p].Row, values = values(examples[p].Index) }));
        }
        File.Move(temp, path, overwrite: true);
    }

    /// <summary>
    /// The values of every example joined by record key from the shard files of <paramref name="cacheFile"/>, or null when
    /// there are none; an incomplete or inconsistent set is an error naming the file.
    /// </summary>
    public static float[][]? TryMerge(string cacheFile, string cacheKey, IReadOnlyList<TokenizedPreference> examples)
    {
        string directory = Path.GetDirectoryName(cacheFile)!;
        string prefix = Path.GetFileName(Path.ChangeExtension(cacheFile, null)) + ".shard-";
        if (!Directory.Exists(directory)) return null;
        var files = Directory.GetFiles(directory, prefix + "*.jsonl");
        if (files.Length == 0) return null;
        int count = -1;
        var byKey = new Dictionary<string, float[]>();
        foreach (string file in files.Order(StringComparer.Ordinal))
        {
            using var reader = new StreamReader(file);
            var header = JsonSerializer.Deserialize<Header>(reader.ReadLine() ?? "") ?? throw new InvalidDataException($"{file}: line 1: not a shard header.");
            if (header.CacheKey != cacheKey || header.Examples != examples.Count)
                throw new InvalidDataException($"{file}: line 1: the shard was computed for other data or another reference (cache key {header.CacheKey}, {header.Examples} examples; this run {cacheKey}, {examples.Count}).");
            if (count >= 0 && header.Shards != count) throw new InvalidDataException($"{file}: line 1: {header.Shards} shards, the other files say {count}.");
            count = header.Shards;
            int line = 1;
            for (string? text = reader.ReadLine(); text is not null; text = reader.ReadLine())
            {
                line++;
                using var row = JsonDocument.Parse(text);
                var values = row.RootElement.GetProperty("values").EnumerateArray().Select(v => v.GetSingle()).ToArray();
                if (values.Length != 6) throw new InvalidDataException($"{file}: line {line}: 'values' holds {values.Length} numbers, not 6.");
                byKey[row.RootElement.GetProperty("key").GetString()!] = values;
            }
        }
        var missingShards = Enumerable.Range(0, count).Where(i => !File.Exists(ShardPath(cacheFile, i, count))).ToList();
        if (missingShards.Count > 0)
            throw new InvalidDataException($"Reference shards {string.Join(", ", missingShards)} of {count} are missing beside {cacheFile}; run them (--shard i/{count}) or delete the shard files.");
        var merged = Enumerable.Range(0, 6).Select(_ => new float[examples.Count]).ToArray();
        foreach (var e in examples)
        {
            if (!byKey.TryGetValue(RecordKey(e), out var values))
                throw new InvalidDataException($"No reference shard beside {cacheFile} holds the record of row {e.Row}.");
            for (int a = 0; a < 6; a++) merged[a][e.Index] = values[a];
        }
        return merged;
    }
}

/// <summary>Ends <see cref="Trainers.DpoTrainer.PrecomputeReferenceShard"/>'s pass through the trainer once the shard file is written.</summary>
internal sealed class ReferenceShardWrittenException(string path) : Exception($"Reference shard written to {path}.")
{
    public string Path { get; } = path;
}
