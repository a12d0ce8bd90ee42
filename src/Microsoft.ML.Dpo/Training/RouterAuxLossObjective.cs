using Microsoft.ML.Dpo.Losses;
using Microsoft.ML.Dpo.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Training;

/// <summary>
/// Adds the router losses of a sparse mixture-of-experts network to any objective (SFT, DPO, reward model), as transformers'
/// <c>MixtralForCausalLM</c> and TRL's trainers do: <c>loss += coef · load_balancing_loss(router logits, attention mask)</c>,
/// computed over every MoE layer of the objective's forward pass through <paramref name="network"/> (a DPO pass over chosen
/// and rejected rows together; reference passes are not counted), plus <c>zCoef · z_loss</c> when asked. Reports
/// <c>aux_loss</c> (and <c>router_z_loss</c>); <c>loss</c> becomes the total that is optimised.
/// </summary>
internal sealed class RouterAuxLossObjective<TExample>(ITrainingObjective<TExample> inner, CausalLM network, double auxCoefficient, double zCoefficient)
    : ITrainingObjective<TExample>
{
    /// <summary>
    /// <paramref name="objective"/> with the router losses of <paramref name="network"/> added; the objective itself for a dense network.
    /// <paramref name="auxCoefficient"/> null means the config's <c>router_aux_loss_coef</c>.
    /// </summary>
    public static ITrainingObjective<TExample> Wrap(ITrainingObjective<TExample> objective, CausalLM network, double? auxCoefficient, double zCoefficient)
    {
        if (!network.Config.IsMixtureOfExperts) return objective;
        double aux = auxCoefficient ?? network.Config.RouterAuxLossCoef;
        return new RouterAuxLossObjective<TExample>(objective, network, aux, zCoefficient);
    }

    public double LossDenominator(IReadOnlyList<TExample> batch) => inner.LossDenominator(batch);

    public StepFlops? Flops(IReadOnlyList<TExample> batch) => inner.Flops(batch);

    public string? ShardingCaveat => "The MoE load-balancing loss is a product of means over the tokens of one forward pass, so it differs between one batch and its shards.";

    public void AfterStep(int step) => inner.AfterStep(step);

    public bool SupportsPaddingFree => inner.SupportsPaddingFree;

    public long? BatchTokens(IReadOnlyList<TExample> batch) => inner.BatchTokens(batch);

    public void AfterReport(int step, IReadOnlyDictionary<string, double> metrics) => inner.AfterReport(step, metrics);

    public ObjectiveResult Compute(IReadOnlyList<TExample> batch)
    {
        using var recording = network.RecordRouterLogits()!;
        var result = inner.Compute(batch);
        if (recording.Forwards.Count == 0 || recording.Forwards.Any(f => f.RouterLogits.Count == 0))
            throw new InvalidOperationException("The objective ran no forward pass through the MoE network, so there are no router logits for the auxiliary loss.");
        var c = network.Config;
        // One value per recorded forward pass (the objectives make one); averaged if there are several.
        Tensor aux = stack(recording.Forwards.Select(f => RouterLoss.LoadBalancing(f.RouterLogits, c.NumExperts, c.NumExpertsPerToken, f.AttentionMask)).ToArray()).mean();
        Tensor loss = result.Loss + auxCoefficient * aux.to(result.Loss.dtype);
        var metrics = new Dictionary<string, double>(result.Metrics) { ["aux_loss"] = aux.ToDouble() };
        if (zCoefficient > 0)
        {
            Tensor z = stack(recording.Forwards.Select(f => RouterLoss.ZLoss(f.RouterLogits, f.AttentionMask)).ToArray()).mean();
            loss = loss + zCoefficient * z.to(result.Loss.dtype);
            metrics["router_z_loss"] = z.ToDouble();
        }
        metrics["loss"] = loss.ToDouble();
        return new ObjectiveResult(loss, metrics, result.Tokens);
    }
}
