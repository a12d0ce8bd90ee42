using System.Globalization;
using Microsoft.ML.Dpo.Feedback;
using Microsoft.ML.Dpo.Generation;

namespace Microsoft.ML.Dpo.Training;

/// <summary>
/// Evaluation by generation during training: the policy answers held-out prompts, a judge compares each answer with the
/// reference model's answer to the same prompt (generated once, before training), and the run logs <c>eval/win_rate</c>,
/// <c>eval/mean_length</c> and a degeneration measure, <c>eval/repeated_ngram_share</c>, with a few side-by-side samples.
/// </summary>
internal sealed class GenerationEvaluation
{
    /// <summary>Side-by-side samples written to the log at each evaluation.</summary>
    public const int Samples = 3;

    readonly IReadOnlyList<string> prompts;
    readonly IJudge? judge;
    readonly GenerationOptions generation;
    readonly Action<string> log;
    IReadOnlyList<string>? referenceAnswers;

    public GenerationEvaluation(IReadOnlyList<string> prompts, IJudge? judge, GenerationOptions generation, Action<string> log)
    {
        this.prompts = prompts;
        this.judge = judge;
        this.generation = generation;
        this.log = log;
    }

    /// <summary>Generates the reference model's answers (call before training, while the reference is at hand).</summary>
    public void GenerateReferenceAnswers(LanguageModel reference, Func<IDisposable>? enter = null)
    {
        using var around = enter?.Invoke();
        referenceAnswers = Generate(reference);
    }

    /// <summary>Generates the policy's answers and returns the <c>eval/…</c> metrics.</summary>
    public IReadOnlyDictionary<string, double> Evaluate(LanguageModel policy, int step, CancellationToken cancellation)
    {
        var answers = Generate(policy);
        var tokenizer = policy.RequireTokenizer();
        var metrics = new Dictionary<string, double>
        {
            ["eval/mean_length"] = answers.Average(a => (double)tokenizer.Encode(a).Count),
            ["eval/repeated_ngram_share"] = answers.Average(RepeatedBigramShare),
        };
        if (referenceAnswers is not null)
        {
            metrics["eval/reference_mean_length"] = referenceAnswers.Average(a => (double)tokenizer.Encode(a).Count);
            if (judge is not null)
            {
                var items = prompts.Select((p, i) => (p, answers[i])).Concat(prompts.Select((p, i) => (p, referenceAnswers[i]))).ToList();
                var scores = judge.ScoreAsync(items, cancellation).GetAwaiter().GetResult();
                double wins = 0;
                int judged = 0;
                for (int i = 0; i < prompts.Count; i++)
                {
                    if (scores[i] is not double mine || scores[prompts.Count + i] is not double theirs || !double.IsFinite(mine) || !double.IsFinite(theirs)) continue;
                    wins += mine > theirs ? 1 : mine == theirs ? 0.5 : 0;
                    judged++;
                }
                if (judged > 0) metrics["eval/win_rate"] = wins / judged;
                metrics["eval/unjudged"] = prompts.Count - judged;
            }
        }
        log($"eval at step {step}: " + string.Join(" ", metrics.Select(kv => $"{kv.Key}={kv.Value.ToString("G4", CultureInfo.InvariantCulture)}")));
        for (int i = 0; i < Math.Min(Samples, prompts.Count); i++)
            log($"  prompt: {Quote(prompts[i])}  policy: {Quote(answers[i])}" + (referenceAnswers is null ? "" : $"  reference: {Quote(referenceAnswers[i])}"));
        return metrics;
    }

    IReadOnlyList<string> Generate(LanguageModel model)
    {
        bool training = model.Network.training;
        model.Network.eval();
        try { return model.CreateGenerator().Generate(prompts, generation); }
        finally { if (training) model.Network.train(); }
    }

    /// <summary>
    /// The share of an answer's word bigrams that repeat an earlier bigram of the same answer: 0 for varied text, near 1 for
    /// loops such as "CU CU CU CU"; 0 for answers of fewer than three words.
    /// </summary>
    internal static double RepeatedBigramShare(string text)
    {
        var words = text.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
        if (words.Length < 3) return 0;
        var seen = new HashSet<(string, string)>();
        int repeated = 0;
        for (int i = 0; i + 1 < words.Length; i++)
            if (!seen.Add((words[i], words[i + 1]))) repeated++;
        return (double)repeated / (words.Length - 1);
    }

    static string Quote(string s) => "\"" + (s.Length > 80 ? s[..80] + "…" : s).Replace("\n", "\\n") + "\"";
}
