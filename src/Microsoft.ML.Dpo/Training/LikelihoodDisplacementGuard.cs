using System.Globalization;

namespace Microsoft.ML.Dpo.Training;

/// <summary>
/// Watches DPO's reports for likelihood displacement — the policy pushing the <em>chosen</em> answers below the reference
/// (<c>rewards/chosen</c> = β·(π<sub>c</sub> − ref<sub>c</sub>) &lt; 0 on the same pairs) while the margin grows, so
/// preference accuracy rises but generations do not move toward the chosen answers — and warns once, naming the remedy.
/// </summary>
/// <remarks>
/// The rule: over the last <see cref="Window"/> reports every <c>rewards/chosen</c> is negative and their mean is lower than
/// the mean of the <see cref="Window"/> reports before (so one noisy report neither fires it nor hides it).
/// </remarks>
internal sealed class LikelihoodDisplacementGuard(Action<string> warn)
{
    /// <summary>Reports per comparison window.</summary>
    public const int Window = 3;

    readonly List<double> chosenRewards = new();

    /// <summary>Whether the warning has been given.</summary>
    public bool Warned { get; private set; }

    /// <summary>Takes one report's averaged metrics; warns the first time the rule holds.</summary>
    public void Observe(int step, IReadOnlyDictionary<string, double> metrics)
    {
        if (Warned || !metrics.TryGetValue("rewards/chosen", out double reward) || !double.IsFinite(reward)) return;
        chosenRewards.Add(reward);
        int n = chosenRewards.Count;
        if (n < 2 * Window) return;
        var recent = chosenRewards.Skip(n - Window).ToList();
        double recentMean = recent.Average(), earlierMean = chosenRewards.Skip(n - 2 * Window).Take(Window).Average();
        if (recent.Any(r => r >= 0) || recentMean >= earlierMean) return;
        Warned = true;
        string margin = metrics.TryGetValue("rewards/margins", out double m) ? $", while rewards/margins is {F(m)}" : "";
        warn($"Likelihood displacement at step {step}: rewards/chosen is negative and falling (mean {F(recentMean)} over the last {Window} reports, " +
             $"{F(earlierMean)} over the {Window} before{margin}) — the policy makes the chosen answers less likely than the reference does, " +
             "so preference accuracy can rise while generations do not move toward them. Remedies: add an NLL term on the chosen answers " +
             "(--rpo-alpha 1, DpoTrainer.Options.RpoAlpha = 1: the default with the sigmoid loss; raise it when it is already on), lower the learning rate, or raise β.");
    }

    static string F(double v) => v.ToString("G4", CultureInfo.InvariantCulture);
}
