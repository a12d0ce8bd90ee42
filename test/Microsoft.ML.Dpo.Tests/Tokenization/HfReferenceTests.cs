using System.Text.Json;
using Microsoft.ML.Dpo.Tokenization;

namespace Microsoft.ML.Dpo.Tests.Tokenization;

/// <summary>
/// The real tokenizers of ../shared/reference/tokenizers (Llama 3, Qwen3, Mistral with and without tokenizer.model,
/// Gemma 3, GPT-2) against what Hugging Face gives on its 216 texts: ids with and without special tokens, both
/// decodes, the ids of the chat renderings, and Decode(Encode(text)) = Hugging Face's decode of its own ids.
/// </summary>
[TestClass]
public sealed class HfReferenceTests
{
    static JsonElement? s_reference;

    static JsonElement Reference()
    {
        string path = SharedFiles.Require(Path.Combine("reference", "tokenizers", "reference.json"));
        return s_reference ??= JsonDocument.Parse(File.ReadAllText(path)).RootElement;
    }

    static string Folder(string name) => SharedFiles.Require(Path.Combine("reference", "tokenizers", name));

    /// <summary>Every mismatch, as "field[i]: expected / actual" lines (at most 10), or empty.</summary>
    static List<string> Compare(TextTokenizer tok, JsonElement expected, string[] texts)
    {
        var failures = new List<string>();
        void Check(string field, int i, string want, string got)
        {
            if (want != got && failures.Count < 10) failures.Add($"{field}[{i}] {JsonSerializer.Serialize(texts[i])}: expected {want}, got {got}");
        }
        static string Ids(IEnumerable<int> ids) => "[" + string.Join(",", ids) + "]";
        for (int i = 0; i < texts.Length; i++)
        {
            int[] ids = expected.GetProperty("ids")[i].EnumerateArray().Select(e => e.GetInt32()).ToArray();
            int[] idsSpecial = expected.GetProperty("ids_special")[i].EnumerateArray().Select(e => e.GetInt32()).ToArray();
            Check("ids", i, Ids(ids), Ids(tok.Encode(texts[i], addSpecialTokens: false)));
            Check("ids_special", i, Ids(idsSpecial), Ids(tok.Encode(texts[i], addSpecialTokens: true)));
            // EncodePrompt: add_special_tokens=True, except that a text already starting with the prepended special tokens does not get them twice.
            bool startsWithLead = idsSpecial.Length > ids.Length && ids.Length > 0 && ids[0] == idsSpecial[0] && tok.IsSpecialToken(ids[0]);
            Check("EncodePrompt", i, Ids(startsWithLead ? ids : idsSpecial), Ids(tok.EncodePrompt(texts[i])));
            string decoded = expected.GetProperty("decoded")[i].GetString()!;
            Check("decoded", i, JsonSerializer.Serialize(decoded), JsonSerializer.Serialize(tok.Decode(ids, skipSpecialTokens: false)));
            Check("decoded_skip", i, JsonSerializer.Serialize(expected.GetProperty("decoded_skip")[i].GetString()), JsonSerializer.Serialize(tok.Decode(idsSpecial, skipSpecialTokens: true)));
            // Nothing is dropped: our own round trip gives what Hugging Face's decode of its ids gives.
            Check("Decode(Encode(text))", i, JsonSerializer.Serialize(decoded), JsonSerializer.Serialize(tok.Decode(tok.Encode(texts[i]), skipSpecialTokens: false)));
        }
        foreach (var chat in expected.GetProperty("chat").EnumerateArray())
        {
            if (!chat.TryGetProperty("text", out var text)) continue;
            string want = Ids(chat.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()));
            string got = Ids(tok.Encode(text.GetString()!, addSpecialTokens: false));
            if (want != got && failures.Count < 10) failures.Add($"chat {JsonSerializer.Serialize(text.GetString())}: expected {want}, got {got}");
            // A rendered conversation is a prompt as apply_chat_template tokenizes it: its own BOS, no second one.
            got = Ids(tok.EncodePrompt(text.GetString()!));
            if (want != got && failures.Count < 10) failures.Add($"EncodePrompt(chat) {JsonSerializer.Serialize(text.GetString())}: expected {want}, got {got}");
        }
        return failures;
    }

    static void AssertMatches(string folder, TextTokenizer tok)
    {
        var reference = Reference();
        string[] texts = reference.GetProperty("texts").EnumerateArray().Select(e => e.GetString()!).ToArray();
        var expected = reference.GetProperty("tokenizers").GetProperty(folder);
        Assert.AreEqual(texts.Length, expected.GetProperty("ids").GetArrayLength(), "one reference row per text");
        Assert.AreEqual(expected.GetProperty("clean_up_tokenization_spaces").GetBoolean(), tok.CleanUpTokenizationSpaces, "clean_up_tokenization_spaces");
        var failures = Compare(tok, expected, texts);
        Assert.AreEqual(0, failures.Count, $"{folder}:\n" + string.Join("\n", failures));
    }

    /// <summary>Every tokenizer folder reference.json describes (enumerated, not listed: a kit with other folders is covered too).</summary>
    public static IEnumerable<object[]> KitFolders
    {
        get
        {
            string path = Path.Combine(SharedFiles.SharedRoot, "reference", "tokenizers", "reference.json");
            if (!File.Exists(path)) return [new object[] { "(kit absent)" }];
            using var doc = JsonDocument.Parse(File.ReadAllText(path));
            return doc.RootElement.GetProperty("tokenizers").EnumerateObject().Select(p => new object[] { p.Name }).ToList();
        }
    }

    [TestMethod]
    [DynamicData(nameof(KitFolders))]
    public void KitFolderMatchesHuggingFace(string folder) => AssertMatches(folder, TextTokenizer.FromDirectory(Folder(folder)));

    [TestMethod]
    public void MistralTokenizerModelAloneMatchesHuggingFace()
    {
        // tokenizer.model without tokenizer.json: our SentencePiece BPE must give tokenizer.json's (Hugging Face's) ids.
        using var dir = new TempDirectory();
        foreach (string name in new[] { "tokenizer.model", "tokenizer_config.json" })
            File.Copy(Path.Combine(Folder("mistral-sp"), name), Path.Combine(dir.Path, name));
        var tok = TextTokenizer.FromDirectory(dir.Path);
        Assert.AreEqual("tokenizer.model", tok.Format);
        AssertMatches("mistral-sp", tok);
    }

    [TestMethod]
    public void Gpt2TiktokenMatchesTheGpt2Folder()
    {
        var reference = Reference();
        string[] texts = reference.GetProperty("texts").EnumerateArray().Select(e => e.GetString()!).ToArray();
        var failures = Compare(TextTokenizer.Gpt2(), reference.GetProperty("tokenizers").GetProperty("gpt2"), texts);
        Assert.AreEqual(0, failures.Count, string.Join("\n", failures));
    }
}
