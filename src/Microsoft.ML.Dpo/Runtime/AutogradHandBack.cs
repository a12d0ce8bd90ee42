using System.Collections.Concurrent;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Runtime;

/// <summary>
/// Gradients that a custom autograd function (<see cref="Training.ChunkedLogProbs"/>, <see cref="Modeling.Checkpointing"/>)
/// hands back to libtorch's engine. The engine takes its own reference when the backward function returns, but the managed
/// wrappers must stay valid until then, and the backward pass may run on an engine thread without a dispose scope; so they
/// are kept here and released later, by <see cref="Release"/> at the next custom-function call (or by a test).
/// </summary>
internal static class AutogradHandBack
{
    static readonly ConcurrentQueue<Tensor> Pending = new();

    /// <summary>Detaches <paramref name="grad"/> from every dispose scope and keeps it until the next <see cref="Release"/>; returns it.</summary>
    public static Tensor Keep(Tensor grad)
    {
        grad.DetachFromDisposeScope();
        Pending.Enqueue(grad);
        return grad;
    }

    /// <summary>Disposes the wrappers of gradients handed back by backward functions that have returned (the engine holds its own references).</summary>
    public static void Release()
    {
        while (Pending.TryDequeue(out var grad)) grad.Dispose();
    }
}
