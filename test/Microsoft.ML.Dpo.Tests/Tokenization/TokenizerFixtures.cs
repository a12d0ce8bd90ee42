using System.Text;
using Microsoft.ML.Dpo.Tokenization;

namespace Microsoft.ML.Dpo.Tests.Tokenization;

/// <summary>Small but real tokenizer files written by the tests.</summary>
internal static class TokenizerFixtures
{
    /// <summary>
    /// A byte-level BPE in Hugging Face's format: the 256 byte symbols (id = byte value), nine merges spelling
    /// "hello" and " world" (ids 256..264), and three added tokens in tokenizer_config.json: &lt;|endoftext|&gt; 265,
    /// &lt;|im_start|&gt; 266, &lt;|im_end|&gt; 267 (as in Qwen2, they are not in vocab.json).
    /// </summary>
    public static void WriteTinyByteLevelBpe(string dir)
    {
        var vocab = new SortedDictionary<int, string>();
        for (int b = 0; b < 256; b++) vocab[b] = ByteLevelBpe.ByteToChar((byte)b).ToString();
        string[] merges = { "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld" };
        for (int i = 0; i < merges.Length; i++) vocab[256 + i] = merges[i].Replace(" ", "");
        var sb = new StringBuilder("{");
        foreach (var (id, token) in vocab)
            sb.Append(sb.Length > 1 ? "," : "").Append(System.Text.Json.JsonSerializer.Serialize(token)).Append(':').Append(id);
        File.WriteAllText(Path.Combine(dir, "vocab.json"), sb.Append('}').ToString());
        File.WriteAllText(Path.Combine(dir, "merges.txt"), "#version: 0.2\n" + string.Join("\n", merges) + "\n");
    }

    public const string AddedTokensDecoder = """
        "added_tokens_decoder": {
          "265": {"content": "<|endoftext|>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true},
          "266": {"content": "<|im_start|>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true},
          "267": {"content": "<|im_end|>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true}
        }
        """;

    /// <summary>
    /// A SentencePiece BPE model (protobuf, as sentencepiece_model.proto specifies) with Llama's layout:
    /// &lt;unk&gt; 0, &lt;s&gt; 1, &lt;/s&gt; 2, byte fallback pieces &lt;0x00&gt;..&lt;0xFF&gt; 3..258, then "▁" 259,
    /// h e l o w r d 260..266, and merges up to "▁hello" 271 and "▁world" 276; dummy prefix on, identity normalizer.
    /// </summary>
    public static void WriteTinySentencePiece(string path)
    {
        var pieces = new List<(string Piece, float Score, int Type)> { ("<unk>", 0, 2), ("<s>", 0, 3), ("</s>", 0, 3) };
        for (int b = 0; b < 256; b++) pieces.Add(($"<0x{b:X2}>", 0, 6));
        pieces.Add(("▁", -20, 1));
        foreach (string c in new[] { "h", "e", "l", "o", "w", "r", "d" }) pieces.Add((c, -21, 1));
        string[] merged = { "ll", "he", "hell", "hello", "▁hello", "or", "▁w", "▁wor", "ld", "▁world" };
        int[] order = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 };
        for (int i = 0; i < merged.Length; i++) pieces.Add((merged[i], -order[i], 1));
        // Ids: "ll" 267, "he" 268, "hell" 269, "hello" 270, "▁hello" 271, "or" 272, "▁w" 273, "▁wor" 274, "ld" 275, "▁world" 276.
        WriteSentencePiece(path, pieces);
    }

    /// <summary>A SentencePiece BPE model with these pieces (type 1 normal, 2 unknown, 3 control, 6 byte), byte fallback, dummy prefix, identity normalizer.</summary>
    public static void WriteSentencePiece(string path, IReadOnlyList<(string Piece, float Score, int Type)> pieces)
    {
        var model = new MemoryStream();
        foreach (var (piece, score, type) in pieces)
        {
            var p = new MemoryStream();
            WriteString(p, 1, piece);
            WriteKey(p, 2, 5); p.Write(BitConverter.GetBytes(score));
            WriteVarintField(p, 3, (ulong)type);
            WriteBytes(model, 1, p.ToArray());
        }
        var trainer = new MemoryStream();
        WriteVarintField(trainer, 3, 2);                    // model_type = BPE
        WriteVarintField(trainer, 4, (ulong)pieces.Count);  // vocab_size
        WriteVarintField(trainer, 35, 1);                   // byte_fallback
        WriteVarintField(trainer, 40, 0);                   // unk_id
        WriteVarintField(trainer, 41, 1);                   // bos_id
        WriteVarintField(trainer, 42, 2);                   // eos_id
        WriteBytes(model, 2, trainer.ToArray());
        var normalizer = new MemoryStream();
        WriteString(normalizer, 1, "identity");
        WriteVarintField(normalizer, 3, 1);                 // add_dummy_prefix
        WriteVarintField(normalizer, 4, 0);                 // remove_extra_whitespaces
        WriteVarintField(normalizer, 5, 1);                 // escape_whitespaces
        WriteBytes(model, 3, normalizer.ToArray());
        File.WriteAllBytes(path, model.ToArray());
    }

    static void WriteKey(Stream s, int field, int wireType) => WriteVarint(s, (ulong)((field << 3) | wireType));

    static void WriteVarintField(Stream s, int field, ulong value) { WriteKey(s, field, 0); WriteVarint(s, value); }

    static void WriteString(Stream s, int field, string value) => WriteBytes(s, field, Encoding.UTF8.GetBytes(value));

    static void WriteBytes(Stream s, int field, byte[] value) { WriteKey(s, field, 2); WriteVarint(s, (ulong)value.Length); s.Write(value); }

    static void WriteVarint(Stream s, ulong value)
    {
        do
        {
            byte b = (byte)(value & 0x7F);
            value >>= 7;
            s.WriteByte(value != 0 ? (byte)(b | 0x80) : b);
        } while (value != 0);
    }
}
