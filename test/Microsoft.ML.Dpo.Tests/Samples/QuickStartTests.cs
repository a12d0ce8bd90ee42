using QuickStart;

namespace Microsoft.ML.Dpo.Tests.Samples;

/// <summary>The quick start, shortened (no LoRA run), end to end: it must show alignment, not just run.</summary>
[TestClass]
public sealed class QuickStartTests
{
    [TestMethod]
    public void QuickStartAlignsTheModelAndWritesTheEvidence()
    {
        using var dir = new TempDirectory();
        var summary = QuickStartApp.Run(new QuickStartSettings(dir.Path, Model: null, Data: null, SftData: null, Quick: true, Seed: 42));
        var dpo = summary.Models.Single(m => m.Name == "DPO");
        Console.WriteLine($"SFT prefers chosen {summary.SftPrefersChosen:P0}, preferred style {summary.SftPreferredStyleRate:P0}; " +
                          $"DPO accuracy {dpo.PreferenceAccuracy:P0}, win rate {dpo.WinRateOverSft:P0}, preferred style {dpo.PreferredStyleRate:P0}; {summary.Seconds:F0} s");

        Assert.IsTrue(summary.SftPrefersChosen < 0.5, "the SFT model starts out preferring the rejected style");
        Assert.IsTrue(dpo.PreferenceAccuracy >= 0.9, $"held-out preference accuracy {dpo.PreferenceAccuracy}");
        Assert.IsTrue(dpo.WinRateOverSft >= 0.7, $"judged win rate {dpo.WinRateOverSft}");
        Assert.IsTrue(dpo.PreferredStyleRate >= 0.5, $"share of greedy answers in the preferred style {dpo.PreferredStyleRate}");
        foreach (string plot in summary.Plots)
        {
            Assert.IsTrue(File.Exists(plot), plot);
            CollectionAssert.AreEqual(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, File.ReadAllBytes(plot)[..4], plot);
        }
        Assert.AreEqual(4, summary.Plots.Count);
        Assert.IsTrue(File.Exists(Path.Combine(dir.Path, "summary.json")));
    }
}
