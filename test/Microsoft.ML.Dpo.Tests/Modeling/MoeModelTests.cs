using Microsoft.ML.Dpo.Checkpoints;
using Microsoft.ML.Dpo.Losses;
using Microsoft.ML.Dpo.Lora;
using Microsoft.ML.Dpo.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Modeling;

/// <summary>Tiny sparse mixture-of-experts configurations.</summary>
internal static class MoeModels
{
    public static CausalLMConfig Mixtral(int vocab = 101) => new()
    {
        ModelType = "mixtral", VocabSize = vocab, HiddenSize = 32, IntermediateSize = 24, NumHiddenLayers = 2,
        NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 8, MaxPositionEmbeddings = 128, RmsNormEps = 1e-5, RopeTheta = 1e6,
        NumExperts = 4, NumExpertsPerToken = 2, NormTopKProb = true, BosTokenId = 1, EosTokenIds = [2],
    };

    /// <summary>Qwen3-MoE with 3 layers: layer 1 dense (mlp_only_layers), layers 0 and 2 sparse; top-3 of 5 without renormalisation.</summary>
    public static CausalLMConfig Qwen3Moe(int vocab = 101) => new()
    {
        ModelType = "qwen3_moe", VocabSize = vocab, HiddenSize = 32, IntermediateSize = 40, NumHiddenLayers = 3,
        NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 12, MaxPositionEmbeddings = 128, RmsNormEps = 1e-6, RopeTheta = 1e6,
        NumExperts = 5, NumExpertsPerToken = 3, MoeIntermediateSize = 16, NormTopKProb = false, MlpOnlyLayers = [1],
        BosTokenId = 1, EosTokenIds = [2],
    };

    public static CausalLMConfig ByName(string name) => name == "mixtral" ? Mixtral() : Qwen3Moe();

    /// <summary>Expected Hugging Face parameter names.</summary>
    public static string[] ExpectedNames(CausalLMConfig c)
    {
        var names = new List<string> { "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight" };
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            string p = $"model.layers.{i}.";
            foreach (var proj in new[] { "q_proj", "k_proj", "v_proj", "o_proj" }) names.Add(p + $"self_attn.{proj}.weight");
            if (c.ModelType == "qwen3_moe") { names.Add(p + "self_attn.q_norm.weight"); names.Add(p + "self_attn.k_norm.weight"); }
            names.Add(p + "input_layernorm.weight");
            names.Add(p + "post_attention_layernorm.weight");
            bool sparse = !c.MlpOnlyLayers.Contains(i);
            string block = c.ModelType == "mixtral" ? "block_sparse_moe" : "mlp";
            if (!sparse) { foreach (var proj in new[] { "gate_proj", "up_proj", "down_proj" }) names.Add(p + $"mlp.{proj}.weight"); continue; }
            names.Add(p + block + ".gate.weight");
            for (int e = 0; e < c.NumExperts; e++)
                foreach (var proj in c.ModelType == "mixtral" ? new[] { "w1", "w2", "w3" } : new[] { "gate_proj", "up_proj", "down_proj" })
                    names.Add(p + $"{block}.experts.{e}.{proj}.weight");
        }
        return names.OrderBy(n => n, StringComparer.Ordinal).ToArray();
    }
}

[TestClass]
public sealed class MoeModelTests
{
    static Tensor Ids(int rows, int length, int seed)
    {
        var random = new Random(seed);
        return torch.tensor(Enumerable.Range(0, rows * length).Select(_ => (long)random.Next(3, 101)).ToArray(), rows, length);
    }

    [TestMethod]
    [DataRow("mixtral")]
    [DataRow("qwen3_moe")]
    public void EveryHuggingFaceWeightIsARegisteredParameterAndReceivesAGradient(string name)
    {
        var config = MoeModels.ByName(name);
        torch.manual_seed(1);
        using var model = CausalLM.Create(config);
        var expected = MoeModels.ExpectedNames(config);
        CollectionAssert.AreEqual(expected, model.named_parameters().Select(p => p.name).OrderBy(n => n, StringComparer.Ordinal).ToArray());
        CollectionAssert.AreEqual(expected, model.state_dict().Keys.OrderBy(n => n, StringComparer.Ordinal).ToArray());

        using var scope = NewDisposeScope();
        var ids = Ids(4, 12, 5);
        var mask = torch.tensor(Enumerable.Range(0, 48).Select(i => i is >= 12 and < 15 ? 0L : 1L).ToArray(), 4, 12);   // row 1 left-padded by 3
        model.train();
        using var recording = model.RecordRouterLogits()!;
        var logits = model.Forward(ids, mask);
        var aux = RouterLoss.LoadBalancing(recording.Forwards[0].RouterLogits, config.NumExperts, config.NumExpertsPerToken, recording.Forwards[0].AttentionMask);
        (logits.pow(2).mean() + aux).backward();
        foreach (var (n, p) in model.named_parameters())
        {
            Assert.IsNotNull(p.grad, $"{n} got no gradient");
            Assert.IsTrue(p.grad!.abs().sum().item<float>() > 0, $"{n} got an all-zero gradient");
        }
        Assert.AreEqual(2, recording.Forwards[0].RouterLogits.Count, "one router-logit tensor per sparse layer");
    }

    /// <summary>The dispatch (each expert on its own tokens) equals the dense definition: every expert over every token, weighted by the top-k mask.</summary>
    [TestMethod]
    [DataRow("mixtral")]
    [DataRow("qwen3_moe")]
    public void SparseDispatchEqualsTheDenseDefinitionAndRunsEachExpertOnlyOnItsTokens(string name)
    {
        var config = MoeModels.ByName(name);
        torch.manual_seed(2);
        using var model = CausalLM.Create(config);
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        string block = config.ModelType == "mixtral" ? "model.layers.0.block_sparse_moe" : "model.layers.0.mlp";
        string down = config.ModelType == "mixtral" ? "w2" : "down_proj";
        // Count the rows each expert of layer 0 sees, through its (swappable) down projection.
        var counters = Enumerable.Range(0, config.NumExperts).Select(e =>
        {
            var counter = new RowCounter(model.GetProjection($"{block}.experts.{e}.{down}"));
            model.ReplaceProjection($"{block}.experts.{e}.{down}", counter);
            return counter;
        }).ToArray();
        var ids = Ids(3, 10, 7);
        var first = model.Forward(ids);
        Assert.AreEqual(30L * config.NumExpertsPerToken, counters.Sum(c => c.Rows), "each token reaches exactly k experts");
        Assert.IsTrue(counters.All(c => c.Rows < 30), "no expert runs over every token");
        CollectionAssert.AreEqual(first.data<float>().ToArray(), model.Forward(ids).data<float>().ToArray(), "deterministic");

    }

    [TestMethod]
    [DataRow("mixtral")]
    [DataRow("qwen3_moe")]
    public void SparseDispatchEqualsTheDenseDefinition(string name)
    {
        var config = MoeModels.ByName(name);
        torch.manual_seed(3);
        using var block = new SparseMoeBlock(config, new RouterLogitsSink());
        using var noGrad = no_grad();
        using (no_grad()) foreach (var p in block.parameters()) nn.init.normal_(p, 0, 0.3);
        using var scope = NewDisposeScope();
        var x = torch.randn(2, 9, config.HiddenSize);
        var sparse = block.forward(x).reshape(18, config.HiddenSize);
        // Every expert over every token, weighted by the (renormalised) top-k routing weights, zero elsewhere.
        var tokens = x.reshape(18, config.HiddenSize);
        var gate = block.named_parameters().First(p => p.name == "gate.weight").parameter;
        var probabilities = tokens.matmul(gate.t()).softmax(-1);                      // [N, E]
        var (top, chosen) = probabilities.topk(config.NumExpertsPerToken, dim: -1);
        if (config.NormTopKProb) top = top / top.sum(-1, keepdim: true);
        var weights = torch.zeros(18, config.NumExperts).scatter(1, chosen, top);      // [N, E]
        var dense = torch.zeros(18, config.HiddenSize);
        var experts = block.named_modules().Where(m => m.module is SwiGluExpert).Select(m => (SwiGluExpert)m.module).ToArray();
        Assert.AreEqual(config.NumExperts, experts.Length);
        for (int e = 0; e < experts.Length; e++)
            dense += weights[.., e..(e + 1)] * experts[e].forward(tokens);
        double diff = dense.sub(sparse).abs().max().item<float>();
        Assert.IsTrue(diff < 1e-5, $"max |Δ| = {diff}");
    }

    [TestMethod]
    [DataRow("mixtral")]
    [DataRow("qwen3_moe")]
    public void CachedDecodingAndLeftPaddingEqualTheFullForward(string name)
    {
        torch.manual_seed(4);
        using var model = CausalLM.Create(MoeModels.ByName(name));
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        long[] seq = [1, 17, 5, 9, 33, 12, 8, 40];
        var full = model.Forward(torch.tensor(seq, 1, seq.Length));
        using (var cache = model.CreateCache())
        {
            CausalLMTests.AssertClose(full.narrow(1, 0, 3), model.Forward(torch.tensor(seq[..3], 1, 3), cache: cache), 1e-5, "prompt");
            for (int t = 3; t < seq.Length; t++)
                CausalLMTests.AssertClose(full.narrow(1, t, 1), model.Forward(torch.tensor(new[] { seq[t] }, 1, 1), cache: cache), 1e-5, $"step {t}");
        }
        // Left padding: the second row [pad, pad, pad, 1, 17, 5, 9, 33] sees what the first five tokens see alone.
        var batch = torch.tensor(seq.Concat(new long[] { 0, 0, 0, 1, 17, 5, 9, 33 }).ToArray(), 2, 8);
        var mask = torch.tensor(Enumerable.Repeat(1L, 8).Concat(new long[] { 0, 0, 0, 1, 1, 1, 1, 1 }).ToArray(), 2, 8);
        var padded = model.Forward(batch, mask);
        Assert.IsFalse(padded.isnan().any().item<bool>());
        CausalLMTests.AssertClose(full, padded.narrow(0, 0, 1), 1e-5, "row 0");
        CausalLMTests.AssertClose(full.narrow(1, 0, 5), padded.narrow(0, 1, 1).narrow(1, 3, 5), 1e-5, "left-padded row 1");
    }

    [TestMethod]
    [DataRow("mixtral")]
    [DataRow("qwen3_moe")]
    public void HuggingFaceSaveRoundTripsBitExactly(string name)
    {
        torch.manual_seed(5);
        using var model = CausalLM.Create(MoeModels.ByName(name));
        using var dir = new TempDirectory();
        HuggingFaceCheckpoint.Save(model, dir.Combine("a"));
        using var loaded = HuggingFaceCheckpoint.Load(dir.Combine("a"));
        Assert.AreEqual(model.Config.ToJson(), loaded.Config.ToJson());
        var original = model.state_dict();
        foreach (var (key, value) in loaded.state_dict())
            CollectionAssert.AreEqual(original[key].data<float>().ToArray(), value.data<float>().ToArray(), key);
        HuggingFaceCheckpoint.Save(loaded, dir.Combine("b"));
        CollectionAssert.AreEqual(File.ReadAllBytes(dir.Combine("a", "model.safetensors")), File.ReadAllBytes(dir.Combine("b", "model.safetensors")));
        CollectionAssert.AreEqual(File.ReadAllBytes(dir.Combine("a", "config.json")), File.ReadAllBytes(dir.Combine("b", "config.json")));
    }

    [TestMethod]
    public void ConfigFieldsThatAreNotImplementedAreErrorsNamingTheField()
    {
        string Json(string type, string extra, int perToken = 2) =>
            $$"""{"model_type": "{{type}}", "vocab_size": 50, "hidden_size": 16, "intermediate_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2, "moe_intermediate_size": 8, "num_experts": 4, "num_local_experts": 4, "num_experts_per_tok": {{perToken}} {{extra}}}""";
        var ok = CausalLMConfig.FromJson(Json("qwen3_moe", ""), "config.json");
        Assert.AreEqual(4, ok.NumExperts);
        void Refused(string type, string extra, string field, int perToken = 2)
        {
            var e = Assert.ThrowsExactly<InvalidDataException>(() => CausalLMConfig.FromJson(Json(type, extra, perToken), "config.json"));
            StringAssert.Contains(e.Message, field);
            StringAssert.Contains(e.Message, "config.json");
        }
        Refused("qwen3_moe", """, "use_sliding_window": true, "sliding_window": 4096""", "use_sliding_window");
        Refused("mixtral", """, "rope_scaling": {"rope_type": "llama3", "factor": 8}""", "rope_scaling");
        Refused("mixtral", "", "num_experts_per_tok", perToken: 5);
        Refused("qwen3_moe", """, "decoder_sparse_step": 0""", "decoder_sparse_step");
        Refused("qwen3_moe", """, "mlp_only_layers": [2]""", "mlp_only_layers");
        Refused("mixtral", """, "router_jitter_noise": 1.5""", "router_jitter_noise");
        var sparseStep = CausalLMConfig.FromJson(Json("qwen3_moe", """, "decoder_sparse_step": 2"""), "config.json");
        Assert.IsFalse(sparseStep.IsSparseLayer(0));
        Assert.IsTrue(sparseStep.IsSparseLayer(1));
    }

    [TestMethod]
    public void CheckpointLackingAnExpertTensorIsRefusedNamingIt()
    {
        torch.manual_seed(6);
        using var model = CausalLM.Create(MoeModels.Mixtral());
        using var dir = new TempDirectory();
        var tensors = model.state_dict().Where(kv => kv.Key != "model.layers.1.block_sparse_moe.experts.3.w2.weight").ToList();
        File.WriteAllText(dir.Combine("config.json"), model.Config.ToJson());
        Safetensors.Save(dir.Combine("model.safetensors"), tensors);
        var e = Assert.ThrowsExactly<InvalidDataException>(() => HuggingFaceCheckpoint.Load(dir.Path));
        StringAssert.Contains(e.Message, "model.layers.1.block_sparse_moe.experts.3.w2.weight");
    }

    [TestMethod]
    [DataRow("mixtral")]
    [DataRow("qwen3_moe")]
    public void LoraOnTheExpertsDisablesAndMergesExactlyAndLeavesTheRouterAlone(string name)
    {
        torch.manual_seed(7);
        using var model = CausalLM.Create(MoeModels.ByName(name));
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        var ids = Ids(2, 7, 9);
        var before = model.Forward(ids);

        // all-linear: every projection but the routers.
        var all = LoraAdapters.ResolveTargets(model, ["all-linear"]);
        Assert.IsTrue(model.RouterNames.Count == 2 && model.RouterNames.All(r => !all.Contains(r)), string.Join(", ", model.RouterNames));
        CollectionAssert.AreEquivalent(model.RouterNames.ToList(), LoraAdapters.ResolveTargets(model, ["router"]).ToList());

        string[] expertTargets = name == "mixtral" ? ["w1", "w2", "w3", "q"] : ["gate", "up", "down", "q"];
        var adapters = LoraAdapters.Apply(model, new LoraOptions { Rank = 2, TargetModules = expertTargets });
        Assert.IsTrue(adapters.ModuleNames.Any(n => n.Contains(".experts.3.")), string.Join(", ", adapters.ModuleNames));
        Assert.IsFalse(adapters.ModuleNames.Any(model.RouterNames.Contains), "the router is not adapted unless asked");
        var gate = model.named_parameters().First(p => p.name == model.RouterNames[0] + ".weight").parameter;
        Assert.IsFalse(gate.requires_grad, "the router is frozen under LoRA");
        foreach (var b in adapters.Modules.Values.Select(m => m.B)) b.normal_(0, 0.5);
        var adapted = model.Forward(ids);
        Assert.IsTrue(adapted.sub(before).abs().max().item<float>() > 1e-3, "the adapters change the output");
        using (adapters.Disable())
            CollectionAssert.AreEqual(before.data<float>().ToArray(), model.Forward(ids).data<float>().ToArray(), "disabled adapters give the base model exactly");
        adapters.MergeAndUnload();
        CausalLMTests.AssertClose(adapted, model.Forward(ids), 2e-5, "merged");
        Assert.IsFalse(model.named_parameters().Any(p => p.name.Contains("lora")));
    }

    [TestMethod]
    [DataRow("mixtral")]
    [DataRow("qwen3_moe")]
    public void CliInitCreatesThePresetAndItGenerates(string arch)
    {
        using var dir = new TempDirectory();
        var output = new StringWriter();
        var error = new StringWriter();
        Assert.AreEqual(0, MlDpo.Commands.CliApp.Run(["init", "--arch", arch, "--preset", "tiny", "--tokenizer", "bytes", "--output", dir.Combine("m")], output, error), error.ToString());
        StringAssert.Contains(output.ToString(), arch + "/tiny");
        using (var model = LanguageModel.Load(dir.Combine("m"), device: "cpu"))
        {
            Assert.AreEqual(arch, model.Network.Config.ModelType);
            Assert.AreEqual(8, model.Network.Config.NumExperts);
            Assert.AreEqual(2, model.Network.Config.NumExpertsPerToken);
            Assert.AreEqual(2 * 8, model.Network.ProjectionNames.Count(n => n.Contains(".experts.") && n.EndsWith(arch == "mixtral" ? ".w1" : ".gate_proj", StringComparison.Ordinal)));
        }
        Assert.AreEqual(0, MlDpo.Commands.CliApp.Run(["generate", "--model", dir.Combine("m"), "--prompt", "Hi", "--max-new-tokens", "4", "--ignore-eos"], output, error), error.ToString());
    }

    sealed class RowCounter : nn.Module<Tensor, Tensor>
    {
#pragma warning disable IDE1006
        readonly nn.Module<Tensor, Tensor> inner;
#pragma warning restore IDE1006
        public long Rows;
        public RowCounter(nn.Module<Tensor, Tensor> inner) : base("RowCounter") { this.inner = inner; RegisterComponents(); }
        public override Tensor forward(Tensor x) { Rows += x.shape[0]; return inner.forward(x); }
    }
}
