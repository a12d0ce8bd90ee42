using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.ML.Dpo.Tokenization;

namespace Microsoft.ML.Dpo.Tests.Tokenization;

/// <summary>
/// A 200,000-character line without spaces is one pre-token: BPE merging must not be quadratic in its length (it took
/// seconds to minutes before), and must still give Hugging Face's ids (count and SHA-256 from the Rust tokenizers, in
/// Data/pipeline/reference.json). Speed is measured by the benchmark program; here it only has to finish and agree.
/// </summary>
[TestClass]
public sealed class LongLineTests
{
    static readonly string s_dir = Path.Combine(SharedFiles.RepositoryRoot, "test", "Microsoft.ML.Dpo.Tests", "Tokenization", "Data", "pipeline");
    static readonly Lazy<JsonElement> s_long = new(() => JsonDocument.Parse(File.ReadAllText(Path.Combine(s_dir, "reference.json"))).RootElement.GetProperty("long_line"));

    /// <summary>Lowercase letters from a 32-bit linear congruential generator, as make_fixtures.mjs makes them.</summary>
    internal static string LcgLetters(int n)
    {
        var sb = new StringBuilder(n);
        uint x = 1;
        for (int i = 0; i < n; i++) { x = x * 1103515245 + 12345; sb.Append((char)('a' + (int)((x >> 16) % 26))); }
        return sb.ToString();
    }

    static void AssertIds(TextTokenizer tok, JsonElement expected, string what)
    {
        string text = LcgLetters(s_long.Value.GetProperty("length").GetInt32());
        var ids = tok.Encode(text);
        Assert.AreEqual(expected.GetProperty("count").GetInt32(), ids.Count, what);
        string hash = Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(string.Join(",", ids)))).ToLowerInvariant();
        Assert.AreEqual(expected.GetProperty("sha256").GetString(), hash, what);
        Assert.AreEqual(text, tok.Decode(ids), what);
    }

    [TestMethod]
    [DataRow("split-sequence")]
    [DataRow("metaspace-first")]
    public void LongLineFixture(string name) =>
        AssertIds(TextTokenizer.FromDirectory(Path.Combine(s_dir, name)), s_long.Value.GetProperty("tokenizers").GetProperty(name), name);

    [TestMethod]
    [DataRow("llama3")]
    [DataRow("mistral")]
    [DataRow("gpt2")]
    public void LongLineRealTokenizer(string name)
    {
        string dir = SharedFiles.Require(Path.Combine("reference", "tokenizers", name));
        AssertIds(TextTokenizer.FromDirectory(dir), s_long.Value.GetProperty("kit").GetProperty(name), name);
        if (name == "gpt2") AssertIds(TextTokenizer.Gpt2(), s_long.Value.GetProperty("kit").GetProperty(name), "Gpt2() (tiktoken ranks)");
    }

    [TestMethod]
    [DataRow("mistral")]
    [DataRow("gemma3")]
    [DataRow("llama3")]
    [DataRow("qwen3")]
    public void JoinedKitTextsAsOneText(string name)
    {
        // A long varied text in one call (for Mistral long BPE words between the added tokens, cut where no merge can cross).
        string dir = SharedFiles.Require(Path.Combine("reference", "tokenizers", name));
        var kit = JsonDocument.Parse(File.ReadAllText(Path.Combine(SharedFiles.SharedRoot, "reference", "tokenizers", "reference.json"))).RootElement;
        string joined = string.Join("\n", Enumerable.Repeat(string.Join("\n", kit.GetProperty("texts").EnumerateArray().Select(e => e.GetString())), 4));
        var expected = JsonDocument.Parse(File.ReadAllText(Path.Combine(s_dir, "reference.json"))).RootElement.GetProperty("joined_kit_texts");
        Assert.AreEqual(expected.GetProperty("length").GetInt32(), joined.Length);
        var ids = TextTokenizer.FromDirectory(dir).Encode(joined);
        var want = expected.GetProperty("tokenizers").GetProperty(name);
        Assert.AreEqual(want.GetProperty("count").GetInt32(), ids.Count);
        Assert.AreEqual(want.GetProperty("sha256").GetString(), Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(string.Join(",", ids)))).ToLowerInvariant());
    }
}
