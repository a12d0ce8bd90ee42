using Microsoft.ML.Data;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tokenization;
using Microsoft.ML.Dpo.Trainers;

namespace Microsoft.ML.Dpo.Tests.Trainers;

/// <summary>Which loader reads which zip: <c>mlContext.Alignment().Model.Load</c> reads both its own pipelines and stock ML.NET models.</summary>
[TestClass]
public sealed class PipelineFileTests
{
    sealed class Row { public string prompt { get; set; } = ""; }

    static void SetReferencePath(string zipPath, string referencePath)
    {
        using var zip = System.IO.Compression.ZipFile.Open(zipPath, System.IO.Compression.ZipArchiveMode.Update);
        var entry = zip.Entries.Single(e => e.FullName.EndsWith("/transformer.json", StringComparison.Ordinal));
        System.Text.Json.Nodes.JsonNode settings;
        using (var reader = new StreamReader(entry.Open())) settings = System.Text.Json.Nodes.JsonNode.Parse(reader.ReadToEnd())!;
        settings["ReferencePath"] = referencePath;
        string name = entry.FullName;
        entry.Delete();
        using var writer = new StreamWriter(zip.CreateEntry(name).Open());
        writer.Write(settings.ToJsonString());
    }

    static IEnumerable<Exception> Inner(Exception e)
    {
        for (Exception? x = e; x is not null; x = x.InnerException) yield return x;
    }

    [TestMethod]
    public void AlignmentLoad_ReadsStockMlNetZipsToo_AndIsAlignmentPipelineTellsThemApart()
    {
        using var dir = new TempDirectory();
        var ml = new MLContext(seed: 0);
        var data = ml.Data.LoadFromEnumerable(new[] { new Row { prompt = "Tell me about owls." } });

        // A stock ML.NET pipeline saved by ML.NET itself.
        var stock = ml.Transforms.Text.NormalizeText("normalized", "prompt").Fit(data);
        string stockPath = dir.Combine("stock.zip");
        ml.Model.Save(stock, data.Schema, stockPath);
        var loadedStock = ml.Alignment().Model.Load(stockPath, out var stockSchema);
        Assert.AreEqual("prompt", stockSchema[0].Name);
        Assert.AreEqual("tell me about owls.", loadedStock.Transform(data).GetColumn<string>("normalized").Single());
        Assert.IsFalse(AlignmentModelOperations.IsAlignmentPipeline(stockPath));

        // Ours: mlContext.Model.Save refuses and says where to go; Alignment().Model.Save writes a zip IsAlignmentPipeline recognises.
        using var model = ModelPresets.CreateModel("llama", "tiny", TextTokenizer.CreateByteLevel(dir.Combine("tok")), seed: 1);
        using var transformer = new LanguageModelTransformer(model.Clone(), reference: null, beta: 0, "prompt");
        var e = Assert.ThrowsExactly<NotSupportedException>(() => ml.Model.Save(transformer, data.Schema, dir.Combine("wrong.zip")));
        StringAssert.Contains(e.Message, "mlContext.Alignment().Model.Save");
        StringAssert.Contains(e.Message, "leaves an incomplete zip there that nothing loads: delete it");
        // ML.NET created the file before asking the transformer (no hook exists): Alignment().Model.Load says what that file is.
        var partial = Assert.ThrowsExactly<InvalidDataException>(() => ml.Alignment().Model.Load(dir.Combine("wrong.zip"), out _));
        StringAssert.Contains(partial.Message, "the incomplete file a failed mlContext.Model.Save leaves");
        string ours = dir.Combine("ours.zip");
        ml.Alignment().Model.Save(transformer, data.Schema, ours);
        Assert.IsTrue(AlignmentModelOperations.IsAlignmentPipeline(ours));

        // mlContext.Model.Load on our zip: the failure says which method loads it (not "Could not load legacy format model") ...
        var stockLoad = Assert.Throws<Exception>(() => new MLContext().Model.Load(ours, out _));
        string chain = string.Join(" | ", Inner(stockLoad).Select(x => x.Message));
        StringAssert.Contains(chain, "load it with mlContext.Alignment().Model.Load(path, out schema)", chain);
        Assert.IsFalse(chain.Contains("legacy format", StringComparison.Ordinal), chain);
        // ... and Alignment().Model.Load still reads it, with the same outputs.
        using (var loaded = (LanguageModelTransformer)ml.Alignment().Model.Load(ours, out var oursSchema))
        {
            Assert.AreEqual("prompt", oursSchema[0].Name);
            CollectionAssert.AreEqual(transformer.Transform(data).GetColumn<string>("response").ToArray(), loaded.Transform(data).GetColumn<string>("response").ToArray());
        }
        // A zip that names its reference outside itself (crafted, or from an older version) is refused, never followed.
        foreach (string outside in new[] { "/etc", "../elsewhere/ref" })
        {
            string crafted = dir.Combine("crafted.zip");
            File.Copy(ours, crafted, overwrite: true);
            SetReferencePath(crafted, outside);
            var refused = Assert.ThrowsExactly<InvalidDataException>(() => ml.Alignment().Model.Load(crafted, out _));
            StringAssert.Contains(refused.Message, $"names its reference model at '{outside}', outside the zip's folder");
        }
        File.Copy(ours, dir.Combine("crafted.zip"), overwrite: true);
        SetReferencePath(dir.Combine("crafted.zip"), "models/ref");
        using (var inside = (LanguageModelTransformer)ml.Alignment().Model.Load(dir.Combine("crafted.zip"), out _))
            Assert.AreEqual(dir.Combine("models", "ref"), inside.ReferencePath, "a path inside the zip's folder resolves against the zip, not the current folder");
        File.WriteAllText(dir.Combine("text.zip"), "not a zip");
        Assert.IsFalse(AlignmentModelOperations.IsAlignmentPipeline(dir.Combine("text.zip")));
    }
}
