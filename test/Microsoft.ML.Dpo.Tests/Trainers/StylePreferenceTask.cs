using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tokenization;
using Microsoft.ML.Dpo.Trainers;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Trainers;

/// <summary>
/// A synthetic alignment task: answer "Tell me about {subject}." either warmly (preferred) or curtly (rejected).
/// SFT teaches both styles but mostly the curt one, so the SFT model prefers the rejected answers; DPO must flip that preference, and the
/// held-out subjects are never seen in training.
/// </summary>
internal static class StylePreferenceTask
{
    public static readonly string[] Warm = ["Happy to help!", "Gladly, friend!"];
    public static readonly string[] Curt = ["No.", "Go away."];

    static readonly string[] Subjects =
    [
        "apples", "rivers", "clouds", "tigers", "pianos", "castles", "rockets", "forests", "bridges", "lemons",
        "deserts", "owls", "trains", "candles", "oceans", "violins", "gardens", "comets", "islands", "bees",
        "mountains", "kites", "glaciers", "dragons", "robots", "tulips", "volcanoes", "whales", "lanterns", "meadows",
        "pebbles", "harbors", "falcons", "puzzles", "canyons", "otters", "maples", "beacons", "rainbows", "shells",
    ];

    public static string[] TrainSubjects => Subjects[..30];
    public static string[] HeldOutSubjects => Subjects[30..];

    public static string Prompt(string subject) => $"Tell me about {subject}.\n";

    public sealed class Pair { public string prompt { get; set; } = ""; public string chosen { get; set; } = ""; public string rejected { get; set; } = ""; }
    public sealed class Completion { public string prompt { get; set; } = ""; public string completion { get; set; } = ""; }

    public static Pair[] Pairs(string[] subjects) => subjects.Select((s, i) => new Pair { prompt = Prompt(s), chosen = Warm[i % 2], rejected = Curt[i % 2] }).ToArray();

    /// <summary>SFT data in both styles, mostly curt (7 in 10): the SFT model knows both and prefers the curt one.</summary>
    public static Completion[] MostlyCurtCompletions(string[] subjects) =>
        subjects.Select((s, i) => new Completion { prompt = Prompt(s), completion = i % 10 < 7 ? Curt[i % 2] : Warm[i % 2] }).ToArray();

    /// <summary>The SFT model every end-to-end test starts DPO from: the base model taught both styles, mostly the curt one.</summary>
    public static LanguageModelTransformer TrainSft(string directory)
    {
        var ml = new MLContext(seed: 0);
        using var baseModel = CreateBaseModel(directory);
        return ml.Alignment().Trainers.Sft(new SftTrainer.Options
        {
            BaseModel = baseModel, Epochs = 20, BatchSize = 8, LearningRate = 3e-3, WarmupSteps = 5, MaxLength = 64, MaxPromptLength = 40,
        }).Fit(ml.Data.LoadFromEnumerable(MostlyCurtCompletions(TrainSubjects)));
    }

    /// <summary>The model's greedy answers (up to 20 new tokens) to the held-out prompts.</summary>
    public static IReadOnlyList<string> HeldOutAnswers(LanguageModel model) =>
        model.CreateGenerator().Generate(HeldOutSubjects.Select(Prompt).ToList(), new Microsoft.ML.Dpo.Generation.GenerationOptions { MaxNewTokens = 20 });

    /// <summary>The share of answers that are exactly one of the warm answers (the task's ground truth; a loop or a mangled answer does not count).</summary>
    public static double PreferredShare(IReadOnlyList<string> answers) => answers.Average(a => Warm.Contains(a.Trim()) ? 1.0 : 0.0);

    /// <summary>The answers that loop (GenerationEvaluation.IsDegenerate).</summary>
    public static List<string> Degenerate(IReadOnlyList<string> answers) => answers.Where(Microsoft.ML.Dpo.Training.GenerationEvaluation.IsDegenerate).ToList();

    /// <summary>A tiny random Llama over the byte-level tokenizer.</summary>
    public static LanguageModel CreateBaseModel(string directory, int seed = 1)
    {
        var tokenizer = TextTokenizer.CreateByteLevel(Path.Combine(directory, "tokenizer"));
        manual_seed(seed);
        var network = CausalLM.Create(new CausalLMConfig
        {
            ModelType = "llama", VocabSize = 257, HiddenSize = 64, IntermediateSize = 128, NumHiddenLayers = 2,
            NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 16, MaxPositionEmbeddings = 128, RmsNormEps = 1e-5,
            TieWordEmbeddings = true, BosTokenId = 256, EosTokenIds = [256],
        });
        return new LanguageModel(network, tokenizer);
    }
}
