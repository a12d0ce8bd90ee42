using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Feedback;

/// <summary>
/// The scalar head of a reward model: <c>score</c> = Linear(hidden → 1, no bias), as in Hugging Face's
/// <c>LlamaForSequenceClassification</c> with one label, so its parameter is named <c>score.weight</c> [1, H].
/// </summary>
internal sealed class ScoreHead : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006 // Hugging Face name
    readonly Linear score;
#pragma warning restore IDE1006

    ScoreHead(long hiddenSize, ScalarType dtype, Device device) : base(nameof(ScoreHead))
    {
        score = nn.Linear(hiddenSize, 1, hasBias: false, device: device, dtype: dtype);
        RegisterComponents();
    }

    /// <summary>The name of the head's weight in checkpoints.</summary>
    public const string WeightName = "score.weight";

    /// <summary>A head for <paramref name="network"/> (its dtype and device), initialised N(0, 0.02) like Hugging Face.</summary>
    public static ScoreHead Create(CausalLM network)
    {
        // Built in a scope of our own and detached: a caller's dispose scope must not free the parameters (see CausalLM.Create).
        using var scope = torch.NewDisposeScope();
        var head = new ScoreHead(network.Config.HiddenSize, network.DType, network.Device);
        scope.Detach(scope.DisposablesView.ToArray());
        using (torch.no_grad()) nn.init.normal_(head.score.weight, 0.0, 0.02);
        scope.Detach(scope.DisposablesView.ToArray());
        return head;
    }

    /// <summary>Rewards [N] of last-token hidden states [N, H].</summary>
    public override Tensor forward(Tensor hidden) => score.forward(hidden).squeeze(-1);

    /// <summary>Copies <c>score.weight</c> from <paramref name="tensors"/>.</summary>
    public void Load(IReadOnlyDictionary<string, Tensor> tensors, string source)
    {
        if (!tensors.TryGetValue(WeightName, out var w)) throw new InvalidDataException($"'{source}' lacks the reward head tensor '{WeightName}'.");
        if (!w.shape.SequenceEqual(score.weight.shape))
            throw new InvalidDataException($"'{source}': '{WeightName}' has shape [{string.Join(", ", w.shape)}], expected [{string.Join(", ", score.weight.shape)}].");
        using var _ = no_grad();
        score.weight.copy_(w);
    }

    /// <summary>The head's tensors by checkpoint name.</summary>
    public IEnumerable<KeyValuePair<string, Tensor>> Tensors() => [new(WeightName, score.weight.detach())];
}

/// <summary>Reward computation shared by training, scoring and the local judge.</summary>
internal static class RewardHeadMath
{
    /// <summary>The hidden state [N, H] of each row's last real token of right-padded hidden states [N, T, H] (mask [N, T]).</summary>
    public static Tensor LastTokenHidden(Tensor hidden, Tensor attentionMask)
    {
        using var scope = NewDisposeScope();
        var last = attentionMask.to(int64).sum(1).sub(1).clamp_min(0);                           // [N]
        var index = last.view(-1, 1, 1).expand(-1, 1, hidden.shape[2]);                           // [N, 1, H]
        return hidden.gather(1, index).squeeze(1).MoveToOuterDisposeScope();
    }

    /// <summary>Rewards [N] (float32, or float64 for float64 models) of the rows of <paramref name="batch"/>.</summary>
    public static Tensor Rewards(CausalLM network, ScoreHead head, SequenceBatch batch)
    {
        using var scope = NewDisposeScope();
        var hidden = network.HiddenStates(batch.InputIds, batch.AttentionMask);
        var rewards = head.forward(LastTokenHidden(hidden, batch.AttentionMask));
        return rewards.to(Precision.Wide(rewards.dtype)).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// The reward-model step: chosen and rejected sequences in one forward pass, a scalar reward per sequence from the last real
/// token's hidden state, and the Bradley–Terry loss −log σ(r_chosen − r_rejected) (InstructGPT, Ouyang et al. 2022).
/// </summary>
internal sealed class RewardObjective(CausalLM network, ScoreHead head, int padId) : ITrainingObjective<TokenizedPreference>
{
    public ObjectiveResult Compute(IReadOnlyList<TokenizedPreference> examples)
    {
        using var batch = SequenceBatch.Collate(SequenceScoring.PairRows(examples), padId, network.Device);
        var rewards = RewardHeadMath.Rewards(network, head, batch);                              // [2B]
        int b = examples.Count;
        var chosen = rewards.narrow(0, 0, b);
        var rejected = rewards.narrow(0, b, b);
        var margin = chosen - rejected;
        Tensor loss = -nn.functional.logsigmoid(margin).mean();
        var metrics = new Dictionary<string, double>();
        using (no_grad())
        {
            metrics["loss"] = loss.ToDouble();
            metrics["accuracy"] = (margin > 0).to(float32).mean().ToDouble();
            metrics["rewards/chosen"] = chosen.mean().ToDouble();
            metrics["rewards/rejected"] = rejected.mean().ToDouble();
            metrics["rewards/margins"] = margin.mean().ToDouble();
        }
        return new ObjectiveResult(loss, metrics, batch.Tokens);
    }
}
