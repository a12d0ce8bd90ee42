using Microsoft.ML;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Feedback;

namespace Microsoft.ML.Dpo.Samples;

/// <summary>The judges of the quick start and the win-rate computation.</summary>
internal static class Judges
{
    sealed class Answer { public string Text { get; set; } = ""; public bool Label { get; set; } }

    /// <summary>
    /// An ML.NET text classifier (n-gram features + logistic regression) trained to tell the chosen answers of the
    /// training pairs from the rejected ones, wrapped as a judge — the DPO paper's "classifier as reward" setup in miniature.
    /// Scrambled copies of the chosen answers and the empty answer are negatives too, so that gibberish or silence does not
    /// outscore a curt answer merely by being unlike it.
    /// </summary>
    public static IJudge TrainClassifier(MLContext ml, IReadOnlyList<PreferencePair> pairs)
    {
        var random = new Random(0);
        string Scramble(string text) => new(text.OrderBy(_ => random.Next()).ToArray());
        var rows = pairs.SelectMany(p => new[]
        {
            new Answer { Text = p.Chosen, Label = true }, new Answer { Text = p.Rejected, Label = false },
            new Answer { Text = Scramble(p.Chosen), Label = false }, new Answer { Text = "", Label = false },
        });
        var model = ml.Transforms.Text.FeaturizeText("Features", nameof(Answer.Text))
            .Append(ml.BinaryClassification.Trainers.SdcaLogisticRegression())
            .Fit(ml.Data.LoadFromEnumerable(rows));
        return new TransformerJudge(ml, model, completionColumnName: nameof(Answer.Text), scoreColumnName: "Probability");
    }

    /// <summary>
    /// Share of prompts where the judge rates <paramref name="candidate"/>'s answer above <paramref name="baseline"/>'s
    /// (ties count half; prompts the judge cannot score are left out).
    /// </summary>
    public static double WinRate(IJudge judge, IReadOnlyList<string> prompts, IReadOnlyList<string> candidate, IReadOnlyList<string> baseline)
    {
        var items = prompts.SelectMany((p, i) => new[] { (p, candidate[i]), (p, baseline[i]) }).ToList();
        var scores = judge.ScoreAsync(items).GetAwaiter().GetResult();
        var outcomes = Enumerable.Range(0, prompts.Count)
            .Where(i => scores[2 * i].HasValue && scores[2 * i + 1].HasValue)
            .Select(i => scores[2 * i]!.Value.CompareTo(scores[2 * i + 1]!.Value) switch { > 0 => 1.0, 0 => 0.5, _ => 0.0 })
            .ToList();
        return outcomes.Count == 0 ? double.NaN : outcomes.Average();
    }
}
