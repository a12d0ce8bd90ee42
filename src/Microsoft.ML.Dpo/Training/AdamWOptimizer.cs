using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Training;

/// <summary>
/// TorchSharp's AdamW with the same state, the same checkpoint format and, parameter by parameter, the same arithmetic in
/// the same order (so the same bits), but each parameter's temporaries — <c>sqrt(v)</c> and the denominator — freed before
/// the next parameter is updated. TorchSharp 0.107 runs the whole update inside one dispose scope, so those temporaries
/// of every parameter live until the step ends: twice the trainable weights' bytes at once (4 GB more peak memory for
/// full DPO of a 0.5B model, measured by the <c>scale</c> benchmark).
/// </summary>
internal sealed class AdamWOptimizer(IEnumerable<TorchSharp.Modules.Parameter> parameters, double lr, double weightDecay)
    : TorchSharp.Modules.AdamW(parameters, lr, weight_decay: weightDecay)
{
    /// <inheritdoc/>
    public override Tensor step(Func<Tensor>? closure = null)
    {
        Tensor? loss = null;
        if (closure is not null)
            using (enable_grad()) loss = closure();
        using var noGrad = no_grad();
        foreach (var group in _parameter_groups)
        {
            var options = (Options)group.Options;
            double beta1 = options.beta1!.Value, beta2 = options.beta2!.Value, weightDecay = options.weight_decay!.Value;
            double eps = options.eps!.Value, lr = options.LearningRate!.Value;
            bool amsgrad = options.amsgrad!.Value, maximize = options.maximize!.Value;
            foreach (var param in group.Parameters)
            {
                using var scope = NewDisposeScope();                                  // this parameter's temporaries only
                var state = (State)_state[param.Handle];
                if (param.grad is not { } gradient) continue;
                var grad = maximize ? -gradient : gradient;
                state.step += 1;
                param.mul_(1 - lr * weightDecay);
                double biasCorrection1 = 1 - Math.Pow(beta1, state.step), biasCorrection2 = 1 - Math.Pow(beta2, state.step);
                state.exp_avg.mul_(beta1).add_(grad, alpha: 1 - beta1);
                state.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value: 1 - beta2);
                Tensor denominator;
                if (amsgrad)
                {
                    var previous = state.max_exp_avg_sq;
                    state.max_exp_avg_sq = maximum(previous, state.exp_avg_sq).DetachFromDisposeScope();
                    previous.Dispose();
                    denominator = (state.max_exp_avg_sq.sqrt() / Math.Sqrt(biasCorrection2)).add_(eps);
                }
                else
                    denominator = (state.exp_avg_sq.sqrt() / Math.Sqrt(biasCorrection2)).add_(eps);
                param.addcdiv_(state.exp_avg, denominator, value: -(lr / biasCorrection1));
            }
        }
        return loss!;
    }
}
