using System.Text;
using System.Text.Json.Nodes;
using Microsoft.ML.Dpo.Checkpoints;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tests.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Checkpoints;

[TestClass]
public sealed class HuggingFaceRoundTripTests
{
    public static IEnumerable<object[]> Models => TinyModels.Names;

    [TestMethod]
    [DynamicData(nameof(Models))]
    public void SaveThenLoadIsBitExact(string name)
    {
        using var dir = new TempDirectory();
        string target = dir.Combine("model");
        torch.manual_seed(21);
        using var model = CausalLM.Create(TinyModels.ByName(name));
        HuggingFaceCheckpoint.Save(model, target, tmp => File.WriteAllText(Path.Combine(tmp, "tokenizer.json"), "{}"));

        CollectionAssert.AreEquivalent(new[] { "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", OutputFolder.MarkerFileName },
            Directory.GetFiles(target).Select(Path.GetFileName).ToArray());
        Assert.AreEqual(0, Directory.GetDirectories(dir.Path).Count(d => Path.GetFileName(d).StartsWith('.')), "no temp folder left behind");
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(target, "config.json")))!;
        var gen = JsonNode.Parse(File.ReadAllText(Path.Combine(target, "generation_config.json")))!;
        Assert.AreEqual(model.Config.BosTokenId, gen["bos_token_id"]!.GetValue<int>());

        var header = Safetensors.ReadHeader(Path.Combine(target, "model.safetensors"));
        var expected = model.named_parameters().ToDictionary(p => p.name, p => p.parameter.shape);
        CollectionAssert.AreEquivalent(expected.Keys.ToArray(), header.Select(e => e.Name).ToArray());
        foreach (var e in header)
        {
            CollectionAssert.AreEqual(expected[e.Name], e.Shape, e.Name);
            Assert.AreEqual("F32", e.DType);
        }

        using var loaded = HuggingFaceCheckpoint.Load(target);
        Assert.AreEqual(model.GetType(), loaded.GetType());
        Assert.AreEqual(model.Config.ToJson(), loaded.Config.ToJson());
        var original = model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var (n, p) in loaded.named_parameters())
            Assert.IsTrue(original[n].eq(p).all().item<bool>(), n);

        using var noGrad = torch.no_grad();
        using var scope = NewDisposeScope();
        var ids = torch.tensor(new long[] { 1, 7, 19, 4, 0, 1, 8, 30 }, 2, 4);
        var mask = torch.tensor(new long[] { 1, 1, 1, 1, 0, 1, 1, 1 }, 2, 4);
        Assert.IsTrue(model.Forward(ids, mask).eq(loaded.Forward(ids, mask)).all().item<bool>(), "logits differ after the round trip");

        if (name == "gpt2")
        {
            Assert.AreEqual(32, config["n_embd"]!.GetValue<int>());
            Assert.AreEqual("GPT2LMHeadModel", config["architectures"]![0]!.GetValue<string>());
            // Conv1D weights keep Hugging Face's [in, out] layout.
            CollectionAssert.AreEqual(new long[] { 32, 96 }, header.Single(e => e.Name == "transformer.h.0.attn.c_attn.weight").Shape);
        }
        if (name == "qwen2")
        {
            Assert.AreEqual("Qwen2ForCausalLM", config["architectures"]![0]!.GetValue<string>());
            Assert.IsTrue(header.Any(e => e.Name == "model.layers.0.self_attn.q_proj.bias"));
            Assert.IsFalse(header.Any(e => e.Name == "model.layers.0.self_attn.o_proj.bias"));
        }
    }

    [TestMethod]
    public void Bf16ModelSavesAsBf16AndReloadsBitExact()
    {
        using var dir = new TempDirectory();
        torch.manual_seed(4);
        using var model = CausalLM.Create(TinyModels.Llama(), ScalarType.BFloat16);
        HuggingFaceCheckpoint.Save(model, dir.Path);      // replaces the existing (empty) folder
        Assert.IsTrue(Safetensors.ReadHeader(dir.Combine("model.safetensors")).All(e => e.DType == "BF16"));
        StringAssert.Contains(File.ReadAllText(dir.Combine("config.json")), "\"torch_dtype\": \"bfloat16\"");
        using var back = HuggingFaceCheckpoint.Load(dir.Path, ScalarType.BFloat16);
        var a = model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var (n, p) in back.named_parameters())
            Assert.IsTrue(a[n].eq(p).all().item<bool>(), n);
        using var asF32 = HuggingFaceCheckpoint.Load(dir.Path);       // BF16 → F32 conversion is exact
        Assert.AreEqual(ScalarType.Float32, asF32.DType);
        foreach (var (n, p) in asF32.named_parameters())
            Assert.IsTrue(a[n].to(ScalarType.Float32).eq(p).all().item<bool>(), n);
    }

    [TestMethod]
    public void ShardedCheckpointLoads()
    {
        using var dir = new TempDirectory();
        torch.manual_seed(8);
        using var model = CausalLM.Create(TinyModels.Llama(tied: false));
        var all = model.named_parameters().ToList();
        var shard1 = all.Where(p => !p.name.Contains(".layers.1.")).ToList();
        var shard2 = all.Where(p => p.name.Contains(".layers.1.")).ToList();
        Safetensors.Save(dir.Combine("model-00001-of-00002.safetensors"), shard1.Select(p => new KeyValuePair<string, Tensor>(p.name, p.parameter)));
        Safetensors.Save(dir.Combine("model-00002-of-00002.safetensors"), shard2.Select(p => new KeyValuePair<string, Tensor>(p.name, p.parameter)));
        var map = new JsonObject();
        foreach (var p in shard1) map[p.name] = "model-00001-of-00002.safetensors";
        foreach (var p in shard2) map[p.name] = "model-00002-of-00002.safetensors";
        File.WriteAllText(dir.Combine(Safetensors.IndexFileName), new JsonObject { ["metadata"] = new JsonObject(), ["weight_map"] = map }.ToJsonString());
        File.WriteAllText(dir.Combine("config.json"), model.Config.ToJson());
        using var loaded = CausalLMLoader.Load(dir.Path);
        var a = all.ToDictionary(p => p.name, p => p.parameter);
        foreach (var (n, p) in loaded.named_parameters())
            Assert.IsTrue(a[n].eq(p).all().item<bool>(), n);
    }

    [TestMethod]
    public void LoaderDispatchesOnPathKind()
    {
        string bin = SharedFiles.Require("models/stories260K/stories260K.bin");
        using var fromBin = CausalLMLoader.Load(bin);
        Assert.AreEqual(512, fromBin.Config.VocabSize);
        Assert.AreEqual(5, fromBin.Config.NumHiddenLayers);
        Assert.IsTrue(fromBin.Config.TieWordEmbeddings);
        Assert.ThrowsExactly<FileNotFoundException>(() => CausalLMLoader.Load("/nonexistent/model"));
    }
}

[TestClass]
public sealed class BadCheckpointTests
{
    static string SaveTiny(TempDirectory dir, CausalLMConfig? config = null)
    {
        torch.manual_seed(1);
        using var model = CausalLM.Create(config ?? TinyModels.Llama(tied: false));
        string path = dir.Combine("m");
        HuggingFaceCheckpoint.Save(model, path);
        return path;
    }

    static void Rewrite(string file, Func<Dictionary<string, Tensor>, Dictionary<string, Tensor>> edit)
    {
        var tensors = Safetensors.Load(file);
        var edited = edit(tensors);
        Safetensors.Save(file, edited);
        foreach (var t in new HashSet<Tensor>(tensors.Values.Concat(edited.Values), ReferenceEqualityComparer.Instance)) t.Dispose();
    }

    [TestMethod]
    public void MissingConfigJsonNamesTheFile()
    {
        using var dir = new TempDirectory();
        string path = SaveTiny(dir);
        File.Delete(Path.Combine(path, "config.json"));
        var e = Assert.ThrowsExactly<FileNotFoundException>(() => HuggingFaceCheckpoint.Load(path));
        StringAssert.Contains(e.Message, Path.Combine(path, "config.json"));
    }

    [TestMethod]
    public void InvalidConfigJsonNamesTheFile()
    {
        using var dir = new TempDirectory();
        string path = SaveTiny(dir);
        File.WriteAllText(Path.Combine(path, "config.json"), "{ not json");
        var e = Assert.ThrowsExactly<InvalidDataException>(() => HuggingFaceCheckpoint.Load(path));
        StringAssert.Contains(e.Message, Path.Combine(path, "config.json"));
    }

    [TestMethod]
    public void UnknownModelTypeListsTheSupportedOnes()
    {
        using var dir = new TempDirectory();
        string path = SaveTiny(dir);
        string cfg = Path.Combine(path, "config.json");
        File.WriteAllText(cfg, File.ReadAllText(cfg).Replace("\"llama\"", "\"falcon\""));
        var e = Assert.ThrowsExactly<InvalidDataException>(() => HuggingFaceCheckpoint.Load(path));
        StringAssert.Contains(e.Message, "\"falcon\"");
        foreach (string supported in CausalLMConfig.SupportedModelTypes) StringAssert.Contains(e.Message, supported);
        StringAssert.Contains(e.Message, cfg);
    }

    [TestMethod]
    public void MissingTensorIsNamed()
    {
        using var dir = new TempDirectory();
        string path = SaveTiny(dir);
        Rewrite(Path.Combine(path, "model.safetensors"), t => t.Where(kv => kv.Key != "model.layers.1.mlp.up_proj.weight").ToDictionary());
        var e = Assert.ThrowsExactly<InvalidDataException>(() => HuggingFaceCheckpoint.Load(path));
        StringAssert.Contains(e.Message, "'model.layers.1.mlp.up_proj.weight'");
        StringAssert.Contains(e.Message, "[48, 32]");
    }

    [TestMethod]
    public void WrongShapeNamesTheTensorAndBothShapes()
    {
        using var dir = new TempDirectory();
        string path = SaveTiny(dir);
        Rewrite(Path.Combine(path, "model.safetensors"), t =>
        {
            var d = new Dictionary<string, Tensor>(t);
            d["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(8, 32);
            return d;
        });
        var e = Assert.ThrowsExactly<InvalidDataException>(() => HuggingFaceCheckpoint.Load(path));
        StringAssert.Contains(e.Message, "'model.layers.0.self_attn.k_proj.weight'");
        StringAssert.Contains(e.Message, "[8, 32]");
        StringAssert.Contains(e.Message, "[16, 32]");
    }

    [TestMethod]
    public void UnexpectedTensorIsAnErrorButKnownIgnorableOnesAreNot()
    {
        using var dir = new TempDirectory();
        string path = SaveTiny(dir);
        string file = Path.Combine(path, "model.safetensors");
        Rewrite(file, t => new Dictionary<string, Tensor>(t) { ["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4) });
        using (var ok = HuggingFaceCheckpoint.Load(path)) Assert.AreEqual(2, ok.Config.NumHiddenLayers);
        Rewrite(file, t => new Dictionary<string, Tensor>(t) { ["model.layers.0.mlp.extra.weight"] = torch.ones(4) });
        var e = Assert.ThrowsExactly<InvalidDataException>(() => HuggingFaceCheckpoint.Load(path));
        StringAssert.Contains(e.Message, "model.layers.0.mlp.extra.weight");
    }

    [TestMethod]
    public void TruncatedSafetensorsNamesFileAndTensor()
    {
        using var dir = new TempDirectory();
        string path = SaveTiny(dir);
        string file = Path.Combine(path, "model.safetensors");
        var bytes = File.ReadAllBytes(file);
        File.WriteAllBytes(file, bytes[..^10]);
        var e = Assert.ThrowsExactly<InvalidDataException>(() => HuggingFaceCheckpoint.Load(path));
        StringAssert.Contains(e.Message, file);
        StringAssert.Contains(e.Message, "tensor '");       // the last tensor's range now runs past the end
        StringAssert.Contains(e.Message, "truncated");
    }

    [TestMethod]
    public void HeaderLengthPastEndOfFileIsReported()
    {
        using var dir = new TempDirectory();
        string file = dir.Combine("bad.safetensors");
        var bytes = new byte[100];
        BitConverter.GetBytes((ulong)5000).CopyTo(bytes, 0);
        File.WriteAllBytes(file, bytes);
        var e = Assert.ThrowsExactly<InvalidDataException>(() => Safetensors.Load(file));
        StringAssert.Contains(e.Message, file);
        StringAssert.Contains(e.Message, "header length 5000");
        File.WriteAllBytes(file, new byte[3]);
        e = Assert.ThrowsExactly<InvalidDataException>(() => Safetensors.Load(file));
        StringAssert.Contains(e.Message, "truncated");
    }

    [TestMethod]
    public void OffsetsOutOfRangeAndUnsupportedDtypeNameTheTensor()
    {
        using var dir = new TempDirectory();
        string file = dir.Combine("bad.safetensors");
        void Write(string headerJson, int dataBytes)
        {
            var h = Encoding.UTF8.GetBytes(headerJson);
            File.WriteAllBytes(file, BitConverter.GetBytes((ulong)h.Length).Concat(h).Concat(new byte[dataBytes]).ToArray());
        }
        Write("{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"v\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[16,32]}}", 20);
        var e = Assert.ThrowsExactly<InvalidDataException>(() => Safetensors.Load(file));
        StringAssert.Contains(e.Message, "tensor 'v'");
        StringAssert.Contains(e.Message, "[16, 32]");
        Write("{\"w\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]}}", 16);
        e = Assert.ThrowsExactly<InvalidDataException>(() => Safetensors.Load(file));
        StringAssert.Contains(e.Message, "tensor 'w'");
        StringAssert.Contains(e.Message, "\"I64\"");
        StringAssert.Contains(e.Message, file);
    }

    [TestMethod]
    public void F16TensorsAreReadAndConverted()
    {
        using var dir = new TempDirectory();
        string file = dir.Combine("h.safetensors");
        using var scope = NewDisposeScope();
        var src = torch.tensor(new float[] { 1.5f, -2.25f, 0.125f, 65504f }).to(ScalarType.Float16);
        Safetensors.Save(file, new Dictionary<string, Tensor> { ["x"] = src });
        Assert.AreEqual("F16", Safetensors.ReadHeader(file).Single().DType);
        var back = Safetensors.Load(file, ScalarType.Float32)["x"];
        CollectionAssert.AreEqual(new float[] { 1.5f, -2.25f, 0.125f, 65504f }, back.data<float>().ToArray());
        back.Dispose();
    }

    [TestMethod]
    public void Llama2cSizeMismatchNamesTheFileAndHeader()
    {
        using var dir = new TempDirectory();
        string file = dir.Combine("bad.bin");
        int[] header = { 64, 172, 5, 8, 4, 512, 512 };
        File.WriteAllBytes(file, header.SelectMany(BitConverter.GetBytes).Concat(new byte[1000]).ToArray());
        var e = Assert.ThrowsExactly<InvalidDataException>(() => Llama2cCheckpoint.Load(file));
        StringAssert.Contains(e.Message, file);
        StringAssert.Contains(e.Message, "1028 bytes");
        StringAssert.Contains(e.Message, "implies 1056540");
    }

    [TestMethod]
    public void Llama2cUntiedClassifierIsReadFromTheEnd()
    {
        // A tiny untied llama2.c file written here: check the classifier and the q/k permutation land where expected.
        using var dir = new TempDirectory();
        string file = dir.Combine("tiny.bin");
        int dim = 8, hidden = 12, layers = 1, heads = 2, kv = 1, vocab = 10, seq = 16, hs = dim / heads, kvDim = kv * hs;
        var rng = new Random(3);
        float[] Rand(int n) => Enumerable.Range(0, n).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray();
        var emb = Rand(vocab * dim); var wq = Rand(dim * dim); var wk = Rand(kvDim * dim); var wcls = Rand(vocab * dim);
        var floats = emb.Concat(Rand(dim)).Concat(wq).Concat(wk).Concat(Rand(kvDim * dim)).Concat(Rand(dim * dim)).Concat(Rand(dim))
            .Concat(Rand(hidden * dim)).Concat(Rand(dim * hidden)).Concat(Rand(hidden * dim)).Concat(Rand(dim))
            .Concat(new float[seq * hs / 2 * 2]).Concat(wcls);
        File.WriteAllBytes(file, new[] { dim, hidden, layers, heads, kv, -vocab, seq }.SelectMany(BitConverter.GetBytes)
            .Concat(floats.SelectMany(BitConverter.GetBytes)).ToArray());
        using var model = Llama2cCheckpoint.Load(file);
        Assert.IsFalse(model.Config.TieWordEmbeddings);
        var p = model.named_parameters().ToDictionary(x => x.name, x => x.parameter);
        CollectionAssert.AreEqual(wcls, p["lm_head.weight"].data<float>().ToArray());
        Assert.IsTrue(p.ContainsKey("model.embed_tokens.weight"), string.Join(", ", p.Keys));
        CollectionAssert.AreEqual(emb, p["model.embed_tokens.weight"].data<float>().ToArray());
        // Head 0 rows in llama2.c order r0..r3 (pairs (r0,r1),(r2,r3)) become r0, r2, r1, r3 in half-split order.
        var q = p["model.layers.0.self_attn.q_proj.weight"];
        int[] order = { 0, 2, 1, 3, 4, 6, 5, 7 };
        for (int row = 0; row < dim; row++)
            CollectionAssert.AreEqual(wq.Skip(order[row] * dim).Take(dim).ToArray(), q[row].data<float>().ToArray(), $"q row {row}");
        var k = p["model.layers.0.self_attn.k_proj.weight"];
        for (int row = 0; row < kvDim; row++)
            CollectionAssert.AreEqual(wk.Skip(order[row] * dim).Take(dim).ToArray(), k[row].data<float>().ToArray(), $"k row {row}");
    }
}

[TestClass]
public sealed class CausalLMConfigTests
{
    [TestMethod]
    public void ParsesEosListQwen2DefaultsAndLlama3RopeScaling()
    {
        var c = CausalLMConfig.FromJson("""
            {"model_type":"qwen2","vocab_size":100,"hidden_size":32,"intermediate_size":64,"num_hidden_layers":2,
             "num_attention_heads":4,"num_key_value_heads":2,"eos_token_id":[5,6],"bos_token_id":4,"pad_token_id":7,
             "rope_theta":500000.0,"rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}
            """, "test");
        Assert.IsTrue(c.AttentionBias, "qwen2 q/k/v bias by default");
        CollectionAssert.AreEqual(new[] { 5, 6 }, c.EosTokenIds.ToArray());
        Assert.AreEqual(7, c.PadTokenId);
        Assert.AreEqual(8, c.HeadDim);
        Assert.AreEqual(8.0, c.RopeScaling!.Factor);
        var again = CausalLMConfig.FromJson(c.ToJson(), "round trip");
        Assert.AreEqual(c.ToJson(), again.ToJson());
    }

    [TestMethod]
    public void UnsupportedRopeScalingTypeIsNamed()
    {
        var e = Assert.ThrowsExactly<InvalidDataException>(() => CausalLMConfig.FromJson("""
            {"model_type":"llama","vocab_size":100,"hidden_size":32,"intermediate_size":64,"num_hidden_layers":2,
             "num_attention_heads":4,"rope_scaling":{"type":"yarn","factor":4.0}}
            """, "my/config.json"));
        StringAssert.Contains(e.Message, "\"yarn\"");
        StringAssert.Contains(e.Message, "my/config.json");
    }

    [TestMethod]
    public void Gpt2UsesItsOwnFieldNames()
    {
        var c = TinyModels.Gpt2();
        var json = JsonNode.Parse(c.ToJson())!;
        Assert.AreEqual(32, json["n_embd"]!.GetValue<int>());
        Assert.AreEqual(2, json["n_layer"]!.GetValue<int>());
        Assert.AreEqual(4, json["n_head"]!.GetValue<int>());
        Assert.AreEqual(64, json["n_positions"]!.GetValue<int>());
        Assert.AreEqual(128, json["n_inner"]!.GetValue<int>());
        Assert.IsNull(json["hidden_size"]);
        var back = CausalLMConfig.FromJson(c.ToJson(), "gpt2");
        Assert.AreEqual(c.ToJson(), back.ToJson());
    }

    [TestMethod]
    public void Llama3RopeScalingChangesLongWavelengthsOnly()
    {
        // Long context positions: scaled model differs from unscaled at position 1000 but not at position 0.
        var plain = TinyModels.Llama();
        plain.RopeTheta = 500000;
        var scaled = plain.Clone();
        scaled.RopeScaling = new RopeScaling { Factor = 8, LowFreqFactor = 1, HighFreqFactor = 4, OriginalMaxPositionEmbeddings = 64 };
        plain.MaxPositionEmbeddings = scaled.MaxPositionEmbeddings = 2048;
        torch.manual_seed(2);
        using var a = CausalLM.Create(plain);
        torch.manual_seed(2);
        using var b = CausalLM.Create(scaled);
        using var noGrad = torch.no_grad();
        using var scope = NewDisposeScope();
        var one = torch.tensor(new long[] { 5 }, 1, 1);
        Assert.IsTrue(a.Forward(one).eq(b.Forward(one)).all().item<bool>(), "position 0 is unaffected");
        var ids = torch.arange(0, 300, dtype: ScalarType.Int64).remainder(100).view(1, 300);
        Assert.IsTrue(a.Forward(ids).sub(b.Forward(ids)).abs().max().item<float>() > 1e-4);
    }
}
