using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Feedback;

namespace Microsoft.ML.Dpo.Tests.Feedback;

[TestClass]
public sealed class JudgeParsingTests
{
    [TestMethod]
    [DataRow("Rating: 7", 10, 7.0)]
    [DataRow("The answer is clear and polite.\nRating: 8", 10, 8.0)]
    [DataRow("7/10", 10, 7.0)]
    [DataRow("I'd give it 6 out of 10.", 10, 6.0)]
    [DataRow("**Score:** 4", 5, 4.0)]
    [DataRow("Overall rating = 8.5", 10, 8.5)]
    [DataRow("{\"rating\": 8}", 10, 8.0)]
    [DataRow("```json\n{\"reason\": \"ok\", \"score\": \"3\"}\n```", 5, 3.0)]
    [DataRow("  9. ", 10, 9.0)]
    [DataRow("Rating: 3 (first thought)\nOn reflection, Rating: 5", 10, 5.0)]
    [DataRow("rating : [2]", 5, 2.0)]
    public void ReadsCommonRatingForms(string answer, int max, double expected)
    {
        Assert.IsTrue(RatingParser.TryParse(answer, max, out double rating), answer);
        Assert.AreEqual(expected, rating, 1e-12, answer);
    }

    [TestMethod]
    [DataRow("")]
    [DataRow("I cannot rate this answer.")]
    [DataRow("Rating: 11")]            // out of scale
    [DataRow("Rating: 0")]
    [DataRow("8/5")]                    // a fraction on another scale is not rescaled
    [DataRow("Rating: N/A")]
    [DataRow("There are 3 issues and 2 strengths.")]
    public void UnreadableOrOutOfScaleAnswersGiveNoRating(string answer)
    {
        Assert.IsFalse(RatingParser.TryParse(answer, 10, out double rating), answer);
        Assert.IsTrue(double.IsNaN(rating));
    }

    [TestMethod]
    public void RatingPromptFillsPlaceholdersOnce()
    {
        var prompt = new RatingPrompt { MaxRating = 5 };
        string text = prompt.Render("Say {completion} please", "Sure: {prompt}");
        StringAssert.Contains(text, "[Request]\nSay {completion} please");
        StringAssert.Contains(text, "[Answer]\nSure: {prompt}");
        StringAssert.Contains(text, "from 1 to 5");
        Assert.IsFalse(text.Contains("{max}", StringComparison.Ordinal));
    }

    [TestMethod]
    public async Task FakeLlmJudgeRanksTheBetterCompletionFirstAndCountsUnparsableAnswers()
    {
        var client = new FakeChatClient(request => FakeChatClient.AnswerOf(request) switch
        {
            "Happy to help! Apples are crisp fruit." => "Helpful and kind.\nRating: 9",
            "No." => "**Score:** 2",
            "Go away." => "{\"rating\": 1}",
            _ => "I am not able to judge this.",
        });
        var judge = new ChatClientJudge(client);
        var report = new RankingReport();
        var scored = await CompletionRanker.RankAsync(judge,
            [new PromptCompletions("Tell me about apples.", ["No.", "Happy to help! Apples are crisp fruit.", "asdf", "Go away."])], report: report);

        Assert.AreEqual(4, client.Calls);
        Assert.AreEqual(3, judge.Statistics.Scored);
        Assert.AreEqual(1, judge.Statistics.Unparsable);
        Assert.AreEqual("I am not able to judge this.", judge.Statistics.UnparsableSamples.Single());
        Assert.AreEqual(3, report.Scored);
        Assert.AreEqual(1, report.Unscored);
        var completions = scored.Single().Completions;
        CollectionAssert.AreEqual(new[] { 2.0, 9.0, double.NaN, 1.0 }, completions.Select(c => c.OverallScore).ToArray());

        var binarization = new BinarizationReport();
        var pairs = PreferenceBinarizer.Binarize(scored, new BinarizationOptions { Strategy = BinarizationStrategy.BestVsWorst }, binarization);
        Assert.AreEqual("Happy to help! Apples are crisp fruit.", pairs.Single().Chosen);
        Assert.AreEqual("Go away.", pairs.Single().Rejected);
        Assert.AreEqual(1, binarization.CompletionsWithoutScore);   // the unparsable answer is excluded, not scored
    }

    [TestMethod]
    public async Task FailingRequestsCountAsUnscored()
    {
        var judge = new ChatClientJudge(new FakeChatClient(_ => throw new HttpRequestException("boom")));
        var scores = await judge.ScoreAsync([("p", "a"), ("p", "b")]);
        Assert.IsTrue(scores.All(s => s is null));
        Assert.AreEqual(2, judge.Statistics.Failed);
    }

    [TestMethod]
    public void UrialPromptHoldsTheThreeExamplesThenTheQuery()
    {
        var builder = new UrialPromptBuilder();
        string prompt = builder.Build("Why is the sky blue?");
        Assert.AreEqual(3, UrialPromptBuilder.DefaultExamples.Count);
        int last = -1;
        foreach (var example in UrialPromptBuilder.DefaultExamples)
        {
            int at = prompt.IndexOf(example.Query, StringComparison.Ordinal);
            Assert.IsTrue(at > last, $"example query missing or out of order: {example.Query}");
            StringAssert.Contains(prompt, example.Answer);
            last = at;
        }
        Assert.IsTrue(prompt.IndexOf("Why is the sky blue?", StringComparison.Ordinal) > last);
        Assert.AreEqual(4, prompt.Split(UrialPromptBuilder.QueryMarker).Length - 1);
        Assert.IsTrue(prompt.EndsWith("# Query:\nWhy is the sky blue?\n\n# Answer:\n", StringComparison.Ordinal));
        StringAssert.StartsWith(prompt, "# Instructions");

        builder.Examples = [new UrialExample("Q1", "A1")];
        builder.SystemPrompt = null;
        Assert.AreEqual("# Query:\nQ1\n\n# Answer:\nA1\n\n# Query:\nQ2\n\n# Answer:\n", builder.Build("Q2"));
        Assert.AreEqual("Blue light scatters more.", UrialPromptBuilder.ExtractAnswer(" Blue light scatters more.\n\n# Query:\nNext?"));
    }
}
