using static TorchSharp.torch;

namespace Microsoft.ML.Dpo;

/// <summary>
/// The per-pair result of <see cref="PreferenceLoss.Compute(PreferenceLossOptions, PreferenceLossInput)"/>: three 1-D tensors of shape [B], one entry per
/// (chosen, rejected) pair, not reduced. Disposing the output disposes the three tensors.
/// </summary>
/// <remarks>
/// The tensors are created in the dispose scope that was current when <see cref="PreferenceLoss.Compute(PreferenceLossOptions, PreferenceLossInput)"/> was called
/// (TorchSharp's usual rule for a function's results): inside a <c>torch.NewDisposeScope()</c> they are disposed with
/// that scope; outside any scope they live until this output (or the tensor) is disposed. Disposing twice is harmless.
/// </remarks>
public sealed class PreferenceLossOutput : IDisposable
{
    internal PreferenceLossOutput(Tensor losses, Tensor chosenRewards, Tensor rejectedRewards)
    {
        Losses = losses;
        ChosenRewards = chosenRewards;
        RejectedRewards = rejectedRewards;
    }

    /// <summary>
    /// The loss of each pair, shape [B]. Attached to the autograd graph of the policy log-probabilities; the trainer
    /// reduces it (usually <c>Losses.mean()</c>) and calls <c>backward()</c>.
    /// </summary>
    public Tensor Losses { get; }

    /// <summary>
    /// The implicit reward of each chosen completion, shape [B], detached from the graph:
    /// <c>β·(π<sub>c</sub> − ref<sub>c</sub>)</c>, or <c>β·π<sub>c</sub></c> for SimPO.
    /// </summary>
    public Tensor ChosenRewards { get; }

    /// <summary>
    /// The implicit reward of each rejected completion, shape [B], detached from the graph:
    /// <c>β·(π<sub>r</sub> − ref<sub>r</sub>)</c>, or <c>β·π<sub>r</sub></c> for SimPO.
    /// </summary>
    public Tensor RejectedRewards { get; }

    /// <summary>Disposes <see cref="Losses"/>, <see cref="ChosenRewards"/> and <see cref="RejectedRewards"/>.</summary>
    public void Dispose()
    {
        Losses.Dispose();
        ChosenRewards.Dispose();
        RejectedRewards.Dispose();
    }
}
