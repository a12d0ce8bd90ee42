using System.Text.Encodings.Web;
using System.Text.Json;
using Microsoft.ML.Dpo.Tokenization;

namespace Microsoft.ML.Dpo.Tests.Tokenization;

/// <summary>Directories whose only vocabulary is a Hugging Face tokenizer.json (as Llama 3 ships).</summary>
[TestClass]
public sealed class TokenizerJsonTests
{
    const string ByteLevelPreTokenizer = """{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}""";

    /// <summary>Llama 3's layout: a Split regex, then ByteLevel without its own regex. This regex splits " world" into " " and "world".</summary>
    const string SplitThenByteLevelPreTokenizer = """
        {"type": "Sequence", "pretokenizers": [
          {"type": "Split", "pattern": {"Regex": "\\S+|\\s+"}, "behavior": "Isolated", "invert": false},
          {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}
        """;

    static readonly string[] s_tinyTexts =
    {
        "hello world",
        "<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n",
        "hello<|endoftext|>world",
        "héllo  wörld\n\n 123 🤗 x\tTAB  ",
        "  hello   world  hello",
        "It's 2024! Don't you'll've",
        "<|im_end",
        "",
    };

    static readonly (int Id, string Content)[] s_tinyAdded = { (265, "<|endoftext|>"), (266, "<|im_start|>"), (267, "<|im_end|>") };

    /// <summary>
    /// The tiny byte-level BPE fixture as vocab.json + merges.txt (added tokens in tokenizer_config.json), next to the same
    /// vocabulary as a tokenizer.json only (added tokens in its added_tokens); both with the same special tokens.
    /// </summary>
    static (TempDirectory Files, TempDirectory Json) TinyPair(bool mergesAsPairs, string preTokenizer)
    {
        var files = new TempDirectory();
        TokenizerFixtures.WriteTinyByteLevelBpe(files.Path);
        File.WriteAllText(files.Combine("tokenizer_config.json"), $$"""
            { {{TokenizerFixtures.AddedTokensDecoder}}, "bos_token": null, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>" }
            """);

        var json = new TempDirectory();
        WriteTokenizerJson(json.Combine("tokenizer.json"), ReadVocab(files.Path), ReadMerges(files.Path), mergesAsPairs, s_tinyAdded, preTokenizer);
        File.WriteAllText(json.Combine("tokenizer_config.json"), """{"bos_token": null, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}""");
        return (files, json);
    }

    [TestMethod]
    [DataRow(false, false, DisplayName = "merges as \"a b\", ByteLevel")]
    [DataRow(true, false, DisplayName = "merges as [a, b], ByteLevel")]
    [DataRow(false, true, DisplayName = "merges as \"a b\", Split regex + ByteLevel")]
    [DataRow(true, true, DisplayName = "merges as [a, b], Split regex + ByteLevel")]
    public void TokenizerJsonEncodesAsVocabAndMerges(bool mergesAsPairs, bool splitRegex)
    {
        var (filesDir, jsonDir) = TinyPair(mergesAsPairs, splitRegex ? SplitThenByteLevelPreTokenizer : ByteLevelPreTokenizer);
        using var _ = filesDir;
        using var __ = jsonDir;
        var fromFiles = TextTokenizer.FromDirectory(filesDir.Path);
        var fromJson = TextTokenizer.FromDirectory(jsonDir.Path);

        Assert.AreEqual("tokenizer.json", fromJson.Format);
        foreach (string text in s_tinyTexts)
        {
            int[] ids = fromJson.Encode(text).ToArray();
            if (!splitRegex) CollectionAssert.AreEqual(fromFiles.Encode(text).ToArray(), ids, text); // vocab.json + merges.txt use GPT-2's regex
            Assert.AreEqual(text, fromJson.Decode(ids, skipSpecialTokens: false), text);
            Assert.AreEqual(fromFiles.Decode(ids), fromJson.Decode(ids), text);
        }
        // The merges are used (not just bytes), the Split regex when present, and added tokens are single ids.
        CollectionAssert.AreEqual(splitRegex ? new[] { 259, 32, 119, 261, 263 } : new[] { 259, 264 }, fromJson.Encode("hello world").ToArray());
        CollectionAssert.AreEqual(new[] { 266, 259, 267 }, fromJson.Encode("<|im_start|>hello<|im_end|>").ToArray());

        Assert.AreEqual(267, fromJson.EosTokenId);
        Assert.AreEqual("<|im_end|>", fromJson.EosToken);
        Assert.AreEqual(265, fromJson.PadTokenId);
        Assert.IsNull(fromJson.BosTokenId);
        Assert.AreEqual(268, fromJson.VocabularySize);
        CollectionAssert.AreEquivalent(fromFiles.SpecialTokens.ToArray(), fromJson.SpecialTokens.ToArray());
        Assert.AreEqual(264, fromJson.TokenToId("Ġworld"));
        Assert.AreEqual("hello", fromJson.Decode(new[] { 266, 259, 267 }), "added tokens are skipped on decode");
    }

    [TestMethod]
    public void Gpt2AsTokenizerJsonEncodesAsGpt2()
    {
        var gpt2 = TextTokenizer.Gpt2();
        using var files = new TempDirectory();
        gpt2.Save(files.Path);
        using var json = new TempDirectory();
        WriteTokenizerJson(json.Combine("tokenizer.json"), ReadVocab(files.Path), ReadMerges(files.Path), mergesAsPairs: true,
            new[] { (50256, "<|endoftext|>") }, ByteLevelPreTokenizer);
        File.WriteAllText(json.Combine("tokenizer_config.json"), """{"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "tokenizer_class": "GPT2Tokenizer"}""");

        var fromFiles = TextTokenizer.FromDirectory(files.Path);
        var fromJson = TextTokenizer.FromDirectory(json.Path);
        Assert.AreEqual("tokenizer.json", fromJson.Format);
        CollectionAssert.AreEqual(new[] { 15496, 995 }, fromJson.Encode("Hello world").ToArray());
        foreach (string text in Gpt2TokenizerTests.VariedTexts.Append("football, foot ball; <|endoftext|><|endoftext|>\n\n\n  \t x"))
        {
            int[] ids = fromJson.Encode(text).ToArray();
            CollectionAssert.AreEqual(gpt2.Encode(text).ToArray(), ids, text);
            CollectionAssert.AreEqual(fromFiles.Encode(text).ToArray(), ids, text);
            Assert.AreEqual(text, fromJson.Decode(ids, skipSpecialTokens: false), text);
        }
        Assert.AreEqual(50256, fromJson.BosTokenId);
        Assert.AreEqual(50256, fromJson.EosTokenId);
        Assert.AreEqual(50256, fromJson.PadTokenId);
        Assert.AreEqual(50257, fromJson.VocabularySize);
    }

    [TestMethod]
    public void SaveCopiesTokenizerJsonAndLoadsBack()
    {
        var (filesDir, jsonDir) = TinyPair(mergesAsPairs: true, SplitThenByteLevelPreTokenizer);
        using var _ = filesDir;
        using var __ = jsonDir;
        var tok = TextTokenizer.FromDirectory(jsonDir.Path);
        using var saved = new TempDirectory();
        tok.Save(saved.Path);

        CollectionAssert.AreEqual(File.ReadAllBytes(jsonDir.Combine("tokenizer.json")), File.ReadAllBytes(saved.Combine("tokenizer.json")));
        Assert.IsFalse(File.Exists(saved.Combine("vocab.json")));
        Assert.IsFalse(File.Exists(saved.Combine("merges.txt")));
        var back = TextTokenizer.FromDirectory(saved.Path);
        foreach (string text in s_tinyTexts)
            CollectionAssert.AreEqual(tok.Encode(text).ToArray(), back.Encode(text).ToArray(), text);
        Assert.AreEqual(tok.EosTokenId, back.EosTokenId);
        Assert.AreEqual(tok.PadTokenId, back.PadTokenId);
        Assert.AreEqual(tok.BosTokenId, back.BosTokenId);
        CollectionAssert.AreEquivalent(tok.SpecialTokens.ToArray(), back.SpecialTokens.ToArray());

        tok.Save(jsonDir.Path); // into its own directory: the files stay as they are
        CollectionAssert.AreEqual(tok.Encode(s_tinyTexts[1]).ToArray(), TextTokenizer.FromDirectory(jsonDir.Path).Encode(s_tinyTexts[1]).ToArray());
    }

    [TestMethod]
    [DataRow("""{"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["▁hello", -1.0]]}""", null, "Unigram", DisplayName = "Unigram")]
    [DataRow("""{"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "vocab": {"[UNK]": 0, "hello": 1}}""", null, "WordPiece", DisplayName = "WordPiece")]
    [DataRow("""{"type": "WordLevel", "unk_token": "[UNK]", "vocab": {"[UNK]": 0}}""", null, "WordLevel", DisplayName = "WordLevel")]
    public void UnsupportedModelsSayWhichFileToAdd(string model, string? rest, string mentioned)
    {
        using var dir = new TempDirectory();
        File.WriteAllText(dir.Combine("tokenizer.json"), $$"""{"version": "1.0", "added_tokens": [], "model": {{model}}{{rest}} }""");
        var e = Assert.ThrowsExactly<NotSupportedException>(() => TextTokenizer.FromDirectory(dir.Path));
        StringAssert.Contains(e.Message, dir.Combine("tokenizer.json"));
        StringAssert.Contains(e.Message, $"model type \"{mentioned}\"");
    }

    const string TinyLlamaModel = """{"type": "BPE", "dropout": null, "unk_token": "<unk>", "byte_fallback": true, "fuse_unk": true, "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x00>": 3, "▁": 4, "h": 5, "▁h": 6}, "merges": ["▁ h"]}""";
    const string TinyLlamaRest = """
        , "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": null,
        "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
        """;
    const string MistralModel = """{"type": "BPE", "unk_token": "<unk>", "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, "h": 4, "▁h": 5}, "merges": [["▁", "h"]]}""";
    const string MistralRest = """
        , "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false},
        "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false}
        """;

    [TestMethod]
    [DataRow(TinyLlamaModel, TinyLlamaRest, 6, DisplayName = "TinyLlama: byte_fallback, Prepend/Replace '▁'")]
    [DataRow(MistralModel, MistralRest, 5, DisplayName = "Mistral: Metaspace")]
    public void SentencePieceStyleTokenizerJsonLoads(string model, string rest, int wordId)
    {
        using var dir = new TempDirectory();
        File.WriteAllText(dir.Combine("tokenizer.json"), $$"""{"version": "1.0", "added_tokens": [], "model": {{model}}{{rest}} }""");
        var tok = TextTokenizer.FromDirectory(dir.Path);
        CollectionAssert.AreEqual(new[] { wordId, wordId }, tok.Encode("h h").ToArray());
        Assert.AreEqual("h h", tok.Decode(tok.Encode("h h")));
    }

    [TestMethod]
    public void TokenizerJsonComesFirst()
    {
        const string unigram = """{"version": "1.0", "model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0]]}}""";

        using var sp = new TempDirectory();
        TokenizerFixtures.WriteTinySentencePiece(sp.Combine("tokenizer.model"));
        File.WriteAllText(sp.Combine("tokenizer.json"), unigram);
        var e = Assert.ThrowsExactly<NotSupportedException>(() => TextTokenizer.FromDirectory(sp.Path), "tokenizer.json comes first, as in Hugging Face");
        StringAssert.Contains(e.Message, "model type \"Unigram\"");
        StringAssert.Contains(e.Message, "tokenizer.json");
        File.Delete(sp.Combine("tokenizer.json"));
        Assert.AreEqual("tokenizer.model", TextTokenizer.FromDirectory(sp.Path).Format);

        using var bpe = new TempDirectory();
        TokenizerFixtures.WriteTinyByteLevelBpe(bpe.Path);
        File.WriteAllText(bpe.Combine("tokenizer.json"), unigram);
        Assert.ThrowsExactly<NotSupportedException>(() => TextTokenizer.FromDirectory(bpe.Path));
        File.Delete(bpe.Combine("tokenizer.json"));
        var tok = TextTokenizer.FromDirectory(bpe.Path);
        Assert.AreEqual("vocab.json + merges.txt", tok.Format);
        CollectionAssert.AreEqual(new[] { 259, 264 }, tok.Encode("hello world").ToArray());
    }

    [TestMethod]
    public void MalformedTokenizerJsonIsNamed()
    {
        using var dir = new TempDirectory();
        string path = dir.Combine("tokenizer.json");
        foreach (var (json, what) in new[]
        {
            ("""{"version": "1.0", "pre_tokenizer": null}""", "no \"model\""),
            ($$"""{"model": {"type": "BPE", "vocab": {"a": "zero"}, "merges": []}, "pre_tokenizer": {{ByteLevelPreTokenizer}} }""", "model.vocab[\"a\"]"),
            ($$"""{"model": {"type": "BPE", "vocab": {"a": 0} }, "pre_tokenizer": {{ByteLevelPreTokenizer}} }""", "model.merges"),
            ($$"""{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a a", "a b c"]}, "pre_tokenizer": {{ByteLevelPreTokenizer}} }""", "model.merges[1]"),
            ($$"""{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [["a", "a"], [1, 2]]}, "pre_tokenizer": {{ByteLevelPreTokenizer}} }""", "model.merges[1]"),
        })
        {
            File.WriteAllText(path, json);
            var e = Assert.ThrowsExactly<InvalidDataException>(() => TextTokenizer.FromDirectory(dir.Path), json);
            StringAssert.Contains(e.Message, path, json);
            StringAssert.Contains(e.Message, what, json);
        }
    }

    static Dictionary<string, int> ReadVocab(string dir) =>
        JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(Path.Combine(dir, "vocab.json")))!;

    static List<string> ReadMerges(string dir) =>
        File.ReadLines(Path.Combine(dir, "merges.txt")).Where(l => l.Length > 0 && !l.StartsWith("#version", StringComparison.Ordinal)).ToList();

    /// <summary>A tokenizer.json as Hugging Face tokenizers writes it for a byte-level BPE.</summary>
    static void WriteTokenizerJson(string path, IReadOnlyDictionary<string, int> vocab, IReadOnlyList<string> merges, bool mergesAsPairs,
        IEnumerable<(int Id, string Content)> added, string preTokenizer)
    {
        using var stream = File.Create(path);
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            w.WriteString("version", "1.0");
            w.WriteNull("truncation");
            w.WriteNull("padding");
            w.WriteStartArray("added_tokens");
            foreach (var (id, content) in added)
            {
                w.WriteStartObject();
                w.WriteNumber("id", id);
                w.WriteString("content", content);
                w.WriteBoolean("single_word", false);
                w.WriteBoolean("lstrip", false);
                w.WriteBoolean("rstrip", false);
                w.WriteBoolean("normalized", false);
                w.WriteBoolean("special", true);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteNull("normalizer");
            w.WritePropertyName("pre_tokenizer");
            using (var pre = JsonDocument.Parse(preTokenizer)) pre.WriteTo(w);
            w.WritePropertyName("post_processor");
            w.WriteRawValue("""{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true}""");
            w.WritePropertyName("decoder");
            w.WriteRawValue("""{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}""");
            w.WriteStartObject("model");
            w.WriteString("type", "BPE");
            w.WriteNull("dropout");
            w.WriteNull("unk_token");
            w.WriteNull("continuing_subword_prefix");
            w.WriteNull("end_of_word_suffix");
            w.WriteBoolean("fuse_unk", false);
            w.WriteBoolean("byte_fallback", false);
            w.WriteBoolean("ignore_merges", false);
            w.WriteStartObject("vocab");
            foreach (var (token, id) in vocab.OrderBy(kv => kv.Value)) w.WriteNumber(token, id);
            w.WriteEndObject();
            w.WriteStartArray("merges");
            foreach (string merge in merges)
            {
                if (!mergesAsPairs) { w.WriteStringValue(merge); continue; }
                string[] pair = merge.Split(' ');
                w.WriteStartArray();
                w.WriteStringValue(pair[0]);
                w.WriteStringValue(pair[1]);
                w.WriteEndArray();
            }
            w.WriteEndArray();
            w.WriteEndObject();
            w.WriteEndObject();
        }
    }
}
