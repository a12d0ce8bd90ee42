using Microsoft.ML.Dpo.Tokenization;

namespace Microsoft.ML.Dpo.Tests.Tokenization;

[TestClass]
public sealed class Gpt2MergesTests
{
    [TestMethod]
    public void SavedGpt2VocabularyHasOneMergePerTokenLikeHuggingFaceFiles()
    {
        using var dir = new TempDirectory();
        TextTokenizer.Gpt2().Save(dir.Path);
        var lines = File.ReadAllLines(dir.Combine("merges.txt"));
        Assert.AreEqual("#version: 0.2", lines[0]);
        Assert.AreEqual(50_000, lines.Length - 1, "GPT-2: 50,257 ids = 256 bytes + 50,000 merges + <|endoftext|>");
        // GPT-2's own merges.txt starts with these (its first merges are the most frequent pairs).
        CollectionAssert.AreEqual(new[] { "Ġ t", "Ġ a", "h e", "i n", "r e" }, lines[1..6]);
    }
}
