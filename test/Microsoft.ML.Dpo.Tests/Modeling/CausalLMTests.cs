using Microsoft.ML.Dpo.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Modeling;

[TestClass]
public sealed class CausalLMTests
{
    static string[] ExpectedLlamaNames(CausalLMConfig c)
    {
        var names = new List<string> { "model.embed_tokens.weight", "model.norm.weight" };
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            string p = $"model.layers.{i}.";
            foreach (var proj in new[] { "q_proj", "k_proj", "v_proj", "o_proj" })
                names.Add(p + $"self_attn.{proj}.weight");
            if (c.AttentionBias)
                foreach (var proj in new[] { "q_proj", "k_proj", "v_proj" })
                    names.Add(p + $"self_attn.{proj}.bias");
            foreach (var proj in new[] { "gate_proj", "up_proj", "down_proj" })
                names.Add(p + $"mlp.{proj}.weight");
            names.Add(p + "input_layernorm.weight");
            names.Add(p + "post_attention_layernorm.weight");
        }
        if (!c.TieWordEmbeddings) names.Add("lm_head.weight");
        return names.OrderBy(n => n, StringComparer.Ordinal).ToArray();
    }

    /// <summary>The Hugging Face parameter names of the rotary decoders added with issue 12, per architecture.</summary>
    static string[] ExpectedDecoderNames(CausalLMConfig c)
    {
        var names = new List<string> { "model.embed_tokens.weight", "model.norm.weight" };
        string[] attention = c.ModelType == "phi3" ? ["qkv_proj", "o_proj"] : ["q_proj", "k_proj", "v_proj", "o_proj"];
        string[] mlp = c.ModelType == "phi3" ? ["gate_up_proj", "down_proj"] : ["gate_proj", "up_proj", "down_proj"];
        string[] norms = c.ModelType switch
        {
            "olmo2" => ["post_attention_layernorm", "post_feedforward_layernorm", "self_attn.q_norm", "self_attn.k_norm"],
            "gemma2" => ["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"],
            "gemma3_text" => ["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm", "self_attn.q_norm", "self_attn.k_norm"],
            "qwen3" => ["input_layernorm", "post_attention_layernorm", "self_attn.q_norm", "self_attn.k_norm"],
            _ => ["input_layernorm", "post_attention_layernorm"],
        };
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            string p = $"model.layers.{i}.";
            names.AddRange(attention.Select(a => p + $"self_attn.{a}.weight"));
            names.AddRange(mlp.Select(m => p + $"mlp.{m}.weight"));
            names.AddRange(norms.Select(n => p + n + ".weight"));
        }
        if (!c.TieWordEmbeddings) names.Add("lm_head.weight");
        return names.OrderBy(n => n, StringComparer.Ordinal).ToArray();
    }

    static string[] ExpectedGpt2Names(CausalLMConfig c)
    {
        var names = new List<string> { "transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias" };
        for (int i = 0; i < c.NumHiddenLayers; i++)
            foreach (var m in new[] { "ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj" })
            {
                names.Add($"transformer.h.{i}.{m}.weight");
                names.Add($"transformer.h.{i}.{m}.bias");
            }
        return names.OrderBy(n => n, StringComparer.Ordinal).ToArray();
    }

    public static IEnumerable<object[]> Configs => TinyModels.Names;

    [TestMethod]
    [DynamicData(nameof(Configs))]
    public void EveryHuggingFaceWeightIsARegisteredParameterAndReceivesAGradient(string configName)
    {
        var config = TinyModels.ByName(configName);
        torch.manual_seed(1);
        using var model = CausalLM.Create(config);
        var expected = config.ModelType switch
        {
            "gpt2" => ExpectedGpt2Names(config),
            "llama" or "mistral" or "qwen2" => ExpectedLlamaNames(config),
            _ => ExpectedDecoderNames(config),
        };

        var parameters = model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        CollectionAssert.AreEqual(expected, parameters.Keys.OrderBy(n => n, StringComparer.Ordinal).ToArray());
        CollectionAssert.AreEqual(expected, model.state_dict().Keys.OrderBy(n => n, StringComparer.Ordinal).ToArray(),
            "state_dict keys (incl. buffers) must be exactly the Hugging Face names");
        Assert.IsTrue(parameters.Values.All(p => p.requires_grad));

        using var scope = NewDisposeScope();
        var ids = torch.tensor(new long[] { 5, 9, 13, 2, 7, 21, 33, 4 }, 2, 4);
        var mask = torch.tensor(new long[] { 1, 1, 1, 1, 0, 1, 1, 1 }, 2, 4);
        var logits = model.Forward(ids, mask);
        Assert.AreEqual(ScalarType.Float32, logits.dtype);
        CollectionAssert.AreEqual(new long[] { 2, 4, config.VocabSize }, logits.shape);
        // A loss touching every output (squared logits, so norms' gain also matter).
        logits.pow(2).mean().backward();
        foreach (var (name, p) in parameters)
        {
            Assert.IsNotNull(p.grad, $"{name} got no gradient");
            Assert.IsTrue(p.grad!.abs().sum().item<float>() > 0, $"{name} got an all-zero gradient");
        }
    }

    [TestMethod]
    public void CreateIsDeterministicUnderManualSeedAndInitialisesLikeHuggingFace()
    {
        torch.manual_seed(42);
        using var a = CausalLM.Create(TinyModels.Qwen2());
        torch.manual_seed(42);
        using var b = CausalLM.Create(TinyModels.Qwen2());
        var pa = a.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var (name, p) in b.named_parameters())
            Assert.IsTrue(pa[name].eq(p).all().item<bool>(), name);

        var emb = pa["model.embed_tokens.weight"];
        Assert.AreEqual(0.02, emb.std().item<float>(), 0.002);
        Assert.AreEqual(1f, pa["model.norm.weight"].min().item<float>());
        Assert.AreEqual(0f, pa["model.layers.0.self_attn.q_proj.bias"].abs().max().item<float>());
    }

    [TestMethod]
    [DynamicData(nameof(Configs))]
    public void CachedDecodingEqualsFullRecomputation(string configName)
    {
        torch.manual_seed(7);
        using var model = CausalLM.Create(TinyModels.ByName(configName));
        using var noGrad = torch.no_grad();
        using var scope = NewDisposeScope();
        long[] seq = { 1, 17, 5, 9, 33, 12, 8, 40 };
        var full = model.Forward(torch.tensor(seq, 1, seq.Length));               // [1, 8, V]
        using var cache = model.CreateCache();
        var first = model.Forward(torch.tensor(seq[..3], 1, 3), cache: cache);     // prompt of 3
        Assert.AreEqual(3, cache.Length);
        AssertClose(full.narrow(1, 0, 3), first, 1e-5, "prompt");
        for (int t = 3; t < seq.Length; t++)
        {
            var step = model.Forward(torch.tensor(new[] { seq[t] }, 1, 1), cache: cache);
            AssertClose(full.narrow(1, t, 1), step, 1e-5, $"step {t}");
        }
        Assert.AreEqual(seq.Length, cache.Length);
    }

    [TestMethod]
    [DynamicData(nameof(Configs))]
    public void LeftPaddedBatchMatchesEachPromptAlone(string configName)
    {
        torch.manual_seed(3);
        using var model = CausalLM.Create(TinyModels.ByName(configName));
        using var noGrad = torch.no_grad();
        using var scope = NewDisposeScope();
        long[] a = { 1, 20, 31, 7, 9 }, b = { 1, 44 };
        var batch = torch.tensor(new long[] { 1, 20, 31, 7, 9, 0, 0, 0, 1, 44 }, 2, 5);
        var mask = torch.tensor(new long[] { 1, 1, 1, 1, 1, 0, 0, 0, 1, 1 }, 2, 5);
        var logits = model.Forward(batch, mask);
        Assert.IsFalse(logits.isnan().any().item<bool>(), "padding rows must not produce NaN");
        var aloneA = model.Forward(torch.tensor(a, 1, a.Length));
        var aloneB = model.Forward(torch.tensor(b, 1, b.Length));
        AssertClose(aloneA, logits.narrow(0, 0, 1), 1e-5, "row 0");
        AssertClose(aloneB, logits.narrow(0, 1, 1).narrow(1, 3, 2), 1e-5, "row 1 real tokens");

        // Continue both rows with a cache: positions continue from the mask.
        using var cache = model.CreateCache();
        model.Forward(batch, mask, cache);
        var next = torch.tensor(new long[] { 11, 12 }, 2, 1);
        var mask2 = torch.cat(new[] { mask, torch.ones(2, 1, ScalarType.Int64) }, 1);
        var stepped = model.Forward(next, mask2, cache);
        var aloneA2 = model.Forward(torch.tensor(a.Append(11L).ToArray(), 1, a.Length + 1)).narrow(1, a.Length, 1);
        var aloneB2 = model.Forward(torch.tensor(b.Append(12L).ToArray(), 1, b.Length + 1)).narrow(1, b.Length, 1);
        AssertClose(aloneA2, stepped.narrow(0, 0, 1), 1e-5, "cached row 0");
        AssertClose(aloneB2, stepped.narrow(0, 1, 1), 1e-5, "cached row 1");
    }

    [TestMethod]
    public void AttentionMaskOfTheWrongWidthIsRejected()
    {
        using var model = CausalLM.Create(TinyModels.Llama());
        using var scope = NewDisposeScope();
        var e = Assert.ThrowsExactly<ArgumentException>(() => model.Forward(torch.ones(1, 4, ScalarType.Int64), torch.ones(1, 3, ScalarType.Int64)));
        StringAssert.Contains(e.Message, "[1, 4]");
    }

    [TestMethod]
    public void ProjectionsAreSwappableSubmodules()
    {
        torch.manual_seed(5);
        using var model = CausalLM.Create(TinyModels.Llama());
        Assert.AreEqual(2 * 7, model.ProjectionNames.Count);
        Assert.IsTrue(model.ProjectionNames.Contains("model.layers.1.self_attn.q_proj"));
        using var noGrad = torch.no_grad();
        using var scope = NewDisposeScope();
        var ids = torch.tensor(new long[] { 1, 5, 9 }, 1, 3);
        var before = model.Forward(ids);

        const string name = "model.layers.0.self_attn.q_proj";
        var original = model.GetProjection(name);
        var wrapper = new ScaledWrapper(original);
        Assert.AreSame(original, model.ReplaceProjection(name, wrapper));
        Assert.AreSame(wrapper, model.GetProjection(name));
        var names = model.named_parameters().Select(p => p.name).ToList();
        Assert.IsTrue(names.Contains(name + ".inner.weight"), string.Join(", ", names));
        Assert.IsTrue(names.Contains(name + ".scale"));
        Assert.IsFalse(names.Contains(name + ".weight"));
        AssertClose(before, model.Forward(ids), 1e-6, "scale 1 wrapper is the identity");
        wrapper.SetScale(0f);
        Assert.IsTrue(before.sub(model.Forward(ids)).abs().max().item<float>() > 1e-4, "the wrapper is on the forward path");
        Assert.ThrowsExactly<ArgumentException>(() => model.GetProjection("model.layers.0.self_attn.nope"));
    }

    sealed class ScaledWrapper : nn.Module<Tensor, Tensor>
    {
#pragma warning disable IDE1006
        readonly nn.Module<Tensor, Tensor> inner;
        readonly TorchSharp.Modules.Parameter scale;
#pragma warning restore IDE1006
        public ScaledWrapper(nn.Module<Tensor, Tensor> inner) : base("ScaledWrapper")
        {
            this.inner = inner;
            scale = new TorchSharp.Modules.Parameter(torch.ones(1));
            RegisterComponents();
        }
        public void SetScale(float s) { using var g = torch.no_grad(); scale.fill_(s); }
        public override Tensor forward(Tensor x) => inner.forward(x) * scale;
    }

    [TestMethod]
    [DataRow(ScalarType.BFloat16)]
    [DataRow(ScalarType.Float16)]
    public void ReducedPrecisionModelsRunAndStayCloseToFloat32(ScalarType dtype)
    {
        torch.manual_seed(9);
        using var f32 = CausalLM.Create(TinyModels.Llama());
        torch.manual_seed(9);
        using var low = CausalLM.Create(TinyModels.Llama(), dtype);
        Assert.AreEqual(dtype, low.DType);
        Assert.IsTrue(low.parameters().All(p => p.dtype == dtype && p.requires_grad));
        using var noGrad = torch.no_grad();
        using var scope = NewDisposeScope();
        var ids = torch.tensor(new long[] { 1, 5, 9, 14, 0, 1 }, 2, 3);
        var mask = torch.tensor(new long[] { 1, 1, 1, 0, 1, 1 }, 2, 3);
        var a = f32.Forward(ids, mask);
        var b = low.Forward(ids, mask);
        Assert.AreEqual(ScalarType.Float32, b.dtype);
        Assert.IsFalse(b.isnan().any().item<bool>());
        double diff = a.sub(b).abs().max().item<float>();
        Assert.IsTrue(diff < 0.05, $"max |Δlogit| = {diff}");
    }

    [TestMethod]
    public void KvCacheDecodingDoesNotLeakTensors()
    {
        torch.manual_seed(11);
        using var model = CausalLM.Create(TinyModels.Llama());
        using var noGrad = torch.no_grad();
        using var cache = model.CreateCache();
        using (var s0 = NewDisposeScope())
            model.Forward(torch.tensor(new long[] { 1, 2, 3 }, 1, 3), cache: cache);
        void Step(int i)
        {
            using var scope = NewDisposeScope();
            var logits = model.Forward(torch.tensor(new long[] { i % 100 }, 1, 1), cache: cache);
            logits.argmax(-1).item<long>();
        }
        for (int i = 0; i < 5; i++) Step(i);      // warm up
        GC.Collect(); GC.WaitForPendingFinalizers();
        long before = torch.Tensor.TotalCount;
        long liveBefore = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        for (int i = 0; i < 50; i++) Step(i);
        GC.Collect(); GC.WaitForPendingFinalizers();
        long after = torch.Tensor.TotalCount;
        long liveAfter = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        Assert.AreEqual(58, cache.Length);
        Assert.AreEqual(before, after, $"live tensors grew from {before} to {after} over 50 cached steps");
        Assert.AreEqual(liveBefore, liveAfter, "dispose-scope live count grew");
    }

    internal static void AssertClose(Tensor expected, Tensor actual, double tol, string what)
    {
        CollectionAssert.AreEqual(expected.shape, actual.shape, what + ": shape");
        double diff = expected.sub(actual).abs().max().item<float>();
        Assert.IsTrue(diff <= tol, $"{what}: max |Δ| = {diff} > {tol}");
    }
}

[TestClass]
public sealed class CausalLMLifetimeTests
{
    [TestMethod]
    [DataRow("llama", ScalarType.Float32)]
    [DataRow("llama", ScalarType.BFloat16)]
    [DataRow("gpt2", ScalarType.Float32)]
    public void ModelCreatedInsideADisposeScopeOutlivesIt(string type, ScalarType dtype)
    {
        var config = type == "gpt2" ? TinyModels.Gpt2() : TinyModels.Llama(tied: false);
        CausalLM model;
        using (var scope = NewDisposeScope())
            model = CausalLM.Create(config, dtype);
        using var reference = CausalLM.Create(config, dtype);
        using (model)
        using (var scope = NewDisposeScope())
        {
            // named_parameters() silently skips freed parameters: compare against a model built outside any scope.
            CollectionAssert.AreEqual(reference.named_parameters().Select(p => p.name).ToArray(), model.named_parameters().Select(p => p.name).ToArray());
            Assert.AreEqual(config.IsGpt2 ? 4 + 12 * config.NumHiddenLayers : 3 + 9 * config.NumHiddenLayers, model.named_parameters().Count());
            var logits = model.Forward(torch.tensor(new long[] { 1, 2, 3 }, 1, 3));
            Assert.IsFalse(logits.isnan().any().item<bool>());
        }
    }
}
