namespace Microsoft.ML.Dpo.Training;

/// <summary>The learning-rate multiplier at each optimizer step: linear warm-up, then constant, linear or cosine decay.</summary>
internal static class LearningRateSchedule
{
    /// <summary>The multiplier of the peak learning rate for the step about to be taken (0-based).</summary>
    public static double Factor(LearningRateScheduleKind kind, int step, int warmupSteps, int totalSteps)
    {
        if (step < warmupSteps) return (step + 1.0) / (warmupSteps + 1.0);
        if (kind == LearningRateScheduleKind.Constant) return 1.0;
        double decaySteps = Math.Max(1, totalSteps - warmupSteps);
        double progress = Math.Clamp((step - warmupSteps) / decaySteps, 0.0, 1.0);
        return kind == LearningRateScheduleKind.Linear ? 1.0 - progress : 0.5 * (1.0 + Math.Cos(Math.PI * progress));
    }
}
