using Microsoft.Extensions.AI;
using Microsoft.ML.Dpo.Feedback;
using Microsoft.ML.Dpo.Generation;
using Microsoft.ML.Dpo.Tests.Trainers;
using Microsoft.ML.Dpo.Tokenization;
using Microsoft.ML.Dpo.Trainers;

namespace Microsoft.ML.Dpo.Tests.Feedback;

/// <summary>
/// A tiny model SFT-trained to rate the style task's answers ("Rating: 5" for warm, "Rating: 1" for curt) serves as a chat
/// client (<see cref="LanguageModelChatClient"/>), as an LLM judge over that client, and as a local expected-rating judge.
/// </summary>
[TestClass]
public sealed class LocalJudgeTests
{
    static TempDirectory? dir;
    static LanguageModelTransformer? judgeModel;

    /// <summary>A rating request short enough for the tiny model's 128-token context.</summary>
    static RatingPrompt ShortRating => new() { MaxRating = 5, Template = "Rate: {prompt}{completion}" };

    static string RenderedRequest(TextTokenizer tokenizer, string prompt, string completion) =>
        tokenizer.ChatTemplate.Render([ChatTurn.User(ShortRating.Render(prompt, completion))], addGenerationPrompt: true);

    [ClassInitialize]
    public static void TrainJudge(TestContext _)
    {
        dir = new TempDirectory();
        using var baseModel = StylePreferenceTask.CreateBaseModel(dir.Path);
        var tokenizer = baseModel.RequireTokenizer();
        var rows = StylePreferenceTask.TrainSubjects.SelectMany((s, i) => new[]
        {
            new StylePreferenceTask.Completion { prompt = RenderedRequest(tokenizer, StylePreferenceTask.Prompt(s), StylePreferenceTask.Warm[i % 2]), completion = " Rating: 5" },
            new StylePreferenceTask.Completion { prompt = RenderedRequest(tokenizer, StylePreferenceTask.Prompt(s), StylePreferenceTask.Curt[i % 2]), completion = " Rating: 1" },
        }).ToArray();
        var ml = new MLContext(seed: 0);
        judgeModel = ml.Alignment().Trainers.Sft(new SftTrainer.Options
        {
            BaseModel = baseModel, Epochs = 12, BatchSize = 8, LearningRate = 3e-3, WarmupSteps = 5, MaxLength = 100, MaxPromptLength = 88,
        }).Fit(ml.Data.LoadFromEnumerable(rows));
    }

    [ClassCleanup]
    public static void Cleanup()
    {
        judgeModel?.Dispose();
        dir?.Dispose();
    }

    [TestMethod]
    public async Task ChatClientAnswersWithTheChatTemplateAndStreamsTheSameText()
    {
        var model = judgeModel!.Model;
        using var client = new LanguageModelChatClient(model, new GenerationOptions { MaxNewTokens = 16 });
        string request = ShortRating.Render(StylePreferenceTask.Prompt("otters"), "Gladly, friend!");
        var response = await client.GetResponseAsync([new ChatMessage(ChatRole.User, request)]);
        Assert.AreEqual(" Rating: 5", response.Text);
        Assert.AreEqual(ChatFinishReason.Stop, response.FinishReason);
        Assert.AreEqual(10, response.Usage!.OutputTokenCount);   // " Rating: 5" is 10 bytes; the EOS that ends it is not output
        // The prompt is the tokenizer's chat template with the generation cue; the answer is what TextGenerator produces.
        string rendered = client.RenderPrompt([new ChatMessage(ChatRole.User, request)]);
        Assert.AreEqual(RenderedRequest(model.RequireTokenizer(), StylePreferenceTask.Prompt("otters"), "Gladly, friend!"), rendered);
        Assert.AreEqual(model.CreateGenerator().Generate([rendered], new GenerationOptions { MaxNewTokens = 16 })[0], response.Text);

        var updates = new List<ChatResponseUpdate>();
        await foreach (var update in client.GetStreamingResponseAsync([new ChatMessage(ChatRole.User, request)])) updates.Add(update);
        Assert.AreEqual(response.Text, string.Concat(updates.Select(u => u.Text)));
        Assert.IsTrue(updates.Count(u => u.Text.Length > 0) >= 5, "one update per token");
        Assert.AreEqual(ChatFinishReason.Stop, updates[^1].FinishReason);

        // ChatOptions map to generation options: a 3-token limit, and a stop sequence cut from the text.
        var limited = await client.GetResponseAsync([new ChatMessage(ChatRole.User, request)], new ChatOptions { MaxOutputTokens = 3 });
        Assert.AreEqual(" Ra", limited.Text);
        Assert.AreEqual(ChatFinishReason.Length, limited.FinishReason);
        var stopped = await client.GetResponseAsync([new ChatMessage(ChatRole.User, request)], new ChatOptions { StopSequences = [":"] });
        Assert.AreEqual(" Rating", stopped.Text);
        var streamedStop = new List<string>();
        await foreach (var update in client.GetStreamingResponseAsync([new ChatMessage(ChatRole.User, request)], new ChatOptions { StopSequences = [":"] }))
            streamedStop.Add(update.Text);
        Assert.AreEqual(" Rating", string.Concat(streamedStop));
        Assert.AreSame(model, client.GetService<LanguageModel>());
        Assert.AreEqual("Microsoft.ML.Dpo", client.GetService<ChatClientMetadata>()!.ProviderName);
    }

    [TestMethod]
    public async Task LlmJudgeOverTheLocalChatClientRanksHeldOutAnswers()
    {
        using var client = new LanguageModelChatClient(judgeModel!.Model);
        var judge = new ChatClientJudge(client, new ChatClientJudgeOptions { Prompt = ShortRating, ChatOptions = new ChatOptions { MaxOutputTokens = 16 } });
        var prompts = StylePreferenceTask.HeldOutSubjects.Select(s => new PromptCompletions(StylePreferenceTask.Prompt(s), ["No.", "Happy to help!"])).ToList();
        var report = new RankingReport();
        var scored = await CompletionRanker.RankAsync(judge, prompts, report: report);
        Console.WriteLine($"local LLM judge: {judge.Statistics}; {report}");
        int warmFirst = scored.Count(p => p.Completions[1].OverallScore > p.Completions[0].OverallScore);
        Assert.IsTrue(warmFirst >= 9, $"{warmFirst}/10");
        Assert.AreEqual(judge.Statistics.Requests, judge.Statistics.Scored + judge.Statistics.Unparsable + judge.Statistics.Failed);
    }

    [TestMethod]
    public async Task ExpectedRatingJudgeRanksHeldOutAnswers()
    {
        var judge = new LanguageModelJudge(judgeModel!.Model, new LanguageModelJudgeOptions { Prompt = ShortRating, AnswerPrefix = " Rating: " });
        Assert.AreEqual(RenderedRequest(judgeModel.Model.RequireTokenizer(), "p", "c") + " Rating: ", judge.BuildInput("p", "c"));
        var pairs = StylePreferenceTask.Pairs(StylePreferenceTask.HeldOutSubjects);
        var scores = await judge.ScoreAsync(pairs.SelectMany(p => new[] { (p.prompt, p.chosen), (p.prompt, p.rejected) }).ToList());
        Assert.IsTrue(scores.All(s => s is >= 1 and <= 5));
        int correct = Enumerable.Range(0, pairs.Length).Count(i => scores[2 * i] > scores[2 * i + 1]);
        Console.WriteLine($"expected-rating judge: {correct}/{pairs.Length}; warm mean {Enumerable.Range(0, pairs.Length).Average(i => scores[2 * i]!.Value):F2}, curt mean {Enumerable.Range(0, pairs.Length).Average(i => scores[2 * i + 1]!.Value):F2}");
        Assert.IsTrue(correct >= 9, $"{correct}/{pairs.Length}");

        // The score is the expectation of the renormalized rating distribution.
        var (p, mass) = judge.RatingDistribution(pairs[0].prompt, pairs[0].chosen);
        Assert.AreEqual(1.0, p.Sum(), 1e-9);
        Assert.IsTrue(mass > 0.5, $"mass on rating tokens {mass}");
        var alone = await judge.ScoreAsync([(pairs[0].prompt, pairs[0].chosen)]);   // same batch shape as RatingDistribution
        Assert.AreEqual(alone[0]!.Value, p.Select((q, r) => q * (r + 1)).Sum(), 1e-9);
        Assert.AreEqual(scores[0]!.Value, alone[0]!.Value, 1e-5, "batched and single scoring agree up to float rounding");
    }

    [TestMethod]
    public async Task UrialGenerationCutsAtTheNextQuery()
    {
        // An untrained model cannot follow URIAL; this checks the plumbing: the prompt is what the model reads and the answer is cut.
        var builder = new UrialPromptBuilder { SystemPrompt = null, Examples = [new UrialExample("a", "b")] };
        string answer = builder.Generate(judgeModel!.Model, "c", new GenerationOptions { MaxNewTokens = 8 });
        Assert.IsFalse(answer.Contains("# Query", StringComparison.Ordinal));
        await Task.CompletedTask;
    }
}
