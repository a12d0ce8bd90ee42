using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace Microsoft.ML.Dpo.Feedback;

/// <summary>
/// The rating request a model judge receives: an instruction-following rubric (helpfulness, honesty, following the
/// instruction), a scale of 1 to <see cref="MaxRating"/>, the prompt and the completion, and the answer format
/// "Rating: N". Used by <see cref="ChatClientJudge"/> (any <c>IChatClient</c>) and <see cref="LanguageModelJudge"/> (a local model).
/// </summary>
public sealed class RatingPrompt
{
    /// <summary>The default rubric, written for this library; <c>{max}</c> is replaced by <see cref="MaxRating"/>.</summary>
    public const string DefaultInstructions =
        "You are a careful reviewer of assistant answers. Read the user's request and the assistant's answer, then judge the answer on three points:\n" +
        "- Helpfulness: does it actually solve the request, with correct and relevant content, at a sensible length?\n" +
        "- Honesty: does it avoid invented facts, state uncertainty where there is some, and decline what it cannot do?\n" +
        "- Instruction following: does it respect every constraint of the request (format, length, language, tone)?\n" +
        "Weigh the three together into one overall rating from 1 (useless or harmful) to {max} (excellent on all three points). " +
        "You may explain briefly first; end with a last line of the form \"Rating: N\" where N is a whole number from 1 to {max}.";

    /// <summary>The default layout of the request; <c>{instructions}</c>, <c>{prompt}</c>, <c>{completion}</c> and <c>{max}</c> are replaced.</summary>
    public const string DefaultTemplate = "{instructions}\n\n[Request]\n{prompt}\n\n[Answer]\n{completion}\n\n[End of answer]";

    /// <summary>The highest rating (the lowest is 1). Default 10.</summary>
    public int MaxRating { get; set; } = 10;

    /// <summary>The rubric text (<c>{max}</c> is replaced). Default <see cref="DefaultInstructions"/>.</summary>
    public string Instructions { get; set; } = DefaultInstructions;

    /// <summary>The request layout (placeholders <c>{instructions}</c>, <c>{prompt}</c>, <c>{completion}</c>, <c>{max}</c>). Default <see cref="DefaultTemplate"/>.</summary>
    public string Template { get; set; } = DefaultTemplate;

    /// <summary>Renders the request for one (prompt, completion).</summary>
    /// <param name="prompt">The prompt that was answered.</param>
    /// <param name="completion">The answer to rate.</param>
    public string Render(string prompt, string completion)
    {
        Validate();
        string max = MaxRating.ToString(CultureInfo.InvariantCulture);
        // One pass over the template, so placeholders inside the prompt or completion text are never expanded.
        var sb = new StringBuilder();
        var m = Regex.Matches(Template, @"\{(instructions|prompt|completion|max)\}");
        int at = 0;
        foreach (Match match in m)
        {
            sb.Append(Template, at, match.Index - at);
            sb.Append(match.Groups[1].Value switch
            {
                "instructions" => Instructions.Replace("{max}", max, StringComparison.Ordinal),
                "prompt" => prompt,
                "completion" => completion,
                _ => max,
            });
            at = match.Index + match.Length;
        }
        sb.Append(Template, at, Template.Length - at);
        return sb.ToString();
    }

    /// <summary>Checks the scale and the template.</summary>
    public void Validate()
    {
        if (MaxRating < 2) throw new ArgumentOutOfRangeException(nameof(MaxRating), MaxRating, "MaxRating must be at least 2.");
        ArgumentNullException.ThrowIfNull(Instructions);
        if (Template is null || !Template.Contains("{completion}", StringComparison.Ordinal))
            throw new ArgumentException("Template must contain the {completion} placeholder.", nameof(Template));
    }
}

/// <summary>
/// Reads a rating out of a judge model's free-text answer. Accepted forms (the last explicit one wins, as models often reason
/// first): "Rating: 7", "**Score:** 4", "Overall rating = 8.5", "7/10" or "7 out of 10" (only when the denominator is the
/// scale's maximum), a JSON object such as <c>{"rating": 8}</c> (keys rating, score, overall, overall_score, overall_rating), and an
/// answer that is just a number ("7", "7."). A value outside [1, max], or an answer with none of these, is unparsable: it gives
/// no score — it is never guessed.
/// </summary>
public static class RatingParser
{
    const string Number = @"(\d+(?:\.\d+)?)";
    static readonly Regex Labeled = new(@"(?:rating|score|grade|overall)\b[^\S\n]*(?:\([^)\n]*\))?[^\S\n]*[*_]*[^\S\n]*[:=][^\S\n]*[*_`""\[]*[^\S\n]*" + Number + @"(?:[^\S\n]*(?:/|out of)[^\S\n]*(\d+))?",
        RegexOptions.IgnoreCase | RegexOptions.CultureInvariant);
    static readonly Regex Fraction = new(Number + @"[^\S\n]*(?:/|out of)[^\S\n]*(\d+)\b", RegexOptions.IgnoreCase | RegexOptions.CultureInvariant);
    static readonly Regex Bare = new(@"^[\s*_`""\[]*" + Number + @"[\s*_`""\].!]*$", RegexOptions.CultureInvariant);
    static readonly Regex JsonObject = new(@"\{[^{}]*\}", RegexOptions.CultureInvariant);
    static readonly string[] JsonKeys = ["rating", "score", "overall", "overall_score", "overall_rating"];

    /// <summary>Parses <paramref name="answer"/> on a 1..<paramref name="maxRating"/> scale.</summary>
    /// <param name="answer">The judge's answer text.</param>
    /// <param name="maxRating">The scale's maximum.</param>
    /// <param name="rating">The rating, when the answer has a readable one within the scale.</param>
    /// <returns>Whether a rating was read.</returns>
    public static bool TryParse(string? answer, int maxRating, out double rating)
    {
        rating = double.NaN;
        if (string.IsNullOrWhiteSpace(answer)) return false;
        double? found = null;
        foreach (Match m in JsonObject.Matches(answer))
            if (FromJson(m.Value) is double v) found = v;
        if (found is null)
        {
            var labeled = Labeled.Matches(answer);
            for (int i = labeled.Count - 1; i >= 0 && found is null; i--)
                found = Value(labeled[i].Groups[1].Value, labeled[i].Groups[2], maxRating, out bool ok) is double v && ok ? v : null;
            if (labeled.Count > 0 && found is null) return false;   // an explicit rating that is out of scale is not replaced by a guess
        }
        if (found is null)
        {
            var fractions = Fraction.Matches(answer);
            if (fractions.Count > 0)
                found = Value(fractions[^1].Groups[1].Value, fractions[^1].Groups[2], maxRating, out bool ok) is double v && ok ? v : null;
            else if (Bare.Match(answer) is { Success: true } bare)
                found = double.Parse(bare.Groups[1].Value, CultureInfo.InvariantCulture);
        }
        if (found is not double r || !(r >= 1 && r <= maxRating)) return false;
        rating = r;
        return true;
    }

    static double? Value(string number, Group denominator, int maxRating, out bool ok)
    {
        ok = !denominator.Success || int.Parse(denominator.Value, CultureInfo.InvariantCulture) == maxRating;
        return double.Parse(number, CultureInfo.InvariantCulture);
    }

    static double? FromJson(string text)
    {
        try
        {
            using var doc = JsonDocument.Parse(text);
            foreach (var property in doc.RootElement.EnumerateObject())
            {
                if (!JsonKeys.Contains(property.Name.ToLowerInvariant())) continue;
                var value = property.Value;
                if (value.ValueKind == JsonValueKind.Number) return value.GetDouble();
                if (value.ValueKind == JsonValueKind.String && double.TryParse(value.GetString(), NumberStyles.Float, CultureInfo.InvariantCulture, out double d)) return d;
            }
        }
        catch (JsonException)
        {
        }
        return null;
    }
}
