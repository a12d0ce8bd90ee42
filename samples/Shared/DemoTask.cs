using Microsoft.ML.Dpo.Data;

namespace Microsoft.ML.Dpo.Samples;

/// <summary>
/// The built-in demonstration task, generated deterministically (no downloads): an assistant asked about a subject either
/// answers warmly (preferred) or curtly (rejected). The SFT data holds both styles but mostly the curt one, so the SFT
/// model starts out preferring the rejected style; DPO has to flip that preference. Held-out prompts use subjects and
/// phrasings the training data never shows.
/// </summary>
internal static class DemoTask
{
    static readonly string[] Warm = ["Happy to help!", "Gladly, friend!", "Of course, with pleasure!", "Sure thing, great question!"];
    static readonly string[] Curt = ["No.", "Go away.", "Not now.", "Ask someone else."];
    static readonly string[] Templates = ["Tell me about {0}.", "What do you think of {0}?", "Describe {0}.", "Why do people like {0}?"];
    static readonly string[] HeldOutTemplates = ["Could you explain {0}?", "Say something about {0}."];
    /// <summary>The style tasks' 30 training subjects, then the first 10 of their held-out subjects.</summary>
    static readonly string[] Subjects = [.. StyleTask.TrainSubjects, .. StyleTask.HeldOutSubjects.Take(10)];

    static string Prompt(string template, string subject) => string.Format(template, subject) + "\n";

    static IEnumerable<(string Prompt, int Style)> TrainPrompts() =>
        Subjects[..30].SelectMany((s, i) => Templates.Select((t, j) => (Prompt(t, s), (i + j) % Warm.Length)));

    /// <summary>Prompts never seen in training: unseen subjects with seen and unseen phrasings.</summary>
    public static IReadOnlyList<string> HeldOutPrompts { get; } =
        Subjects[30..].SelectMany(s => Templates.Take(2).Concat(HeldOutTemplates).Select(t => Prompt(t, s))).ToList();

    /// <summary>SFT data: both styles, 7 in 10 curt.</summary>
    public static List<CompletionExample> SftExamples() =>
        TrainPrompts().Select((p, i) => new CompletionExample(p.Prompt, i % 10 < 7 ? Curt[p.Style] : Warm[p.Style])).ToList();

    /// <summary>Preference pairs: warm chosen over curt.</summary>
    public static List<PreferencePair> TrainPairs() => TrainPrompts().Select(p => new PreferencePair(p.Prompt, Warm[p.Style], Curt[p.Style])).ToList();

    /// <summary>Whether an answer is exactly one of the preferred (warm) answers: the ground truth of this task.</summary>
    public static bool IsPreferredStyle(string answer) => Warm.Contains(answer.Trim());

    /// <summary>Whether an answer is exactly one of the dispreferred (curt) answers.</summary>
    public static bool IsCurtStyle(string answer) => Curt.Contains(answer.Trim());

    /// <summary>Held-out preference pairs for evaluation.</summary>
    public static List<PreferencePair> HeldOutPairs() => HeldOutPrompts.Select((p, i) => new PreferencePair(p, Warm[i % Warm.Length], Curt[i % Curt.Length])).ToList();
}
