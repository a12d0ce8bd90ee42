using Microsoft.ML.Data;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Generation;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tokenization;
using Microsoft.ML.Dpo.Trainers;

namespace Microsoft.ML.Dpo.Tests.Trainers;

/// <summary>
/// Issue 14, batch prediction: <c>Transform</c> generates a batch of rows at a time (left padding, one KV cache) as its cursor
/// reaches them, with the same text as one row at a time.
/// </summary>
[TestClass]
public sealed class BatchedTransformTests
{
    sealed class Row
    {
        public string prompt { get; set; } = "";
        public float id { get; set; }
    }

    [TestMethod]
    public void BatchedResponses_EqualOneAtATime_AndGenerate()
    {
        using var dir = new TempDirectory();
        var ml = new MLContext(seed: 0);
        using var model = ModelPresets.CreateModel("llama", "tiny", TextTokenizer.CreateByteLevel(dir.Combine("tok")), seed: 3);
        Assert.AreEqual(256, model.Network.Config.MaxPositionEmbeddings);
        // Prompts of different lengths (left padding), an empty one, and two too long to share a batch's budget of 12 new tokens.
        string[] prompts =
        [
            "Tell me about owls.", "Hi", "Why is the sky blue? Explain it to a child, please.", "", "Owls", new string('a', 250), "Once upon a time",
            "Q: 2 + 2?\nA:", new string('b', 244), "Tell me about owls.", "x",
        ];
        var data = ml.Data.LoadFromEnumerable(prompts.Select((p, i) => new Row { prompt = p, id = i }));
        using var transformer = new LanguageModelTransformer(model.Clone(), reference: null, beta: 0, "prompt");

        string[] Responses(int batchSize) => transformer.WithGenerationOptions(new GenerationOptions { MaxNewTokens = 12, StopAtEos = false, TransformBatchSize = batchSize })
            .Transform(data).GetColumn<string>("response").ToArray();
        string[] one = Responses(1);
        CollectionAssert.AreEqual(one, Responses(4), "batches of 4, 4, 3");
        CollectionAssert.AreEqual(one, Responses(64), "one batch");
        var generate = new GenerationOptions { MaxNewTokens = 12, StopAtEos = false };
        CollectionAssert.AreEqual(prompts.Select(p => transformer.Generate(p, generate)).ToArray(), one);
        Assert.IsTrue(one.Count(r => r.Length > 0) >= 9, "the random model generates text for the prompts that fit");

        // With EOS on (rows finish at different steps) and the default batch size.
        string[] eosOne = transformer.WithGenerationOptions(new GenerationOptions { MaxNewTokens = 12, TransformBatchSize = 1 }).Transform(data).GetColumn<string>("response").ToArray();
        CollectionAssert.AreEqual(eosOne, transformer.WithGenerationOptions(new GenerationOptions { MaxNewTokens = 12 }).Transform(data).GetColumn<string>("response").ToArray());

        // Pass-through columns are untouched.
        CollectionAssert.AreEqual(prompts.Select((_, i) => (float)i).ToArray(), transformer.Transform(data).GetColumn<float>("id").ToArray());
    }

    // ---- the cursor's laziness, on a counting column ----

    sealed class Counting
    {
        public readonly List<string> Single = [];
        public readonly List<string[]> Batches = [];

        public ComputedColumn Column(int batchSize, Func<string, bool>? alone = null) => new("out", TextDataViewType.Instance, ["prompt"],
            v => { Single.Add(v[0]); return "one:" + v[0]; },
            rows =>
            {
                Batches.Add(rows.Select(r => r[0]).ToArray());
                return rows.Select(r => alone?.Invoke(r[0]) == true ? null : (object)("batch:" + r[0])).ToArray();
            },
            batchSize);
    }

    static IDataView Input(MLContext ml, int rows) => ml.Data.LoadFromEnumerable(Enumerable.Range(0, rows).Select(i => new Row { prompt = $"p{i}", id = i }));

    [TestMethod]
    public void Cursor_ComputesABatchWhenItReachesARow_NotBefore()
    {
        var ml = new MLContext(seed: 0);
        var input = Input(ml, 10);
        var counting = new Counting();
        var mapper = new ComputedColumnsMapper(input.Schema, [counting.Column(batchSize: 4)]);
        var view = new ComputedColumnsDataView(input, mapper);
        var output = view.Schema["out"];
        using var cursor = view.GetRowCursor([output, view.Schema["id"]]);
        var getter = cursor.GetGetter<ReadOnlyMemory<char>>(output);
        var id = cursor.GetGetter<float>(view.Schema["id"]);
        Assert.IsTrue(cursor.MoveNext());
        Assert.IsEmpty(counting.Batches, "moving the cursor computes nothing");
        var values = new List<string>();
        ReadOnlyMemory<char> text = default;
        float f = 0;
        do
        {
            getter(ref text);
            id(ref f);
            values.Add($"{f}:{text}");
            Assert.HasCount((int)f / 4 + 1, counting.Batches, "a batch is computed when the cursor reaches its first row");
        }
        while (cursor.MoveNext());
        CollectionAssert.AreEqual(Enumerable.Range(0, 10).Select(i => $"{i}:batch:p{i}").ToArray(), values);
        CollectionAssert.AreEqual(new[] { "p0,p1,p2,p3", "p4,p5,p6,p7", "p8,p9" }, counting.Batches.Select(b => string.Join(",", b)).ToArray());
        Assert.IsEmpty(counting.Single);
    }

    [TestMethod]
    public void Cursor_SkippedRowsAreNotComputed_AloneRowsAndShuffledCursorsGoOneAtATime()
    {
        var ml = new MLContext(seed: 0);
        var input = Input(ml, 10);
        var counting = new Counting();
        var view = new ComputedColumnsDataView(input, new ComputedColumnsMapper(input.Schema, [counting.Column(batchSize: 3, alone: p => p == "p7")]));
        var output = view.Schema["out"];
        var seen = new List<string>();
        using (var cursor = view.GetRowCursor([output]))
        {
            var getter = cursor.GetGetter<ReadOnlyMemory<char>>(output);
            ReadOnlyMemory<char> text = default;
            while (cursor.MoveNext())
                if (cursor.Position is 5 or 6 or 7 or 9) { getter(ref text); seen.Add(text.ToString()); }
        }
        CollectionAssert.AreEqual(new[] { "batch:p5", "batch:p6", "one:p7", "batch:p9" }, seen);
        CollectionAssert.AreEqual(new[] { "p5,p6,p7", "p9" }, counting.Batches.Select(b => string.Join(",", b)).ToArray(), "rows 0-4 and 8 were never asked for");
        CollectionAssert.AreEqual(new[] { "p7" }, counting.Single, "a row the batch leaves out is computed alone, when reached");

        // A shuffled cursor cannot be replayed by a second cursor: one row at a time, still the right values.
        var shuffled = new Counting();
        var shuffledView = new ComputedColumnsDataView(ml.Data.ShuffleRows(input), new ComputedColumnsMapper(input.Schema, [shuffled.Column(batchSize: 3)]));
        var values = new List<string>();
        using (var cursor = shuffledView.GetRowCursor([shuffledView.Schema["out"], shuffledView.Schema["prompt"]], new Random(1)))
        {
            var getter = cursor.GetGetter<ReadOnlyMemory<char>>(shuffledView.Schema["out"]);
            var prompt = cursor.GetGetter<ReadOnlyMemory<char>>(shuffledView.Schema["prompt"]);
            ReadOnlyMemory<char> text = default, p = default;
            while (cursor.MoveNext()) { getter(ref text); prompt(ref p); Assert.AreEqual("one:" + p, text.ToString()); values.Add(text.ToString()); }
        }
        Assert.HasCount(10, values);
        Assert.IsEmpty(shuffled.Batches);
    }
}
