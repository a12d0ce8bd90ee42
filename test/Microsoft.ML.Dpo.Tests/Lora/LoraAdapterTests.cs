using System.Text.Json.Nodes;
using Microsoft.ML.Dpo.Checkpoints;
using Microsoft.ML.Dpo.Lora;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tests.Modeling;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Lora;

/// <summary>LoRA adapters on the tiny Llama and GPT-2 models: exactness at init and when disabled, merging, PEFT files, errors.</summary>
[TestClass]
public sealed class LoraAdapterTests
{
    static CausalLM NewModel(bool gpt2, int seed = 5)
    {
        manual_seed(seed);
        return CausalLM.Create(gpt2 ? TinyModels.Gpt2() : TinyModels.Llama());
    }

    static Tensor Ids(CausalLM model)
    {
        manual_seed(11);
        return randint(3, model.Config.VocabSize, [2, 9], dtype: ScalarType.Int64);
    }

    static Tensor Logits(CausalLM model, Tensor ids)
    {
        using var _ = no_grad();
        return model.Forward(ids);
    }

    static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    /// <summary>Gives every B a random value, as training would, so the adapters change the outputs.</summary>
    static void Perturb(LoraAdapters adapters, int seed = 3)
    {
        manual_seed(seed);
        using var _ = no_grad();
        foreach (var m in adapters.Modules.Values) m.B.copy_(randn(m.B.shape).mul(0.2));
    }

    [TestMethod]
    [DataRow(false)]
    [DataRow(true)]
    public void RightAfterInitialisationOutputsEqualTheBaseExactly(bool gpt2)
    {
        using var model = NewModel(gpt2);
        using var ids = Ids(model);
        using var before = Logits(model, ids);
        var adapters = LoraAdapters.Apply(model, new LoraOptions { Rank = 4, TargetModules = gpt2 ? ["c_attn", "c_proj", "c_fc"] : ["all-linear"] });
        Assert.AreEqual(gpt2 ? 8 : 14, adapters.ModuleNames.Count);
        Assert.IsTrue(adapters.Modules.Values.All(m => m.A.abs().max().item<float>() > 0), "A is random");
        using var after = Logits(model, ids);
        Assert.IsTrue(Same(before, after), "B = 0: the adapted model computes the base model exactly");
    }

    [TestMethod]
    [DataRow(false)]
    [DataRow(true)]
    public void DisabledAdaptersGiveTheBaseOutputsExactlyAndAreRestored(bool gpt2)
    {
        using var model = NewModel(gpt2);
        using var ids = Ids(model);
        using var baseLogits = Logits(model, ids);
        var adapters = LoraAdapters.Apply(model, new LoraOptions { Rank = 4 });
        Perturb(adapters);
        using var adapted = Logits(model, ids);
        Assert.IsFalse(adapted.allclose(baseLogits, rtol: 0, atol: 1e-4), "trained adapters change the outputs");
        using (adapters.Disable())
        {
            Assert.IsFalse(adapters.Enabled);
            using var disabled = Logits(model, ids);
            Assert.IsTrue(Same(disabled, baseLogits), "disabled adapters: exactly the base model");
        }
        Assert.IsTrue(adapters.Enabled);
        Assert.ThrowsExactly<InvalidOperationException>(() =>
        {
            using (adapters.Disable()) throw new InvalidOperationException("boom");
        });
        Assert.IsTrue(adapters.Enabled, "the scope restores the adapters when an exception leaves it");
        using var again = Logits(model, ids);
        Assert.IsTrue(Same(again, adapted));
    }

    [TestMethod]
    public void OnlyAdapterParametersAreTrainableAndDefaultsAreQvForLlamaAndCAttnForGpt2()
    {
        using var llama = NewModel(gpt2: false);
        var a = LoraAdapters.Apply(llama, new LoraOptions());
        CollectionAssert.AreEqual(new[] { "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj" },
            a.ModuleNames.ToArray());
        var trainable = llama.parameters().Where(p => p.requires_grad).ToList();
        Assert.AreEqual(8, trainable.Count);
        Assert.IsTrue(trainable.All(p => a.Parameters.Any(q => q.Handle == p.Handle)));
        var q = a.Modules["model.layers.0.self_attn.q_proj"];
        CollectionAssert.AreEqual(new long[] { 8, 32 }, q.A.shape);
        CollectionAssert.AreEqual(new long[] { 32, 8 }, q.B.shape);
        Assert.AreEqual(2.0, q.Scaling);

        using var gpt2 = NewModel(gpt2: true);
        var g = LoraAdapters.Apply(gpt2, new LoraOptions { Rank = 2 });
        CollectionAssert.AreEqual(new[] { "transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn" }, g.ModuleNames.ToArray());
        CollectionAssert.AreEqual(new long[] { 2, 32 }, g.Modules["transformer.h.0.attn.c_attn"].A.shape);
        CollectionAssert.AreEqual(new long[] { 96, 2 }, g.Modules["transformer.h.0.attn.c_attn"].B.shape);
    }

    [TestMethod]
    [DataRow(false)]
    [DataRow(true)]
    public void MergedAndUnmergedLogitsAgree(bool gpt2)
    {
        using var dir = new TempDirectory();
        using var model = NewModel(gpt2);
        using var ids = Ids(model);
        var adapters = LoraAdapters.Apply(model, new LoraOptions { Rank = 4, Alpha = 8, TargetModules = gpt2 ? ["c_attn", "mlp.c_proj", "c_fc"] : ["q", "k", "v", "o", "gate", "up", "down"] });
        Perturb(adapters);
        using var unmerged = Logits(model, ids);

        // A Hugging Face save of an adapted model is a plain model with the adapters merged.
        HuggingFaceCheckpoint.Save(model, dir.Path);
        Assert.IsFalse(Safetensors.ReadHeader(Path.Combine(dir.Path, Safetensors.SingleFileName)).Any(e => e.Name.Contains("lora_") || e.Name.Contains("base_layer")));
        using (var exported = HuggingFaceCheckpoint.Load(dir.Path))
        using (var exportedLogits = Logits(exported, ids))
            Assert.IsTrue(exportedLogits.allclose(unmerged, rtol: 0, atol: 1e-5), $"exported: max diff {(exportedLogits - unmerged).abs().max().item<float>()}");

        adapters.MergeAndUnload();
        Assert.IsFalse(model.modules().Any(m => m is LoraLinear));
        Assert.IsTrue(model.parameters().All(p => p.requires_grad), "the base parameters are trainable again");
        using var merged = Logits(model, ids);
        float diff = (merged - unmerged).abs().max().item<float>();
        Assert.IsTrue(diff < 1e-5, $"max |merged − unmerged| = {diff}");
    }

    [TestMethod]
    [DataRow(false)]
    [DataRow(true)]
    public void PeftSaveAndLoadRoundTripsTheOutputs(bool gpt2)
    {
        using var dir = new TempDirectory();
        using var model = NewModel(gpt2);
        using var ids = Ids(model);
        var adapters = LoraAdapters.Apply(model, new LoraOptions { Rank = 4, Alpha = 12, Dropout = 0.05 });
        adapters.BaseModelNameOrPath = "tiny-base";
        Perturb(adapters);
        using var expected = Logits(model, ids);
        string adapterDir = dir.Combine("adapter");
        adapters.Save(adapterDir);

        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(adapterDir, "adapter_config.json")))!;
        Assert.AreEqual("LORA", (string?)config["peft_type"]);
        Assert.AreEqual("CAUSAL_LM", (string?)config["task_type"]);
        Assert.AreEqual("none", (string?)config["bias"]);
        Assert.AreEqual("tiny-base", (string?)config["base_model_name_or_path"]);
        Assert.AreEqual(4, (int)config["r"]!);
        Assert.AreEqual(12.0, (double)config["lora_alpha"]!);
        Assert.AreEqual(0.05, (double)config["lora_dropout"]!);
        Assert.AreEqual(gpt2, (bool)config["fan_in_fan_out"]!);
        CollectionAssert.AreEqual(gpt2 ? new[] { "c_attn" } : new[] { "q_proj", "v_proj" }, config["target_modules"]!.AsArray().Select(n => (string)n!).ToArray());
        var header = Safetensors.ReadHeader(Path.Combine(adapterDir, "adapter_model.safetensors")).ToDictionary(e => e.Name);
        string module = gpt2 ? "base_model.model.transformer.h.0.attn.c_attn" : "base_model.model.model.layers.0.self_attn.q_proj";
        CollectionAssert.AreEqual(new long[] { 4, 32 }, header[module + ".lora_A.weight"].Shape);
        CollectionAssert.AreEqual(new long[] { gpt2 ? 96 : 32, 4 }, header[module + ".lora_B.weight"].Shape);
        Assert.AreEqual(gpt2 ? 4 : 8, header.Count);

        var fresh = NewModel(gpt2);                // the same base weights
        using var language = new LanguageModel(fresh, tokenizer: null);
        var loaded = LoraAdapters.Load(language, adapterDir);
        Assert.AreSame(loaded, language.Lora);
        Assert.AreEqual(0.05, loaded.Options.Dropout);
        Assert.AreEqual(3.0, loaded.Modules.Values.First().Scaling);
        using var actual = Logits(fresh, ids);
        Assert.IsTrue(Same(actual, expected), "the loaded adapter computes the same outputs exactly");
    }

    [TestMethod]
    public void MergeWritesAPlainModelDirectory()
    {
        using var dir = new TempDirectory();
        using var model = NewModel(gpt2: false);
        using var ids = Ids(model);
        HuggingFaceCheckpoint.Save(model, dir.Combine("base"));
        var adapters = LoraAdapters.Apply(model, new LoraOptions { Rank = 2 });
        Perturb(adapters);
        using var expected = Logits(model, ids);
        adapters.Save(dir.Combine("adapter"));

        LoraAdapters.Merge(dir.Combine("base"), dir.Combine("adapter"), dir.Combine("merged"));
        using var merged = LanguageModel.Load(dir.Combine("merged"));
        Assert.IsNull(merged.Lora);
        using var actual = Logits(merged.Network, ids);
        Assert.IsTrue(actual.allclose(expected, rtol: 0, atol: 1e-5));
    }

    [TestMethod]
    public void UnknownTargetModuleIsAnErrorListingTheAvailableNames()
    {
        using var model = NewModel(gpt2: false);
        var e = Assert.ThrowsExactly<ArgumentException>(() => LoraAdapters.Apply(model, new LoraOptions { TargetModules = ["q", "qkv_proj"] }));
        StringAssert.Contains(e.Message, "'qkv_proj'");
        StringAssert.Contains(e.Message, "q (q_proj)");
        StringAssert.Contains(e.Message, "down (down_proj)");
        Assert.IsFalse(model.modules().Any(m => m is LoraLinear), "nothing was applied");

        using var gpt2 = NewModel(gpt2: true);
        var g = Assert.ThrowsExactly<ArgumentException>(() => LoraAdapters.Apply(gpt2, new LoraOptions { TargetModules = ["q"] }));
        StringAssert.Contains(g.Message, "c_attn, c_proj, c_fc");
    }

    [TestMethod]
    public void AnAdapterOfAnotherRankIsAnErrorNamingTheTensorAndBothShapes()
    {
        using var dir = new TempDirectory();
        using var model = NewModel(gpt2: false);
        LoraAdapters.Apply(model, new LoraOptions { Rank = 4 }).Save(dir.Path);
        string configPath = Path.Combine(dir.Path, "adapter_config.json");
        var config = JsonNode.Parse(File.ReadAllText(configPath))!;
        config["r"] = 8;
        File.WriteAllText(configPath, config.ToJsonString());

        using var fresh = new LanguageModel(NewModel(gpt2: false), tokenizer: null);
        using var ids = Ids(fresh.Network);
        using var before = Logits(fresh.Network, ids);
        var e = Assert.ThrowsExactly<InvalidDataException>(() => LoraAdapters.Load(fresh, dir.Path));
        StringAssert.Contains(e.Message, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
        StringAssert.Contains(e.Message, "[4, 32]");
        StringAssert.Contains(e.Message, "[8, 32]");
        Assert.IsNull(fresh.Lora, "a failed load leaves the base model as it was");
        Assert.IsFalse(fresh.Network.modules().Any(m => m is LoraLinear));
        using var after = Logits(fresh.Network, ids);
        Assert.IsTrue(Same(after, before));
    }

    [TestMethod]
    public void AnAdapterForAnotherArchitectureIsAnError()
    {
        using var dir = new TempDirectory();
        using var gpt2 = NewModel(gpt2: true);
        LoraAdapters.Apply(gpt2, new LoraOptions { Rank = 2 }).Save(dir.Path);
        using var llama = new LanguageModel(NewModel(gpt2: false), tokenizer: null);
        var e = Assert.ThrowsExactly<InvalidDataException>(() => LoraAdapters.Load(llama, dir.Path));
        StringAssert.Contains(e.Message, "'c_attn'");
    }
}
