using Microsoft.ML.Dpo.Data;
using static Microsoft.ML.Dpo.Tests.Data.DataFileTestFiles;

namespace Microsoft.ML.Dpo.Tests.Data;

[TestClass]
public sealed class PreferenceDataFileTests
{
    // The conversations below, rendered by the default plain renderer, and their completions.
    static readonly StandardRow[] Standard =
    [
        new() { prompt = "User: What is 2+2?\nAssistant: ", chosen = "4", rejected = "5" },
        new() { prompt = "System: Be brief.\nUser: Hi\nAssistant: Hello!\nUser: Capital of France?\nAssistant: ", chosen = "Paris", rejected = "Lyon" },
        new() { prompt = "User: Name a color.\nAssistant: ", chosen = "Blue", rejected = "Blue-ish green" },
    ];

    static readonly Message[][] Contexts =
    [
        Msgs("user:What is 2+2?"),
        Msgs("system:Be brief.", "user:Hi", "assistant:Hello!", "user:Capital of France?"),
        Msgs("user:Name a color."),
    ];

    static ConversationRow[] WithPrompt() => Contexts.Select((c, i) => new ConversationRow
    {
        prompt = c.ToList(),
        chosen = Msgs("assistant:" + Standard[i].chosen).ToList(),
        rejected = Msgs("assistant:" + Standard[i].rejected).ToList(),
    }).ToArray();

    static ConversationNoPromptRow[] WithoutPrompt() => Contexts.Select((c, i) => new ConversationNoPromptRow
    {
        chosen = [.. c, .. Msgs("assistant:" + Standard[i].chosen)],
        rejected = [.. c, .. Msgs("assistant:" + Standard[i].rejected)],
    }).ToArray();

    static (string, string, string)[] Expected => Standard.Select(s => (s.prompt!, s.chosen!, s.rejected!)).ToArray();

    static (string, string, string)[] Load(string path, PreferenceDataLoadOptions? options = null, DataLoadReport? report = null) =>
        Triples(new MLContext().Data.LoadPreferencePairs(path, options, report));

    [TestMethod]
    public void StandardLayoutLoadsFromJsonLinesJsonArrayAndParquet()
    {
        using var dir = new TempDirectory();
        var report = new DataLoadReport();
        CollectionAssert.AreEqual(Expected, Load(WriteJsonLines(dir.Combine("s.jsonl"), Standard), report: report));
        Assert.AreEqual(PreferenceLayout.Standard, report.PreferenceLayout);
        Assert.AreEqual(DataFileFormat.Json, report.Format);
        Assert.AreEqual(3L, report.RowsRead);
        Assert.AreEqual(3L, report.ExamplesProduced);

        File.WriteAllText(dir.Combine("s.json"), System.Text.Json.JsonSerializer.Serialize(Standard));
        CollectionAssert.AreEqual(Expected, Load(dir.Combine("s.json")));

        report = new DataLoadReport();
        CollectionAssert.AreEqual(Expected, Load(WriteParquet(dir.Combine("s.parquet"), Standard), report: report));
        Assert.AreEqual(DataFileFormat.Parquet, report.Format);
        Assert.AreEqual(3L, report.RowsRead);
    }

    [TestMethod]
    public void DataViewHasTheStandardTextColumns()
    {
        using var dir = new TempDirectory();
        var view = new MLContext().Data.LoadPreferencePairs(WriteJsonLines(dir.Combine("s.jsonl"), Standard));
        CollectionAssert.AreEqual(new[] { "prompt", "chosen", "rejected" }, view.Schema.Select(c => c.Name).ToArray());
        Assert.IsTrue(view.Schema.All(c => c.Type is Microsoft.ML.Data.TextDataViewType));
    }

    [TestMethod]
    public void ConversationalLayoutsLoadToTheStandardPairs()
    {
        using var dir = new TempDirectory();
        var report = new DataLoadReport();
        CollectionAssert.AreEqual(Expected, Load(WriteJsonLines(dir.Combine("c.jsonl"), WithPrompt()), report: report));
        Assert.AreEqual(PreferenceLayout.Conversational, report.PreferenceLayout);
        CollectionAssert.AreEqual(Expected, Load(WriteJsonLines(dir.Combine("c2.jsonl"), WithoutPrompt())));
        CollectionAssert.AreEqual(Expected, Load(WriteParquet(dir.Combine("c.parquet"), WithPrompt())));
        CollectionAssert.AreEqual(Expected, Load(WriteParquet(dir.Combine("c2.parquet"), WithoutPrompt())));

        // HuggingFaceH4/ultrafeedback_binarized: a prompt string beside whole conversations.
        var h4 = WithoutPrompt().Select((r, i) => new { prompt = Contexts[i][^1].content, r.chosen, r.rejected }).ToArray();
        CollectionAssert.AreEqual(Expected, Load(WriteJsonLines(dir.Combine("h4.jsonl"), h4)));
        // Prompt messages that the chosen and rejected lists repeat are not prefixed twice.
        var repeated = WithoutPrompt().Select((r, i) => new { prompt = Contexts[i], r.chosen, r.rejected }).ToArray();
        CollectionAssert.AreEqual(Expected, Load(WriteJsonLines(dir.Combine("repeated.jsonl"), repeated)));
        // A prompt string beside assistant-only lists is the user's message.
        var single = new { prompt = "What is 2+2?", chosen = Msgs("assistant:4"), rejected = Msgs("assistant:5") };
        CollectionAssert.AreEqual(Expected[..1], Load(WriteJsonLines(dir.Combine("single.jsonl"), single)));
    }

    [TestMethod]
    public void ConversationsAreRenderedByTheSuppliedRenderer()
    {
        using var dir = new TempDirectory();
        var options = new PreferenceDataLoadOptions
        {
            RenderConversation = (turns, generation) => string.Concat(turns.Select(t => $"<{t.Role}>{t.Content}")) + (generation ? "<assistant>" : ""),
        };
        var pairs = PreferenceDataFile.ReadPreferencePairs(WriteJsonLines(dir.Combine("c.jsonl"), WithoutPrompt()), options);
        Assert.AreEqual("<user>What is 2+2?<assistant>", pairs[0].Prompt);
        Assert.AreEqual("4", pairs[0].Chosen);
        Assert.AreEqual(1L, pairs[0].Row);
    }

    [TestMethod]
    public void ImplicitPromptTranscriptsSplitAtTheLastSharedAssistantMarker()
    {
        var transcripts = new ImplicitRow[]
        {
            new() { chosen = "\n\nHuman: What is 2+2?\n\nAssistant: The answer is 4", rejected = "\n\nHuman: What is 2+2?\n\nAssistant: The answer is 5" },
            new() { chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Capital of France?\n\nAssistant: Paris", rejected = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Capital of France?\n\nAssistant: Lyon" },
        };
        var standard = new StandardRow[]
        {
            new() { prompt = "\n\nHuman: What is 2+2?\n\nAssistant:", chosen = " The answer is 4", rejected = " The answer is 5" },
            new() { prompt = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Capital of France?\n\nAssistant:", chosen = " Paris", rejected = " Lyon" },
        };
        using var dir = new TempDirectory();
        var expected = Load(WriteJsonLines(dir.Combine("s.jsonl"), standard));
        var report = new DataLoadReport();
        CollectionAssert.AreEqual(expected, Load(WriteJsonLines(dir.Combine("hh.jsonl"), transcripts), report: report));
        Assert.AreEqual(PreferenceLayout.ImplicitPrompt, report.PreferenceLayout);
        CollectionAssert.AreEqual(expected, Load(WriteParquet(dir.Combine("hh.parquet"), transcripts)));
    }

    static ScoredRow Scored(string instruction, params (string Response, double Overall, string Helpfulness, string Honesty)[] completions) => new()
    {
        instruction = instruction,
        completions = completions.Select(c => new ScoredCompletionRow
        {
            response = c.Response,
            overall_score = c.Overall,
            annotations = new() { helpfulness = new() { Rating = c.Helpfulness, Rationale = "r" }, honesty = new() { Rating = c.Honesty, Rationale = "r" } },
        }).ToList(),
    };

    static readonly ScoredRow[] UltraFeedback =
    [
        Scored("q1", ("ok", 6, "3", "3"), ("best", 9, "2", "2"), ("worst", 2, "5", "5")),
        Scored("q2", ("a", 7, "4", "N/A"), ("b", 7, "4", "4")),
        Scored("q3", ("low", 1, "5", "4"), ("high", 8, "1", "1")),
    ];

    [TestMethod]
    public void ScoredCompletionsAreBinarizedToTheStandardPairs()
    {
        using var dir = new TempDirectory();
        var options = new PreferenceDataLoadOptions { Binarization = new() { Strategy = BinarizationStrategy.BestVsWorst } };
        var expected = new[] { ("q1", "best", "worst"), ("q3", "high", "low") };
        var report = new DataLoadReport();
        CollectionAssert.AreEqual(expected, Load(WriteJsonLines(dir.Combine("uf.jsonl"), UltraFeedback), options, report));
        Assert.AreEqual(PreferenceLayout.ScoredCompletions, report.PreferenceLayout);
        Assert.AreEqual(2L, report.ExamplesProduced);
        Assert.AreEqual(1L, report.Binarization!.PromptsWithoutPreference);
        Assert.AreEqual("q2", report.Binarization.UnpairedPrompts[0].Prompt);
        Assert.AreEqual(2L, report.Binarization.UnpairedPrompts[0].Row);
        CollectionAssert.AreEqual(expected, Load(WriteParquet(dir.Combine("uf.parquet"), UltraFeedback), options));

        // Notus: the mean of the aspect ratings reverses both preferences; q2's "N/A" leaves one usable completion.
        options.Binarization.Score = ScoreSource.MeanOfAspectRatings;
        report = new DataLoadReport();
        CollectionAssert.AreEqual(new[] { ("q1", "worst", "best"), ("q3", "low", "high") }, Load(WriteParquet(dir.Combine("uf2.parquet"), UltraFeedback), options, report));
        Assert.AreEqual(1L, report.Binarization!.CompletionsWithoutScore);
    }

    [TestMethod]
    public void ScoredPromptsKeepOverallScoresAndAspectRatings()
    {
        using var dir = new TempDirectory();
        var prompts = PreferenceDataFile.ReadScoredPrompts(WriteParquet(dir.Combine("uf.parquet"), UltraFeedback));
        Assert.AreEqual(3, prompts.Count);
        Assert.AreEqual(3L, prompts[2].Row);
        var a = prompts[1].Completions[0];
        Assert.AreEqual("a", a.Text);
        Assert.AreEqual(7.0, a.OverallScore);
        Assert.AreEqual(4.0, a.AspectRatings!["helpfulness"]);
        Assert.IsTrue(double.IsNaN(a.AspectRatings["honesty"]));

        // Plain {aspect: number} ratings, 'prompt' and 'text' field names, a missing overall score.
        var plain = new { prompt = "p", completions = new object[] { new { text = "x", ratings = new { helpfulness = 2, honesty = 4 } } } };
        var read = PreferenceDataFile.ReadScoredPrompts(WriteJsonLines(dir.Combine("plain.jsonl"), plain));
        Assert.AreEqual(3.0, read[0].Completions[0].GetScore(ScoreSource.MeanOfAspectRatings));
        Assert.IsTrue(double.IsNaN(read[0].Completions[0].GetScore(ScoreSource.OverallScore)));

        var e = Assert.ThrowsExactly<InvalidDataException>(() => PreferenceDataFile.ReadScoredPrompts(WriteJsonLines(dir.Combine("s.jsonl"), Standard)));
        StringAssert.Contains(e.Message, "'completions'");
    }

    [TestMethod]
    public void ExplicitLayoutAndFormatOverrideDetection()
    {
        using var dir = new TempDirectory();
        // A .txt file read as JSON Lines; a standard file read as implicit-prompt transcripts ignores the prompt.
        string path = dir.Combine("data.txt");
        File.Copy(WriteJsonLines(dir.Combine("x.jsonl"), new { prompt = "ignored", chosen = "\n\nHuman: q\n\nAssistant: a", rejected = "\n\nHuman: q\n\nAssistant: b" }), path);
        Assert.ThrowsExactly<ArgumentException>(() => PreferenceDataFile.ReadPreferencePairs(path));
        var pairs = PreferenceDataFile.ReadPreferencePairs(path, new() { Format = DataFileFormat.Json, Layout = PreferenceLayout.ImplicitPrompt });
        Assert.AreEqual(("\n\nHuman: q\n\nAssistant:", " a", " b"), (pairs[0].Prompt, pairs[0].Chosen, pairs[0].Rejected));
    }

    [TestMethod]
    public void SftLayoutsLoadToTheSameExamples()
    {
        var standard = new PromptCompletionRow[]
        {
            new() { prompt = "User: What is 2+2?\nAssistant: ", completion = "4" },
            new() { prompt = "System: Be brief.\nUser: Hi\nAssistant: Hello!\nUser: Capital of France?\nAssistant: ", completion = "Paris" },
        };
        var messages = new[]
        {
            new MessagesRow { messages = [.. Contexts[0], .. Msgs("assistant:4")] },
            new MessagesRow { messages = [.. Contexts[1], .. Msgs("assistant:Paris")] },
        };
        var lists = messages.Select(m => new { prompt = m.messages[..^1], completion = m.messages[^1..] }).ToArray();
        using var dir = new TempDirectory();
        var ml = new MLContext();
        (string, string)[] Read(string path, DataLoadReport? report = null) =>
            ExampleReader.ReadCompletions(ml.Data.LoadCompletions(path, null, report), StandardColumns.Prompt, StandardColumns.Completion, false, new())
                .Select(e => (e.Prompt, e.Completion)).ToArray();
        var expected = standard.Select(s => (s.prompt!, s.completion!)).ToArray();
        var report = new DataLoadReport();
        CollectionAssert.AreEqual(expected, Read(WriteJsonLines(dir.Combine("pc.jsonl"), standard), report));
        Assert.AreEqual(CompletionLayout.PromptCompletion, report.CompletionLayout);
        CollectionAssert.AreEqual(expected, Read(WriteParquet(dir.Combine("pc.parquet"), standard)));
        report = new DataLoadReport();
        CollectionAssert.AreEqual(expected, Read(WriteJsonLines(dir.Combine("m.jsonl"), messages), report));
        Assert.AreEqual(CompletionLayout.Messages, report.CompletionLayout);
        CollectionAssert.AreEqual(expected, Read(WriteParquet(dir.Combine("m.parquet"), messages)));
        CollectionAssert.AreEqual(expected, Read(WriteJsonLines(dir.Combine("lists.jsonl"), lists)));
        CollectionAssert.AreEqual(new[] { "prompt", "completion" }, ml.Data.LoadCompletions(dir.Combine("m.parquet")).Schema.Select(c => c.Name).ToArray());
    }

    [TestMethod]
    public void PlainRendererFormat()
    {
        Assert.AreEqual("System: s\nUser: u\nAssistant: ", ConversationRendering.PlainText([("system", "s"), ("user", "u")], true));
        Assert.AreEqual("User: u\nAssistant: a", ConversationRendering.PlainText([("user", "u"), ("assistant", "a")], false));
    }
}
