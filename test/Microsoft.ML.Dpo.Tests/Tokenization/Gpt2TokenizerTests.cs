using Microsoft.ML.Dpo.Tokenization;

namespace Microsoft.ML.Dpo.Tests.Tokenization;

[TestClass]
public sealed class Gpt2TokenizerTests
{
    static readonly TextTokenizer s_gpt2 = TextTokenizer.Gpt2();

    internal static readonly string[] VariedTexts =
    {
        "Hello world",
        "héllo  wörld\n\n 123 🤗 x\tTAB  ",
        "  leading\r\n\ttrailing   ",
        "It's 2024! Don't you'll've 你好世界 ... 3.14159 1234567890",
        "😀😃😄 emoji 🏳️‍🌈 and ZWJ",
        "a\n\n\nb",
        "Hello<|endoftext|> world",
        "<|endoftext",
        "",
    };

    [TestMethod]
    public void EncodesKnownIds()
    {
        CollectionAssert.AreEqual(new[] { 15496, 995 }, s_gpt2.Encode("Hello world").ToArray());
        CollectionAssert.AreEqual(new[] { 15496, 995 }, s_gpt2.Encode("Hello world", addSpecialTokens: true).ToArray(), "Hugging Face adds no special token for GPT-2");
        CollectionAssert.AreEqual(new[] { 15496, 995 }, s_gpt2.EncodePrompt("Hello world").ToArray());
        Assert.AreEqual("Hello world", s_gpt2.Decode(new[] { 15496, 995 }));
    }

    [TestMethod]
    public void SpecialTokensAndDefaults()
    {
        Assert.AreEqual(50256, s_gpt2.BosTokenId);
        Assert.AreEqual(50256, s_gpt2.EosTokenId);
        CollectionAssert.AreEqual(new[] { 50256 }, s_gpt2.EosTokenIds.ToArray());
        Assert.IsFalse(s_gpt2.HasPadToken);
        Assert.AreEqual(50256, s_gpt2.PadTokenId, "no pad token: padding falls back to EOS");
        Assert.AreEqual(50257, s_gpt2.VocabularySize);
        Assert.AreEqual("plain", s_gpt2.ChatTemplate.Name);
        Assert.IsFalse(s_gpt2.AddBosByDefault);
        Assert.AreEqual(995, s_gpt2.TokenToId("Ġworld"));
        Assert.AreEqual(50256, s_gpt2.TokenToId("<|endoftext|>"));
        Assert.IsNull(s_gpt2.TokenToId("not a token"));
    }

    [TestMethod]
    public void SpecialTokenInTextIsOneIdAndNothingIsAddedImplicitly()
    {
        CollectionAssert.AreEqual(new[] { 15496, 50256, 995 }, s_gpt2.Encode("Hello<|endoftext|> world").ToArray());
        Assert.IsFalse(s_gpt2.Encode("Hello").Contains(50256), "Encode must not append EOS");
        Assert.AreEqual("Hello world", s_gpt2.Decode(new[] { 15496, 50256, 995 }));
        Assert.AreEqual("Hello<|endoftext|> world", s_gpt2.Decode(new[] { 15496, 50256, 995 }, skipSpecialTokens: false));
    }

    [TestMethod]
    public void DecodeRoundTripsVariedText()
    {
        foreach (string text in VariedTexts)
            Assert.AreEqual(text, s_gpt2.Decode(s_gpt2.Encode(text), skipSpecialTokens: false), text);
    }

    [TestMethod]
    public void SaveThenFromDirectoryEncodesIdentically()
    {
        using var dir = new TempDirectory();
        s_gpt2.Save(dir.Path);
        foreach (string file in new[] { "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json" })
            Assert.IsTrue(File.Exists(dir.Combine(file)), file);
        Assert.AreEqual("#version: 0.2", File.ReadLines(dir.Combine("merges.txt")).First());
        StringAssert.Contains(File.ReadAllText(dir.Combine("vocab.json")), "\"Ġworld\":995");
        StringAssert.Contains(File.ReadAllText(dir.Combine("tokenizer_config.json")), "\"tokenizer_class\": \"GPT2Tokenizer\"");

        var loaded = TextTokenizer.FromDirectory(dir.Path);
        Assert.AreEqual("vocab.json + merges.txt", loaded.Format, "vocab.json + merges.txt load as byte-level BPE");
        foreach (string text in VariedTexts)
        {
            CollectionAssert.AreEqual(s_gpt2.Encode(text).ToArray(), loaded.Encode(text).ToArray(), text);
            Assert.AreEqual(text, loaded.Decode(loaded.Encode(text), skipSpecialTokens: false), text);
        }
        Assert.AreEqual(50256, loaded.BosTokenId);
        Assert.AreEqual(50256, loaded.EosTokenId);
        Assert.AreEqual(50256, loaded.PadTokenId);
        Assert.AreEqual(50257, loaded.VocabularySize);
        Assert.AreEqual("plain", loaded.ChatTemplate.Name);
        Assert.AreEqual("Hello world", loaded.Decode(new[] { 15496, 50256, 995 }));

        // And once more from the loaded copy (files are copied verbatim).
        using var again = new TempDirectory();
        loaded.Save(again.Path);
        CollectionAssert.AreEqual(File.ReadAllBytes(dir.Combine("merges.txt")), File.ReadAllBytes(again.Combine("merges.txt")));
        CollectionAssert.AreEqual(s_gpt2.Encode(VariedTexts[1]).ToArray(), TextTokenizer.FromDirectory(again.Path).Encode(VariedTexts[1]).ToArray());
    }

    /// <summary>
    /// Why the trainer tokenizes prompt and completion separately and concatenates the ids: the boundary between them
    /// stays a token boundary. Tokenizing the joined text lets BPE merge across it. At a word boundary ("Hello" +
    /// " world") both agree; inside a word ("foot" + "ball") they differ: "football" is one GPT-2 token, so the
    /// completion's first token would not exist in the joined encoding and its log-probability could not be scored.
    /// </summary>
    [TestMethod]
    public void SeparateTokenizationDiffersFromJoinedAtAMidWordBoundary()
    {
        CollectionAssert.AreEqual(
            s_gpt2.Encode("Hello world").ToArray(),
            s_gpt2.Encode("Hello").Concat(s_gpt2.Encode(" world")).ToArray());

        int[] separate = s_gpt2.Encode("foot").Concat(s_gpt2.Encode("ball")).ToArray();
        int[] joined = s_gpt2.Encode("football").ToArray();
        Assert.AreEqual(1, joined.Length, "'football' is a single GPT-2 token");
        Assert.AreEqual(2, separate.Length);
        CollectionAssert.AreNotEqual(joined, separate);
        Assert.AreEqual("football", s_gpt2.Decode(separate), "both decode to the same text");
    }
}
