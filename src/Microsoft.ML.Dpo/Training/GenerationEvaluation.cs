using System.Globalization;
using Microsoft.ML.Dpo.Feedback;
using Microsoft.ML.Dpo.Generation;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Training;

/// <summary>Which evaluation metric chooses the best model, and when training stops early (Hugging Face's <c>metric_for_best_model</c>, <c>EarlyStoppingCallback</c>).</summary>
/// <param name="Metric">The metric, e.g. <c>eval/win_rate</c>.</param>
/// <param name="GreaterIsBetter">Whether larger values are better.</param>
/// <param name="Patience">Evaluations without an improvement after which training stops; 0: never stop early.</param>
/// <param name="Threshold">How much a value must beat the best so far to count as an improvement.</param>
internal sealed record BestModelRule(string Metric, bool GreaterIsBetter, int Patience, double Threshold);

/// <summary>
/// Evaluation by generation during training: the policy answers held-out prompts, a judge compares each answer with the
/// reference model's answer to the same prompt (generated once, before training), and the run logs <c>eval/win_rate</c>,
/// <c>eval/mean_length</c> and the degeneration measures <c>eval/repeated_ngram_share</c> and <c>eval/degenerate_rate</c>,
/// with a few side-by-side samples. With a <see cref="BestModelRule"/> it keeps the weights of the best evaluation and asks
/// the loop to stop when the metric has not improved for <see cref="BestModelRule.Patience"/> evaluations.
/// </summary>
internal sealed class GenerationEvaluation
{
    /// <summary>Side-by-side samples written to the log at each evaluation.</summary>
    public const int Samples = 3;

    /// <summary>An answer whose word bigrams or character 4-grams repeat at least this share is degenerate.</summary>
    public const double DegenerateShare = 0.5;

    readonly IReadOnlyList<string> prompts;
    readonly IJudge? judge;
    readonly GenerationOptions generation;
    readonly Action<string> log;
    readonly int every;
    readonly BestModelRule? best;
    IReadOnlyList<string>? referenceAnswers;
    List<Tensor>? bestWeights;
    int sinceImprovement;

    public GenerationEvaluation(IReadOnlyList<string> prompts, IJudge? judge, GenerationOptions generation, Action<string> log, int everySteps = 0, BestModelRule? best = null)
    {
        this.prompts = prompts;
        this.judge = judge;
        this.generation = generation;
        this.log = log;
        this.every = everySteps;
        this.best = best;
    }

    /// <summary>The step of the best evaluation so far (with a <see cref="BestModelRule"/>).</summary>
    public int? BestStep { get; private set; }
    /// <summary>The best value of the rule's metric so far.</summary>
    public double? BestValue { get; private set; }
    /// <summary>True once the rule's patience ran out: the loop stops after the current step.</summary>
    public bool StopRequested { get; private set; }
    /// <summary>The policy's answers at the last evaluation.</summary>
    public IReadOnlyList<string>? LastAnswers { get; private set; }
    /// <summary>The reference model's answers (after <see cref="GenerateReferenceAnswers"/>).</summary>
    public IReadOnlyList<string>? ReferenceAnswers => referenceAnswers;

    /// <summary>Generates the reference model's answers (call before training, while the reference is at hand).</summary>
    public void GenerateReferenceAnswers(LanguageModel reference, Func<IDisposable>? enter = null)
    {
        using var around = enter?.Invoke();
        referenceAnswers = Generate(reference);
    }

    /// <summary>
    /// The loop's evaluation hook: evaluates every <c>everySteps</c> steps and at the last one, tracks the best weights of
    /// <paramref name="policy"/>; null when this step is not evaluated.
    /// </summary>
    public IReadOnlyDictionary<string, double>? AfterStep(LanguageModel policy, int step, bool last, CancellationToken cancellation)
    {
        if (!last && !(every > 0 && step % every == 0)) return null;
        var metrics = Evaluate(policy, step, cancellation);
        if (best is not null) Track(policy, step, metrics);
        return metrics;
    }

    void Track(LanguageModel policy, int step, IReadOnlyDictionary<string, double> metrics)
    {
        if (!metrics.TryGetValue(best!.Metric, out double value))
            throw new InvalidOperationException($"The best-model metric '{best.Metric}' (BestModelMetric, --save-best) is not among the evaluation's metrics: " +
                string.Join(", ", metrics.Keys) + (best.Metric == "eval/win_rate" ? ". eval/win_rate needs a judge (EvaluationJudge, --judge)." : "."));
        bool improved = BestValue is not double b || (best.GreaterIsBetter ? value > b + best.Threshold : value < b - best.Threshold);
        if (improved)
        {
            BestValue = value;
            BestStep = step;
            sinceImprovement = 0;
            Snapshot(policy);
            return;
        }
        sinceImprovement++;
        if (best.Patience > 0 && sinceImprovement >= best.Patience && !StopRequested)
        {
            StopRequested = true;
            log($"Early stopping at step {step}: {best.Metric} has not improved on {F(BestValue!.Value)} (step {BestStep}) for {sinceImprovement} evaluation(s).");
        }
    }

    /// <summary>Copies the trainable weights (the only ones that change; LoRA: the adapters) to the CPU.</summary>
    void Snapshot(LanguageModel policy)
    {
        foreach (var t in bestWeights ?? []) t.Dispose();
        using var _ = no_grad();
        using var scope = NewDisposeScope();   // the detached views are temporaries; only the clones are kept
        bestWeights = policy.Network.parameters().Where(p => p.requires_grad).Select(p => p.detach().to(CPU).clone().DetachFromDisposeScope()).ToList();
    }

    /// <summary>Puts the best evaluation's weights back into <paramref name="policy"/> (when it was not the last); true when it did.</summary>
    public bool RestoreBest(LanguageModel policy, int lastStep)
    {
        if (bestWeights is null || BestStep == lastStep) return false;
        using (no_grad())
        {
            var trainable = policy.Network.parameters().Where(p => p.requires_grad).ToList();
            for (int i = 0; i < trainable.Count; i++) trainable[i].copy_(bestWeights[i]);
        }
        log($"Best model: {best!.Metric}={F(BestValue!.Value)} at step {BestStep}; the fitted model has that step's weights (the last step was {lastStep}).");
        return true;
    }

    /// <summary>Frees the kept weights.</summary>
    public void DisposeSnapshot()
    {
        foreach (var t in bestWeights ?? []) t.Dispose();
        bestWeights = null;
    }

    /// <summary>Generates the policy's answers and returns the <c>eval/…</c> metrics.</summary>
    public IReadOnlyDictionary<string, double> Evaluate(LanguageModel policy, int step, CancellationToken cancellation)
    {
        var answers = Generate(policy);
        LastAnswers = answers;
        var tokenizer = policy.RequireTokenizer();
        var metrics = Measure(prompts, answers, referenceAnswers, judge, a => tokenizer.Encode(a), cancellation);
        log($"eval at step {step}: " + string.Join(" ", metrics.Select(kv => $"{kv.Key}={F(kv.Value)}")));
        for (int i = 0; i < Math.Min(Samples, prompts.Count); i++)
            log($"  prompt: {Quote(prompts[i])}  policy: {Quote(answers[i])}" + (referenceAnswers is null ? "" : $"  reference: {Quote(referenceAnswers[i])}"));
        return metrics;
    }

    /// <summary>
    /// The <c>eval/…</c> metrics of <paramref name="answers"/> (and, against <paramref name="referenceAnswers"/>, the reference's
    /// length and, with a judge, <c>eval/win_rate</c> with ties ½ and <c>eval/unjudged</c>).
    /// </summary>
    internal static Dictionary<string, double> Measure(IReadOnlyList<string> prompts, IReadOnlyList<string> answers, IReadOnlyList<string>? referenceAnswers,
        IJudge? judge, Func<string, IReadOnlyList<int>> encode, CancellationToken cancellation)
    {
        var metrics = new Dictionary<string, double>
        {
            ["eval/mean_length"] = answers.Average(a => (double)encode(a).Count),
            ["eval/repeated_ngram_share"] = answers.Average(RepeatedBigramShare),
            ["eval/degenerate_rate"] = answers.Average(a => IsDegenerate(a) ? 1.0 : 0.0),
        };
        if (referenceAnswers is null) return metrics;
        metrics["eval/reference_mean_length"] = referenceAnswers.Average(a => (double)encode(a).Count);
        metrics["eval/reference_degenerate_rate"] = referenceAnswers.Average(a => IsDegenerate(a) ? 1.0 : 0.0);
        if (judge is null) return metrics;
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

    /// <summary>
    /// The share of an answer's character n-grams that repeat an earlier one (loops without spaces: "!!!!!!!!", "CUCUCUCU");
    /// 0 for answers shorter than 2n characters.
    /// </summary>
    internal static double RepeatedCharNgramShare(string text, int n = 4)
    {
        if (text.Length < 2 * n) return 0;
        var seen = new HashSet<string>(StringComparer.Ordinal);
        int repeated = 0, total = text.Length - n + 1;
        for (int i = 0; i < total; i++)
            if (!seen.Add(text.Substring(i, n))) repeated++;
        return (double)repeated / total;
    }

    /// <summary>
    /// Whether an answer loops: at least <see cref="DegenerateShare"/> of its word bigrams or of its character 4-grams repeat
    /// earlier ones ("CU CU CU CU", "Happy Happy Happy", "!!!!!!!!").
    /// </summary>
    internal static bool IsDegenerate(string text) => RepeatedBigramShare(text) >= DegenerateShare || RepeatedCharNgramShare(text) >= DegenerateShare;

    static string F(double v) => v.ToString("G4", CultureInfo.InvariantCulture);

    static string Quote(string s) => "\"" + (s.Length > 80 ? s[..80] + "…" : s).Replace("\n", "\\n") + "\"";
}
