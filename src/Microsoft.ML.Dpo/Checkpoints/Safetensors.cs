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
        if (headerLength > MaxHeaderBytes)
            throw new InvalidDataException($"Safetensors file '{path}': the header is {headerLength} bytes, more than the format's limit of {MaxHeaderBytes}.");
        var headerBytes = new byte[headerLength];
        f.ReadExactly(headerBytes);
        dataStart = 8 + (long)headerLength;
        long dataLength = fileLength - dataStart;

        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(headerBytes);
            Runtime.JsonText.ReadAllStrings(document.RootElement);
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"Safetensors file '{path}': the header is not valid JSON: {OneLine(e.Message)}", e);
        }
        catch (InvalidOperationException e)
        {
            throw new InvalidDataException($"Safetensors file '{path}': the header holds a name or string that is not valid text ({OneLine(e.Message)}).", e);
        }
        using (document)
        {
            var header = document.RootElement;
            if (header.ValueKind != JsonValueKind.Object)
                throw new InvalidDataException($"Safetensors file '{path}': the header is not a JSON object.");
            var entries = new List<Entry>();
            var names = new HashSet<string>(StringComparer.Ordinal);
            foreach (var property in header.EnumerateObject())
            {
                string name = property.Name;
                if (!names.Add(name))
                    throw new InvalidDataException($"Safetensors file '{path}': tensor '{name}' appears twice in the header.");
                if (name == "__metadata__") continue;
                entries.Add(ReadEntry(path, name, property.Value, dataLength));
            }
            return entries;
        }
    }

    /// <summary>The largest header the format allows (100 MB, as the reference implementation).</summary>
    const ulong MaxHeaderBytes = 100_000_000;

    /// <summary>One header entry, every number range-checked with checked arithmetic before anything is allocated.</summary>
    static Entry ReadEntry(string path, string name, JsonElement o, long dataLength)
    {
        InvalidDataException Malformed(string what) =>
            new($"Safetensors file '{path}': the header entry of tensor '{name}' is malformed: {what} (needs dtype, shape, data_offsets).");
        if (o.ValueKind != JsonValueKind.Object) throw Malformed("not an object");
        if (!o.TryGetProperty("dtype", out var dtypeElement) || dtypeElement.ValueKind != JsonValueKind.String) throw Malformed("\"dtype\" is missing or not a string");
        string dtype = dtypeElement.GetString()!;
        int elementSize = ElementSize(dtype)
            ?? throw new InvalidDataException($"Safetensors file '{path}': tensor '{name}' has unsupported dtype \"{dtype}\" (supported: F32, F16, BF16).");
        if (!o.TryGetProperty("shape", out var shapeElement) || shapeElement.ValueKind != JsonValueKind.Array) throw Malformed("\"shape\" is missing or not a list");
        var shape = new long[shapeElement.GetArrayLength()];
        int i = 0;
        foreach (var d in shapeElement.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long dim) || dim < 0)
                throw new InvalidDataException($"Safetensors file '{path}': tensor '{name}' has shape {shapeElement.GetRawText()}; dimensions must be non-negative integers.");
            shape[i++] = dim;
        }
        if (!o.TryGetProperty("data_offsets", out var offsets) || offsets.ValueKind != JsonValueKind.Array || offsets.GetArrayLength() != 2
            || !offsets[0].TryGetInt64Strict(out long begin) || !offsets[1].TryGetInt64Strict(out long end))
            throw Malformed("\"data_offsets\" must be a list of two integers");
        if (begin < 0 || end < begin || end > dataLength)
            throw new InvalidDataException($"Safetensors file '{path}': tensor '{name}' data_offsets [{begin}, {end}] lie outside the data section ({dataLength} bytes); the file is truncated or corrupt.");
        long expected;
        try
        {
            expected = checked(shape.Aggregate(1L, (a, d) => checked(a * d)) * elementSize);
        }
        catch (OverflowException)
        {
            throw new InvalidDataException($"Safetensors file '{path}': tensor '{name}' has shape [{string.Join(", ", shape)}], whose size overflows 64 bits; the file is corrupt.");
        }
        if (end - begin != expected)
            throw new InvalidDataException($"Safetensors file '{path}': tensor '{name}' holds {end - begin} bytes but {dtype} [{string.Join(", ", shape)}] needs {expected}.");
        return new Entry(name, dtype, shape, begin, end);
    }

    static bool TryGetInt64Strict(this JsonElement e, out long value)
    {
        value = 0;
        return e.ValueKind == JsonValueKind.Number && e.TryGetInt64(out value);
    }

    static string OneLine(string message) => message.ReplaceLineEndings(" ");

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

    /// <summary>The size of the buffer through which <see cref="ReadInto"/> converts a tensor (elements): 16 M, 64 MB of float32.</summary>
    internal const long ReadChunkElements = 16L << 20;

    /// <summary>
    /// Reads the data of the given entries of <paramref name="path"/> (checked by <see cref="ReadHeader(string)"/>) straight into
    /// their destination tensors, whose shapes must equal the entries'; in file order. A CPU destination of the stored dtype is
    /// filled in place; any other (another dtype, or on a GPU) through a CPU buffer of at most <see cref="ReadChunkElements"/>
    /// elements, converted by <c>copy_</c> exactly as copying a loaded tensor would. Nothing as large as the tensor is allocated.
    /// <paramref name="chunkElements"/> is the most elements read at once (tests make it small to cross chunk boundaries).
    /// </summary>
    /// <exception cref="InvalidDataException">The file changed since its header was read (now truncated, or another header length).</exception>
    internal static void ReadInto(string path, IReadOnlyList<(Entry Entry, Tensor Destination)> targets, long chunkElements = ReadChunkElements)
    {
        if (!BitConverter.IsLittleEndian)
            throw new PlatformNotSupportedException("Safetensors reading requires a little-endian machine.");
        var entries = ReadHeader(path, out long dataStart).ToDictionary(e => e.Name, StringComparer.Ordinal);
        using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1, FileOptions.SequentialScan);
        using var noGrad = torch.no_grad();
        foreach (var (expected, destination) in targets.OrderBy(t => t.Entry.Begin))
        {
            if (!entries.TryGetValue(expected.Name, out var e) || e.Begin != expected.Begin || e.End != expected.End || e.DType != expected.DType)
                throw new InvalidDataException($"Safetensors file '{path}' changed while it was being read: tensor '{expected.Name}' no longer has the entry its header had.");
            if (!e.Shape.SequenceEqual(destination.shape))
                throw new ArgumentException($"Tensor '{e.Name}' of '{path}' has shape [{string.Join(", ", e.Shape)}], its destination [{string.Join(", ", destination.shape)}].");
            long count = e.Shape.Aggregate(1L, (a, d) => a * d);
            if (count == 0) continue;
            var stored = ToScalarType(e.DType);
            int elementSize = ElementSize(e.DType)!.Value;
            f.Position = dataStart + e.Begin;
            using var flat = destination.view(-1);
            bool inPlace = destination.device_type == DeviceType.CPU && destination.dtype == stored && destination.is_contiguous();
            using var buffer = inPlace ? null : torch.empty(Math.Min(count, chunkElements), stored);
            for (long at = 0; at < count; at += chunkElements)
            {
                long n = Math.Min(chunkElements, count - at);
                using var part = flat.narrow(0, at, n);
                if (inPlace) Fill(f, part, path, e.Name);
                else
                {
                    using var staged = buffer!.narrow(0, 0, n);
                    Fill(f, staged, path, e.Name);
                    part.copy_(staged);
                }
            }
        }
    }

    /// <summary>Reads exactly the bytes of the contiguous CPU tensor <paramref name="t"/> (small enough for a span) from <paramref name="f"/>.</summary>
    static void Fill(FileStream f, Tensor t, string path, string name)
    {
        try
        {
            f.ReadExactly(t.bytes);
        }
        catch (EndOfStreamException)
        {
            throw new InvalidDataException($"Safetensors file '{path}' is truncated: the data of tensor '{name}' ends past the end of the file.");
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
    /// <exception cref="InvalidDataException">A file is malformed (see <see cref="ReadHeader(string)"/>), a shard lies outside the folder, or a tensor appears in two shards.</exception>
    public static Dictionary<string, Tensor> LoadDirectory(string directory, ScalarType? dtype = null)
    {
        var files = WeightFiles(directory);
        var all = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            foreach (var file in files)
            {
                foreach (var (name, t) in Load(file, dtype))
                {
                    if (!all.TryAdd(name, t))
                    {
                        t.Dispose();
                        throw new InvalidDataException($"Tensor '{name}' appears in more than one shard of '{directory}' (again in '{file}').");
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

    /// <summary>
    /// The header entries of every tensor of the checkpoint in <paramref name="directory"/> (as <see cref="LoadDirectory"/> reads it),
    /// by name, with the file each is in; no tensor data is read.
    /// </summary>
    /// <exception cref="FileNotFoundException">Neither weights file exists, or a listed shard is missing.</exception>
    /// <exception cref="InvalidDataException">A header is malformed, a shard lies outside the folder, or a tensor appears in two shards.</exception>
    public static IReadOnlyDictionary<string, (string File, Entry Entry)> ReadDirectoryHeaders(string directory)
    {
        var all = new Dictionary<string, (string, Entry)>(StringComparer.Ordinal);
        foreach (var file in WeightFiles(directory))
            foreach (var e in ReadHeader(file))
                if (!all.TryAdd(e.Name, (file, e)))
                    throw new InvalidDataException($"Tensor '{e.Name}' appears in more than one shard of '{directory}' (again in '{file}').");
        return all;
    }

    /// <summary>
    /// The weight files of <paramref name="directory"/>: <c>model.safetensors</c>, or the distinct shards of the index, each of which
    /// must be a plain relative file name inside the folder (no absolute path, no <c>..</c>, no device).
    /// </summary>
    static List<string> WeightFiles(string directory)
    {
        string single = Path.Combine(directory, SingleFileName);
        string index = Path.Combine(directory, IndexFileName);
        if (File.Exists(single)) return [single];
        if (!File.Exists(index))
            throw new FileNotFoundException($"No weights in '{directory}': neither '{SingleFileName}' nor '{IndexFileName}' exists.", single);

        var shards = new List<string>();
        try
        {
            using var document = JsonDocument.Parse(File.ReadAllBytes(index));
            Runtime.JsonText.ReadAllStrings(document.RootElement);
            if (document.RootElement.ValueKind != JsonValueKind.Object
                || !document.RootElement.TryGetProperty("weight_map", out var weightMap) || weightMap.ValueKind != JsonValueKind.Object)
                throw new InvalidDataException($"Safetensors index '{index}' has no \"weight_map\" object.");
            foreach (var entry in weightMap.EnumerateObject())
            {
                if (entry.Value.ValueKind != JsonValueKind.String)
                    throw new InvalidDataException($"Safetensors index '{index}': the shard of tensor '{entry.Name}' must be a file name, got {entry.Value.GetRawText()}.");
                string shard = entry.Value.GetString()!;
                if (!shards.Contains(shard, StringComparer.Ordinal)) shards.Add(shard);
            }
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        {
            throw new InvalidDataException($"Safetensors index '{index}' is malformed: {OneLine(e.Message)}", e);
        }

        var files = new List<string>(shards.Count);
        foreach (var shard in shards)
        {
            string path = ShardPath(directory, index, shard);
            if (!File.Exists(path))
                throw new FileNotFoundException($"Shard '{path}' listed in '{index}' does not exist.", path);
            files.Add(path);
        }
        return files;
    }

    /// <summary>
    /// The path of a shard named by a checkpoint index (safetensors or PyTorch): it must be a plain relative name inside
    /// <paramref name="directory"/> (no absolute path, no <c>..</c> out of the folder, no NUL).
    /// </summary>
    /// <exception cref="InvalidDataException">The name points outside the model folder.</exception>
    internal static string ShardPath(string directory, string index, string shard)
    {
        string root = Path.GetFullPath(directory);
        string full = Path.GetFullPath(Path.Combine(root, shard));
        bool inside = shard.Length > 0 && !Path.IsPathRooted(shard) && shard.IndexOf('\0') < 0
            && full.StartsWith(root.TrimEnd(Path.DirectorySeparatorChar) + Path.DirectorySeparatorChar, StringComparison.Ordinal);
        if (!inside)
            throw new InvalidDataException($"Checkpoint index '{index}' names the shard '{shard}', which is not a file inside the model folder; shards must be relative names inside '{directory}'.");
        return Path.Combine(directory, shard);
    }
}
