using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Dpo.Data;

namespace Microsoft.ML.Dpo.Samples;

/// <summary>How a greedy answer of a style task is classified.</summary>
internal enum StyleVerdict
{
    /// <summary>A well-formed answer in the preferred style.</summary>
    Preferred,
    /// <summary>A well-formed answer in the dispreferred style.</summary>
    Dispreferred,
    /// <summary>Neither: a broken, mixed or degenerate answer.</summary>
    Other,
}

/// <summary>
/// A synthetic style-alignment task, generated deterministically (no downloads): an assistant answers "Tell me about {subject}"
/// in one of two styles. The SFT data holds both styles, mostly the dispreferred one (7 in 10), so the SFT model starts out
/// answering in the wrong style; the preference pairs prefer the other style on the same prompts; the held-out prompts use
/// subjects (and two phrasings) never seen in training. Answers are templates with the subject in them ("{S}" capitalised,
/// "{s}" as is), so a model must copy an unseen subject, not just recall a fixed string.
/// </summary>
/// <param name="Name">A short name ("polite", "concise", "signoff", "greeting").</param>
/// <param name="Description">What is preferred over what, in words.</param>
/// <param name="PreferredTemplates">Answers in the preferred style.</param>
/// <param name="DispreferredTemplates">Answers in the dispreferred style, one per preferred template (pairs match them by index).</param>
internal sealed record StyleTask(string Name, string Description, string[] PreferredTemplates, string[] DispreferredTemplates)
{
    static readonly string[] Templates = ["Tell me about {0}.", "What do you think of {0}?", "Describe {0}.", "Why do people like {0}?"];
    static readonly string[] HeldOutTemplates = ["Could you explain {0}?", "Say something about {0}."];

    /// <summary>Subjects of the training data (SFT and pairs).</summary>
    public static IReadOnlyList<string> TrainSubjects { get; } =
    [
        "apples", "rivers", "clouds", "tigers", "pianos", "castles", "rockets", "forests", "bridges", "lemons",
        "deserts", "owls", "trains", "candles", "oceans", "violins", "gardens", "comets", "islands", "bees",
        "mountains", "kites", "glaciers", "dragons", "robots", "tulips", "volcanoes", "whales", "lanterns", "meadows",
    ];

    /// <summary>Subjects of the held-out prompts: none appears in training.</summary>
    public static IReadOnlyList<string> HeldOutSubjects { get; } =
        ["pebbles", "harbors", "falcons", "puzzles", "canyons", "otters", "maples", "beacons", "rainbows", "shells", "kettles", "tables", "wolves", "carpets", "ferns"];

    /// <summary>Curt (dispreferred) against polite (preferred).</summary>
    public static StyleTask Polite { get; } = new("polite", "polite over curt",
        ["Of course! {S} are lovely. Happy to help!", "Gladly! I like {s} a lot. Happy to help!"],
        ["{S}. Look it up.", "No. Ask someone else."]);

    /// <summary>Verbose (dispreferred) against concise (preferred).</summary>
    public static StyleTask Concise { get; } = new("concise", "concise over verbose",
        ["{S} are interesting.", "I like {s}."],
        ["Well, that is a big question. {S} are something people talk about a lot, and I could go on about {s} for a long time.",
         "Let me think about this carefully first. I like {s}, and there is so much to say about {s} that I hardly know where to begin."]);

    /// <summary>Without (dispreferred) against with (preferred) a fixed sign-off.</summary>
    public static StyleTask SignOff { get; } = new("signoff", "with the sign-off over without",
        ["{S} are interesting. Best wishes, Ada.", "I like {s}. Best wishes, Ada."],
        ["{S} are interesting.", "I like {s}."]);

    /// <summary>
    /// Without (dispreferred) against with (preferred) a greeting in front: the held-out task of the recipe experiment, designed
    /// after the defaults were chosen on the other three (the difference is at the start of the answer, the rest is shared).
    /// </summary>
    public static StyleTask Greeting { get; } = new("greeting", "with a greeting in front over without",
        ["Hello there! {S} are wonderful.", "Hello there! I enjoy {s}."],
        ["{S} are wonderful.", "I enjoy {s}."]);

    /// <summary>The four tasks.</summary>
    public static IReadOnlyList<StyleTask> All { get; } = [Polite, Concise, SignOff, Greeting];

    /// <summary>The task called <paramref name="name"/>.</summary>
    public static StyleTask Named(string name) => All.FirstOrDefault(t => t.Name == name)
        ?? throw new ArgumentException($"Unknown style task '{name}'; tasks: {string.Join(", ", All.Select(t => t.Name))}.", nameof(name));

    static string Prompt(string template, string subject) => string.Format(template, subject) + "\n";

    static string Fill(string template, string subject) =>
        template.Replace("{S}", char.ToUpperInvariant(subject[0]) + subject[1..]).Replace("{s}", subject);

    /// <summary>Each training prompt with the template index its answers use.</summary>
    static IEnumerable<(string Prompt, string Subject, int Variant)> TrainPrompts(int variants) =>
        TrainSubjects.SelectMany((s, i) => Templates.Select((t, j) => (Prompt(t, s), s, (i + j) % variants)));

    /// <summary>Prompts never seen in training: unseen subjects, with two seen and two unseen phrasings.</summary>
    public IReadOnlyList<string> HeldOutPrompts() =>
        HeldOutSubjects.SelectMany(s => Templates.Take(2).Concat(HeldOutTemplates).Select(t => Prompt(t, s))).ToList();

    /// <summary>SFT data: both styles, 7 in 10 dispreferred.</summary>
    public List<CompletionExample> SftExamples() =>
        TrainPrompts(PreferredTemplates.Length).Select((p, i) =>
            new CompletionExample(p.Prompt, Fill((i % 10 < 7 ? DispreferredTemplates : PreferredTemplates)[p.Variant], p.Subject))).ToList();

    /// <summary>Preference pairs on the training prompts: the preferred answer chosen over the dispreferred one.</summary>
    public List<PreferencePair> TrainPairs() =>
        TrainPrompts(PreferredTemplates.Length).Select(p =>
            new PreferencePair(p.Prompt, Fill(PreferredTemplates[p.Variant], p.Subject), Fill(DispreferredTemplates[p.Variant], p.Subject))).ToList();

    /// <summary>Held-out pairs (unseen subjects) for preference accuracy.</summary>
    public List<PreferencePair> HeldOutPairs() =>
        HeldOutSubjects.SelectMany(s => Templates.Take(2).Concat(HeldOutTemplates).Select((t, j) =>
        {
            int v = j % PreferredTemplates.Length;
            return new PreferencePair(Prompt(t, s), Fill(PreferredTemplates[v], s), Fill(DispreferredTemplates[v], s));
        })).ToList();

    Regex[]? preferredPatterns, dispreferredPatterns;

    static Regex[] Patterns(string[] templates) => templates
        .Select(t => new Regex("^" + Regex.Escape(t).Replace(@"\{S}", "[A-Z][a-z]*( [a-z]+)?").Replace(@"\{s}", "[a-z]+( [a-z]+)?") + "$", RegexOptions.CultureInvariant))
        .ToArray();

    /// <summary>
    /// The style of an answer: it must be exactly one of the templates of a style, with any one- or two-word subject in the
    /// subject slots (so copying the held-out subject imperfectly still counts as the style, a broken sentence does not).
    /// </summary>
    public StyleVerdict Classify(string answer)
    {
        string a = answer.Trim();
        if ((preferredPatterns ??= Patterns(PreferredTemplates)).Any(p => p.IsMatch(a))) return StyleVerdict.Preferred;
        if ((dispreferredPatterns ??= Patterns(DispreferredTemplates)).Any(p => p.IsMatch(a))) return StyleVerdict.Dispreferred;
        return StyleVerdict.Other;
    }

    /// <summary>
    /// Degeneration: an empty answer, one more than twice as long as the longest answer of the task, one whose word
    /// bigrams repeat more than the task's own answers do ("CU CU CU", "Happy Happy Happy"), or one with a character
    /// repeated four times in a row ("Happpppy", runs of spaces), which no answer of the task has.
    /// </summary>
    public bool IsDegenerate(string answer)
    {
        string a = answer.Trim();
        if (a.Length == 0) return true;
        int longest = PreferredTemplates.Concat(DispreferredTemplates).Max(t => Fill(t, "mountains").Length);
        if (a.Length > 2 * longest) return true;
        for (int i = 3; i < a.Length; i++)
            if (a[i] == a[i - 1] && a[i] == a[i - 2] && a[i] == a[i - 3]) return true;
        return RepeatedBigrams(a) > 1;   // the templates themselves repeat at most one bigram
    }

    /// <summary>Word bigrams that occur before, within the answer (0 for varied text; 2 for "CU CU CU CU").</summary>
    internal static int RepeatedBigrams(string text)
    {
        var words = text.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
        var seen = new HashSet<(string, string)>();
        int repeated = 0;
        for (int i = 0; i + 1 < words.Length; i++)
            if (!seen.Add((words[i], words[i + 1]))) repeated++;
        return repeated;
    }

    /// <summary>The share of <paramref name="answers"/> in the preferred style, and the number of degenerate ones.</summary>
    public (double PreferredShare, double DispreferredShare, int Degenerate) Score(IReadOnlyList<string> answers) =>
        (answers.Average(a => Classify(a) == StyleVerdict.Preferred ? 1.0 : 0.0),
         answers.Average(a => Classify(a) == StyleVerdict.Dispreferred ? 1.0 : 0.0),
         answers.Count(IsDegenerate));

    /// <summary>Writes the SFT data as JSON Lines (<c>prompt</c>, <c>completion</c>), the layout <c>mldpo sft</c> reads.</summary>
    public void WriteSftData(string path) =>
        File.WriteAllLines(path, SftExamples().Select(e => JsonSerializer.Serialize(new { prompt = e.Prompt, completion = e.Completion })));

    /// <summary>Writes the preference pairs as JSON Lines (<c>prompt</c>, <c>chosen</c>, <c>rejected</c>), the layout <c>mldpo dpo</c> reads.</summary>
    public void WritePairs(string path) =>
        File.WriteAllLines(path, TrainPairs().Select(p => JsonSerializer.Serialize(new { prompt = p.Prompt, chosen = p.Chosen, rejected = p.Rejected })));
}
