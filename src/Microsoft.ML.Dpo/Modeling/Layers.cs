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

/// <summary>
/// Mixed-precision compute, the part of PyTorch's autocast that training needs (TorchSharp 0.107 has no autocast): inside
/// <see cref="Use"/>, every matmul against a float32 weight — the linear projections (<see cref="Project"/>, GPT-2's
/// <see cref="Conv1D"/>, LoRA adapters) and the output head (<see cref="Linear"/>) — casts its input and weight to the compute
/// dtype (bfloat16 or float16) for the matmul. The weights stay float32 Parameters (the master weights): the cast is part of
/// the autograd graph, so their gradients arrive in float32. Everything else keeps the dtype it is given: embeddings, norms
/// and softmax (<see cref="Precision.Wide"/>, <see cref="CausalLM.Attend"/>) and the residual stream stay float32 (a
/// float32 + bfloat16 sum is float32), and so do the logits' log-softmax and the loss. The MoE routers stay float32 too (they
/// pick the experts). The setting is per thread, as autocast's is; outside <see cref="Use"/> nothing changes.
/// </summary>
internal static class ComputePrecision
{
    [ThreadStatic] static ScalarType? current;

    /// <summary>The compute dtype of the matmuls on this thread, or null (each matmul in its operands' dtype).</summary>
    public static ScalarType? Current => current;

    /// <summary>Runs the matmuls in <paramref name="dtype"/> (null: off) until the returned scope is disposed; scopes nest.</summary>
    public static IDisposable Use(ScalarType? dtype)
    {
        if (dtype is not (null or ScalarType.BFloat16 or ScalarType.Float16))
            throw new ArgumentException($"The compute dtype must be BFloat16 or Float16, got {dtype}.", nameof(dtype));
        var scope = new Scope(current);
        current = dtype;
        return scope;
    }

    /// <summary><c>x·weightᵀ + bias</c>, in the compute dtype when one is set and the weight is float32.</summary>
    public static Tensor Linear(Tensor x, Tensor weight, Tensor? bias = null)
    {
        if (current is not ScalarType dtype || weight.dtype != ScalarType.Float32) return nn.functional.linear(x, weight, bias);
        return nn.functional.linear(x.to(dtype), weight.to(dtype), bias?.to(dtype));
    }

    /// <summary>Applies a projection module: a TorchSharp <c>Linear</c> through <see cref="Linear"/>, any other module (Conv1D, LoRA) by its own forward.</summary>
    public static Tensor Project(nn.Module<Tensor, Tensor> projection, Tensor x) =>
        current is not null && projection is TorchSharp.Modules.Linear linear ? Linear(x, linear.weight!, linear.bias) : projection.forward(x);

    sealed class Scope(ScalarType? previous) : IDisposable
    {
        bool disposed;

        public void Dispose()
        {
            if (disposed) return;
            disposed = true;
            current = previous;
        }
    }
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
        var y = ComputePrecision.Current is ScalarType dtype && weight.dtype == ScalarType.Float32
            ? torch.addmm(bias.to(dtype), x.reshape(-1, weight.shape[0]).to(dtype), weight.to(dtype), 1, 1)                 // mixed precision: [N, out]
            : torch.addmm(bias, x.reshape(-1, weight.shape[0]), weight, 1, 1);           // [N, out]
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
