using System.Text.Json;
using Microsoft.ML.Data;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Trainers;

namespace Microsoft.ML.Dpo.Tests.Data;

/// <summary>KTO's unpaired layout (prompt, completion, label) and the conversion from pairs, in the file loaders and data views.</summary>
[TestClass]
public sealed class UnpairedDataTests
{
    [TestMethod]
    public void ReadsUnpairedRecordsConvertsPairsAndNamesTheBadLine()
    {
        using var dir = new TempDirectory();
        string unpaired = dir.Combine("kto.jsonl"), pairs = dir.Combine("pairs.jsonl"), bad = dir.Combine("bad.jsonl");
        File.WriteAllLines(unpaired, [
            JsonSerializer.Serialize(new { prompt = "Hi.\n", completion = "Hello!", label = true }),
            JsonSerializer.Serialize(new { prompt = new[] { new { role = "user", content = "Hi." } }, completion = new[] { new { role = "assistant", content = "Go." } }, label = false }),
        ]);
        var report = new DataLoadReport();
        var read = PreferenceDataFile.ReadUnpairedPreferences(unpaired, report: report);
        Assert.HasCount(2, read);
        Assert.AreEqual(new UnpairedPreference("Hi.\n", "Hello!", true, 1), read[0]);
        Assert.AreEqual(new UnpairedPreference("User: Hi.\nAssistant: ", "Go.", false, 2), read[1], "conversational records are rendered as SFT records are");
        Assert.AreEqual(CompletionLayout.PromptCompletion, report.CompletionLayout);

        File.WriteAllLines(pairs, [JsonSerializer.Serialize(new { prompt = "Q\n", chosen = "good", rejected = "bad" })]);
        var ml = new MLContext(seed: 0);
        var view = ml.Data.LoadUnpairedPreferences(pairs);
        CollectionAssert.AreEqual(new[] { "good", "bad" }, view.GetColumn<string>(StandardColumns.Completion).ToArray());
        CollectionAssert.AreEqual(new[] { true, false }, view.GetColumn<bool>(StandardColumns.Label).ToArray(), "chosen → desirable, rejected → undesirable");

        File.WriteAllLines(bad, [
            JsonSerializer.Serialize(new { prompt = "Hi.\n", completion = "Hello!", label = true }),
            JsonSerializer.Serialize(new { prompt = "Hi.\n", completion = "Hello!", label = "yes" }),
        ]);
        var e = Assert.ThrowsExactly<InvalidDataException>(() => PreferenceDataFile.ReadUnpairedPreferences(bad));
        StringAssert.Contains(e.Message, "line 2");
        StringAssert.Contains(e.Message, "label");
        StringAssert.Contains(e.Message, "expected true (desirable) or false (undesirable), found a string");
        Assert.HasCount(1, PreferenceDataFile.ReadUnpairedPreferences(bad, new PreferenceDataLoadOptions { SkipMalformedRows = true }));
    }

    [TestMethod]
    public void TheKtoTrainerNamesAMissingOrNonBooleanLabelColumn()
    {
        var ml = new MLContext(seed: 0);
        var noLabel = ml.Data.LoadFromEnumerable(new[] { new { prompt = "a", completion = "b" } }.Select(x => new TextRow { prompt = x.prompt, completion = x.completion }));
        var trainer = ml.Alignment().Trainers.Kto(new KtoTrainer.Options { BaseModelPath = "unused" });
        var e = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => trainer.Fit(noLabel));
        StringAssert.Contains(e.Message, "label column 'label' was not found");
        var batch = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => ml.Alignment().Trainers.Kto(new KtoTrainer.Options { BaseModelPath = "x", BatchSize = 1 }).Fit(noLabel));
        StringAssert.Contains(batch.Message, "BatchSize ≥ 2");
    }

    sealed class TextRow { public string prompt { get; set; } = ""; public string completion { get; set; } = ""; }
}
