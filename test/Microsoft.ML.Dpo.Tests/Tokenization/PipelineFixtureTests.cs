using System.Text.Json;
using Microsoft.ML.Dpo.Tokenization;

namespace Microsoft.ML.Dpo.Tests.Tokenization;

/// <summary>
/// Small tokenizer.json files (Data/pipeline, made by make_fixtures.mjs) for the components the real-tokenizer kit does not
/// exercise — a DeepSeek-V3 style Sequence of three Splits, added-token flags, Unicode normalizers, every Split behavior,
/// Digits, Punctuation, WhitespaceSplit, Metaspace with prepend_scheme "first", RobertaProcessing — against Hugging Face's
/// Rust tokenizers on 47 texts; and the components we refuse.
/// </summary>
[TestClass]
public sealed class PipelineFixtureTests
{
    static readonly string s_dir = Path.Combine(SharedFiles.RepositoryRoot, "test", "Microsoft.ML.Dpo.Tests", "Tokenization", "Data", "pipeline");
    static readonly Lazy<JsonElement> s_reference = new(() => JsonDocument.Parse(File.ReadAllText(Path.Combine(s_dir, "reference.json"))).RootElement);

    [TestMethod]
    [DataRow("split-sequence")]
    [DataRow("added-flags")]
    [DataRow("normalizers-digits-punctuation")]
    [DataRow("split-behaviors")]
    [DataRow("metaspace-first")]
    [DataRow("falcon-style")]
    [DataRow("metaspace-always-nfkd")]
    public void FixtureMatchesHuggingFaceRustTokenizers(string name)
    {
        var tok = TextTokenizer.FromDirectory(Path.Combine(s_dir, name));
        string[] texts = s_reference.Value.GetProperty("texts").EnumerateArray().Select(e => e.GetString()!).ToArray();
        var rust = s_reference.Value.GetProperty("tokenizers").GetProperty(name).GetProperty("rust");
        var failures = new List<string>();
        static string Ids(IEnumerable<int> ids) => "[" + string.Join(",", ids) + "]";
        for (int i = 0; i < texts.Length; i++)
        {
            int[] ids = rust.GetProperty("ids")[i].EnumerateArray().Select(e => e.GetInt32()).ToArray();
            int[] special = rust.GetProperty("ids_special")[i].EnumerateArray().Select(e => e.GetInt32()).ToArray();
            void Check(string field, string want, string got)
            {
                if (want != got) failures.Add($"{field} {JsonSerializer.Serialize(texts[i])}: expected {want}, got {got}");
            }
            Check("ids", Ids(ids), Ids(tok.Encode(texts[i])));
            Check("ids_special", Ids(special), Ids(tok.Encode(texts[i], addSpecialTokens: true)));
            Check("decoded", JsonSerializer.Serialize(rust.GetProperty("decoded")[i].GetString()), JsonSerializer.Serialize(tok.Decode(ids, skipSpecialTokens: false)));
            Check("decoded_skip", JsonSerializer.Serialize(rust.GetProperty("decoded_skip")[i].GetString()), JsonSerializer.Serialize(tok.Decode(special, skipSpecialTokens: true)));
        }
        Assert.AreEqual(0, failures.Count, $"{name}: {failures.Count} mismatches\n" + string.Join("\n", failures.Take(12)));
    }

    [TestMethod]
    public void MultiSplitSequenceKeepsEveryCharacter()
    {
        // The bug this replaces: only the first Split of the Sequence was used and "Hello world" encoded to [].
        var tok = TextTokenizer.FromDirectory(Path.Combine(s_dir, "split-sequence"));
        foreach (string text in new[] { "Hello world", "今天 123456 天气", "a+b=c; d!" })
            Assert.AreEqual(text, tok.Decode(tok.Encode(text)), text);
        Assert.AreEqual(5, tok.Encode("Hello world").Count);
    }

    [TestMethod]
    public void NonSpecialAddedTokensSurviveSkipSpecialTokens()
    {
        var tok = TextTokenizer.FromDirectory(Path.Combine(s_dir, "split-sequence"));
        var ids = tok.EncodePrompt("<think>x</think>");
        Assert.AreEqual(tok.BosTokenId, ids[0], "LlamaTokenizerFast class with add_bos_token: BOS first");
        Assert.AreEqual("<think>x</think>", tok.Decode(ids, skipSpecialTokens: true), "<think> is an added token that is not special");
        Assert.IsFalse(tok.IsSpecialToken(tok.TokenToId("<think>")!.Value));
        Assert.IsTrue(tok.IsSpecialToken(tok.BosTokenId!.Value));
    }

    static NotSupportedException Refused(string json)
    {
        using var dir = new TempDirectory();
        File.WriteAllText(dir.Combine("tokenizer.json"), json);
        return Assert.ThrowsExactly<NotSupportedException>(() => TextTokenizer.FromDirectory(dir.Path));
    }

    const string Bpe = """{"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}""";

    [TestMethod]
    public void UnimplementedComponentsAreRefusedByPath()
    {
        var e = Refused("""{"model": {"type": "WordPiece", "unk_token": "[UNK]", "vocab": {"[UNK]": 0}}}""");
        StringAssert.Contains(e.Message, "tokenizer.json: model: model type \"WordPiece\"");
        e = Refused("""{"model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0]]}}""");
        StringAssert.Contains(e.Message, "model type \"Unigram\"");
        e = Refused($$$"""{"model": {{{Bpe}}}, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Digits"}, {"type": "Split", "pattern": {"String": " "}, "behavior": "Sideways"}]}}""");
        StringAssert.Contains(e.Message, "pre_tokenizer.pretokenizers[1]: Split with behavior \"Sideways\"");
        e = Refused($$$"""{"model": {{{Bpe}}}, "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Precompiled", "precompiled_charsmap": "AA=="}]}}""");
        StringAssert.Contains(e.Message, "normalizer.normalizers[1]: normalizer \"Precompiled\"");
        e = Refused($$$"""{"model": {{{Bpe}}}, "decoder": {"type": "WordPiece", "prefix": "##"}}""");
        StringAssert.Contains(e.Message, "decoder: decoder \"WordPiece\"");
        e = Refused($$$"""{"model": {{{Bpe}}}, "pre_tokenizer": {"type": "UnicodeScripts"}}""");
        StringAssert.Contains(e.Message, "pre_tokenizer: pre-tokenizer \"UnicodeScripts\"");
        e = Refused("""{"model": {"type": "BPE", "dropout": 0.1, "vocab": {"a": 0}, "merges": []}}""");
        StringAssert.Contains(e.Message, "model.dropout");
        e = Refused("""{"model": {"type": "BPE", "end_of_word_suffix": "</w>", "vocab": {"a": 0}, "merges": []}}""");
        StringAssert.Contains(e.Message, "model.end_of_word_suffix");
    }
}
