using System.CommandLine;
using System.Text;
using System.Text.Json;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Trainers;
using Microsoft.ML.Dpo.Tests.Trainers;
using Microsoft.ML.Dpo.Training;
using MlDpo.Commands;

namespace Microsoft.ML.Dpo.Tests.Data;

/// <summary>
/// Issue 14, "Hangs": reading and tokenizing a long data file check cancellation between rows (Ctrl+C works during preparation)
/// and report progress every few seconds (the CLI prints those lines).
/// </summary>
[TestClass]
public sealed class DataPreparationCancellationTests
{
    static TimeSpan saved;

    [ClassInitialize]
    public static void EveryRowReports(TestContext _)
    {
        saved = PreparationProgress.Interval;
        PreparationProgress.Interval = TimeSpan.Zero;   // a progress line per row, so the tests can act in the middle of a file
    }

    [ClassCleanup]
    public static void Restore() => PreparationProgress.Interval = saved;

    static string WritePairs(TempDirectory dir, int rows)
    {
        string path = dir.Combine("pairs.jsonl");
        File.WriteAllLines(path, Enumerable.Range(0, rows).Select(i => JsonSerializer.Serialize(new { prompt = $"Tell me about owls {i}.\n", chosen = "Happy to help!", rejected = "No." })));
        return path;
    }

    [TestMethod]
    public void ReadingAFile_StopsAtTheNextRecordWhenCancelled_AndReportsProgress()
    {
        using var dir = new TempDirectory();
        string path = WritePairs(dir, 1000);
        using var cancel = new CancellationTokenSource();
        var lines = new List<string>();
        var report = new DataLoadReport();
        var options = new PreferenceDataLoadOptions
        {
            CancellationToken = cancel.Token,
            Log = line => { lines.Add(line); if (lines.Count == 3) cancel.Cancel(); },
        };
        Assert.ThrowsExactly<OperationCanceledException>(() => PreferenceDataFile.ReadPreferencePairs(path, options, report));
        Assert.AreEqual(3, report.RowsRead, "the record after the cancellation is not read");
        CollectionAssert.AreEqual(new[] { $"Reading {path}: 1 records", $"Reading {path}: 2 records", $"Reading {path}: 3 records" }, lines);

        // Without cancellation the file reads through, and without Log nothing is reported.
        Assert.HasCount(1000, PreferenceDataFile.ReadPreferencePairs(path, new PreferenceDataLoadOptions()));
    }

    [TestMethod]
    public void Tokenizing_ReportsProgress_AndStopsWhenCancelled()
    {
        using var dir = new TempDirectory();
        using var model = StylePreferenceTask.CreateBaseModel(dir.Path);
        var pairs = Enumerable.Range(0, 5).Select(i => new PreferencePair($"prompt {i}", "yes", "no", i + 1)).ToList();
        var lines = new List<string>();
        FineTuningRun.TokenizePairs(model, pairs, 64, 32, TruncationMode.KeepEnd, new DataPreparationReport(), default, lines.Add);
        CollectionAssert.AreEqual(Enumerable.Range(1, 5).Select(i => $"Tokenizing: {i} of 5 rows ({i * 20} %)").ToArray(), lines);

        using var cancel = new CancellationTokenSource();
        int seen = 0;
        Assert.ThrowsExactly<OperationCanceledException>(() => FineTuningRun.TokenizePairs(model, pairs, 64, 32, TruncationMode.KeepEnd,
            new DataPreparationReport(), cancel.Token, _ => { if (++seen == 2) cancel.Cancel(); }));
        Assert.AreEqual(2, seen, "no row is tokenized after the cancellation");
    }

    /// <summary>A writer that cancels the invocation when a line containing <paramref name="trigger"/> is written.</summary>
    sealed class CancellingWriter(string trigger, CancellationTokenSource cancel) : StringWriter
    {
        public override void WriteLine(string? value)
        {
            base.WriteLine(value);
            if (value?.Contains(trigger, StringComparison.Ordinal) == true) cancel.Cancel();
        }
    }

    [TestMethod]
    public void Cli_CtrlCWhileReadingTheData_ExitsCancelled_WritesNothing()
    {
        using var dir = new TempDirectory();
        var output = new StringWriter();
        Assert.AreEqual(0, CliApp.Run(["init", "--preset", "tiny", "--tokenizer", "bytes", "--output", dir.Combine("base")], output, new StringWriter()), output.ToString());
        string data = WritePairs(dir, 2000);
        using var cancel = new CancellationTokenSource();
        var stdout = new CancellingWriter(": 50 records", cancel);
        var stderr = new StringWriter();
        int code = CliApp.Build().Parse(["dpo", "--model", dir.Combine("base"), "--data", data, "--output", dir.Combine("dpo"), "--max-steps", "1", "--max-length", "32"])
            .InvokeAsync(new InvocationConfiguration { Output = stdout, Error = stderr }, cancel.Token).GetAwaiter().GetResult();
        Console.WriteLine(stdout.ToString() + stderr);
        Assert.AreEqual(130, code, stderr.ToString());
        StringAssert.Contains(stderr.ToString(), "mldpo dpo: cancelled.");
        StringAssert.Contains(stdout.ToString(), $"Reading {data}: 50 records");
        Assert.IsFalse(stdout.ToString().Contains($"Reading {data}: 52 records", StringComparison.Ordinal), "reading stopped at the next record");
        Assert.IsFalse(Directory.Exists(dir.Combine("dpo")), "nothing written");
    }
}
