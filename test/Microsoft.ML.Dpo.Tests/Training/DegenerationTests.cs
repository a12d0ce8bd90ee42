using Microsoft.ML.Dpo.Training;

namespace Microsoft.ML.Dpo.Tests.Training;

/// <summary>The degeneration check of evaluation by generation (<c>eval/degenerate_rate</c>).</summary>
[TestClass]
public sealed class DegenerationTests
{
    [TestMethod]
    public void LoopsAreDegenerateAndOrdinaryAnswersAreNot()
    {
        Assert.AreEqual(0.0, GenerationEvaluation.RepeatedCharNgramShare("Gladly, friend!"));
        Assert.AreEqual(4.0 / 6, GenerationEvaluation.RepeatedCharNgramShare("CUCUCUCUC"), 1e-15);   // CUCU UCUC, then 4 of the 6 repeat
        Assert.AreEqual(0.0, GenerationEvaluation.RepeatedCharNgramShare("abcabc"), "shorter than 2n characters");
        foreach (var loop in new[] { "CU CU CU CU", "Happy Happy Happy", "!!!!!!!!!!", "Glay ay ay ay ay ay ", "Happy to help! Happy to help! Happy to help!" })
            Assert.IsTrue(GenerationEvaluation.IsDegenerate(loop), loop);
        foreach (var fine in new[] { "", "No.", "Happy to help!", "Of course, with pleasure!", "Here is a tall table. Happy to help.",
                                     "Owls are nocturnal birds of prey that hunt small mammals at night." })
            Assert.IsFalse(GenerationEvaluation.IsDegenerate(fine), fine);
    }
}
