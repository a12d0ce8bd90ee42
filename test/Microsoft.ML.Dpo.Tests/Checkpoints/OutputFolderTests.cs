using System.Text.Json;
using Microsoft.ML.Dpo.Checkpoints;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tokenization;
using Microsoft.ML.Dpo.Trainers;

namespace Microsoft.ML.Dpo.Tests.Checkpoints;

/// <summary>The one rule for replacing output folders (<see cref="OutputFolder"/>), as the C# save methods apply it.</summary>
[TestClass]
public sealed class OutputFolderTests
{
    static LanguageModel Tiny(TempDirectory dir) => ModelPresets.CreateModel("llama", "tiny", TextTokenizer.CreateByteLevel(dir.Combine("tok")), seed: 1);

    static void InDirectory(string directory, Action action)
    {
        string before = Environment.CurrentDirectory;
        Environment.CurrentDirectory = directory;
        try { action(); }
        finally { Environment.CurrentDirectory = before; }
    }

    [TestMethod]
    public void Save_IntoAFolderOfUserFiles_IsRefusedUnlessAlways()
    {
        using var dir = new TempDirectory();
        using var model = Tiny(dir);
        string target = dir.Combine("mine");
        Directory.CreateDirectory(Path.Combine(target, "sub"));
        File.WriteAllText(Path.Combine(target, "notes.txt"), "precious");

        var e = Assert.ThrowsExactly<OutputFolderException>(() => model.Save(target));
        StringAssert.Contains(e.Message, "notes.txt");
        StringAssert.Contains(e.Message, "OutputOverwrite.Always");
        Assert.AreEqual("precious", File.ReadAllText(Path.Combine(target, "notes.txt")), "nothing was touched");
        Assert.AreEqual(0, Directory.GetDirectories(dir.Path, ".mine.*").Length, "no temporary folder was left");

        model.Save(target, OutputOverwrite.Always);
        Assert.IsFalse(File.Exists(Path.Combine(target, "notes.txt")));
        Assert.IsTrue(File.Exists(Path.Combine(target, "model.safetensors")));
    }

    [TestMethod]
    public void Save_WritesAMarker_AndReplacesItsOwnOutput_ButNotOnceTheUserAddedAFile()
    {
        using var dir = new TempDirectory();
        using var model = Tiny(dir);
        string target = dir.Combine("out");
        Directory.CreateDirectory(target);
        model.Save(target);                                  // an empty folder is replaced
        var marker = JsonDocument.Parse(File.ReadAllText(Path.Combine(target, OutputFolder.MarkerFileName))).RootElement;
        Assert.AreEqual("Microsoft.ML.Dpo", marker.GetProperty("tool").GetString());
        Assert.IsTrue(marker.TryGetProperty("version", out _) && marker.TryGetProperty("written", out _));
        var entries = marker.GetProperty("entries").EnumerateArray().Select(e => e.GetString()).ToList();
        CollectionAssert.Contains(entries, "model.safetensors");
        CollectionAssert.Contains(entries, "config.json");

        model.Save(target);                                  // our own output: replaced without asking
        File.WriteAllText(Path.Combine(target, "my-eval.txt"), "mine");
        var e = Assert.ThrowsExactly<OutputFolderException>(() => model.Save(target));
        StringAssert.Contains(e.Message, "my-eval.txt");
        Assert.IsTrue(File.Exists(Path.Combine(target, "my-eval.txt")));
    }

    [TestMethod]
    public void Save_OverTheModelsOwnSource_OrTheCurrentDirectory_IsRefusedEvenWithAlways()
    {
        using var dir = new TempDirectory();
        using (var model = Tiny(dir)) model.Save(dir.Combine("base"));
        using var loaded = LanguageModel.Load(dir.Combine("base"));

        var e = Assert.ThrowsExactly<OutputFolderException>(() => loaded.Save(dir.Combine("base"), OutputOverwrite.Always));
        StringAssert.Contains(e.Message, "never replaced");
        Assert.ThrowsExactly<OutputFolderException>(() => loaded.Save(dir.Path, OutputOverwrite.Always), "a folder containing the source");
        Assert.IsTrue(File.Exists(dir.Combine("base", "model.safetensors")));

        Directory.CreateDirectory(dir.Combine("work", "here"));
        InDirectory(dir.Combine("work", "here"), () =>
        {
            var dot = Assert.ThrowsExactly<OutputFolderException>(() => loaded.Save(".", OutputOverwrite.Always));
            StringAssert.Contains(dot.Message, "current directory");
            Assert.ThrowsExactly<OutputFolderException>(() => loaded.Save("..", OutputOverwrite.Always));
        });
        Assert.IsTrue(Directory.Exists(dir.Combine("work", "here")));
    }

    [TestMethod]
    public void Save_ThroughASymbolicLinkToTheSource_IsRefused()
    {
        using var dir = new TempDirectory();
        using (var model = Tiny(dir)) model.Save(dir.Combine("base"));
        using var loaded = LanguageModel.Load(dir.Combine("base"));
        Directory.CreateSymbolicLink(dir.Combine("alias"), dir.Combine("base"));

        Assert.ThrowsExactly<OutputFolderException>(() => loaded.Save(dir.Combine("alias"), OutputOverwrite.Always));
        Assert.IsTrue(File.Exists(dir.Combine("base", "model.safetensors")));
    }

    [TestMethod]
    public void EnsureReplaceable_ProtectsInputsAndTheirAncestors_AndRefusesFiles()
    {
        using var dir = new TempDirectory();
        string data = dir.Combine("data", "pairs.jsonl");
        Directory.CreateDirectory(dir.Combine("data"));
        File.WriteAllText(data, "{}");

        Assert.ThrowsExactly<OutputFolderException>(() => OutputFolder.EnsureReplaceable(dir.Combine("data"), OutputOverwrite.Always, data));
        Assert.ThrowsExactly<OutputFolderException>(() => OutputFolder.EnsureReplaceable(data, OutputOverwrite.Always));
        OutputFolder.EnsureReplaceable(dir.Combine("data-out"), OutputOverwrite.OwnOutputOnly, data);   // a sibling whose name extends the input's is fine
        OutputFolder.EnsureReplaceable(dir.Combine("data", "out"), OutputOverwrite.OwnOutputOnly, data); // below an input's folder is fine
    }

    [TestMethod]
    public void OwnOutput_WithANestedOwnFolder_IsStillOwn()
    {
        using var dir = new TempDirectory();
        using var model = Tiny(dir);
        string target = dir.Combine("out");
        model.Save(target);
        model.Save(Path.Combine(target, "adapter"));         // as the CLI writes an adapter into the exported model's folder
        Assert.IsTrue(OutputFolder.IsOwn(target));
        File.WriteAllText(Path.Combine(target, "adapter", "x.txt"), "user");
        Assert.IsFalse(OutputFolder.IsOwn(target), "a user file inside the nested folder makes it foreign");
    }

    [TestMethod]
    public void PipelineWithARelativeReferencePath_LoadsFromAnotherFolder()
    {
        using var dir = new TempDirectory();
        using (var reference = Tiny(dir)) reference.Save(dir.Combine("models", "tiny"));
        var policy = ModelPresets.CreateModel("llama", "tiny", TextTokenizer.CreateByteLevel(dir.Combine("tok")), seed: 2);
        var ml = new MLContext(seed: 0);
        var data = ml.Data.LoadFromEnumerable(new[] { new { prompt = "Tell me about owls.", response = "Gladly!" } });
        float expected = 0;
        InDirectory(dir.Path, () =>
        {
            // As a DPO run whose --model was the relative path models/tiny keeps it.
            using var transformer = new LanguageModelTransformer(policy, reference: null, beta: 0.5, "prompt", referencePath: "models/tiny");
            var scorer = transformer.WithOutputColumns(new LanguageModelOutputColumn(LanguageModelOutputKind.ImplicitReward, "reward", "prompt", "response"));
            expected = transformer.ImplicitReward("Tell me about owls.", "Gladly!");
            Assert.AreNotEqual(0f, expected);
            ml.Alignment().Model.Save(scorer, data.Schema, "pipeline.zip");
        });
        Directory.CreateDirectory(dir.Combine("elsewhere"));
        File.Move(dir.Combine("pipeline.zip"), dir.Combine("elsewhere", "pipeline.zip"));
        InDirectory(dir.Combine("elsewhere"), () =>
        {
            var loaded = (LanguageModelTransformer)ml.Alignment().Model.Load("pipeline.zip", out _);
            using (loaded)
            {
                Assert.IsTrue(loaded.HasReference);
                Assert.AreEqual(expected, loaded.ImplicitReward("Tell me about owls.", "Gladly!"), 1e-6f);   // before: "No model at 'models/tiny'"
                Assert.IsNull(loaded.ReferencePath, "the zip names no file outside itself: the reference travels inside it");
            }
        });
    }
}
