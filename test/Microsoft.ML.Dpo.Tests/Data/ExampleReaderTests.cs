using Microsoft.ML.Dpo.Data;

namespace Microsoft.ML.Dpo.Tests.Data;

[TestClass]
public sealed class ExampleReaderTests
{
    sealed class Row { public string? Prompt { get; set; } public string? Chosen { get; set; } public string? Rejected { get; set; } }
    sealed class NumericRow { public string Prompt { get; set; } = "p"; public float Chosen { get; set; } public string Rejected { get; set; } = "r"; }

    static IDataView Load(params Row[] rows) => new MLContext().Data.LoadFromEnumerable(rows);

    [TestMethod]
    public void ReadsPairsAndSkipsIdenticalOnes()
    {
        var report = new DataPreparationReport();
        var pairs = ExampleReader.ReadPreferencePairs(Load(
            new Row { Prompt = "q1", Chosen = "good", Rejected = "bad" },
            new Row { Prompt = "q2", Chosen = "same", Rejected = "same" },
            new Row { Prompt = "q3", Chosen = "yes", Rejected = "no" }), "Prompt", "Chosen", "Rejected", false, report);
        CollectionAssert.AreEqual(new[] { "q1", "q3" }, pairs.Select(p => p.Prompt).ToArray());
        Assert.AreEqual(3L, pairs[1].Row, "1-based row of the data view");
        Assert.AreEqual(3L, report.RowsRead);
        Assert.AreEqual(1L, report.IdenticalPairsSkipped);
    }

    [TestMethod]
    public void MissingColumnIsNamedWithTheColumnsPresent()
    {
        var e = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() =>
            ExampleReader.ReadPreferencePairs(Load(new Row { Prompt = "q", Chosen = "a", Rejected = "b" }), "Prompt", "Preferred", "Rejected", false, new()));
        StringAssert.Contains(e.Message, "'Preferred'");
        StringAssert.Contains(e.Message, "'Chosen'");
        StringAssert.Contains(e.Message, "'Prompt'");
    }

    [TestMethod]
    public void WrongColumnTypeIsNamed()
    {
        var data = new MLContext().Data.LoadFromEnumerable(new[] { new NumericRow() });
        var e = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => ExampleReader.ReadPreferencePairs(data, "Prompt", "Chosen", "Rejected", false, new()));
        StringAssert.Contains(e.Message, "'Chosen'");
        StringAssert.Contains(e.Message, "Single");
    }

    [TestMethod]
    public void EmptyValueFailsWithOneBasedRowUnlessSkipped()
    {
        var rows = new[] { new Row { Prompt = "q", Chosen = "a", Rejected = "b" }, new Row { Prompt = "q", Chosen = null, Rejected = "b" } };
        var e = Assert.ThrowsExactly<InvalidDataException>(() => ExampleReader.ReadPreferencePairs(Load(rows), "Prompt", "Chosen", "Rejected", false, new()));
        StringAssert.Contains(e.Message, "Row 2 of the input data (1-based)");
        StringAssert.Contains(e.Message, "'Chosen'");

        var report = new DataPreparationReport();
        var pairs = ExampleReader.ReadPreferencePairs(Load(rows), "Prompt", "Chosen", "Rejected", true, report);
        Assert.AreEqual(1, pairs.Count);
        Assert.AreEqual(1L, report.InvalidRowsSkipped);
    }
}
