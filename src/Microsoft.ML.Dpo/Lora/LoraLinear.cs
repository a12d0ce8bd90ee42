using Microsoft.ML.Dpo.Modeling;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Lora;

/// <summary>
/// A projection with a low-rank adapter: <c>y = base(x) + (α/r)·dropout(x)·Aᵀ·Bᵀ</c>. The wrapped projection is
/// registered as <c>base_layer</c> and the adapter matrices as <c>lora_A.weight</c> <c>[r, in]</c> and <c>lora_B.weight</c>
/// <c>[out, r]</c> (PEFT's names). A is initialised kaiming-uniform (a = √5, as PEFT), B = 0, so right after
/// initialisation the output equals the base projection's exactly. With <see cref="Enabled"/> false the adapter is skipped.
/// Dropout acts only in training mode with gradients enabled.
/// </summary>
public sealed class LoraLinear : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006 // PEFT names
    readonly nn.Module<Tensor, Tensor> base_layer;
    readonly LoraMatrix lora_A;
    readonly LoraMatrix lora_B;
#pragma warning restore IDE1006
    readonly double dropout;

    /// <summary>Wraps <paramref name="baseLayer"/> (a Llama <c>Linear</c>, weight <c>[out, in]</c>, or GPT-2 <c>Conv1D</c>, weight <c>[in, out]</c>).</summary>
    /// <param name="baseLayer">The projection to adapt; it is registered under this module as <c>base_layer</c>.</param>
    /// <param name="rank">The rank r.</param>
    /// <param name="scaling">The factor applied to the update (α / r).</param>
    /// <param name="dropout">Dropout probability on the adapter input in training mode.</param>
    /// <param name="generator">Random source for A; the default generator when null.</param>
    public LoraLinear(nn.Module<Tensor, Tensor> baseLayer, int rank, double scaling, double dropout = 0, Generator? generator = null)
        : base(nameof(LoraLinear))
    {
        ArgumentNullException.ThrowIfNull(baseLayer);
        if (rank < 1) throw new ArgumentOutOfRangeException(nameof(rank), rank, "rank must be at least 1.");
        base_layer = baseLayer;
        var weight = baseLayer.named_parameters().FirstOrDefault(p => p.name == "weight").parameter
            ?? throw new ArgumentException($"The projection {baseLayer.GetType().Name} has no 'weight' parameter.", nameof(baseLayer));
        if (weight.dim() != 2) throw new ArgumentException("The projection's weight must be a matrix.", nameof(baseLayer));
        FanInFanOut = baseLayer is Conv1D;
        (InFeatures, OutFeatures) = FanInFanOut ? (weight.shape[0], weight.shape[1]) : (weight.shape[1], weight.shape[0]);
        Rank = rank;
        Scaling = scaling;
        this.dropout = dropout;
        using (var scope = torch.NewDisposeScope())
        {
            // kaiming_uniform_(a = √5) on [r, in]: bound = gain·√(3 / fan_in) with gain = √(2 / (1 + a²)) = 1 / √3, i.e. 1 / √in.
            double bound = 1.0 / Math.Sqrt(InFeatures);
            var a = torch.rand(new[] { (long)rank, InFeatures }, ScalarType.Float32, generator: generator).mul_(2 * bound).sub_(bound);
            lora_A = new LoraMatrix(a.to(weight.dtype, weight.device));
            lora_B = new LoraMatrix(torch.zeros(new[] { OutFeatures, rank }, weight.dtype, weight.device));
            scope.Detach(scope.DisposablesView.ToArray());
        }
        RegisterComponents();
    }

    /// <summary>Whether the adapter contributes to the output (true by default).</summary>
    public bool Enabled { get; set; } = true;

    /// <summary>The rank r.</summary>
    public int Rank { get; }

    /// <summary>The factor applied to the update (α / r).</summary>
    public double Scaling { get; }

    /// <summary>Input features.</summary>
    public long InFeatures { get; }

    /// <summary>Output features.</summary>
    public long OutFeatures { get; }

    /// <summary>True when the base weight is stored <c>[in, out]</c> (GPT-2 Conv1D), as PEFT's <c>fan_in_fan_out</c>.</summary>
    public bool FanInFanOut { get; }

    /// <summary>The wrapped projection.</summary>
    public nn.Module<Tensor, Tensor> BaseLayer => base_layer;

    /// <summary>The base projection's weight (<c>[out, in]</c>, or <c>[in, out]</c> when <see cref="FanInFanOut"/>).</summary>
    /// <remarks>Looked up on each call: a Parameter-typed field here would be registered a second time by <c>RegisterComponents</c>.</remarks>
    public Parameter BaseWeight => base_layer.named_parameters().First(p => p.name == "weight").parameter;

    /// <summary>A <c>[r, in]</c>.</summary>
    public Parameter A => lora_A.weight;

    /// <summary>B <c>[out, r]</c>.</summary>
    public Parameter B => lora_B.weight;

    /// <inheritdoc />
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var y = ComputePrecision.Project(base_layer, x);
        if (Enabled)
        {
            var h = x.to(A.dtype);
            // Dropout only while training with gradients: scoring and generation (no_grad) stay deterministic even in train mode.
            // A checkpointed layer's first pass runs without gradients but stands for a training pass (its recomputation has them).
            if (dropout > 0 && training && (torch.is_grad_enabled() || Checkpointing.InCheckpointedForward))
            {
                Checkpointing.EnsureReplayable(h.device, "the LoRA dropout");
                h = nn.functional.dropout(h, dropout, training: true);
            }
            var update = (ComputePrecision.Current is null ? h.matmul(A.t()).matmul(B.t())   // [.., out]
                : ComputePrecision.Linear(ComputePrecision.Linear(h, A), B)).mul(Scaling);   // mixed precision: the adapters' matmuls in the compute dtype too
            y = y.add(update.to(y.dtype));
        }
        return y.MoveToOuterDisposeScope();
    }

    /// <summary>The update <c>(α/r)·B·A</c> laid out like the base weight (<c>[out, in]</c>, or <c>[in, out]</c> for Conv1D), in its dtype.</summary>
    public Tensor Delta()
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var delta = B.to(ScalarType.Float32).matmul(A.to(ScalarType.Float32)).mul(Scaling);   // [out, in]
        if (FanInFanOut) delta = delta.t();
        return delta.to(BaseWeight.dtype).contiguous().MoveToOuterDisposeScope();
    }

    /// <summary>One adapter matrix, registered as a module so that its parameter is named <c>lora_A.weight</c> / <c>lora_B.weight</c>.</summary>
    sealed class LoraMatrix : nn.Module
    {
#pragma warning disable IDE1006
        public readonly Parameter weight;
#pragma warning restore IDE1006

        public LoraMatrix(Tensor value) : base(nameof(LoraMatrix))
        {
            weight = new Parameter(value.DetachFromDisposeScope(), requires_grad: true);
            RegisterComponents();
        }
    }
}
