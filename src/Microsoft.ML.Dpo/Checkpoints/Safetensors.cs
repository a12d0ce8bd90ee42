using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Checkpoints;

/// <summary>
/// A reader and writer for the safetensors format: an unsigned 64-bit little-endian header length, a JSON header
/// <c>{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}</c>, then the raw little-endian tensor bytes
/// (offsets relative to the end of the header). F32, F16 and BF16 are supported.
/// </summary>
/// <remarks>
/// Our own small implementation rather than a dependency: the format is a page long, and owning it gives error messages
/// that name the file and the tensor at fault.
/// </remarks>
public static class Safetensors
{
    /// <summary>The name of a sharded checkpoint's index file.</summary>
    public const string IndexFileName = "model.safetensors.index.json";

    /// <summary>The name of a single-file checkpoint.</summary>
    public const string SingleFileName = "model.safetensors";

    /// <summary>One tensor's entry in a safetensors header.</summary>
    /// <param name="Name">Tensor name.</param>
    /// <param name="DType">Safetensors dtype string, e.g. "F32".</param>
    /// <param name="Shape">Shape.</param>
    /// <param name="Begin">Start of the data, relative to the end of the header.</param>
    /// <param name="End">End (exclusive) of the data, relative to the end of the header.</param>
    public sealed record Entry(string Name, string DType, long[] Shape, long Begin, long End);

    /// <summary>Reads and validates the header of <paramref name="path"/>: every entry's dtype, shape and byte range.</summary>
    /// <exception cref="InvalidDataException">The file is truncated, its header is malformed, or an entry is out of range or of an unsupported dtype.</exception>
    public static IReadOnlyList<Entry> ReadHeader(string path) => ReadHeader(path, out _);

    static IReadOnlyList<Entry> ReadHeader(string path, out long dataStart)
    {
        using var f = File.OpenRead(path);
        long fileLength = f.Length;
        if (fileLength < 8)
            throw new InvalidDataException($"Safetensors file '{path}' is truncated: {fileLength} bytes, shorter than the 8-byte header length.");
        Span<byte> lenBytes = stackalloc byte[8];
        f.ReadExactly(lenBytes);
        ulong headerLength = BitConverter.ToUInt64(lenBytes);   // little-endian hosts only (checked on load)
        if (headerLength > (ulong)(fileLength - 8))
            throw new InvalidDataException($"Safetensors file '{path}' is truncated or corrupt: header length {headerLength} runs past the end of the file ({fileLength} bytes).");
        var headerBytes = new byte[headerLength];
        f.ReadExactly(headerBytes);
        dataStart = 8 + (long)headerLength;
        long dataLength = fileLength - dataStart;

        JsonObject header;
        try
        {
            header = JsonNode.Parse(headerBytes) as JsonObject ?? throw new InvalidDataException($"Safetensors file '{path}': the header is not a JSON object.");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"Safetensors file '{path}': the header is not valid JSON: {e.Message}", e);
        }

        var entries = new List<Entry>();
        foreach (var (name, node) in header)
        {
            if (name == "__metadata__") continue;
            try
            {
                var o = (JsonObject)node!;
                string dtype = o["dtype"]!.GetValue<string>();
                long[] shape = o["shape"]!.AsArray().Select(n => n!.GetValue<long>()).ToArray();
                var offsets = o["data_offsets"]!.AsArray();
                long begin = offsets[0]!.GetValue<long>(), end = offsets[1]!.GetValue<long>();
                int elementSize = ElementSize(dtype)
                    ?? throw new InvalidDataException($"Safetensors file '{path}': tensor '{name}' has unsupported dtype \"{dtype}\" (supported: F32, F16, BF16).");
                if (begin < 0 || end < begin || end > dataLength)
                    throw new InvalidDataException($"Safetensors file '{path}': tensor '{name}' data_offsets [{begin}, {end}] lie outside the data section ({dataLength} bytes); the file is truncated or corrupt.");
                long expected = shape.Aggregate(1L, (a, d) => a * d) * elementSize;
                if (end - begin != expected)
                    throw new InvalidDataException($"Safetensors file '{path}': tensor '{name}' holds {end - begin} bytes but {dtype} [{string.Join(", ", shape)}] needs {expected}.");
                entries.Add(new Entry(name, dtype, shape, begin, end));
            }
            catch (Exception e) when (e is InvalidOperationException or NullReferenceException or InvalidCastException or FormatException or ArgumentOutOfRangeException)
            {
                throw new InvalidDataException($"Safetensors file '{path}': the header entry of tensor '{name}' is malformed (needs dtype, shape, data_offsets).", e);
            }
        }
        return entries;
    }

    static int? ElementSize(string dtype) => dtype switch
    {
        "F32" => 4,
        "F16" or "BF16" => 2,
        _ => null,
    };

    static ScalarType ToScalarType(string dtype) => dtype switch
    {
        "F32" => ScalarType.Float32,
        "F16" => ScalarType.Float16,
        _ => ScalarType.BFloat16,
    };

    static string ToSafetensorsDType(ScalarType t, string tensorName) => t switch
    {
        ScalarType.Float32 => "F32",
        ScalarType.Float16 => "F16",
        ScalarType.BFloat16 => "BF16",
        _ => throw new ArgumentException($"Tensor '{tensorName}' has dtype {t}; safetensors writing supports Float32, Float16 and BFloat16."),
    };

    /// <summary>
    /// Reads every tensor of one safetensors file, converted to <paramref name="dtype"/> when given (else kept as stored).
    /// The caller owns (and must dispose) the returned tensors; they are outside any dispose scope.
    /// </summary>
    /// <exception cref="InvalidDataException">See <see cref="ReadHeader(string)"/>.</exception>
    public static Dictionary<string, Tensor> Load(string path, ScalarType? dtype = null)
    {
        if (!BitConverter.IsLittleEndian)
            throw new PlatformNotSupportedException("Safetensors reading requires a little-endian machine.");
        var entries = ReadHeader(path, out long dataStart);
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            using var f = File.OpenRead(path);
            foreach (var e in entries)
            {
                var bytes = new byte[e.End - e.Begin];
                f.Position = dataStart + e.Begin;
                f.ReadExactly(bytes);
                var t = torch.empty(e.Shape, ToScalarType(e.DType));
                if (bytes.Length > 0) t.bytes = bytes;
                if (dtype is { } d && d != t.dtype)
                {
                    var converted = t.to(d);
                    t.Dispose();
                    t = converted;
                }
                result.Add(e.Name, t.DetachFromDisposeScope());
            }
            return result;
        }
        catch
        {
            foreach (var t in result.Values) t.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Writes <paramref name="tensors"/> (Float32, Float16 or BFloat16; copied to CPU) as a safetensors file, names sorted,
    /// header padded to a multiple of 8 bytes. The file is written to a temporary sibling and renamed into place.
    /// </summary>
    public static void Save(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        if (!BitConverter.IsLittleEndian)
            throw new PlatformNotSupportedException("Safetensors writing requires a little-endian machine.");
        var list = tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal).ToList();
        var header = new JsonObject();
        var meta = new JsonObject();
        foreach (var (k, v) in metadata ?? new Dictionary<string, string> { ["format"] = "pt" }) meta[k] = v;
        header["__metadata__"] = meta;
        long offset = 0;
        foreach (var (name, t) in list)
        {
            long size = t.numel() * t.ElementSize;
            header[name] = new JsonObject
            {
                ["dtype"] = ToSafetensorsDType(t.dtype, name),
                ["shape"] = new JsonArray(t.shape.Select(d => (JsonNode?)JsonValue.Create(d)).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + size),
            };
            offset += size;
        }
        var headerBytes = Encoding.UTF8.GetBytes(header.ToJsonString());
        int padded = (headerBytes.Length + 7) / 8 * 8;
        string tmp = path + ".tmp-" + Guid.NewGuid().ToString("N");
        try
        {
            using (var f = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write))
            {
                f.Write(BitConverter.GetBytes((ulong)padded));
                f.Write(headerBytes);
                for (int i = headerBytes.Length; i < padded; i++) f.WriteByte((byte)' ');
                foreach (var (_, t) in list)
                {
                    using var scope = torch.NewDisposeScope();
                    var c = t.detach().cpu().contiguous();
                    if (c.numel() > 0) f.Write(c.bytes);
                }
            }
            File.Move(tmp, path, overwrite: true);
        }
        catch
        {
            try { File.Delete(tmp); } catch (IOException) { }
            throw;
        }
    }

    /// <summary>
    /// Loads the checkpoint in <paramref name="directory"/>: <c>model.safetensors</c>, or every shard listed by
    /// <c>model.safetensors.index.json</c>. Tensors are converted to <paramref name="dtype"/> when given; the caller owns them.
    /// </summary>
    /// <exception cref="FileNotFoundException">Neither file exists, or a listed shard is missing.</exception>
    /// <exception cref="InvalidDataException">A file is malformed (see <see cref="ReadHeader(string)"/>) or a tensor appears in two shards.</exception>
    public static Dictionary<string, Tensor> LoadDirectory(string directory, ScalarType? dtype = null)
    {
        string single = Path.Combine(directory, SingleFileName);
        string index = Path.Combine(directory, IndexFileName);
        if (File.Exists(single)) return Load(single, dtype);
        if (!File.Exists(index))
            throw new FileNotFoundException($"No weights in '{directory}': neither '{SingleFileName}' nor '{IndexFileName}' exists.", single);

        List<string> shards;
        try
        {
            var weightMap = (JsonNode.Parse(File.ReadAllText(index))?["weight_map"] as JsonObject)
                ?? throw new InvalidDataException($"Safetensors index '{index}' has no \"weight_map\" object.");
            shards = weightMap.Select(kv => kv.Value!.GetValue<string>()).Distinct().ToList();
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        {
            throw new InvalidDataException($"Safetensors index '{index}' is malformed: {e.Message}", e);
        }

        var all = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            foreach (var shard in shards)
            {
                string shardPath = Path.Combine(directory, shard);
                if (!File.Exists(shardPath))
                    throw new FileNotFoundException($"Shard '{shardPath}' listed in '{index}' does not exist.", shardPath);
                foreach (var (name, t) in Load(shardPath, dtype))
                {
                    if (!all.TryAdd(name, t))
                    {
                        t.Dispose();
                        throw new InvalidDataException($"Tensor '{name}' appears in more than one shard of '{directory}' (again in '{shardPath}').");
                    }
                }
            }
            return all;
        }
        catch
        {
            foreach (var t in all.Values) t.Dispose();
            throw;
        }
    }
}
