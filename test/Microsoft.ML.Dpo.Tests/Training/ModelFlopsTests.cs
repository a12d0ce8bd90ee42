using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tests.Modeling;
using Microsoft.ML.Dpo.Training;

namespace Microsoft.ML.Dpo.Tests.Training;

/// <summary>The model-FLOP count behind flops_per_second and mfu, checked against the formula written out by hand.</summary>
[TestClass]
public sealed class ModelFlopsTests
{
    [TestMethod]
    [DataRow(true)]
    [DataRow(false)]
    public void TrunkParametersLeaveOutEmbeddingsAndTheOutputLayer(bool tied)
    {
        var c = TinyModels.Llama(tied);
        using var model = CausalLM.Create(c);
        long h = c.HiddenSize, a = (long)c.NumAttentionHeads * c.HeadDim, kv = (long)c.NumKeyValueHeads * c.HeadDim, i = c.IntermediateSize;
        long perLayer = h * a + 2 * h * kv + a * h + 3 * h * i + 2 * h;     // q, k, v, o, gate/up/down, two norms
        Assert.AreEqual(c.NumHiddenLayers * perLayer + h, ModelFlops.Of(model).TrunkParameters);   // + the final norm
    }

    [TestMethod]
    public void ExpertsCountByTheirShareOfTokens()
    {
        var c = TinyModels.Llama();
        c.ModelType = "mixtral"; c.NumExperts = 4; c.NumExpertsPerToken = 2;
        using var model = CausalLM.Create(c);
        double experts = model.named_parameters().Where(p => p.name.Contains(".experts.")).Sum(p => (double)p.parameter.numel());
        double rest = model.named_parameters().Where(p => !p.name.Contains(".experts.") && !p.name.Contains("embed_tokens")).Sum(p => (double)p.parameter.numel());
        Assert.IsTrue(experts > 0);
        Assert.AreEqual(rest + experts / 2, ModelFlops.Of(model).TrunkParameters);
    }

    [TestMethod]
    public void AStepCountsTrunkOutputLayerAndAttentionApartAndTheReferenceAsOneForward()
    {
        var flops = new ModelFlops(trunkParameters: 1000, vocabSize: 50, hiddenSize: 8, layers: 2, attentionWidth: 8);
        Assert.AreEqual(2.0 * 1000 * 7 + 2.0 * 50 * 8 * 4 + 4.0 * 2 * 8 * 7 * 7, flops.Forward(7, 4));
        Assert.AreEqual(3 * flops.Forward(7, 4), flops.Training(7, 4));
        // A pair with a 3-token prompt, a 4-token chosen and a 2-token rejected completion: the output layer runs at the completions' positions.
        double forward = flops.Forward(7, 4) + flops.Forward(5, 2);
        Assert.AreEqual(new StepFlops(3 * forward, forward), flops.Pairs([(3, 4, 2)], liveReference: true));
        Assert.AreEqual(new StepFlops(3 * forward, 0), flops.Pairs([(3, 4, 2)], liveReference: false));
        Assert.AreEqual(3, ModelFlops.HeadPositions(0, 4), "without a prompt the first token is never predicted");
    }
}
