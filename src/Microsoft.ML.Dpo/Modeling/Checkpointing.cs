using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Modeling;

/// <summary>
/// Gradient checkpointing of decoder layers (<see cref="Training.TrainingOptions.GradientCheckpointing"/>): while it is
/// enabled on a thread, each decoder layer of a forward pass with gradients on runs without keeping its activations
/// (only its input and the shared rotary tables and masks are kept), and the backward pass runs the layer's forward
/// again, this time with autograd, and back-propagates through that recomputation. Every architecture's layer loop calls
/// <see cref="Run"/>.
/// </summary>
/// <remarks>
/// <para>The recomputation is the same forward on the same inputs: the CPU random state is saved before the first pass
/// and restored around the second (LoRA dropout and MoE router jitter draw the same numbers; the random stream after the
/// backward pass is the one it would be without checkpointing). TorchSharp 0.107 exposes no CUDA random state, so a
/// random draw inside a checkpointed layer on a GPU is refused (<see cref="EnsureReplayable"/>).</para>
/// <para>The layer's parameters receive their gradient from the recomputation's own backward pass (accumulated into
/// <c>.grad</c> once, as for an ordinary backward); the layer's input receives its gradient through the outer graph.
/// The trainable parameters are also inputs of the checkpoint node, so a layer whose input needs no gradient (LoRA with a
/// frozen embedding) is still back-propagated. Tensors a layer hands outside itself (the MoE router logits for the
/// load-balancing loss, <see cref="Divert"/>) become further outputs of the node, so their gradient reaches the router
/// through the recomputation and they are recorded once.</para>
/// <para>A key/value cache is refused with checkpointing (caches serve generation, which runs without gradients).</para>
/// </remarks>
internal static class Checkpointing
{
    [ThreadStatic] static int _enabled;
    [ThreadStatic] static Frame? _frame;

    static long _recomputed;

    /// <summary>Layers recomputed by backward passes so far in this process (tests check that checkpointing took place).</summary>
    internal static long RecomputedLayers => Interlocked.Read(ref _recomputed);

    // Exceptions of backward passes (say, out of memory while recomputing), kept for ThrowIfBackwardFailed.
    static readonly List<Exception> Failures = new();

    /// <summary>
    /// Throws when the backward pass of a checkpointed layer failed since the last call (the exception cannot leave
    /// libtorch's autograd engine, which called it): the gradients are then incomplete and must not be applied.
    /// </summary>
    public static void ThrowIfBackwardFailed()
    {
        Exception? failure;
        lock (Failures)
        {
            failure = Failures.FirstOrDefault();
            Failures.Clear();
        }
        if (failure is not null)
            throw new InvalidOperationException($"The backward pass of a gradient-checkpointed layer failed: {failure.Message}", failure);
    }

    /// <summary>Checkpoints the decoder layers of forward passes with gradients on this thread until the returned scope is disposed (nothing when <paramref name="on"/> is false).</summary>
    public static IDisposable Enable(bool on = true)
    {
        if (!on) return NoScope.Instance;
        _enabled++;
        return new EnabledScope();
    }

    /// <summary>
    /// Whether a layer called now is to be checkpointed: enabled on this thread, gradients on, and not already inside a
    /// checkpointed layer. A <paramref name="cache"/> with checkpointing on is refused.
    /// </summary>
    public static bool Applies(KvCache? cache)
    {
        if (_enabled == 0 || _frame is not null || !torch.is_grad_enabled()) return false;
        if (cache is not null)
            throw new InvalidOperationException("Gradient checkpointing recomputes each layer in the backward pass and cannot extend a key/value cache; " +
                "run cached (generation) passes without gradients (no_grad), or turn checkpointing off.");
        return true;
    }

    /// <summary>
    /// Whether code runs inside the first, gradient-free pass of a checkpointed layer: a layer that acts differently while
    /// training with gradients (LoRA dropout) must act so here too, since the recomputation runs with gradients.
    /// </summary>
    public static bool InCheckpointedForward => _frame is { Recompute: false };

    /// <summary>
    /// Refuses a random draw inside a checkpointed layer on a device whose random state cannot be saved (any but the CPU
    /// in TorchSharp 0.107): the recomputation would draw other numbers than the forward pass did.
    /// </summary>
    /// <param name="device">Where the draw happens.</param>
    /// <param name="what">What draws, for the message (e.g. "LoRA dropout").</param>
    public static void EnsureReplayable(Device device, string what)
    {
        if (_frame is null || device.type == DeviceType.CPU) return;
        throw new NotSupportedException($"Gradient checkpointing (GradientCheckpointing, --gradient-checkpointing) cannot replay {what} on {device}: " +
            $"TorchSharp does not expose that device's random state. Set {what} to 0 or train without checkpointing.");
    }

    /// <summary>
    /// Called by code inside a layer that hands <paramref name="tensor"/> outside the layer (the MoE router logits). Outside
    /// a checkpointed layer it returns false and the caller proceeds as usual. Inside, it returns true and takes over: in the
    /// forward pass, when <paramref name="wanted"/>, the tensor becomes an output of the checkpoint node and is passed to
    /// <paramref name="deliver"/> after the node is built (with its gradient path through the recomputation); in the
    /// recomputation it is kept for the backward pass and nothing is delivered again.
    /// </summary>
    public static bool Divert(Tensor tensor, bool wanted, Action<Tensor> deliver)
    {
        if (_frame is not { } frame) return false;
        if (!frame.Recompute)
        {
            frame.Wanted.Add(wanted);
            if (wanted)
            {
                frame.Sides.Add(tensor.alias().DetachFromDisposeScope());
                frame.Deliveries.Add(deliver);
            }
            return true;
        }
        int call = frame.Calls++;
        if (call >= frame.Wanted.Count) throw new InvalidOperationException("The recomputation of a checkpointed layer handed out more tensors than its forward pass did.");
        if (frame.Wanted[call]) frame.Sides.Add(tensor.alias().DetachFromDisposeScope());   // the backward pass's scope takes it
        return true;
    }

    /// <summary>
    /// Runs <paramref name="forward"/>(<paramref name="x"/>, <paramref name="constants"/>) — one decoder layer — checkpointed:
    /// its activations are not kept, and the backward pass recomputes them. <paramref name="constants"/> are the tensors the
    /// layer reads besides its input (rotary tables, masks; null entries allowed); they must not need gradients. The
    /// layer's trainable parameters are taken from <paramref name="layer"/>.
    /// </summary>
    /// <returns>The layer's output <c>[B, T, H]</c>, attached to the graph through the checkpoint node.</returns>
    public static Tensor Run(nn.Module layer, Tensor x, Tensor?[] constants, Func<Tensor, Tensor?[], Tensor> forward)
    {
        ThrowIfBackwardFailed();
        Runtime.AutogradHandBack.Release();
        foreach (var c in constants)
            if (c is not null && c.requires_grad) throw new ArgumentException("A checkpointed layer's constant inputs must not require gradients.", nameof(constants));
        var trainable = layer.parameters().Where(p => p.requires_grad).ToArray();
        byte[] rng;
        using (var state = torch.get_rng_state()) rng = state.data<byte>().ToArray();
        var call = new Call(forward, constants.Length, trainable.Length, x.requires_grad, rng)
        {
            // A packed batch's layout rides on its marker mask (PackedSequences); the saved copies handed to the backward pass
            // are new tensor objects, so the layout is carried here and attached to them again before the recomputation.
            Layouts = constants.Select(PackedSequences.Of).ToArray(),
        };
        var vars = new object?[2 + constants.Length + trainable.Length];
        vars[0] = call;
        vars[1] = x;
        for (int i = 0; i < constants.Length; i++) vars[2 + i] = constants[i];
        for (int i = 0; i < trainable.Length; i++) vars[2 + constants.Length + i] = trainable[i];
        using var scope = torch.NewDisposeScope();
        List<Tensor> outputs;
        try
        {
            outputs = LayerFunction.apply(vars!);
        }
        finally
        {
            foreach (var side in call.FirstPass?.Sides ?? []) side.Dispose();
        }
        if (call.FirstPass is { } first)
            for (int i = 0; i < first.Deliveries.Count; i++) first.Deliveries[i](outputs[1 + i]);
        return outputs[0].MoveToOuterDisposeScope();
    }

    /// <summary>What one checkpointed call needs in its backward pass besides the saved tensors.</summary>
    sealed class Call(Func<Tensor, Tensor?[], Tensor> forward, int constants, int parameters, bool inputRequiresGrad, byte[] rngState)
    {
        public Func<Tensor, Tensor?[], Tensor> Forward { get; } = forward;
        public int Constants { get; } = constants;
        public int Parameters { get; } = parameters;
        public bool InputRequiresGrad { get; } = inputRequiresGrad;
        public byte[] RngState { get; } = rngState;
        public Frame? FirstPass { get; set; }
        public PackedSequences?[] Layouts { get; init; } = [];
    }

    /// <summary>One pass through a checkpointed layer: the tensors diverted out of it.</summary>
    sealed class Frame(bool recompute)
    {
        public bool Recompute { get; } = recompute;
        public List<bool> Wanted { get; init; } = new();
        public List<Tensor> Sides { get; } = new();
        public List<Action<Tensor>> Deliveries { get; } = new();
        public int Calls { get; set; }
    }

    sealed class LayerFunction : autograd.MultiTensorFunction<LayerFunction>
    {
        public override string Name => "CheckpointedDecoderLayer";

        // Runs under no_grad (TorchSharp's Function.apply): nothing inside the layer is kept for backward.
        public override List<Tensor> forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var call = (Call)vars[0];
            var x = (Tensor)vars[1];
            var constants = new Tensor?[call.Constants];
            for (int i = 0; i < constants.Length; i++) constants[i] = vars[2 + i] as Tensor;
            var saved = new List<Tensor> { x };
            saved.AddRange(constants!);
            ctx.save_for_backward(saved);
            ctx.save_data("call", call);
            ctx.set_materialize_grads(false);
            var frame = new Frame(recompute: false);
            call.FirstPass = frame;
            var outer = _frame;
            _frame = frame;
            Tensor y;
            try
            {
                y = call.Forward(x, constants);
            }
            finally
            {
                _frame = outer;
            }
            return [y, .. frame.Sides];
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, List<Tensor> gradOutputs)
        {
            var call = (Call)ctx.get_data("call");
            // One entry per argument of apply: the call object, the input, the constants, the parameters (accumulated by the recomputation).
            var result = new List<Tensor>(new Tensor[2 + call.Constants + call.Parameters]);
            try
            {
                result[1] = Recompute(ctx, call, gradOutputs)!;
            }
            catch (Exception e)
            {
                // An exception must not cross into libtorch's autograd engine (it would end the process): it is kept and
                // thrown by ThrowIfBackwardFailed (the training loop calls it before each optimizer step) or the next checkpointed pass.
                lock (Failures) Failures.Add(e);
            }
            return result;
        }

        static Tensor? Recompute(autograd.AutogradContext ctx, Call call, List<Tensor> gradOutputs)
        {
            Runtime.AutogradHandBack.Release();
            var first = call.FirstPass ?? throw new InvalidOperationException("A checkpointed layer's backward pass ran before its forward pass.");
            Tensor? inputGrad = null;
            using (var scope = torch.NewDisposeScope())
            {
                var saved = ctx.get_saved_variables();
                var constants = saved.Skip(1).Select(t => t is null || t.IsInvalid ? null : t).ToArray();
                for (int i = 0; i < constants.Length && i < call.Layouts.Length; i++)
                    if (call.Layouts[i] is { } layout && constants[i] is { } marker) PackedSequences.Register(marker, layout);
                var frame = new Frame(recompute: true) { Wanted = first.Wanted };
                Tensor y, x;
                byte[] current;
                using (var state = torch.get_rng_state()) current = state.data<byte>().ToArray();
                var outer = _frame;
                try
                {
                    using (var replay = torch.tensor(call.RngState)) torch.set_rng_state(replay);
                    using var grad = torch.enable_grad();
                    x = saved[0].detach().requires_grad_(call.InputRequiresGrad);
                    _frame = frame;
                    y = call.Forward(x, constants);
                }
                finally
                {
                    _frame = outer;
                    scope.Attach(frame.Sides);
                    using var restore = torch.tensor(current);
                    torch.set_rng_state(restore);
                }
                Interlocked.Increment(ref _recomputed);
                if (frame.Sides.Count != first.Sides.Count)
                    throw new InvalidOperationException($"The recomputation of a checkpointed layer handed out {frame.Sides.Count} tensors, its forward pass {first.Sides.Count}.");
                var roots = new List<Tensor>();
                var grads = new List<Tensor>();
                var outputs = new List<Tensor> { y };
                outputs.AddRange(frame.Sides);
                for (int i = 0; i < outputs.Count && i < gradOutputs.Count; i++)
                {
                    var g = gradOutputs[i];
                    if (g is null || g.IsInvalid || !outputs[i].requires_grad) continue;
                    roots.Add(outputs[i]);
                    grads.Add(g);
                }
                if (roots.Count > 0) torch.autograd.backward(roots, grads);
                if (call.InputRequiresGrad && x.grad is { } g0) inputGrad = Runtime.AutogradHandBack.Keep(g0);
            }
            return inputGrad;
        }
    }

    sealed class EnabledScope : IDisposable
    {
        bool _done;
        public void Dispose()
        {
            if (_done) return;
            _done = true;
            _enabled--;
        }
    }

    sealed class NoScope : IDisposable
    {
        public static readonly NoScope Instance = new();
        public void Dispose() { }
    }
}
