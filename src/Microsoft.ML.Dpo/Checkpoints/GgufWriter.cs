using System.Buffers.Binary;
using System.Text;

namespace Microsoft.ML.Dpo.Checkpoints;

/// <summary>The tensor encodings <see cref="LanguageModel.ExportGguf"/> writes (ggml's type names).</summary>
public enum GgufType
{
    /// <summary>32-bit floats: exactly the model's weights.</summary>
    F32,

    /// <summary>IEEE half precision for the matrices (vectors such as norms and biases stay F32), llama.cpp's usual default.</summary>
    F16,

    /// <summary>
    /// ggml's Q8_0 for the matrices: blocks of 32 values as one F16 scale (the block's largest magnitude / 127) and 32 signed
    /// bytes; about 8.5 bits a weight. A matrix whose rows are not a multiple of 32 is written F16; vectors stay F32.
    /// </summary>
    Q8_0,
}

/// <summary>
/// A GGUF version 3 file, as llama.cpp's <c>gguf.h</c> defines it: the magic "GGUF", the version, the tensor and metadata
/// counts, the metadata key–value pairs, the tensor infos (name, dimensions fastest-varying first, ggml type, offset), padding
/// to <see cref="Alignment"/>, then each tensor's data at its aligned offset. Little-endian throughout. Tensor data is produced
/// only while the file is written, one tensor at a time.
/// </summary>
internal sealed class GgufWriter
{
    /// <summary>The alignment of the data section and of every tensor in it (GGUF's default, <c>general.alignment</c>).</summary>
    public const int Alignment = 32;

    /// <summary>Values of a Q8_0 block.</summary>
    public const int Q8BlockSize = 32;

    enum ValueType : uint { UInt8 = 0, Int8 = 1, UInt16 = 2, Int16 = 3, UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7, String = 8, Array = 9, UInt64 = 10, Int64 = 11, Float64 = 12 }

    /// <summary>ggml's type ids of the encodings written here.</summary>
    internal enum GgmlType : uint { F32 = 0, F16 = 1, Q8_0 = 8 }

    sealed record Tensor(string Name, long[] Shape, GgmlType Type, Func<float[]> Data);

    readonly List<(string Key, Action<BinaryWriter> Write)> _metadata = [];
    readonly HashSet<string> _keys = new(StringComparer.Ordinal);
    readonly List<Tensor> _tensors = [];
    readonly HashSet<string> _tensorNames = new(StringComparer.Ordinal);

    /// <summary>The metadata keys added so far, in order.</summary>
    public IEnumerable<string> Keys => _metadata.Select(m => m.Key);

    void Add(string key, ValueType type, Action<BinaryWriter> value)
    {
        if (!_keys.Add(key)) throw new InvalidOperationException($"GGUF metadata key '{key}' added twice.");
        _metadata.Add((key, w => { w.Write((uint)type); value(w); }));
    }

    public void AddString(string key, string value) => Add(key, ValueType.String, w => WriteString(w, value));
    public void AddUInt32(string key, uint value) => Add(key, ValueType.UInt32, w => w.Write(value));
    public void AddInt32(string key, int value) => Add(key, ValueType.Int32, w => w.Write(value));
    public void AddFloat32(string key, float value) => Add(key, ValueType.Float32, w => w.Write(value));
    public void AddBool(string key, bool value) => Add(key, ValueType.Bool, w => w.Write((byte)(value ? 1 : 0)));

    public void AddStrings(string key, IReadOnlyList<string> values) => Add(key, ValueType.Array, w =>
    {
        w.Write((uint)ValueType.String);
        w.Write((ulong)values.Count);
        foreach (string v in values) WriteString(w, v);
    });

    public void AddFloat32s(string key, IReadOnlyList<float> values) => Add(key, ValueType.Array, w =>
    {
        w.Write((uint)ValueType.Float32);
        w.Write((ulong)values.Count);
        foreach (float v in values) w.Write(v);
    });

    public void AddInt32s(string key, IReadOnlyList<int> values) => Add(key, ValueType.Array, w =>
    {
        w.Write((uint)ValueType.Int32);
        w.Write((ulong)values.Count);
        foreach (int v in values) w.Write(v);
    });

    /// <summary>
    /// Adds a tensor. <paramref name="shape"/> is PyTorch's (slowest-varying first; GGUF stores it reversed);
    /// <paramref name="data"/> returns its values row-major when the file is written.
    /// </summary>
    public void AddTensor(string name, long[] shape, GgmlType type, Func<float[]> data)
    {
        if (!_tensorNames.Add(name)) throw new InvalidOperationException($"GGUF tensor '{name}' added twice.");
        if (type == GgmlType.Q8_0 && shape[^1] % Q8BlockSize != 0)
            throw new ArgumentException($"GGUF tensor '{name}': Q8_0 needs rows that are a multiple of {Q8BlockSize}, not {shape[^1]}.", nameof(shape));
        _tensors.Add(new Tensor(name, shape, type, data));
    }

    static long ByteSize(long[] shape, GgmlType type)
    {
        long count = shape.Aggregate(1L, (a, b) => a * b);
        return type switch { GgmlType.F32 => count * 4, GgmlType.F16 => count * 2, _ => count / Q8BlockSize * (2 + Q8BlockSize) };
    }

    static long Pad(long offset) => (offset + Alignment - 1) / Alignment * Alignment;

    /// <summary>Writes the whole file to <paramref name="stream"/>.</summary>
    public void Write(Stream stream)
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("GGUF writing requires a little-endian machine.");
        using var w = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true);
        w.Write("GGUF"u8);
        w.Write(3u);
        w.Write((ulong)_tensors.Count);
        w.Write((ulong)_metadata.Count);
        foreach (var (key, write) in _metadata)
        {
            WriteString(w, key);
            write(w);
        }
        long offset = 0;
        var offsets = new List<long>();
        foreach (var t in _tensors)
        {
            WriteString(w, t.Name);
            w.Write((uint)t.Shape.Length);
            for (int d = t.Shape.Length - 1; d >= 0; d--) w.Write((ulong)t.Shape[d]);
            w.Write((uint)t.Type);
            w.Write((ulong)offset);
            offsets.Add(offset);
            offset = Pad(offset + ByteSize(t.Shape, t.Type));
        }
        w.Flush();
        long dataStart = Pad(stream.Position);
        WriteZeros(stream, dataStart - stream.Position);
        for (int i = 0; i < _tensors.Count; i++)
        {
            var t = _tensors[i];
            WriteZeros(stream, dataStart + offsets[i] - stream.Position);
            float[] values = t.Data();
            long expected = t.Shape.Aggregate(1L, (a, b) => a * b);
            if (values.Length != expected)
                throw new InvalidOperationException($"GGUF tensor '{t.Name}': {values.Length} values for shape [{string.Join(", ", t.Shape)}].");
            byte[] bytes = t.Type switch
            {
                GgmlType.F32 => F32Bytes(values),
                GgmlType.F16 => F16Bytes(values),
                _ => QuantizeQ8_0(values),
            };
            stream.Write(bytes);
        }
        WriteZeros(stream, dataStart + offset - stream.Position);
    }

    static void WriteZeros(Stream stream, long count)
    {
        if (count < 0) throw new InvalidOperationException("GGUF layout error: negative padding.");
        for (long i = 0; i < count; i++) stream.WriteByte(0);
    }

    static void WriteString(BinaryWriter w, string value)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(value);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }

    static byte[] F32Bytes(float[] values)
    {
        var bytes = new byte[values.Length * 4];
        Buffer.BlockCopy(values, 0, bytes, 0, bytes.Length);
        return bytes;
    }

    /// <summary>IEEE half precision, rounded to nearest even (what numpy's <c>astype(float16)</c> and ggml's conversion give).</summary>
    static byte[] F16Bytes(float[] values)
    {
        var bytes = new byte[values.Length * 2];
        for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteHalfLittleEndian(bytes.AsSpan(i * 2), (Half)values[i]);
        return bytes;
    }

    /// <summary>
    /// ggml's reference Q8_0 quantization (<c>quantize_row_q8_0_ref</c>): per block of 32 values, d = max |x| / 127 stored as
    /// F16, and q = round(x / d) (half away from zero; 0 when d is 0) as signed bytes.
    /// </summary>
    internal static byte[] QuantizeQ8_0(float[] values)
    {
        if (values.Length % Q8BlockSize != 0) throw new ArgumentException($"Q8_0 needs a multiple of {Q8BlockSize} values.", nameof(values));
        int blocks = values.Length / Q8BlockSize;
        var bytes = new byte[blocks * (2 + Q8BlockSize)];
        for (int b = 0; b < blocks; b++)
        {
            int at = b * Q8BlockSize, to = b * (2 + Q8BlockSize);
            float amax = 0;
            for (int j = 0; j < Q8BlockSize; j++) amax = Math.Max(amax, Math.Abs(values[at + j]));
            float d = amax / 127f;
            float id = d != 0 ? 1f / d : 0f;
            BinaryPrimitives.WriteHalfLittleEndian(bytes.AsSpan(to), (Half)d);
            for (int j = 0; j < Q8BlockSize; j++)
                bytes[to + 2 + j] = unchecked((byte)(sbyte)MathF.Round(values[at + j] * id, MidpointRounding.AwayFromZero));
        }
        return bytes;
    }

    /// <summary>Reads the first metadata value of a GGUF file when it is a string under <paramref name="key"/> (null otherwise, or when the file is not GGUF).</summary>
    internal static string? ReadFirstStringValue(string path, string key)
    {
        try
        {
            using var f = File.OpenRead(path);
            using var r = new BinaryReader(f);
            if (f.Length < 24 || !r.ReadBytes(4).AsSpan().SequenceEqual("GGUF"u8) || r.ReadUInt32() < 2) return null;
            r.ReadUInt64();
            if (r.ReadUInt64() == 0) return null;
            string? ReadShortString() { ulong n = r.ReadUInt64(); return n > 4096 ? null : Encoding.UTF8.GetString(r.ReadBytes((int)n)); }
            if (ReadShortString() != key || r.ReadUInt32() != (uint)ValueType.String) return null;
            return ReadShortString();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or EndOfStreamException) { return null; }
    }
}
