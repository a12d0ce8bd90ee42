using System.Text.Json;
using Microsoft.ML.Dpo.Tokenization;
using Microsoft.ML.Dpo.Trainers;

namespace Microsoft.ML.Dpo.Tests.Trainers;

[TestClass]
public sealed class SftTrainerTests
{
    sealed class Conversation { public string messages { get; set; } = ""; }

    static string Json(params (string Role, string Content)[] turns) => JsonSerializer.Serialize(turns.Select(t => new { role = t.Role, content = t.Content }));

    static float[] Weights(LanguageModel model) => model.Network.parameters().SelectMany(p => p.data<float>().ToArray()).ToArray();

    [TestMethod]
    public void MessagesColumnTrainsExactlyLikeTheRenderedPromptAndCompletion()
    {
        using var dir = new TempDirectory();
        using var baseModel = StylePreferenceTask.CreateBaseModel(dir.Path);
        var ml = new MLContext();
        var subjects = StylePreferenceTask.TrainSubjects[..8];
        var conversations = subjects.Select(s => new Conversation { messages = Json(("system", "Be brief."), ("user", $"Tell me about {s}."), ("assistant", "No.")) }).ToArray();
        var template = ChatTemplate.ChatML();
        var rendered = subjects.Select(s => template.SplitForTraining([ChatTurn.System("Be brief."), ChatTurn.User($"Tell me about {s}."), ChatTurn.Assistant("No.")]))
            .Select(x => new StylePreferenceTask.Completion { prompt = x.Prompt, completion = x.Completion }).ToArray();

        SftTrainer.Options Options() => new() { BaseModel = baseModel, MaxSteps = 2, BatchSize = 4, LearningRate = 1e-3, MaxLength = 120, MaxPromptLength = 100 };
        var fromMessages = Options();
        fromMessages.MessagesColumnName = "messages";
        fromMessages.ChatTemplateName = "chatml";
        using var a = ml.Alignment().Trainers.Sft(fromMessages).Fit(ml.Data.LoadFromEnumerable(conversations));
        using var b = ml.Alignment().Trainers.Sft(Options()).Fit(ml.Data.LoadFromEnumerable(rendered));
        Assert.AreEqual(8L, a.DataReport!.Kept);
        CollectionAssert.AreEqual(Weights(b.Model), Weights(a.Model));
        CollectionAssert.AreNotEqual(Weights(baseModel), Weights(a.Model));
    }

    [TestMethod]
    public void MalformedConversationNamesRowAndColumn()
    {
        using var dir = new TempDirectory();
        using var baseModel = StylePreferenceTask.CreateBaseModel(dir.Path);
        var ml = new MLContext();
        var rows = new[]
        {
            new Conversation { messages = Json(("user", "Hi."), ("assistant", "No.")) },
            new Conversation { messages = Json(("user", "Hi."), ("user", "Hello?")) },   // no assistant turn to learn
            new Conversation { messages = "[{\"role\": \"user\", " },                    // not JSON
        };
        var options = new SftTrainer.Options { BaseModel = baseModel, MaxSteps = 1, MessagesColumnName = "messages" };
        var e = Assert.ThrowsExactly<InvalidDataException>(() => ml.Alignment().Trainers.Sft(options).Fit(ml.Data.LoadFromEnumerable(rows)));
        StringAssert.Contains(e.Message, "Row 2 of the input data (1-based)");   // the second row
        StringAssert.Contains(e.Message, "'messages'");

        options.SkipInvalidRows = true;
        using var model = ml.Alignment().Trainers.Sft(options).Fit(ml.Data.LoadFromEnumerable(rows));
        Assert.AreEqual(2L, model.DataReport!.InvalidRowsSkipped);
        Assert.AreEqual(1L, model.DataReport.Kept);
    }
}
