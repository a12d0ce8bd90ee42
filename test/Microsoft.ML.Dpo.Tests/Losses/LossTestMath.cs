using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Losses;

/// <summary>Reference formulas in plain doubles (independent of TorchSharp) and tensor helpers for the loss tests.</summary>
internal static class LossTestMath
{
    public static double Sigmoid(double x) => x >= 0 ? 1 / (1 + Math.Exp(-x)) : Math.Exp(x) / (1 + Math.Exp(x));

    /// <summary>log σ(x) = −log(1 + e^(−x)), written in the overflow-safe form.</summary>
    public static double LogSigmoid(double x) => x >= 0 ? -Math.Log(1 + Math.Exp(-x)) : x - Math.Log(1 + Math.Exp(x));

    public static Tensor T(params double[] values) => tensor(values, ScalarType.Float64);

    public static double[] D(Tensor t) => t.detach().to_type(ScalarType.Float64).data<double>().ToArray();

    public static void AssertClose(double[] expected, Tensor actual, double tolerance = 1e-12, string? what = null)
    {
        double[] got = D(actual);
        Assert.HasCount(expected.Length, got, what);
        for (int i = 0; i < expected.Length; i++)
            Assert.AreEqual(expected[i], got[i], tolerance, $"{what} [{i}]: expected {expected[i]:R}, got {got[i]:R}");
    }
}
