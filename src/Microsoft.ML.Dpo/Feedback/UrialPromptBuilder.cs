using System.Text;
using Microsoft.ML.Dpo.Generation;

namespace Microsoft.ML.Dpo.Feedback;

/// <summary>One in-context example of a URIAL prompt: a query and the answer in the style to imitate.</summary>
/// <param name="Query">The query.</param>
/// <param name="Answer">The answer.</param>
public sealed record UrialExample(string Query, string Answer);

/// <summary>
/// URIAL (Lin et al. 2023, "The Unlocking Spell on Base LLMs"): alignment by in-context learning alone. A base (untuned) model
/// is given a system preamble and a few stylistic examples in a plain "# Query: / # Answer:" layout, then the new query; it
/// continues with an answer in the same style. The built-in examples are this library's own; replace them with
/// <see cref="Examples"/>. <see cref="Generate"/> cuts the answer where the model starts the next "# Query".
/// </summary>
public sealed class UrialPromptBuilder
{
    /// <summary>The marker that opens a query (and ends an answer).</summary>
    public const string QueryMarker = "# Query:";
    /// <summary>The marker that opens an answer.</summary>
    public const string AnswerMarker = "# Answer:";

    /// <summary>The built-in system preamble.</summary>
    public const string DefaultSystemPrompt =
        "# Instructions\n\nBelow are conversations between a person and an AI assistant. The assistant answers every query helpfully, " +
        "honestly and harmlessly: it gets to the point, explains its reasoning when that helps, says so when it is unsure, " +
        "and politely declines requests that could cause harm.";

    /// <summary>The three built-in stylistic examples.</summary>
    public static IReadOnlyList<UrialExample> DefaultExamples { get; } =
    [
        new("How many minutes should I boil an egg so that the yolk stays soft?",
            "For a soft, runny yolk, lower the egg into water that is already boiling and cook it for about 6 minutes (large egg, " +
            "straight from the fridge). Then move it to cold water for a minute so it stops cooking and peels easily. " +
            "Add a minute for a jammy yolk, or about 9–10 minutes for a fully set one."),
        new("Write a two-line poem about the sea.",
            "Grey waves fold the evening light away,\nand leave the shore to keep what it could not say."),
        new("What is the fastest way to get rich without any work?",
            "I'm not aware of any reliable way to get rich without effort — offers that promise it are usually scams or gambling, " +
            "and they tend to cost money rather than make it. If you want your money to grow with little ongoing work, the honest " +
            "answer is slow: spend less than you earn, keep an emergency fund, and invest regularly in low-cost, diversified funds."),
    ];

    /// <summary>The system preamble (null or empty for none). Default <see cref="DefaultSystemPrompt"/>.</summary>
    public string? SystemPrompt { get; set; } = DefaultSystemPrompt;

    /// <summary>The stylistic examples, in order. Default <see cref="DefaultExamples"/>.</summary>
    public IList<UrialExample> Examples { get; set; } = DefaultExamples.ToList();

    /// <summary>The full prompt for <paramref name="query"/>: preamble, examples, then the query and an open answer.</summary>
    /// <param name="query">The new query.</param>
    public string Build(string query)
    {
        ArgumentNullException.ThrowIfNull(query);
        var sb = new StringBuilder();
        if (!string.IsNullOrEmpty(SystemPrompt)) sb.Append(SystemPrompt.TrimEnd()).Append("\n\n");
        foreach (var example in Examples)
            AppendTurn(sb, example.Query).Append(example.Answer.Trim()).Append("\n\n");
        AppendTurn(sb, query);
        return sb.ToString();
    }

    static StringBuilder AppendTurn(StringBuilder sb, string query) =>
        sb.Append(QueryMarker).Append('\n').Append(query.Trim()).Append("\n\n").Append(AnswerMarker).Append('\n');

    /// <summary>Cuts a raw continuation at the next <see cref="QueryMarker"/> (or <c>"# Query"</c>) and trims it.</summary>
    /// <param name="continuation">The text the model generated after the prompt.</param>
    public static string ExtractAnswer(string continuation)
    {
        ArgumentNullException.ThrowIfNull(continuation);
        int at = continuation.IndexOf("# Query", StringComparison.Ordinal);
        return (at >= 0 ? continuation[..at] : continuation).Trim();
    }

    /// <summary>Answers <paramref name="query"/> with a base <paramref name="model"/> prompted in the URIAL way.</summary>
    /// <param name="model">A model with a tokenizer.</param>
    /// <param name="query">The query.</param>
    /// <param name="options">Generation options (greedy, 256 tokens when null); "# Query" is added to the stop strings.</param>
    public string Generate(LanguageModel model, string query, GenerationOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        options ??= new GenerationOptions { MaxNewTokens = 256 };
        var withStop = new GenerationOptions
        {
            MaxNewTokens = options.MaxNewTokens, Temperature = options.Temperature, TopK = options.TopK, TopP = options.TopP,
            RepetitionPenalty = options.RepetitionPenalty, Seed = options.Seed, StopAtEos = options.StopAtEos,
            TruncateLongPrompts = options.TruncateLongPrompts, StopStrings = options.StopStrings.Append("# Query").Distinct().ToList(),
        };
        return ExtractAnswer(model.CreateGenerator().Generate([Build(query)], withStop)[0]);
    }
}
