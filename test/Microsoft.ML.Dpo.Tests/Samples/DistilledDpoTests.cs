using DistilledDpo;

namespace Microsoft.ML.Dpo.Tests.Samples;

/// <summary>The distilled-DPO sample end to end: AI feedback must produce pairs, and dDPO must beat dSFT on held-out prompts.</summary>
[TestClass]
public sealed class DistilledDpoTests
{
    [TestMethod]
    public void DistilledDpoBeatsTheSftModelOnHeldOutPrompts()
    {
        using var dir = new TempDirectory();
        var summary = DistilledDpoApp.Run(dir.Path, completionsPerPrompt: 8, seed: 42);
        Console.WriteLine(System.Text.Json.JsonSerializer.Serialize(summary));
        Assert.IsTrue(summary.PairsFromFeedback >= 50, $"pairs from AI feedback: {summary.PairsFromFeedback}");
        Assert.IsTrue(summary.DpoWinRateOverSft > 0.5, $"dDPO judged win rate {summary.DpoWinRateOverSft}");
        Assert.IsTrue(summary.DpoPreferredStyleRate > summary.SftPreferredStyleRate + 0.3,
            $"preferred style: dSFT {summary.SftPreferredStyleRate}, dDPO {summary.DpoPreferredStyleRate}");
        Assert.IsTrue(File.Exists(Path.Combine(dir.Path, "summary.json")));
        Assert.IsTrue(summary.DpoShiftFromSft!.Positions > 0 && summary.DpoShiftFromSft.Unshifted < 1, "dDPO's answers differ from dSFT's first choices somewhere");
        Assert.IsTrue(summary.UrialShiftFromBase!.Positions > 0);
        foreach (string f in new[] { "ddpo-vs-dsft", "urial-vs-base" })
            foreach (string ext in new[] { ".json", ".html", ".png" }) Assert.IsTrue(File.Exists(Path.Combine(dir.Path, "shift", f + ext)), f + ext);
    }
}
