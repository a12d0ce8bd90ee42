using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Training;

/// <summary>
/// Dynamic loss scaling for float16 mixed precision (<see cref="MixedPrecisionKind.Float16"/>), with PyTorch GradScaler's
/// rule and defaults: the loss is multiplied by <see cref="Scale"/> before backward, so that small gradients survive float16's
/// narrow range; before clipping and the optimizer step the float32 gradients are divided by it (<see cref="Unscale"/>).
/// When a gradient is inf or NaN the step is skipped and the scale halved (<see cref="Overflowed"/>); after
/// <see cref="GrowthInterval"/> steps in a row without overflow it doubles (<see cref="Stepped"/>). The scale is a power of
/// two, so scaling and unscaling are exact. Its state travels in the checkpoint (<see cref="TrainingState.LossScale"/>).
/// </summary>
internal sealed class LossScaler(double scale = LossScaler.InitialScale, int goodSteps = 0, int growthInterval = LossScaler.GrowthInterval)
{
    /// <summary>The first scale, 2¹⁶ (GradScaler's <c>init_scale</c>).</summary>
    public const double InitialScale = 65536;

    /// <summary>Steps without overflow before the scale doubles (GradScaler's <c>growth_interval</c>).</summary>
    public const int GrowthInterval = 2000;

    /// <summary>
    /// The smallest scale: gradients that overflow float16 even when the loss is scaled by less than one are not an underflow
    /// problem but a divergence, and training stops as it does in float32 (PyTorch would keep halving forever).
    /// </summary>
    public const double MinimumScale = 1;

    /// <summary>The current scale.</summary>
    public double Scale { get; private set; } = scale;

    /// <summary>Steps in a row without overflow since the scale last changed.</summary>
    public int GoodSteps { get; private set; } = goodSteps;

    /// <summary>Divides the gradients of <paramref name="parameters"/> by <see cref="Scale"/>, in place.</summary>
    public void Unscale(IEnumerable<Parameter> parameters)
    {
        using var _ = no_grad();
        double inverse = 1.0 / Scale;   // a power of two: exact
        foreach (var p in parameters)
            p.grad?.mul_(inverse);
    }

    /// <summary>A step whose gradients overflowed: halves the scale; false when it would fall below <see cref="MinimumScale"/>.</summary>
    public bool Overflowed()
    {
        GoodSteps = 0;
        if (Scale * 0.5 < MinimumScale) return false;
        Scale *= 0.5;
        return true;
    }

    /// <summary>A step taken without overflow: counts it, and doubles the scale after <see cref="GrowthInterval"/> of them.</summary>
    public void Stepped()
    {
        if (++GoodSteps < growthInterval) return;
        GoodSteps = 0;
        Scale *= 2;
    }
}
