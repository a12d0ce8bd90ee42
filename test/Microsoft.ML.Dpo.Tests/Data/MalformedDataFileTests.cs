using Microsoft.ML.Dpo.Data;
using static Microsoft.ML.Dpo.Tests.Data.DataFileTestFiles;

namespace Microsoft.ML.Dpo.Tests.Data;

[TestClass]
public sealed class MalformedDataFileTests
{
    static readonly object?[] Lines =
    [
        new { prompt = "p1", chosen = "a", rejected = "b" },   // line 1
        "",                                                     // line 2: blank, not a record
        "{\"prompt\": \"p\", \"chosen\": ",                     // line 3: invalid JSON
        new { prompt = "p4", chosen = "a" },                    // line 4: 'rejected' missing
        new { prompt = "p5", chosen = 5, rejected = "b" },      // line 5: 'chosen' not a string
        new { prompt = "p6", chosen = "a", rejected = "b" },    // line 6
        "{\"prompt\": \"p7\", \"chosen\": null, \"rejected\": \"b\"}", // line 7: 'chosen' null
    ];

    static InvalidDataException Fails(string path, PreferenceDataLoadOptions? options = null) =>
        Assert.ThrowsExactly<InvalidDataException>(() => PreferenceDataFile.ReadPreferencePairs(path, options));

    [TestMethod]
    public void ErrorsNameFileLineAndField()
    {
        using var dir = new TempDirectory();
        string path = WriteJsonLines(dir.Combine("bad.jsonl"), Lines[..3]);
        var e = Fails(path);
        StringAssert.Contains(e.Message, path);
        StringAssert.Contains(e.Message, "line 3");
        StringAssert.Contains(e.Message, "invalid JSON");

        e = Fails(WriteJsonLines(dir.Combine("missing.jsonl"), Lines[0], Lines[3]));
        StringAssert.Contains(e.Message, "missing.jsonl, line 2");
        StringAssert.Contains(e.Message, "field 'rejected': missing");
        StringAssert.Contains(e.Message, "layout Standard, detected from line 1");

        e = Fails(WriteJsonLines(dir.Combine("type.jsonl"), Lines[4]));
        StringAssert.Contains(e.Message, "line 1");
        StringAssert.Contains(e.Message, "field 'chosen': expected a string, found a number");
    }

    [TestMethod]
    public void SkipOptionCountsMalformedLinesByReason()
    {
        using var dir = new TempDirectory();
        var report = new DataLoadReport();
        var pairs = PreferenceDataFile.ReadPreferencePairs(WriteJsonLines(dir.Combine("bad.jsonl"), Lines), new() { SkipMalformedRows = true }, report);
        CollectionAssert.AreEqual(new[] { "p1", "p6" }, pairs.Select(p => p.Prompt).ToArray());
        CollectionAssert.AreEqual(new[] { 1L, 6L }, pairs.Select(p => p.Row).ToArray());
        Assert.AreEqual(6L, report.RowsRead);
        Assert.AreEqual(4L, report.RowsSkipped);
        Assert.AreEqual(2L, report.ExamplesProduced);
        var reasons = report.Skipped.ToDictionary(s => s.Reason);
        Assert.HasCount(4, reasons);
        CollectionAssert.AreEqual(new[] { 3L }, reasons["invalid JSON"].FirstRows.ToArray());
        CollectionAssert.AreEqual(new[] { 7L }, reasons["field 'chosen': missing"].FirstRows.ToArray());
        Assert.AreEqual(1L, reasons["field 'rejected': missing"].Count);
        CollectionAssert.AreEqual(new[] { 4L }, reasons["field 'rejected': missing"].FirstRows.ToArray());
        CollectionAssert.AreEqual(new[] { 5L }, reasons["field 'chosen': expected a string, found a number"].FirstRows.ToArray());
        StringAssert.Contains(report.ToString(), "4 skipped");
    }

    [TestMethod]
    public void ReportKeepsOnlyTheFirstRowNumbersOfEachReason()
    {
        using var dir = new TempDirectory();
        var lines = Enumerable.Range(0, 8).Select(_ => (object?)new { prompt = "p" }).ToArray();
        var report = new DataLoadReport();
        PreferenceDataFile.ReadPreferencePairs(WriteJsonLines(dir.Combine("bad.jsonl"), lines), new() { SkipMalformedRows = true, ReportedRowsPerReason = 3, Layout = PreferenceLayout.Standard }, report);
        var skipped = report.Skipped.Single();
        Assert.AreEqual(8L, skipped.Count);
        CollectionAssert.AreEqual(new[] { 1L, 2L, 3L }, skipped.FirstRows.ToArray());
    }

    [TestMethod]
    public void ParquetErrorsNameTheRow()
    {
        using var dir = new TempDirectory();
        var rows = new StandardRow[]
        {
            new() { prompt = "p1", chosen = "a", rejected = "b" },
            new() { prompt = "p2", chosen = "a", rejected = "b" },
            new() { prompt = "p3", chosen = null, rejected = "b" },
        };
        string path = WriteParquet(dir.Combine("bad.parquet"), rows);
        var e = Fails(path);
        StringAssert.Contains(e.Message, "bad.parquet, row 3");
        StringAssert.Contains(e.Message, "field 'chosen': missing");

        var report = new DataLoadReport();
        Assert.HasCount(2, PreferenceDataFile.ReadPreferencePairs(path, new() { SkipMalformedRows = true }, report));
        CollectionAssert.AreEqual(new[] { 3L }, report.Skipped.Single().FirstRows.ToArray());
    }

    [TestMethod]
    public void ConversationErrorsNameTheMessageField()
    {
        using var dir = new TempDirectory();
        var e = Fails(WriteJsonLines(dir.Combine("c.jsonl"), new { chosen = Msgs("user:q", "assistant:a"), rejected = Msgs("user:q") }));
        StringAssert.Contains(e.Message, "line 1");
        StringAssert.Contains(e.Message, "field 'rejected': the last message must be an assistant message");

        e = Fails(WriteJsonLines(dir.Combine("c2.jsonl"), new { chosen = Msgs("user:q", "assistant:a"), rejected = Msgs("user:other", "assistant:b") }));
        StringAssert.Contains(e.Message, "chosen and rejected differ before their final assistant message");

        e = Fails(WriteJsonLines(dir.Combine("c3.jsonl"), new { chosen = Msgs("user:q", "assistant:a"), rejected = new object[] { new { role = "assistant" } } }));
        StringAssert.Contains(e.Message, "field 'rejected[0].content': missing");

        e = Fails(WriteJsonLines(dir.Combine("hh.jsonl"), new { chosen = "Human: q Assistant: a", rejected = "Human: q Assistant: b" }));
        StringAssert.Contains(e.Message, "field 'chosen': chosen and rejected share no prefix ending with the prompt marker '\\n\\nAssistant:'");
    }

    [TestMethod]
    public void ScoredErrorsNameTheCompletionField()
    {
        using var dir = new TempDirectory();
        var record = new { prompt = "p", completions = new object[] { new { response = "a", overall_score = 1 }, new { response = "b", overall_score = new { x = 1 } } } };
        var e = Fails(WriteJsonLines(dir.Combine("uf.jsonl"), record));
        StringAssert.Contains(e.Message, "field 'completions[1].overall_score': expected a number, found an object");

        var noText = new { prompt = "p", completions = new object[] { new { overall_score = 1 } } };
        e = Fails(WriteJsonLines(dir.Combine("uf2.jsonl"), noText));
        StringAssert.Contains(e.Message, "field 'completions[0].response': missing");
    }

    [TestMethod]
    public void UndetectableRecordsAndMissingFilesAreErrors()
    {
        using var dir = new TempDirectory();
        var e = Fails(WriteJsonLines(dir.Combine("x.jsonl"), new { question = "q", answer = "a" }));
        StringAssert.Contains(e.Message, "cannot tell the preference layout");
        StringAssert.Contains(e.Message, "'question'");

        // With skipping on, detection moves on to the next record.
        var pairs = PreferenceDataFile.ReadPreferencePairs(WriteJsonLines(dir.Combine("y.jsonl"), new { question = "q" }, new { prompt = "p", chosen = "a", rejected = "b" }),
            new() { SkipMalformedRows = true });
        Assert.AreEqual(2L, pairs.Single().Row);

        Assert.ThrowsExactly<FileNotFoundException>(() => PreferenceDataFile.ReadPreferencePairs(dir.Combine("absent.jsonl")));
    }
}
