using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Losses;

/// <summary>The auxiliary losses of sparse mixture-of-experts routers.</summary>
internal static class RouterLoss
{
    /// <summary>
    /// The load-balancing loss of Switch Transformer (Fedus et al. 2021, eqs. 4–6) as Hugging Face's
    /// <c>load_balancing_loss_func</c> computes it over the router logits of all MoE layers of one forward pass:
    /// <code>
    ///   p = softmax(logits) over the E experts, for every (layer, token)         [L·N, E]
    ///   f_e = share of the top-k slots that chose expert e                       [k, E]  (per slot rank, as HF does)
    ///   P_e = mean router probability of expert e                                [E]
    ///   loss = E · Σ_{j,e} f_{j,e} · P_e
    /// </code>
    /// With an attention mask <c>[B, T]</c>, both means run over real tokens only (padding left out), exactly as HF does.
    /// A perfectly balanced router gives k (each of the k slot ranks contributes 1).
    /// </summary>
    /// <param name="layerLogits">Router logits <c>[B·T, E]</c> of each MoE layer, in layer order.</param>
    /// <param name="numExperts">E.</param>
    /// <param name="topK">k.</param>
    /// <param name="attentionMask">Null, or <c>[B, T]</c> with 1 for real tokens.</param>
    /// <returns>A scalar (float32, or float64 for float64 logits).</returns>
    public static Tensor LoadBalancing(IReadOnlyList<Tensor> layerLogits, int numExperts, int topK, Tensor? attentionMask)
    {
        if (layerLogits.Count == 0) throw new ArgumentException("No router logits were recorded.", nameof(layerLogits));
        using var scope = NewDisposeScope();
        var logits = torch.cat(layerLogits.ToArray(), 0);                                  // [L·N, E]
        var probabilities = nn.functional.softmax(logits.to(Modeling.Precision.Wide(logits.dtype)), -1);
        var selected = probabilities.topk(topK, dim: -1).indexes;                           // [L·N, k]
        var expertMask = nn.functional.one_hot(selected, numExperts).to(probabilities.dtype);   // [L·N, k, E]
        Tensor tokensPerExpert, probabilityPerExpert;                                       // [k, E], [E]
        if (attentionMask is null)
        {
            tokensPerExpert = expertMask.mean(new long[] { 0 });
            probabilityPerExpert = probabilities.mean(new long[] { 0 });
        }
        else
        {
            long rows = attentionMask.shape[0] * attentionMask.shape[1];
            if (logits.shape[0] % rows != 0)
                throw new ArgumentException($"Router logits of {logits.shape[0]} rows do not fit a [{attentionMask.shape[0]}, {attentionMask.shape[1]}] mask.", nameof(attentionMask));
            long layers = logits.shape[0] / rows;
            var real = attentionMask.to(probabilities.dtype).reshape(1, rows).expand(layers, rows).reshape(-1, 1);   // [L·N, 1]
            tokensPerExpert = (expertMask * real.unsqueeze(2)).sum(dim: 0) / real.sum();              // [k, E]
            probabilityPerExpert = (probabilities * real).sum(dim: 0) / real.sum();                  // [E]
        }
        var loss = (tokensPerExpert * probabilityPerExpert.unsqueeze(0)).sum() * numExperts;
        return loss.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The router z-loss of ST-MoE (Zoph et al. 2022): the mean over real tokens and layers of logsumexp(logits)², which keeps
    /// router logits small. Off unless asked (<see cref="Trainers.LanguageModelTrainerOptions.RouterZLossCoefficient"/>).
    /// </summary>
    /// <param name="layerLogits">Router logits <c>[B·T, E]</c> of each MoE layer.</param>
    /// <param name="attentionMask">Null, or <c>[B, T]</c> with 1 for real tokens.</param>
    public static Tensor ZLoss(IReadOnlyList<Tensor> layerLogits, Tensor? attentionMask)
    {
        if (layerLogits.Count == 0) throw new ArgumentException("No router logits were recorded.", nameof(layerLogits));
        using var scope = NewDisposeScope();
        var logits = torch.cat(layerLogits.ToArray(), 0);                                  // [L·N, E]
        var z = logits.to(Modeling.Precision.Wide(logits.dtype)).logsumexp(-1).pow(2);     // [L·N]
        Tensor loss;
        if (attentionMask is null) loss = z.mean();
        else
        {
            long rows = attentionMask.shape[0] * attentionMask.shape[1], layers = logits.shape[0] / rows;
            var real = attentionMask.to(z.dtype).reshape(1, rows).expand(layers, rows).reshape(-1);   // [L·N]
            loss = (z * real).sum() / real.sum();
        }
        return loss.MoveToOuterDisposeScope();
    }
}
