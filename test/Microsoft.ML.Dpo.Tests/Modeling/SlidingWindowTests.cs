using Microsoft.ML.Dpo.Modeling;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Modeling;

[TestClass]
public sealed class SlidingWindowTests
{
    static CausalLMConfig Mistral(int layers, int? window)
    {
        var c = TinyModels.Llama(tied: false, modelType: "mistral");
        c.NumHiddenLayers = layers;
        c.SlidingWindow = window;
        return c;
    }

    [TestMethod]
    public void OneLayerWindowSeesExactlyTheLastWTokens()
    {
        // With one layer and rotary (relative) positions, the last token's output depends only on the last W tokens.
        manual_seed(5);
        using var model = CausalLM.Create(Mistral(layers: 1, window: 3));
        using var scope = NewDisposeScope();
        var ids = tensor(new long[] { 5, 9, 14, 3, 27, 8, 41, 19 }).unsqueeze(0);
        var full = model.Forward(ids)[0, -1];
        var lastThree = model.Forward(ids[.., 5..])[0, -1];
        Assert.IsTrue((full - lastThree).abs().max().item<float>() < 1e-5f);

        manual_seed(5);
        using var unwindowed = CausalLM.Create(Mistral(layers: 1, window: null));
        Assert.IsTrue((unwindowed.Forward(ids)[0, -1] - full).abs().max().item<float>() > 1e-4f, "without the window the earlier tokens matter");
    }

    [TestMethod]
    public void CachedDecodingHonoursTheWindow()
    {
        manual_seed(6);
        using var model = CausalLM.Create(Mistral(layers: 2, window: 4));
        using var scope = NewDisposeScope();
        var ids = tensor(new long[] { 5, 9, 14, 3, 27, 8, 41, 19, 2, 33 }).unsqueeze(0);
        var full = model.Forward(ids);                                       // [1, 10, V]
        using var cache = model.CreateCache();
        model.Forward(ids[.., ..6], cache: cache);
        for (int t = 6; t < 10; t++)
        {
            var step = model.Forward(ids[.., t..(t + 1)], cache: cache)[0, -1];
            Assert.IsTrue((step - full[0, t]).abs().max().item<float>() < 1e-5f, $"position {t}");
        }
    }

    [TestMethod]
    public void ConfigReadsAndWritesTheWindow()
    {
        var mistral = CausalLMConfig.FromJson("""{"model_type":"mistral","vocab_size":32,"hidden_size":16,"intermediate_size":32,"num_hidden_layers":1,"num_attention_heads":2,"sliding_window":4096}""", "test");
        Assert.AreEqual(4096, mistral.SlidingWindow);
        Assert.AreEqual(4096, CausalLMConfig.FromJson(mistral.ToJson(), "round trip").SlidingWindow);
        var qwen = CausalLMConfig.FromJson("""{"model_type":"qwen2","vocab_size":32,"hidden_size":16,"intermediate_size":32,"num_hidden_layers":1,"num_attention_heads":2,"sliding_window":4096,"use_sliding_window":false}""", "test");
        Assert.IsNull(qwen.SlidingWindow, "Qwen2 only slides when use_sliding_window is true");
        var llama = CausalLMConfig.FromJson("""{"model_type":"llama","vocab_size":32,"hidden_size":16,"intermediate_size":32,"num_hidden_layers":1,"num_attention_heads":2}""", "test");
        Assert.IsNull(llama.SlidingWindow);
    }
}
