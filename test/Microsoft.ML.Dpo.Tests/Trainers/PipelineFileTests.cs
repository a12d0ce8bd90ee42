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
        string ours = dir.Combine("ours.zip");
        ml.Alignment().Model.Save(transformer, data.Schema, ours);
        Assert.IsTrue(AlignmentModelOperations.IsAlignmentPipeline(ours));
        File.WriteAllText(dir.Combine("text.zip"), "not a zip");
        Assert.IsFalse(AlignmentModelOperations.IsAlignmentPipeline(dir.Combine("text.zip")));
    }
}
