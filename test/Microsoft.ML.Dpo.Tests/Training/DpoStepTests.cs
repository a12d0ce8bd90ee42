using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Training;

/// <summary>
/// The DPO step's inputs beyond summed log-probs — LD-DPO's shared part, WPO's weights, TRL's metrics — against a
/// brute-force computation over the full [N, T, V] logits; the step's gradient by finite differences; TR-DPO's update.
/// </summary>
[TestClass]
public sealed class DpoStepTests
{
    static CausalLM TinyModel(int seed)
    {
        manual_seed(seed);
        return CausalLM.Create(new CausalLMConfig
        {
            ModelType = "llama", VocabSize = 11, HiddenSize = 8, IntermediateSize = 12, NumHiddenLayers = 1, NumAttentionHeads = 2,
            NumKeyValueHeads = 1, HeadDim = 4, MaxPositionEmbeddings = 16, RmsNormEps = 1e-5, TieWordEmbeddings = false, EosTokenIds = [2],
        }, ScalarType.Float64);
    }

    // Two pairs of different lengths: pair 0 has a longer chosen answer, pair 1 a longer rejected one.
    static readonly List<TokenizedPreference> Examples =
    [
        new([1, 5, 6], [7, 8, 2], [9, 2], 0, 0),
        new([1, 4], [3, 3, 2], [10, 6, 5, 2], 1, 1),
    ];

    [TestMethod]
    public void ScoresMatchABruteForceComputationOverTheFullLogits()
    {
        using var scope = NewDisposeScope();
        using var model = TinyModel(3);
        using var batch = SequenceBatch.Collate(SequenceScoring.PairRows(Examples), 0, model.Device);
        var scores = SequenceScoring.Score(model, batch, new ScoringRequest(SharedPrefix: true, WpoWeights: true, Statistics: true));

        // Brute force in doubles from the full logits [N, T, V].
        using var _ = no_grad();
        double[,,] z = ToArray(model.Forward(batch.InputIds, batch.AttentionMask));
        long[] ids = batch.InputIds.data<long>().ToArray();
        bool[] completion = batch.CompletionMask.data<bool>().ToArray();
        int n = (int)batch.InputIds.shape[0], t = (int)batch.InputIds.shape[1], v = z.GetLength(2);
        var counts = new int[n];
        for (int r = 0; r < n; r++) for (int j = 1; j < t; j++) if (completion[r * t + j]) counts[r]++;
        double[] sum = new double[n], shared = new double[n], aligned = new double[n], entropy = new double[n], logitMean = new double[n], correct = new double[n];
        for (int r = 0; r < n; r++)
        {
            int pair = r % (n / 2), pairShared = Math.Min(counts[pair], counts[pair + n / 2]);   // rows: B chosen, then B rejected
            int rank = 0;
            for (int j = 0; j + 1 < t; j++)
            {
                if (!completion[r * t + j + 1]) continue;
                rank++;
                long label = ids[r * t + j + 1];
                double max = double.NegativeInfinity;
                for (int k = 0; k < v; k++) max = Math.Max(max, z[r, j, k]);
                double se = 0, se2 = 0, pz = 0, mean = 0;
                int argmax = 0;
                for (int k = 0; k < v; k++)
                {
                    se += Math.Exp(z[r, j, k] - max);
                    se2 += Math.Exp(2 * (z[r, j, k] - max));
                    mean += z[r, j, k] / v;
                    if (z[r, j, k] > z[r, j, argmax]) argmax = k;
                }
                double lse = max + Math.Log(se), lse2 = 2 * max + Math.Log(se2);
                for (int k = 0; k < v; k++) pz += Math.Exp(z[r, j, k] - lse) * z[r, j, k];
                double logp = z[r, j, label] - lse;
                sum[r] += logp;
                if (rank <= pairShared) shared[r] += logp;
                aligned[r] += logp - (lse2 - 2 * lse);
                entropy[r] += lse - pz;
                logitMean[r] += mean;
                correct[r] += argmax == label ? 1 : 0;
            }
            aligned[r] /= counts[r];
        }
        Assert.AreEqual(3, counts[0], "pair 0 chosen: 3 tokens");
        Close(sum, scores.Sum, "sum");
        Close(counts.Select(c => (double)c).ToArray(), scores.Count, "count");
        Close(shared, scores.SharedSum!, "LD-DPO shared part");
        Close(aligned, scores.WpoLogWeight!, "WPO log-weight");
        Close(entropy, scores.EntropySum!, "entropy");
        Close(logitMean, scores.LogitMeanSum!, "mean logit");
        Close(correct, scores.CorrectCount!, "greedy-correct tokens");
        // The shared part of the longer completion is a strict part of it; the shorter completion's is all of it.
        Assert.AreEqual(sum[1], shared[1], 1e-12, "row 1, pair 1's chosen (3 tokens) against its rejected (4): all shared");
        Assert.AreNotEqual(sum[0], shared[0], "row 0: pair 0's chosen (3 tokens) vs rejected (2): one token beyond the shared part");
    }

    static double[,,] ToArray(Tensor logits)
    {
        var data = logits.to_type(ScalarType.Float64).data<double>().ToArray();
        int a = (int)logits.shape[0], b = (int)logits.shape[1], c = (int)logits.shape[2];
        var result = new double[a, b, c];
        Buffer.BlockCopy(data, 0, result, 0, data.Length * sizeof(double));
        return result;
    }

    static void Close(double[] expected, Tensor actual, string what)
    {
        var got = actual.to_type(ScalarType.Float64).data<double>().ToArray();
        Assert.HasCount(expected.Length, got, what);
        for (int i = 0; i < got.Length; i++) Assert.AreEqual(expected[i], got[i], 1e-10, $"{what} [{i}]");
    }

    [TestMethod]
    [DataRow(false)]
    [DataRow(true)]
    public void StepGradientsMatchFiniteDifferences(bool familyFeatures)
    {
        // Double precision so that central differences are accurate. With familyFeatures: MPO's weighted list and LD-DPO
        // (WPO's weights are detached, as in TRL, so the gradient is checked with them off and their effect on the loss separately).
        using var network = TinyModel(3);
        using var referenceNetwork = TinyModel(4);
        var loss = familyFeatures
            ? new PreferenceLossOptions { Kinds = [PreferenceLossKind.Sigmoid, PreferenceLossKind.BcoPair, PreferenceLossKind.Sft], Weights = [0.8, 0.2, 1], Beta = 0.5 }
            : new PreferenceLossOptions { Beta = 0.5, LabelSmoothing = 0.1 };
        var step = familyFeatures ? new DpoStepOptions(LdAlpha: 0.3, UseWeighting: true) : new DpoStepOptions();
        var objective = new DpoObjective(network, new ReferenceLogProbs.Live(referenceNetwork), loss, step, padId: 0);
        if (familyFeatures)
        {
            CheckWithFrozenWeights(network, referenceNetwork, loss, step);
            return;
        }
        double Loss() { using var s = NewDisposeScope(); using var _ = no_grad(); return objective.Compute(Examples).Loss.item<double>(); }

        using (var s = NewDisposeScope()) objective.Compute(Examples).Loss.backward();
        var rng = new Random(5);
        int checkedEntries = 0;
        foreach (var (name, parameter) in network.named_parameters())
        {
            var flat = parameter.detach().view(-1);
            var grad = parameter.grad!.view(-1);
            for (int k = 0; k < 2; k++)
            {
                long index = rng.NextInt64(flat.shape[0]);
                double original = flat[index].item<double>(), h = 1e-6;
                using (no_grad()) flat[index] = original + h;
                double up = Loss();
                using (no_grad()) flat[index] = original - h;
                double down = Loss();
                using (no_grad()) flat[index] = original;
                double numeric = (up - down) / (2 * h), analytic = grad[index].item<double>();
                Assert.AreEqual(numeric, analytic, 1e-6 + 1e-4 * Math.Abs(numeric), $"{name}[{index}]");
                checkedEntries++;
            }
        }
        Assert.IsTrue(checkedEntries >= 10);
    }

    /// <summary>With WPO the weights are constants of the backward pass; the same step without them must match finite differences exactly.</summary>
    static void CheckWithFrozenWeights(CausalLM network, CausalLM referenceNetwork, PreferenceLossOptions loss, DpoStepOptions step)
    {
        network.zero_grad();
        var noWeights = new DpoObjective(network, new ReferenceLogProbs.Live(referenceNetwork), loss, step with { UseWeighting = false }, padId: 0);
        double Loss() { using var s = NewDisposeScope(); using var _ = no_grad(); return noWeights.Compute(Examples).Loss.item<double>(); }
        using (var s = NewDisposeScope()) noWeights.Compute(Examples).Loss.backward();
        var rng = new Random(7);
        foreach (var (name, parameter) in network.named_parameters())
        {
            var flat = parameter.detach().view(-1);
            var grad = parameter.grad!.view(-1);
            long index = rng.NextInt64(flat.shape[0]);
            double original = flat[index].item<double>(), h = 1e-6;
            using (no_grad()) flat[index] = original + h;
            double up = Loss();
            using (no_grad()) flat[index] = original - h;
            double down = Loss();
            using (no_grad()) flat[index] = original;
            double numeric = (up - down) / (2 * h);
            Assert.AreEqual(numeric, grad[index].item<double>(), 1e-6 + 1e-4 * Math.Abs(numeric), $"LD-DPO + MPO: {name}[{index}]");
        }
        // And WPO's weights scale the loss: the weighted loss is smaller (weights are probabilities, < 1).
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var weighted = new DpoObjective(network, new ReferenceLogProbs.Live(referenceNetwork), loss, step, padId: 0).Compute(Examples);
        Assert.IsTrue(weighted.Metrics["wpo_weight"] is > 0 and < 1, $"wpo_weight {weighted.Metrics["wpo_weight"]}");
        Assert.IsTrue(weighted.Loss.item<double>() < noWeights.Compute(Examples).Loss.item<double>());
    }

    [TestMethod]
    public void SyncMixesThePolicyIntoTheReference()
    {
        using var scope = NewDisposeScope();
        using var policy = TinyModel(3);
        using var reference = TinyModel(4);
        var before = reference.parameters().Select(p => p.detach().clone()).ToList();
        var live = new ReferenceLogProbs.Live(reference);
        live.Sync(policy, 0.25);
        var policyParameters = policy.parameters().ToList();
        var referenceParameters = reference.parameters().ToList();
        for (int i = 0; i < before.Count; i++)
        {
            var expected = policyParameters[i].detach() * 0.25 + before[i] * 0.75;
            Assert.IsTrue(referenceParameters[i].detach().allclose(expected, rtol: 0, atol: 1e-15), $"parameter {i}");
        }
        live.Sync(policy, 1);
        for (int i = 0; i < before.Count; i++)
            Assert.IsTrue(referenceParameters[i].detach().allclose(policyParameters[i].detach(), rtol: 0, atol: 0), $"α = 1 copies parameter {i}");
    }

    [TestMethod]
    public void DisplacementGuardWarnsOnceOnAFallingNegativeChosenReward()
    {
        var warnings = new List<string>();
        var guard = new LikelihoodDisplacementGuard(warnings.Add);
        double[] healthy = [0.01, -0.02, 0.03, 0.05, -0.01, 0.04, 0.08, 0.02];
        for (int i = 0; i < healthy.Length; i++) guard.Observe(i + 1, new Dictionary<string, double> { ["rewards/chosen"] = healthy[i] });
        Assert.IsEmpty(warnings, "fluctuating around zero");

        var negativeButRising = new LikelihoodDisplacementGuard(warnings.Add);
        foreach (double r in new[] { -0.5, -0.45, -0.4, -0.3, -0.2, -0.1 }) negativeButRising.Observe(1, new Dictionary<string, double> { ["rewards/chosen"] = r });
        Assert.IsEmpty(warnings, "negative but recovering");

        double[] displacing = [0.0, -0.05, -0.1, -0.2, -0.3, -0.4, -0.6, -0.8];
        for (int i = 0; i < displacing.Length; i++)
            guard.Observe(i + 10, new Dictionary<string, double> { ["rewards/chosen"] = displacing[i], ["rewards/margins"] = 1.5 });
        Assert.HasCount(1, warnings, "once");
        StringAssert.Contains(warnings[0], "--rpo-alpha");
        StringAssert.Contains(warnings[0], "learning rate");
        StringAssert.Contains(warnings[0], "β");
        Assert.IsTrue(guard.Warned);
    }
}
