using Microsoft.ML.Data;
using Microsoft.ML.Dpo.Data;

namespace Microsoft.ML.Dpo.Tests.Data;

[TestClass]
public sealed class ComputedColumnsTests
{
    sealed class In { public string Text { get; set; } = ""; public float Other { get; set; } }

    static readonly ComputedColumn[] Columns =
    [
        new("Upper", TextDataViewType.Instance, ["Text"], v => v[0].ToUpperInvariant()),
        new("Length", NumberDataViewType.Single, ["Text"], v => (float)v[0].Length),
    ];

    [TestMethod]
    public void TransformAddsColumnsLazilyAndKeepsInputColumns()
    {
        var ml = new MLContext();
        var data = ml.Data.LoadFromEnumerable(new[] { new In { Text = "ab", Other = 1 }, new In { Text = "xyz", Other = 2 } });
        var mapper = new ComputedColumnsMapper(data.Schema, Columns);
        var output = new ComputedColumnsDataView(data, mapper);
        CollectionAssert.AreEqual(new[] { "AB", "XYZ" }, output.GetColumn<string>("Upper").ToArray());
        CollectionAssert.AreEqual(new[] { 2f, 3f }, output.GetColumn<float>("Length").ToArray());
        CollectionAssert.AreEqual(new[] { 1f, 2f }, output.GetColumn<float>("Other").ToArray());
    }

    [TestMethod]
    public void ComputesOnlyWhenTheColumnIsRead()
    {
        var ml = new MLContext();
        var data = ml.Data.LoadFromEnumerable(new[] { new In { Text = "ab" } });
        int calls = 0;
        var mapper = new ComputedColumnsMapper(data.Schema, [new("Slow", TextDataViewType.Instance, ["Text"], v => { calls++; return v[0]; })]);
        var output = new ComputedColumnsDataView(data, mapper);
        _ = output.GetColumn<float>("Other").ToArray();
        Assert.AreEqual(0, calls);
        _ = output.GetColumn<string>("Slow").ToArray();
        Assert.AreEqual(1, calls);
    }

    [TestMethod]
    public void MissingInputColumnIsNamed()
    {
        var data = new MLContext().Data.LoadFromEnumerable(new[] { new In() });
        var e = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new ComputedColumnsMapper(data.Schema, [new("X", TextDataViewType.Instance, ["Prompt"], v => v[0])]));
        StringAssert.Contains(e.Message, "'Prompt'");
    }

    [TestMethod]
    public void SchemaShapeGetsTheNewColumns()
    {
        // SchemaShape.Create is internal to ML.NET: build the input shape with the same helper.
        var shape = SchemaShapes.WithColumns(new SchemaShape([]), [("Text", TextDataViewType.Instance), ("Other", NumberDataViewType.Single)]);
        var output = SchemaShapes.WithColumns(shape, [("Response", TextDataViewType.Instance), ("Reward", NumberDataViewType.Single)]);
        var names = output.Select(c => c.Name).ToList();
        CollectionAssert.IsSubsetOf(new[] { "Text", "Other", "Response", "Reward" }, names);
        Assert.AreEqual(NumberDataViewType.Single, output.Single(c => c.Name == "Reward").ItemType);
        Assert.IsInstanceOfType<TextDataViewType>(output.Single(c => c.Name == "Response").ItemType);
    }
}
