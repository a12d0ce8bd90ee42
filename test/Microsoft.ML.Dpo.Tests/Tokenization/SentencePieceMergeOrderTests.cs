using Microsoft.ML.Dpo.Tokenization;

namespace Microsoft.ML.Dpo.Tests.Tokenization;

/// <summary>
/// Pins sentencepiece's (and Hugging Face's) order for merges of equal score: leftmost first. Microsoft.ML.Tokenizers
/// 2.0.1's SentencePieceTokenizer merges equal scores from the right (README, Known limits), which turned Mistral's
/// "!!!???...", runs of "-", "=" and "a" and code fences into other ids; our SentencePiece BPE must not.
/// </summary>
[TestClass]
public sealed class SentencePieceMergeOrderTests
{
    [TestMethod]
    public void EqualScoresMergeLeftmostFirst()
    {
        // "▁" 3, "a" 4, "b" 5; "▁a" scores highest, then "ab" and "ba" tie.
        //   "▁aba": ▁a | b | a, then ba and... only "▁a"+"ba"? no such piece; the tie decides between "ab" (left) and "ba" (right)
        //   on "abab": left first gives ab|ab (6 6), right first would give a|ba|b (4 7 5).
        var pieces = new List<(string, float, int)> { ("<unk>", 0, 2), ("<s>", 0, 3), ("</s>", 0, 3), ("▁", -1, 1), ("a", -2, 1), ("b", -2, 1), ("ab", -5, 1), ("ba", -5, 1) };
        using var dir = new TempDirectory();
        TokenizerFixtures.WriteSentencePiece(dir.Combine("tokenizer.model"), pieces);
        var tok = TextTokenizer.FromDirectory(dir.Path);
        Assert.AreEqual("tokenizer.model", tok.Format);
        // "abab" → "▁abab": ▁ a b a b; pairs ab@1 (-5), ba@2 (-5), ab@3 (-5): leftmost → ▁ ab a b → then ab@3 → ▁ ab ab.
        CollectionAssert.AreEqual(new[] { 3, 6, 6 }, tok.Encode("abab").ToArray());
        // "baba" → ▁ b a b a: ba@1 first → ▁ ba b a → ba@3 → ▁ ba ba.
        CollectionAssert.AreEqual(new[] { 3, 7, 7 }, tok.Encode("baba").ToArray());
        // "aba" → ▁ a b a: ab@1 before ba@2 → ▁ ab a.
        CollectionAssert.AreEqual(new[] { 3, 6, 4 }, tok.Encode("aba").ToArray());
        Assert.AreEqual("abab baba aba", tok.Decode(tok.Encode("abab baba aba")));
    }

    [TestMethod]
    public void MistralEqualScoreRunsMatchHuggingFace()
    {
        // The texts where right-first merging differed, with Mistral's real tokenizer.model and tokenizer.json's ids as the truth.
        string kit = SharedFiles.Require(Path.Combine("reference", "tokenizers", "mistral-sp"));
        using var dir = new TempDirectory();
        foreach (string name in new[] { "tokenizer.model", "tokenizer_config.json" }) File.Copy(Path.Combine(kit, name), dir.Combine(name));
        var sp = TextTokenizer.FromDirectory(dir.Path);
        var json = TextTokenizer.FromDirectory(Path.Combine(SharedFiles.SharedRoot, "reference", "tokenizers", "mistral"));
        foreach (string text in new[] { "!!!???...", "----------", "==========", "aaaaaaaaaaaaa", "```\ncode\n```", "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" })
            CollectionAssert.AreEqual(json.Encode(text).ToArray(), sp.Encode(text).ToArray(), text);
    }
}
