using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Modeling;

// Small building blocks. Field names are the Hugging Face parameter names: RegisterComponents() registers
// each field under its own name, so state_dict() keys match checkpoint keys.

/// <summary>The precision of numerically sensitive steps (norms, softmax): float32 for half types, never narrower than the input.</summary>
internal static class Precision
{
    public static ScalarType Wide(ScalarType dtype) => dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;
}

/// <summary>RMSNorm (Llama): y = weight · x / sqrt(mean(x²) + eps), computed in float32.</summary>
internal sealed class RMSNorm : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006 // Hugging Face names
    readonly Parameter weight;   // [H]
#pragma warning restore IDE1006
    readonly double _eps;

    public RMSNorm(long size, double eps) : base(nameof(RMSNorm))
    {
        weight = new Parameter(torch.ones(size).DetachFromDisposeScope());
        _eps = eps;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var xf = x.to(Precision.Wide(x.dtype));                               // [.., H]
        var inv = xf.pow(2).mean(new long[] { -1 }, keepdim: true).add(_eps).rsqrt();
        return weight.mul(xf.mul(inv).to(x.dtype)).MoveToOuterDisposeScope();
    }
}

/// <summary>LayerNorm (GPT-2) with weight and bias, computed in float32.</summary>
internal sealed class LayerNorm : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    readonly Parameter weight;   // [H]
    readonly Parameter bias;     // [H]
#pragma warning restore IDE1006
    readonly double _eps;

    public LayerNorm(long size, double eps) : base(nameof(LayerNorm))
    {
        weight = new Parameter(torch.ones(size).DetachFromDisposeScope());
        bias = new Parameter(torch.zeros(size).DetachFromDisposeScope());
        _eps = eps;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var wide = Precision.Wide(x.dtype);
        var y = nn.functional.layer_norm(x.to(wide), new[] { weight.shape[0] }, weight.to(wide), bias.to(wide), _eps);
        return y.to(x.dtype).MoveToOuterDisposeScope();
    }
}

/// <summary>GPT-2's Conv1D: a linear layer whose weight is stored transposed, <c>[in, out]</c>, as in the checkpoints.</summary>
internal sealed class Conv1D : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    readonly Parameter weight;   // [in, out]
    readonly Parameter bias;     // [out]
#pragma warning restore IDE1006

    public Conv1D(long inFeatures, long outFeatures) : base(nameof(Conv1D))
    {
        weight = new Parameter(torch.empty(inFeatures, outFeatures).DetachFromDisposeScope());
        bias = new Parameter(torch.zeros(outFeatures).DetachFromDisposeScope());
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var y = torch.addmm(bias, x.reshape(-1, weight.shape[0]), weight, 1, 1);           // [N, out]
        return y.view(x.shape.Take(x.shape.Length - 1).Append(weight.shape[1]).ToArray()).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// Gemma's RMSNorm: y = x / sqrt(mean(x²) + eps) · (1 + weight), all in float32, then cast; the weight starts at zero
/// (Gemma, Gemma 2, Gemma 3 and their q/k norms).
/// </summary>
internal sealed class GemmaRMSNorm : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006 // Hugging Face names
    readonly Parameter weight;   // [H]
#pragma warning restore IDE1006
    readonly double _eps;

    public GemmaRMSNorm(long size, double eps) : base(nameof(GemmaRMSNorm))
    {
        weight = new Parameter(torch.zeros(size).DetachFromDisposeScope());
        _eps = eps;
        RegisterComponents();
    }

    /// <summary>Hugging Face initialises the (1 + w) gain at w = 0.</summary>
    internal void ResetWeight()
    {
        using var noGrad = torch.no_grad();
        weight.zero_();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var wide = Precision.Wide(x.dtype);
        var xf = x.to(wide);                                                     // [.., H]
        var normed = xf.mul(xf.pow(2).mean(new long[] { -1 }, keepdim: true).add(_eps).rsqrt());
        return normed.mul(weight.to(wide).add(1.0)).to(x.dtype).MoveToOuterDisposeScope();
    }
}
