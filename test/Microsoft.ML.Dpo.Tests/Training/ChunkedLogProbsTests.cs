using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Losses;
using Microsoft.ML.Dpo.Lora;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tests.Modeling;
using Microsoft.ML.Dpo.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Training;

/// <summary>
/// The chunked log-probs (<see cref="ChunkedLogProbs"/>) against the plain path over the full logits, in float64: values
/// and gradients (hidden states, head weight and bias, every parameter of a tiny model, LoRA adapters), chunk sizes that
/// do not divide the positions or exceed them, tied, untied and soft-capped heads, temperatures; the statistics; the
/// automatic rule; no tensor left behind.
/// </summary>
[TestClass]
public sealed class ChunkedLogProbsTests
{
    const double Tolerance = 1e-6;

    static void AssertClose(Tensor expected, Tensor actual, string what)
    {
        CollectionAssert.AreEqual(expected.shape, actual.shape, $"{what}: shape");
        double difference = expected.numel() == 0 ? 0 : (expected.to_type(ScalarType.Float64) - actual.to_type(ScalarType.Float64)).abs().max().item<double>();
        Assert.IsTrue(difference <= Tolerance, $"{what}: max |difference| {difference:E2} > {Tolerance:E0}");
    }

    /// <summary>What the plain path computes: the head over all positions, the soft-cap, the temperature, then logit − logsumexp.</summary>
    static Tensor PlainTokenLogProbs(Tensor hidden, Tensor weight, Tensor? bias, double? softcap, double temperature, Tensor labels)
    {
        Tensor logits = nn.functional.linear(hidden, weight, bias);
        if (softcap is double cap) logits = logits.div(cap).tanh().mul(cap);
        if (temperature != 1) logits = logits / temperature;
        return SequenceLogProbs.TokenLogProbs(logits.unsqueeze(0), labels.unsqueeze(0))[0];
    }

    [TestMethod]
    [DataRow(1, false, null, 1.0)]
    [DataRow(3, false, null, 1.0)]        // 3 does not divide 10
    [DataRow(4, true, null, 0.7)]
    [DataRow(10, false, 5.0, 1.0)]        // one chunk exactly
    [DataRow(64, true, 5.0, 1.3)]         // M < chunk
    [DataRow(7, true, 2.0, 0.5)]
    public void ValuesAndGradientsEqualThePlainPath(int chunk, bool withBias, double? softcap, double temperature)
    {
        using var scope = NewDisposeScope();
        manual_seed(17);
        long m = 10, h = 6, v = 23;
        var hidden = randn(m, h, dtype: ScalarType.Float64).requires_grad_(true);
        var weight = randn(v, h, dtype: ScalarType.Float64).requires_grad_(true);
        var bias = withBias ? randn(v, dtype: ScalarType.Float64).requires_grad_(true) : null;
        var labels = randint(0, v, [m], dtype: ScalarType.Int64);
        var upstream = randn(m, dtype: ScalarType.Float64);   // any downstream loss: Σ r_i · log p_i

        var plain = PlainTokenLogProbs(hidden, weight, bias, softcap, temperature, labels);
        (plain * upstream).sum().backward();
        Tensor plainHidden = hidden.grad!.clone(), plainWeight = weight.grad!.clone(), plainBias = bias?.grad!.clone()!;
        foreach (var p in new[] { hidden, weight, bias }) p?.grad!.zero_();

        var chunked = ChunkedLogProbs.TokenLogProbs(new OutputHead(weight, bias, softcap), hidden, labels, temperature, chunk);
        (chunked * upstream).sum().backward();

        AssertClose(plain, chunked, "log-probs");
        AssertClose(plainHidden, hidden.grad!, "d hidden");
        AssertClose(plainWeight, weight.grad!, "d weight");
        if (bias is not null) AssertClose(plainBias, bias.grad!, "d bias");
        Microsoft.ML.Dpo.Runtime.AutogradHandBack.Release();
    }

    [TestMethod]
    public void AFrozenWeightGetsNoGradient_AndHiddenStatesStillDo()
    {
        using var scope = NewDisposeScope();
        manual_seed(5);
        var hidden = randn(9, 4, dtype: ScalarType.Float64).requires_grad_(true);
        var weight = randn(13, 4, dtype: ScalarType.Float64);           // frozen: LoRA, or a frozen tied embedding
        var labels = randint(0, 13, [9], dtype: ScalarType.Int64);
        var plain = PlainTokenLogProbs(hidden, weight, null, null, 1, labels);
        plain.sum().backward();
        var expected = hidden.grad!.clone();
        hidden.grad!.zero_();
        ChunkedLogProbs.TokenLogProbs(new OutputHead(weight), hidden, labels, 1, 4).sum().backward();
        AssertClose(expected, hidden.grad!, "d hidden");
        Assert.IsNull(weight.grad, "a weight that does not require grad gets none");
        Microsoft.ML.Dpo.Runtime.AutogradHandBack.Release();
    }

    // ---- through a whole tiny model ----

    static readonly List<TokenizedPreference> Pairs =
    [
        new([1, 5, 6], [7, 8, 2], [9, 2], 0, 0),
        new([1, 4], [3, 3, 2, 4, 5, 6, 7], [10, 6, 5, 2], 1, 1),
    ];

    static CausalLMConfig Config(string name) => name switch
    {
        "llama-tied" => TinyModels.Llama(tied: true),
        "qwen2-untied" => TinyModels.Qwen2(),
        "gpt2" => TinyModels.Gpt2(),
        "gemma2-softcapped" => TinyModels.Gemma2(),
        _ => throw new ArgumentException(name),
    };

    /// <summary>A loss touching every output of <see cref="SequenceScoring.Score"/> that carries grad, and its gradients.</summary>
    static (CompletionScores Scores, Dictionary<string, Tensor> Grads) ScoreAndGrads(CausalLM model, SequenceBatch batch, ScoringRequest request, LogProbChunking chunking)
    {
        foreach (var p in model.parameters()) p.grad = null;
        using (LogProbChunking.Use(chunking))
        {
            var scores = SequenceScoring.Score(model, batch, request);
            var loss = scores.Sum.sum() + 0.3 * scores.TokenLogProbs!.pow(2).sum();
            if (scores.SharedSum is not null) loss = loss + 0.5 * scores.SharedSum.sum();
            loss.backward();
            var grads = model.named_parameters().Where(p => p.parameter.grad is not null).ToDictionary(p => p.name, p => p.parameter.grad!.clone());
            return (scores, grads);
        }
    }

    [TestMethod]
    [DataRow("llama-tied", 1.0, 3)]
    [DataRow("qwen2-untied", 1.0, 5)]
    [DataRow("gpt2", 0.8, 4)]
    [DataRow("gemma2-softcapped", 1.0, 3)]
    [DataRow("gemma2-softcapped", 1.25, 100)]   // M < chunk
    public void ScoringAWholeModelMatchesTheFullLogits_ValuesStatisticsAndEveryGradient(string config, double temperature, int chunk)
    {
        using var scope = NewDisposeScope();
        manual_seed(9);
        using var model = CausalLM.Create(Config(config), ScalarType.Float64);
        using var batch = SequenceBatch.Collate(SequenceScoring.PairRows(Pairs), 0, model.Device);
        var request = new ScoringRequest(SharedPrefix: true, WpoWeights: true, Statistics: true, Temperature: temperature);

        long before = ChunkedLogProbs.Calls;
        var (plain, plainGrads) = ScoreAndGrads(model, batch, request, new LogProbChunking(false, chunk));
        Assert.AreEqual(before, ChunkedLogProbs.Calls, "off: the plain path");
        var (chunked, chunkedGrads) = ScoreAndGrads(model, batch, request, new LogProbChunking(true, chunk));
        Assert.AreEqual(before + 1, ChunkedLogProbs.Calls, "on: the chunked path");

        AssertClose(plain.Sum, chunked.Sum, "sum");
        AssertClose(plain.Count, chunked.Count, "count");
        AssertClose(plain.TokenLogProbs!, chunked.TokenLogProbs!, "token log-probs");
        AssertClose(plain.SharedSum!, chunked.SharedSum!, "shared sum");
        AssertClose(plain.WpoLogWeight!, chunked.WpoLogWeight!, "WPO log-weight");
        AssertClose(plain.EntropySum!, chunked.EntropySum!, "entropy");
        AssertClose(plain.LogitMeanSum!, chunked.LogitMeanSum!, "logit mean");
        AssertClose(plain.CorrectCount!, chunked.CorrectCount!, "correct");
        Assert.AreEqual(model.parameters().Count(), plainGrads.Count, "every parameter has a gradient");
        CollectionAssert.AreEquivalent(plainGrads.Keys.ToList(), chunkedGrads.Keys.ToList());
        foreach (var (name, grad) in plainGrads) AssertClose(grad, chunkedGrads[name], $"d {name}");
        Microsoft.ML.Dpo.Runtime.AutogradHandBack.Release();
    }

    [TestMethod]
    [DataRow(false)]
    [DataRow(true)]
    public void WithLoraTheAdapterGradientsMatch_AndTheFrozenHeadGetsNone(bool gpt2)
    {
        using var scope = NewDisposeScope();
        manual_seed(4);
        using var model = CausalLM.Create(gpt2 ? TinyModels.Gpt2() : TinyModels.Qwen2(), ScalarType.Float64);
        var adapters = LoraAdapters.Apply(model, new LoraOptions { Rank = 2, TargetModules = gpt2 ? ["c_attn", "c_proj", "c_fc"] : ["all-linear"] });
        using (no_grad())
        {
            manual_seed(3);
            foreach (var module in adapters.Modules.Values) module.B.copy_(randn(module.B.shape).mul(0.2));
        }
        using var batch = SequenceBatch.Collate(SequenceScoring.PairRows(Pairs), 0, model.Device);
        var request = new ScoringRequest(Statistics: true);
        var (plain, plainGrads) = ScoreAndGrads(model, batch, request, new LogProbChunking(false, 4));
        var (chunked, chunkedGrads) = ScoreAndGrads(model, batch, request, new LogProbChunking(true, 4));
        AssertClose(plain.Sum, chunked.Sum, "sum");
        Assert.IsTrue(plainGrads.Count > 0 && plainGrads.Keys.All(n => n.Contains("lora_", StringComparison.Ordinal)), "only adapters train: " + string.Join(", ", plainGrads.Keys));
        CollectionAssert.AreEquivalent(plainGrads.Keys.ToList(), chunkedGrads.Keys.ToList());
        foreach (var (name, grad) in plainGrads) AssertClose(grad, chunkedGrads[name], $"d {name}");
        Microsoft.ML.Dpo.Runtime.AutogradHandBack.Release();
    }

    // ---- the automatic rule, the options ----

    [TestMethod]
    public void TheAutomaticRuleChunksVocabulariesAbove32768()
    {
        Assert.IsFalse(LogProbChunking.Automatic.AppliesTo(32_768));
        Assert.IsTrue(LogProbChunking.Automatic.AppliesTo(32_769));
        Assert.IsFalse(new LogProbChunking(false, 8).AppliesTo(151_936), "off wins");
        Assert.IsTrue(new LogProbChunking(true, 8).AppliesTo(101), "on wins");
        var options = new TrainingOptions();
        Assert.IsNull(options.ChunkedLogProbs, "automatic by default");
        Assert.AreEqual(LogProbChunking.Automatic, LogProbChunking.From(options));
        Assert.AreEqual(LogProbChunking.Automatic, LogProbChunking.Current, "outside a run: automatic");
        options.LogProbChunkSize = 0;
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(options.Validate);
    }

    [TestMethod]
    [DataRow(32_768, false)]
    [DataRow(32_769, true)]
    public void ScoringTakesTheChunkedPathExactlyAboveTheThreshold(int vocabulary, bool chunked)
    {
        using var scope = NewDisposeScope();
        manual_seed(2);
        var config = TinyModels.Llama(tied: false);
        config.VocabSize = vocabulary;
        config.HiddenSize = 8; config.IntermediateSize = 8; config.NumHiddenLayers = 1; config.NumAttentionHeads = 2; config.NumKeyValueHeads = 1; config.HeadDim = 4;
        using var model = CausalLM.Create(config, ScalarType.Float64);
        using var batch = SequenceBatch.Collate(SequenceScoring.PairRows(Pairs), 0, model.Device);
        long before = ChunkedLogProbs.Calls;
        var automatic = SequenceScoring.Score(model, batch, default);
        Assert.AreEqual(chunked ? before + 1 : before, ChunkedLogProbs.Calls, $"V = {vocabulary}: chunked {chunked}");
        using (LogProbChunking.Use(new LogProbChunking(false, 256)))
            AssertClose(SequenceScoring.Score(model, batch, default).Sum, automatic.Sum, "automatic vs off");
    }

    [TestMethod]
    public void NoTensorIsLeftBehind()
    {
        manual_seed(6);
        using var model = CausalLM.Create(TinyModels.Gemma2(), ScalarType.Float64);
        using var batch = SequenceBatch.Collate(SequenceScoring.PairRows(Pairs), 0, model.Device);
        void Step()
        {
            using var scope = NewDisposeScope();
            using var _ = LogProbChunking.Use(new LogProbChunking(true, 3));
            var scores = SequenceScoring.Score(model, batch, new ScoringRequest(SharedPrefix: true, WpoWeights: true, Statistics: true, Temperature: 0.9));
            (scores.Sum.sum() + scores.SharedSum!.sum()).backward();
        }
        Step();   // parameters get their .grad tensors, which stay
        Microsoft.ML.Dpo.Runtime.AutogradHandBack.Release();
        long tensors = torch.Tensor.TotalCount, live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        Step();
        Microsoft.ML.Dpo.Runtime.AutogradHandBack.Release();
        Assert.AreEqual(tensors, torch.Tensor.TotalCount, "live tensors after a chunked forward and backward");
        Assert.AreEqual(live, DisposeScopeManager.Statistics.ThreadTotalLiveCount, "dispose-scope live count");
        foreach (var p in model.parameters()) p.grad = null;
    }
}
