using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Training;

/// <summary>Runs an objective over held-out examples without gradients and averages its metrics.</summary>
internal static class Evaluation
{
    public static IReadOnlyDictionary<string, double> Average<TExample>(ITrainingObjective<TExample> objective, IReadOnlyList<TExample> examples, int batchSize, string prefix)
    {
        var sums = new SortedDictionary<string, double>(StringComparer.Ordinal);
        int n = 0;
        using var _ = no_grad();
        for (int start = 0; start < examples.Count; start += batchSize)
        {
            using var scope = NewDisposeScope();
            var batch = examples.Skip(start).Take(batchSize).ToList();
            var result = objective.Compute(batch);
            foreach (var (name, value) in result.Metrics)
                sums[prefix + name] = sums.GetValueOrDefault(prefix + name) + value * batch.Count;
            n += batch.Count;
        }
        return sums.ToDictionary(kv => kv.Key, kv => kv.Value / Math.Max(1, n));
    }
}
