using Microsoft.ML.Dpo.Data;
using static Microsoft.ML.Dpo.Tests.Data.DataFileTestFiles;

namespace Microsoft.ML.Dpo.Tests.Data;

[TestClass]
public sealed class PreferenceBinarizerTests
{
    static ScoredPrompt Prompt(string prompt, params (string Text, double Score)[] completions) =>
        new(prompt, completions.Select(c => new ScoredCompletion(c.Text, c.Score)).ToArray());

    // Scores: a2 5 > a4 4 > a1 3 > a3 1.
    static readonly ScoredPrompt A = Prompt("A", ("a1", 3), ("a2", 5), ("a3", 1), ("a4", 4));

    static List<PreferencePair> Run(BinarizationOptions options, BinarizationReport? report, params ScoredPrompt[] prompts) =>
        PreferenceBinarizer.Binarize(prompts, options, report);

    [TestMethod]
    public void BestVsWorstPairsTheHighestWithTheLowest()
    {
        var report = new BinarizationReport();
        var pairs = Run(new() { Strategy = BinarizationStrategy.BestVsWorst }, report, A);
        CollectionAssert.AreEqual(new[] { ("A", "a2", "a3") }, Triples(pairs));
        Assert.AreEqual(1L, report.PromptsRead);
        Assert.AreEqual(1L, report.PairsProduced);
        Assert.AreEqual(0L, report.TiesDropped);
    }

    [TestMethod]
    public void AllPairsKeepsPairsAtLeastTheMarginApart()
    {
        CollectionAssert.AreEqual(
            new[] { ("A", "a2", "a4"), ("A", "a2", "a1"), ("A", "a2", "a3"), ("A", "a4", "a1"), ("A", "a4", "a3"), ("A", "a1", "a3") },
            Triples(Run(new() { Strategy = BinarizationStrategy.AllPairs }, null, A)));

        var report = new BinarizationReport();
        CollectionAssert.AreEqual(
            new[] { ("A", "a2", "a1"), ("A", "a2", "a3"), ("A", "a4", "a3"), ("A", "a1", "a3") },
            Triples(Run(new() { Strategy = BinarizationStrategy.AllPairs, MinimumMargin = 2 }, report, A)));
        Assert.AreEqual(2L, report.BelowMarginDropped);
        Assert.AreEqual(4L, report.PairsProduced);

        report = new BinarizationReport();
        var tied = Prompt("T", ("t1", 2), ("t2", 2), ("t3", 1));
        CollectionAssert.AreEqual(new[] { ("T", "t1", "t3"), ("T", "t2", "t3") }, Triples(Run(new() { Strategy = BinarizationStrategy.AllPairs }, report, tied)));
        Assert.AreEqual(1L, report.TiesDropped);
    }

    [TestMethod]
    public void BestVsRandomIsSeededAndDrawsOnlyStrictlyLowerScores()
    {
        var prompts = Enumerable.Range(0, 20).Select(i => A with { Prompt = "A" + i }).ToArray();
        var first = Triples(Run(new() { Seed = 7 }, null, prompts));
        var again = Triples(Run(new() { Seed = 7 }, null, prompts));
        CollectionAssert.AreEqual(first, again);
        Assert.IsTrue(first.All(p => p.Chosen == "a2"));
        var rejected = first.Select(p => p.Rejected).ToHashSet();
        Assert.IsTrue(rejected.SetEquals(new[] { "a1", "a3", "a4" }), "all three lower completions are drawn: " + string.Join(",", rejected));
        CollectionAssert.AreNotEqual(first, Triples(Run(new() { Seed = 8 }, null, prompts)));
    }

    [TestMethod]
    public void EmptyCompletionsAreNeverPairedAndAreCounted()
    {
        // The empty completion has the lowest score (a generation that stopped at once): without the rule it would be rejected.
        foreach (var strategy in Enum.GetValues<BinarizationStrategy>())
        {
            var report = new BinarizationReport();
            var pairs = Run(new() { Strategy = strategy }, report, Prompt("A", ("a1", 3), ("", 0), ("a2", 5)), Prompt("B", ("", 9), ("b1", 2)));
            Assert.IsTrue(pairs.All(p => p.Chosen.Length > 0 && p.Rejected.Length > 0), strategy.ToString());
            CollectionAssert.AreEqual(new[] { ("A", "a2", "a1") }, Triples(pairs), strategy.ToString());
            Assert.AreEqual(2L, report.EmptyCompletions, strategy.ToString());
            Assert.AreEqual(1L, report.PromptsWithoutPreference, "B has one usable completion left");
            StringAssert.Contains(report.ToString(), "2 empty completions");
        }
    }

    [TestMethod]
    public void TiesWithTheBestAreNeverPairedAndAreCounted()
    {
        var b = Prompt("B", ("b1", 5), ("b2", 5), ("b3", 2), ("b4", 1));
        var report = new BinarizationReport();
        CollectionAssert.AreEqual(new[] { ("B", "b1", "b4") }, Triples(Run(new() { Strategy = BinarizationStrategy.BestVsWorst }, report, b)));
        Assert.AreEqual(1L, report.TiesDropped);
        for (int seed = 0; seed < 20; seed++)
        {
            var pair = Run(new() { Seed = seed }, null, b).Single();
            Assert.AreEqual("b1", pair.Chosen);
            Assert.AreNotEqual("b2", pair.Rejected);
        }
    }

    [TestMethod]
    public void PromptsWithoutTwoDistinctUsableScoresAreReported()
    {
        var c = Prompt("C", ("c1", 4), ("c2", 4));
        var d = new ScoredPrompt("D", [new("d1", double.NaN), new("d2", 3)], Row: 12);
        var e = Prompt("E", ("e1", 2), ("e2", 1));
        var report = new BinarizationReport();
        var pairs = Run(new(), report, c, d, e);
        CollectionAssert.AreEqual(new[] { ("E", "e1", "e2") }, Triples(pairs));
        Assert.AreEqual(2L, report.PromptsWithoutPreference);
        CollectionAssert.AreEqual(new[] { new UnpairedPrompt("C", -1, 2), new UnpairedPrompt("D", 12, 1) }, report.UnpairedPrompts.ToArray());
        Assert.AreEqual(1L, report.CompletionsWithoutScore);
        Assert.AreEqual(3L, report.PromptsRead);
    }

    [TestMethod]
    public void MeanOfAspectRatingsPicksDifferentlyFromTheOverallScore()
    {
        // Notus: e1 has the higher overall score but the lower mean rating.
        var prompt = new ScoredPrompt("N",
        [
            new("e1", 9, new Dictionary<string, double> { ["helpfulness"] = 2, ["honesty"] = 3 }),
            new("e2", 7, new Dictionary<string, double> { ["helpfulness"] = 5, ["honesty"] = 4 }),
            new("e3", 8, new Dictionary<string, double> { ["helpfulness"] = 5, ["honesty"] = double.NaN }),
        ]);
        var overall = new BinarizationReport();
        CollectionAssert.AreEqual(new[] { ("N", "e1", "e2") },
            Triples(Run(new() { Strategy = BinarizationStrategy.BestVsWorst, Score = ScoreSource.OverallScore }, overall, prompt)));
        Assert.AreEqual(0L, overall.CompletionsWithoutScore);

        var mean = new BinarizationReport();
        CollectionAssert.AreEqual(new[] { ("N", "e2", "e1") },
            Triples(Run(new() { Strategy = BinarizationStrategy.BestVsWorst, Score = ScoreSource.MeanOfAspectRatings }, mean, prompt)));
        Assert.AreEqual(1L, mean.CompletionsWithoutScore);
        Assert.AreEqual(4.5, prompt.Completions[1].GetScore(ScoreSource.MeanOfAspectRatings));
    }

    [TestMethod]
    public void BinarizedPairsLoadAsADataView()
    {
        var view = new MLContext().Data.BinarizePreferences([A], new() { Strategy = BinarizationStrategy.BestVsWorst });
        CollectionAssert.AreEqual(new[] { ("A", "a2", "a3") }, Triples(view));
    }

    [TestMethod]
    public void NegativeMarginIsRejected() =>
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => Run(new() { Strategy = BinarizationStrategy.AllPairs, MinimumMargin = -1 }, null, A));
}
