using System.Text.Json.Nodes;
using Microsoft.ML.Dpo.Checkpoints;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tests.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Checkpoints;

/// <summary>
/// The streaming loader (each tensor read from the file straight into its parameter) gives exactly the weights of the
/// whole-dictionary path it replaced: every stored dtype into every parameter dtype, sharded or not, across buffer chunks.
/// </summary>
[TestClass]
public sealed class StreamingLoadTests
{
    /// <summary>The weights as the loader used to make them: every tensor read into a dictionary, then copied into the parameters.</summary>
    static CausalLM LoadWhole(string directory, ScalarType dtype)
    {
        var config = CausalLMConfig.Load(Path.Combine(directory, "config.json"));
        var tensors = Safetensors.LoadDirectory(directory);
        try
        {
            return HuggingFaceCheckpoint.Build(config, tensors, dtype, null, directory);
        }
        finally
        {
            foreach (var t in tensors.Values) t.Dispose();
        }
    }

    static void AssertSameBits(CausalLM expected, CausalLM actual)
    {
        var a = expected.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        Assert.AreEqual(a.Count, actual.named_parameters().Count());
        foreach (var (n, p) in actual.named_parameters())
        {
            Assert.AreEqual(a[n].dtype, p.dtype, n);
            CollectionAssert.AreEqual(a[n].bytes.ToArray(), p.bytes.ToArray(), n);
        }
    }

    [TestMethod]
    [DataRow(ScalarType.Float32, ScalarType.Float32)]
    [DataRow(ScalarType.BFloat16, ScalarType.Float32)]
    [DataRow(ScalarType.Float16, ScalarType.Float32)]
    [DataRow(ScalarType.Float32, ScalarType.BFloat16)]
    [DataRow(ScalarType.Float32, ScalarType.Float16)]
    [DataRow(ScalarType.BFloat16, ScalarType.BFloat16)]
    [DataRow(ScalarType.Float16, ScalarType.BFloat16)]
    public void StreamedLoadEqualsTheWholeDictionaryLoad(ScalarType stored, ScalarType loaded)
    {
        using var dir = new TempDirectory();
        torch.manual_seed(31);
        using (var model = CausalLM.Create(TinyModels.Llama(tied: false), stored))
            HuggingFaceCheckpoint.Save(model, dir.Path);
        using var whole = LoadWhole(dir.Path, loaded);
        using var streamed = HuggingFaceCheckpoint.Load(dir.Path, loaded);
        Assert.AreEqual(loaded, streamed.DType);
        AssertSameBits(whole, streamed);
    }

    [TestMethod]
    public void ShardedStreamedLoadEqualsTheWholeDictionaryLoad()
    {
        using var dir = new TempDirectory();
        torch.manual_seed(32);
        using var model = CausalLM.Create(TinyModels.Llama(), ScalarType.BFloat16);
        var all = model.named_parameters().ToList();
        var map = new JsonObject();
        for (int s = 0; s < 3; s++)
        {
            string file = $"model-0000{s + 1}-of-00003.safetensors";
            var part = all.Where((_, i) => i % 3 == s).ToList();
            Safetensors.Save(Path.Combine(dir.Path, file), part.Select(p => new KeyValuePair<string, Tensor>(p.name, p.parameter)));
            foreach (var p in part) map[p.name] = file;
        }
        File.WriteAllText(dir.Combine(Safetensors.IndexFileName), new JsonObject { ["weight_map"] = map }.ToJsonString());
        File.WriteAllText(dir.Combine("config.json"), model.Config.ToJson("bfloat16"));
        using var whole = LoadWhole(dir.Path, ScalarType.Float32);
        using var streamed = HuggingFaceCheckpoint.Load(dir.Path);
        AssertSameBits(whole, streamed);
    }

    [TestMethod]
    [DataRow(ScalarType.Float32, ScalarType.Float32)]
    [DataRow(ScalarType.BFloat16, ScalarType.Float32)]
    [DataRow(ScalarType.Float32, ScalarType.Float16)]
    public void ReadingInChunksCrossesEveryBoundaryExactly(ScalarType stored, ScalarType destinationType)
    {
        using var dir = new TempDirectory();
        string path = dir.Combine("t.safetensors");
        torch.manual_seed(33);
        using var a = torch.randn(13, 11).to(stored);      // 143 elements: chunks of 7 leave a remainder of 3
        using var b = torch.randn(5).to(stored);
        Safetensors.Save(path, [new("a", a), new("b", b)]);
        var entries = Safetensors.ReadHeader(path).ToDictionary(e => e.Name);
        using var da = torch.full(13, 11, float.NaN, destinationType);
        using var db = torch.full(5, float.NaN, destinationType);
        Safetensors.ReadInto(path, [(entries["b"], db), (entries["a"], da)], chunkElements: 7);
        Assert.IsTrue(a.to(destinationType).eq(da).all().item<bool>());
        Assert.IsTrue(b.to(destinationType).eq(db).all().item<bool>());
    }

    [TestMethod]
    public void AFileTruncatedAfterItsHeaderWasReadNamesTheTensor()
    {
        using var dir = new TempDirectory();
        string path = dir.Combine("t.safetensors");
        using var a = torch.ones(64);
        Safetensors.Save(path, [new("a", a)]);
        var entry = Safetensors.ReadHeader(path).Single();
        using (var f = new FileStream(path, FileMode.Open)) f.SetLength(f.Length - 16);
        using var destination = torch.zeros(64);
        var e = Assert.ThrowsExactly<InvalidDataException>(() => Safetensors.ReadInto(path, [(entry, destination)]));
        StringAssert.Contains(e.Message, "'a'");
        StringAssert.Contains(e.Message, path);
    }
}
