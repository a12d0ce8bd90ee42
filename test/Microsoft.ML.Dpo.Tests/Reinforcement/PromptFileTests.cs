using Microsoft.ML.Data;
using Microsoft.ML.Dpo.Data;

namespace Microsoft.ML.Dpo.Tests.Reinforcement;

/// <summary>Prompt sources of online RL: prompt-only, preference and conversational files; a record without a prompt names its line.</summary>
[TestClass]
public sealed class PromptFileTests
{
    [TestMethod]
    public void PromptsComeFromAnyFileWithAPromptField()
    {
        using var dir = new TempDirectory();
        string path = dir.Combine("prompts.jsonl");
        File.WriteAllLines(path,
        [
            """{"prompt": "Tell me about owls.\n"}""",
            """{"prompt": "Describe rivers.", "chosen": "Gladly!", "rejected": "No."}""",
            """{"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello"}]}""",
        ]);
        var report = new DataLoadReport();
        var prompts = PreferenceDataFile.ReadPrompts(path, report: report);
        CollectionAssert.AreEqual(new[] { "Tell me about owls.\n", "Describe rivers.", ConversationRendering.PlainText([("user", "Hi")], true) },
            prompts.Select(p => p.Prompt).ToArray());
        CollectionAssert.AreEqual(new long[] { 1, 2, 3 }, prompts.Select(p => p.Row).ToArray());
        Assert.AreEqual(3, new MLContext().Data.LoadPrompts(path).GetColumn<string>("prompt").Count());
    }

    [TestMethod]
    public void ARecordWithoutAPromptNamesTheFileAndLine()
    {
        using var dir = new TempDirectory();
        string path = dir.Combine("prompts.jsonl");
        File.WriteAllLines(path, ["""{"prompt": "ok"}""", """{"question": "where is the prompt?"}"""]);
        var e = Assert.ThrowsExactly<InvalidDataException>(() => PreferenceDataFile.ReadPrompts(path));
        StringAssert.Contains(e.Message, $"{path}, line 2");
        StringAssert.Contains(e.Message, "prompt");
        var skipped = PreferenceDataFile.ReadPrompts(path, new CompletionDataLoadOptions { SkipMalformedRows = true });
        Assert.HasCount(1, skipped);
    }
}
