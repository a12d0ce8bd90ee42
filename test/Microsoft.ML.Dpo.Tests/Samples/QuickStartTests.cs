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

        // The token distribution shift: DPO's answers under the SFT model, URIAL's under the base model.
        CollectionAssert.AreEqual(new[] { "DPO vs SFT", "URIAL vs base" }, summary.Shifts!.Select(s => s.Name).ToArray());
        foreach (var shift in summary.Shifts!)
        {
            Console.WriteLine($"{shift.Name}: unshifted {shift.Unshifted:P1}, marginal {shift.Marginal:P1}, shifted {shift.Shifted:P1} of {shift.Positions} tokens");
            Assert.IsTrue(shift.Positions > 0, shift.Name);
            Assert.AreEqual(1.0, shift.Unshifted + shift.Marginal + shift.Shifted, 1e-9, shift.Name);
            foreach (string ext in new[] { ".json", ".html", ".png" }) Assert.IsTrue(File.Exists(Path.ChangeExtension(shift.Report, ext)), shift.Report + ext);
        }
        Assert.IsTrue(summary.Shifts![0].Unshifted < 1, "DPO changed the answers' style, so some of its tokens are not the SFT model's first choice");
    }
}
