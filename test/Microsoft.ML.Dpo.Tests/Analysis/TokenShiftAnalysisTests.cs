using System.Text.Json;
using Microsoft.ML.Dpo.Analysis;
using Microsoft.ML.Dpo.Modeling;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Analysis;

/// <summary>
/// Token distribution shift on hand-built models whose answer is known: a "bigram" Llama (attention and MLP outputs zeroed,
/// one-hot embeddings) whose next token depends only on the current one, so that changing one column of the output head
/// changes exactly one transition.
/// </summary>
[TestClass]
public sealed class TokenShiftAnalysisTests
{
    const int V = 16, Eos = 15;

    /// <summary>
    /// next(c) = (c + 1) % 15 with logit 4, then (c + 2) % 15 (2) and (c + 3) % 15 (1), every other token 0;
    /// <paramref name="changed"/> makes next(from) = to instead (logit 8).
    /// </summary>
    static LanguageModel Bigram((int From, int To)? changed = null)
    {
        var config = new CausalLMConfig
        {
            ModelType = "llama", VocabSize = V, HiddenSize = V, IntermediateSize = 32, NumHiddenLayers = 1, NumAttentionHeads = 2,
            NumKeyValueHeads = 2, HeadDim = 8, MaxPositionEmbeddings = 64, TieWordEmbeddings = false, BosTokenId = 0, EosTokenIds = [Eos], RmsNormEps = 1e-6,
        };
        config.Validate();
        manual_seed(1);
        var network = CausalLM.Create(config);
        var head = zeros(V, V);
        for (int c = 0; c < V; c++)
        {
            head[(c + 1) % 15, c] = 1.0f;
            head[(c + 2) % 15, c] = 0.5f;
            head[(c + 3) % 15, c] = 0.25f;
        }
        if (changed is var (from, to)) head[to, from] = 2.0f;
        using (no_grad())
        {
            foreach (var (name, p) in network.named_parameters())
            {
                if (name == "model.embed_tokens.weight") p.copy_(eye(V));
                else if (name.Contains("o_proj", StringComparison.Ordinal) || name.Contains("down_proj", StringComparison.Ordinal)) p.zero_();
                else if (name.Contains("norm", StringComparison.Ordinal)) p.fill_(1);
                else if (name == "lm_head.weight") p.copy_(head);      // RMSNorm(one-hot) = 4 · one-hot: logits are 4 × the column
            }
        }
        return new LanguageModel(network, null);
    }

    [TestMethod]
    public void IdenticalModels_EveryPositionUnshifted_KlZero()
    {
        using var model = Bigram();
        using var copy = model.Clone();
        var report = TokenShiftAnalysis.Analyze(model, copy, new[] { new[] { 0 }, new[] { 9, 3 }, new[] { 7 } }, new TokenShiftOptions { MaxNewTokens = 12, BatchSize = 2 });
        Assert.AreEqual(36, report.Positions);
        Assert.AreEqual(1.0, report.Unshifted);
        Assert.AreEqual(0.0, report.Marginal);
        Assert.AreEqual(0.0, report.Shifted);
        Assert.IsTrue(report.KlByPosition.All(k => k < 1e-6), string.Join(", ", report.KlByPosition));
        CollectionAssert.AreEqual(new[] { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 }, report.Answers[0].Positions.Select(p => p.Id).ToArray());
    }

    [TestMethod]
    public void OneChangedTransition_ExactlyThatPositionShifted()
    {
        using var baseModel = Bigram();
        using var aligned = Bigram((5, 12));        // 12 is outside the base's top 3 after 5 (6, 7, 8)
        var progress = new List<TokenShiftProgress>();
        var report = TokenShiftAnalysis.Analyze(baseModel, aligned, new[] { new[] { 0 }, new[] { 9, 3 } },
            new TokenShiftOptions { MaxNewTokens = 10, BatchSize = 2, Progress = new Collect(progress) });
        // prompt [0]: 1 2 3 4 5 | 12 13 14 0 1; prompt [9, 3]: 4 5 | 12 13 14 0 1 2 3 4 (the shift at position 2)
        CollectionAssert.AreEqual(new[] { 1, 2, 3, 4, 5, 12, 13, 14, 0, 1 }, report.Answers[0].Positions.Select(p => p.Id).ToArray());
        var shifted = report.Answers.Select(a => a.Positions.Select((p, t) => (p, t)).Where(x => x.p.Kind != TokenShiftKind.Unshifted).Select(x => x.t).ToArray()).ToList();
        CollectionAssert.AreEqual(new[] { 5 }, shifted[0]);
        CollectionAssert.AreEqual(new[] { 2 }, shifted[1]);
        Assert.AreEqual(TokenShiftKind.Shifted, report.Answers[0].Positions[5].Kind);
        Assert.AreEqual(3, report.Answers[0].Positions[5].BaseRank);
        Assert.AreEqual(6, report.Answers[0].Positions[5].BaseTopId);
        Assert.AreEqual(2.0 / 20, report.Shifted, 1e-12);
        Assert.AreEqual(18.0 / 20, report.Unshifted, 1e-12);
        Assert.AreEqual(1, report.MostShifted.Count);
        Assert.AreEqual((12, 2), (report.MostShifted[0].Id, report.MostShifted[0].Count));
        Assert.AreEqual(2.0 / 20, report.ByPosition[0].Shares.Shifted, 1e-12);     // both shifts are among the first 10 tokens
        Assert.AreEqual(0, report.ByPosition[1].Shares.Positions);
        // KL is positive exactly where the two models' next-token distributions differ: after a 5.
        Assert.IsTrue(report.Answers[0].Positions[5].Kl > 0.1);
        Assert.IsTrue(report.Answers[0].Positions.Where((_, t) => t != 5).All(p => p.Kl < 1e-6));
        Assert.IsTrue(progress.Any(p => p.Phase == "generate") && progress.Last().Phase == "score" && progress.Last().Done == 2);

        using var json = JsonDocument.Parse(report.ToJson());
        Assert.AreEqual(0.1, json.RootElement.GetProperty("shifted").GetDouble(), 1e-12);
        Assert.AreEqual("shifted", json.RootElement.GetProperty("answers")[0].GetProperty("positions")[5].GetProperty("kind").GetString());
        StringAssert.Contains(report.ToHtml(), "<span class=shifted");
    }

    [TestMethod]
    public void ChangeToSecondChoice_IsMarginal()
    {
        using var baseModel = Bigram();
        using var aligned = Bigram((5, 7));         // the base's 2nd choice after 5
        var report = TokenShiftAnalysis.Analyze(baseModel, aligned, new[] { new[] { 0 } }, new TokenShiftOptions { MaxNewTokens = 8 });
        var kinds = report.Answers[0].Positions.Select(p => p.Kind).ToArray();
        CollectionAssert.AreEqual(new[] { 1, 2, 3, 4, 5, 7, 8, 9 }, report.Answers[0].Positions.Select(p => p.Id).ToArray());
        Assert.AreEqual(TokenShiftKind.Marginal, kinds[5]);
        Assert.AreEqual(7, kinds.Count(k => k == TokenShiftKind.Unshifted));
        Assert.AreEqual(1.0 / 8, report.Marginal, 1e-12);
        Assert.AreEqual(0.0, report.Shifted);
    }

    [TestMethod]
    public void AlignedPromptFormat_AlignedSeesItBaseSeesThePrompt()
    {
        // A byte-level bigram model: next(b) = b + 1 (then b + 2, b + 3), so an answer depends only on the prompt's last byte.
        using var dir = new TempDirectory();
        var tokenizer = Microsoft.ML.Dpo.Tokenization.TextTokenizer.CreateByteLevel(dir.Path);
        const int H = 264, Bytes = 257;
        var config = new CausalLMConfig
        {
            ModelType = "llama", VocabSize = Bytes, HiddenSize = H, IntermediateSize = 32, NumHiddenLayers = 1, NumAttentionHeads = 2,
            NumKeyValueHeads = 2, HeadDim = H / 2, MaxPositionEmbeddings = 64, TieWordEmbeddings = false, BosTokenId = 256, EosTokenIds = [256], RmsNormEps = 1e-6,
        };
        var network = CausalLM.Create(config);
        using (no_grad())
        {
            foreach (var (name, p) in network.named_parameters())
            {
                if (name == "model.embed_tokens.weight") p.copy_(eye(Bytes, H));
                else if (name.Contains("o_proj", StringComparison.Ordinal) || name.Contains("down_proj", StringComparison.Ordinal)) p.zero_();
                else if (name.Contains("norm", StringComparison.Ordinal)) p.fill_(1);
                else if (name == "lm_head.weight")
                {
                    var head = zeros(Bytes, H);
                    for (int b = 0; b < 253; b++) (head[b + 1, b], head[b + 2, b], head[b + 3, b]) = (1.0f, 0.5f, 0.25f);
                    p.copy_(head);
                }
            }
        }
        using var model = new LanguageModel(network, tokenizer);
        // The aligned side gets "am" and answers "nopq"; the base, given "a", expects "b" before "n" and follows the chain after it.
        var report = TokenShiftAnalysis.Analyze(model, model, new[] { "a" }, new TokenShiftOptions { MaxNewTokens = 4, AlignedPromptFormat = p => p + "m" });
        Assert.AreEqual("nopq", report.Answers[0].Answer);
        CollectionAssert.AreEqual(new[] { TokenShiftKind.Shifted, TokenShiftKind.Unshifted, TokenShiftKind.Unshifted, TokenShiftKind.Unshifted },
            report.Answers[0].Positions.Select(p => p.Kind).ToArray());
        Assert.AreEqual('b', report.Answers[0].Positions[0].BaseTopId);
        Assert.AreEqual("n", report.MostShifted[0].Text);
    }

    sealed class Collect(List<TokenShiftProgress> list) : IProgress<TokenShiftProgress>
    {
        public void Report(TokenShiftProgress value) { lock (list) list.Add(value); }
    }
}
