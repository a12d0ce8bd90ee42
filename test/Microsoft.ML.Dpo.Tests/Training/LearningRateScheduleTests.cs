using Microsoft.ML.Dpo.Training;

namespace Microsoft.ML.Dpo.Tests.Training;

[TestClass]
public sealed class LearningRateScheduleTests
{
    [TestMethod]
    public void WarmupThenDecay()
    {
        // 2 warm-up steps then 8 decay steps.
        Assert.AreEqual(1 / 3.0, LearningRateSchedule.Factor(LearningRateScheduleKind.Linear, 0, 2, 10), 1e-12);
        Assert.AreEqual(2 / 3.0, LearningRateSchedule.Factor(LearningRateScheduleKind.Linear, 1, 2, 10), 1e-12);
        Assert.AreEqual(1.0, LearningRateSchedule.Factor(LearningRateScheduleKind.Linear, 2, 2, 10), 1e-12);
        Assert.AreEqual(0.5, LearningRateSchedule.Factor(LearningRateScheduleKind.Linear, 6, 2, 10), 1e-12);
        Assert.AreEqual(0.5, LearningRateSchedule.Factor(LearningRateScheduleKind.Cosine, 6, 2, 10), 1e-12);
        Assert.AreEqual((1 + Math.Cos(Math.PI / 4)) / 2, LearningRateSchedule.Factor(LearningRateScheduleKind.Cosine, 4, 2, 10), 1e-12);
        Assert.AreEqual(1.0, LearningRateSchedule.Factor(LearningRateScheduleKind.Constant, 9, 2, 10), 1e-12);
    }
}
