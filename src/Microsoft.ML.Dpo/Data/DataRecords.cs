using System.Collections;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Parquet;
using Parquet.Serialization;

namespace Microsoft.ML.Dpo.Data;

/// <summary>A record that does not fit its layout: the field and why. <see cref="Detail"/> is kept out of the report's grouping key.</summary>
internal sealed class RecordException(string? field, string reason, string? detail = null) : Exception(reason)
{
    public string? Field { get; } = field;
    public string Reason { get; } = reason;
    public string? Detail { get; } = detail;
    public string Key => Field is null ? Reason : $"field '{Field}': {Reason}";
}

/// <summary>One record of a data file: its 1-based number (line, or row) and its value as JSON, or why it could not be parsed.</summary>
internal readonly record struct SourceRecord(long Number, JsonElement Value, RecordException? Error);

/// <summary>Reads the records of JSON Lines, JSON array and Parquet files as JSON values.</summary>
internal static class DataRecords
{
    public static DataFileFormat ResolveFormat(string path, DataFileFormat format)
    {
        if (format != DataFileFormat.Auto) return format;
        string extension = Path.GetExtension(path).ToLowerInvariant();
        return extension switch
        {
            ".parquet" or ".pq" => DataFileFormat.Parquet,
            ".jsonl" or ".ndjson" or ".json" => DataFileFormat.Json,
            _ => throw new ArgumentException(
                $"Cannot tell the format of '{path}' from its extension '{extension}': use .jsonl, .json or .parquet, or set Format in the options.", nameof(path)),
        };
    }

    /// <summary>The records of <paramref name="path"/>, lazily; <paramref name="unit"/> names what the numbers count ("line", "row", "record").</summary>
    public static IEnumerable<SourceRecord> Read(string path, DataFileFormat format, out string unit)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"Data file '{path}' was not found.", path);
        if (format == DataFileFormat.Parquet)
        {
            unit = "row";
            return ReadParquet(path);
        }
        if (StartsWithArray(path))
        {
            unit = "record";
            return ReadJsonArray(path);
        }
        unit = "line";
        return ReadJsonLines(path);
    }

    static bool StartsWithArray(string path)
    {
        using var reader = new StreamReader(path, Encoding.UTF8, detectEncodingFromByteOrderMarks: true);
        int c;
        while ((c = reader.Read()) >= 0)
            if (!char.IsWhiteSpace((char)c)) return c == '[';
        return false;
    }

    /// <summary>
    /// The records of a JSON Lines file, read as bytes line by line (lines end at '\n'; a trailing '\r' and a UTF-8 byte order mark are
    /// dropped). A line that is not valid UTF-8 is a malformed record naming the byte offset in the file, never silently replaced by U+FFFD.
    /// </summary>
    static IEnumerable<SourceRecord> ReadJsonLines(string path)
    {
        long number = 0;
        foreach (var (offset, bytes) in Lines(path))
        {
            number++;
            var line = bytes.AsMemory();
            if (number == 1 && line.Span.StartsWith(Utf8Bom)) { line = line[Utf8Bom.Length..]; }
            long lineStart = offset + (bytes.Length - line.Length);
            if (IsBlank(line.Span)) continue;
            JsonElement value = default;
            RecordException? error = null;
            int invalid = InvalidUtf8At(line.Span);
            if (invalid >= 0)
            {
                error = new RecordException(null, "invalid UTF-8 (the file must be UTF-8)",
                    string.Create(CultureInfo.InvariantCulture, $"byte 0x{line.Span[invalid]:X2} at byte offset {lineStart + invalid} of the file"));
            }
            else
            {
                try
                {
                    using var document = JsonDocument.Parse(line);
                    Runtime.JsonText.ReadAllStrings(document.RootElement);
                    value = document.RootElement.Clone();
                }
                catch (JsonException e)
                {
                    error = new RecordException(null, "invalid JSON", e.Message.ReplaceLineEndings(" "));
                }
                catch (InvalidOperationException e)
                {
                    error = new RecordException(null, "invalid JSON", "a name or string is not valid text: " + e.Message.ReplaceLineEndings(" "));
                }
            }
            yield return new SourceRecord(number, value, error);
        }
    }

    static ReadOnlySpan<byte> Utf8Bom => [0xEF, 0xBB, 0xBF];

    static bool IsBlank(ReadOnlySpan<byte> line)
    {
        foreach (byte b in line)
            if (b is not ((byte)' ' or (byte)'\t' or (byte)'\r' or (byte)'\n' or 0x0B or 0x0C)) return false;
        return true;
    }

    /// <summary>The index of the first byte of <paramref name="bytes"/> that is not part of valid UTF-8, or -1.</summary>
    internal static int InvalidUtf8At(ReadOnlySpan<byte> bytes)
    {
        if (System.Text.Unicode.Utf8.IsValid(bytes)) return -1;
        int at = 0;
        while (at < bytes.Length)
        {
            if (Rune.DecodeFromUtf8(bytes[at..], out _, out int consumed) != System.Buffers.OperationStatus.Done) return at;
            at += consumed;
        }
        return -1;
    }

    /// <summary>The lines of a file as bytes with the byte offset of each line's start; '\n' ends a line and a '\r' before it is dropped.</summary>
    static IEnumerable<(long Offset, byte[] Bytes)> Lines(string path)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1);
        var chunk = new byte[1 << 16];
        var line = new MemoryStream();
        long position = 0, lineStart = 0;
        int read;
        while ((read = stream.Read(chunk, 0, chunk.Length)) > 0)
        {
            int from = 0;
            for (int i = 0; i < read; i++)
            {
                if (chunk[i] != (byte)'\n') continue;
                line.Write(chunk, from, i - from);
                yield return (lineStart, TakeLine(line));
                from = i + 1;
                lineStart = position + from;
            }
            line.Write(chunk, from, read - from);
            position += read;
        }
        if (line.Length > 0) yield return (lineStart, TakeLine(line));
    }

    static byte[] TakeLine(MemoryStream line)
    {
        int length = (int)line.Length;
        var buffer = line.GetBuffer();
        if (length > 0 && buffer[length - 1] == (byte)'\r') length--;
        var bytes = buffer.AsSpan(0, length).ToArray();
        line.SetLength(0);
        return bytes;
    }

    static IEnumerable<SourceRecord> ReadJsonArray(string path)
    {
        JsonDocument document;
        using (var stream = File.OpenRead(path))
        {
            try { document = JsonDocument.Parse(stream); }
            catch (JsonException e) { throw new InvalidDataException($"{path}: invalid JSON array (line {e.LineNumber + 1}): {e.Message.ReplaceLineEndings(" ")}", e); }
        }
        using (document)
        {
            long number = 0;
            foreach (var element in document.RootElement.EnumerateArray())
            {
                RecordException? error = null;
                try { Runtime.JsonText.ReadAllStrings(element); }
                catch (InvalidOperationException e) { error = new RecordException(null, "invalid JSON", "a name or string is not valid text: " + e.Message.ReplaceLineEndings(" ")); }
                yield return new SourceRecord(++number, error is null ? element.Clone() : default, error);
            }
        }
    }

    static IEnumerable<SourceRecord> ReadParquet(string path)
    {
        int groups = ReadParquetPart(path, "its footer", async () =>
        {
            using var stream = File.OpenRead(path);
            await using var reader = await ParquetReader.CreateAsync(stream).ConfigureAwait(false);
            return reader.RowGroupCount;
        });
        long number = 0;
        for (int g = 0; g < groups; g++)
        {
            int group = g;
            var rows = ReadParquetPart(path, $"row group {group + 1} of {groups}", async () =>
            {
                using var stream = File.OpenRead(path);
                return (await ParquetSerializer.DeserializeUntypedAsync(stream, null, group).ConfigureAwait(false)).Data;
            });
            foreach (var row in rows)
            {
                number++;
                JsonElement value;
                RecordException? error = null;
                try { value = JsonSerializer.SerializeToElement(ToNode(row)); }
                catch (Exception e) when (e is NotSupportedException or InvalidOperationException or JsonException)
                {
                    value = default;
                    error = new RecordException(null, "unsupported Parquet value", e.Message);
                }
                yield return new SourceRecord(number, value, error);
            }
        }
    }

    // Parquet.Net is asynchronous only; run it off any synchronization context so a synchronous caller cannot deadlock.
    static T Sync<T>(Func<Task<T>> work) => Task.Run(work).GetAwaiter().GetResult();

    /// <summary>
    /// Runs a Parquet.Net read; whatever it throws on a file that is not Parquet, truncated or corrupt (its exception types vary:
    /// IO, format, argument, index errors) becomes one <see cref="InvalidDataException"/> naming the file and the part read.
    /// </summary>
    static T ReadParquetPart<T>(string path, string part, Func<Task<T>> work)
    {
        try
        {
            return Sync(work);
        }
        catch (Exception e) when (e is not (OutOfMemoryException or OperationCanceledException or FileNotFoundException or UnauthorizedAccessException))
        {
            throw new InvalidDataException($"{path}: not a readable Parquet file (reading {part}): {e.Message.ReplaceLineEndings(" ")}", e);
        }
    }

    /// <summary>Converts an untyped Parquet value (structs as dictionaries, lists, maps, scalars) to JSON.</summary>
    internal static JsonNode? ToNode(object? value)
    {
        switch (value)
        {
            case null: return null;
            case string s: return JsonValue.Create(s);
            case ReadOnlyMemory<char> m: return JsonValue.Create(m.ToString());
            case char c: return JsonValue.Create(c.ToString());
            case bool b: return JsonValue.Create(b);
            case byte[] bytes: return JsonValue.Create(Encoding.UTF8.GetString(bytes));
            case double d: return Number(d);
            case float f: return Number(f);
            case decimal m: return JsonValue.Create(m);
            case sbyte or byte or short or ushort or int or uint or long: return JsonValue.Create(Convert.ToInt64(value, CultureInfo.InvariantCulture));
            case ulong u: return JsonValue.Create(u);
            case IFormattable formattable when value is DateTime or DateTimeOffset or TimeSpan or DateOnly or TimeOnly or Guid:
                return JsonValue.Create(formattable.ToString(null, CultureInfo.InvariantCulture));
            case IDictionary dictionary:
                var obj = new JsonObject();
                foreach (DictionaryEntry entry in dictionary)
                    obj[Convert.ToString(entry.Key, CultureInfo.InvariantCulture) ?? ""] = ToNode(entry.Value);
                return obj;
            case IEnumerable items:
                var array = new JsonArray();
                foreach (var item in items) array.Add(ToNode(item));
                return array;
            default:
                return JsonValue.Create(Convert.ToString(value, CultureInfo.InvariantCulture));
        }
    }

    // JSON has no NaN or infinities: they become strings, which read back as unusable scores.
    static JsonNode Number(double d) =>
        double.IsFinite(d) ? JsonValue.Create(d) : JsonValue.Create(d.ToString(CultureInfo.InvariantCulture));
}
