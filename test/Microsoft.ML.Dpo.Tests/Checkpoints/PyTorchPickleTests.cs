using Microsoft.ML.Dpo.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Checkpoints;

/// <summary>
/// PyTorch pickle checkpoints (test data written by real PyTorch with <c>TestData/pytorch-pickle/make_pickles.py</c>): a
/// single <c>pytorch_model.bin</c> and a sharded one load through TorchSharp.PyBridge with exactly the tensors of the same
/// model saved as safetensors; the pre-1.6 format is refused with a message that says how to convert; saving writes safetensors.
/// </summary>
[TestClass]
public sealed class PyTorchPickleTests
{
    static string Data(string name) => Path.Combine(SharedFiles.RepositoryRoot, "test", "Microsoft.ML.Dpo.Tests", "TestData", "pytorch-pickle", name);

    [TestMethod]
    [DataRow("single")]
    [DataRow("sharded")]
    public void PickleWeightsLoadExactlyLikeTheirSafetensorsTwin(string folder)
    {
        using var reference = LanguageModel.Load(Data("reference"));
        using var pickled = LanguageModel.Load(Data(folder));
        var expected = reference.Network.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        Assert.AreEqual(expected.Count, pickled.Network.named_parameters().Count());
        foreach (var (name, p) in pickled.Network.named_parameters())
            Assert.IsTrue(expected[name].eq(p).all().item<bool>(), name);

        // Saving writes safetensors only, and the copy loads back the same.
        using var dir = new TempDirectory();
        pickled.Save(dir.Path);
        Assert.IsTrue(File.Exists(Path.Combine(dir.Path, Safetensors.SingleFileName)));
        Assert.IsFalse(Directory.GetFiles(dir.Path, "*.bin").Any(), "no pickle is written");
        using var again = LanguageModel.Load(dir.Path);
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var ids = torch.tensor(new long[] { 1, 5, 9, 33 }, 1, 4);
        Assert.IsTrue(pickled.Network.Forward(ids).eq(again.Network.Forward(ids)).all().item<bool>());
    }

    [TestMethod]
    public void TheLegacyPickleFormatIsRefusedWithHowToConvert()
    {
        var e = Assert.ThrowsExactly<InvalidDataException>(() => LanguageModel.Load(Data("legacy")));
        StringAssert.Contains(e.Message, "pytorch_model.bin");
        StringAssert.Contains(e.Message, "safetensors");
        StringAssert.Contains(e.Message, "save_pretrained");
    }

    [TestMethod]
    public void AMissingShardIsNamed()
    {
        using var dir = new TempDirectory();
        foreach (string f in Directory.GetFiles(Data("sharded")))
            if (!f.EndsWith("00002-of-00002.bin", StringComparison.Ordinal)) File.Copy(f, Path.Combine(dir.Path, Path.GetFileName(f)));
        var e = Assert.ThrowsExactly<FileNotFoundException>(() => LanguageModel.Load(dir.Path));
        StringAssert.Contains(e.Message, "pytorch_model-00002-of-00002.bin");
    }
}
