using Microsoft.ML;
using Microsoft.ML.Dpo.Data;

namespace QuickStart;

/// <summary>
/// The judge of the quick start: an ML.NET text classifier (character n-grams + logistic regression) trained to tell the
/// chosen answers of the training pairs from the rejected ones — the DPO paper's "classifier as reward" setup in miniature.
/// </summary>
internal sealed class StyleJudge(PredictionEngine<StyleJudge.Answer, StyleJudge.Score> engine)
{
    public sealed class Answer { public string Text { get; set; } = ""; public bool Label { get; set; } }
    public sealed class Score { public float Probability { get; set; } }

    public static StyleJudge Train(MLContext ml, IReadOnlyList<PreferencePair> pairs)
    {
        var rows = pairs.SelectMany(p => new[] { new Answer { Text = p.Chosen, Label = true }, new Answer { Text = p.Rejected, Label = false } });
        var pipeline = ml.Transforms.Text.FeaturizeText("Features", nameof(Answer.Text))
            .Append(ml.BinaryClassification.Trainers.SdcaLogisticRegression());
        var model = pipeline.Fit(ml.Data.LoadFromEnumerable(rows));
        return new StyleJudge(ml.Model.CreatePredictionEngine<Answer, Score>(model));
    }

    public double Rate(string answer) => engine.Predict(new Answer { Text = answer }).Probability;

    /// <summary>Share of prompts where <paramref name="candidate"/>'s answer is rated above <paramref name="baseline"/>'s (ties count half).</summary>
    public double WinRate(IReadOnlyList<string> prompts, IReadOnlyList<string> candidate, IReadOnlyList<string> baseline) =>
        prompts.Select((_, i) => Rate(candidate[i]) is var c && Rate(baseline[i]) is var b ? (c > b ? 1.0 : c == b ? 0.5 : 0.0) : 0).Average();
}
