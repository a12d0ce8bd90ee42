using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.ML.Dpo.Tokenization;

namespace Microsoft.ML.Dpo.Data;

/// <summary>Detects the layout of a record and reads it into examples; a record that does not fit throws <see cref="RecordException"/>.</summary>
internal static class RecordLayouts
{
    // ---- preference layouts ----

    public static PreferenceLayout DetectPreference(JsonElement record)
    {
        RequireObject(record);
        if (record.TryGetProperty("completions", out var completions) && completions.ValueKind == JsonValueKind.Array)
            return PreferenceLayout.ScoredCompletions;
        if (Present(record, "chosen"))
        {
            // A chosen value of another type is then reported as that layout's field error.
            if (record.GetProperty("chosen").ValueKind == JsonValueKind.Array) return PreferenceLayout.Conversational;
            return Present(record, "prompt") ? PreferenceLayout.Standard : PreferenceLayout.ImplicitPrompt;
        }
        throw new RecordException(null, "cannot tell the preference layout: expected 'chosen' and 'rejected' (strings or message lists) or a 'completions' list",
            "fields present: " + Describe(record));
    }

    public static CompletionLayout DetectCompletion(JsonElement record)
    {
        RequireObject(record);
        if (record.TryGetProperty("messages", out var messages) && messages.ValueKind == JsonValueKind.Array) return CompletionLayout.Messages;
        if (Present(record, "prompt") && Present(record, "completion")) return CompletionLayout.PromptCompletion;
        throw new RecordException(null, "cannot tell the SFT layout: expected 'prompt' and 'completion', or a 'messages' list", "fields present: " + Describe(record));
    }

    public static PreferencePair ReadPair(JsonElement record, long row, PreferenceLayout layout, PreferenceDataLoadOptions options)
    {
        RequireObject(record);
        switch (layout)
        {
            case PreferenceLayout.Standard:
                return new PreferencePair(String(record, "prompt"), String(record, "chosen"), String(record, "rejected"), row);
            case PreferenceLayout.ImplicitPrompt:
                return SplitTranscripts(String(record, "chosen"), String(record, "rejected"), options.ImplicitPromptMarker, row);
            case PreferenceLayout.Conversational:
                return ReadConversationalPair(record, row, options);
            default:
                throw new InvalidOperationException($"Layout {layout} does not read to a single pair.");
        }
    }

    static PreferencePair SplitTranscripts(string chosen, string rejected, string marker, long row)
    {
        int common = 0, limit = Math.Min(chosen.Length, rejected.Length);
        while (common < limit && chosen[common] == rejected[common]) common++;
        int at = chosen.AsSpan(0, common).LastIndexOf(marker.AsSpan(), StringComparison.Ordinal);
        if (at < 0)
            throw new RecordException("chosen", $"chosen and rejected share no prefix ending with the prompt marker '{Escape(marker)}'");
        int end = at + marker.Length;
        return new PreferencePair(chosen[..end], chosen[end..], rejected[end..], row);
    }

    static PreferencePair ReadConversationalPair(JsonElement record, long row, PreferenceDataLoadOptions options)
    {
        if (options.ChatTemplate is { } template) return ReadConversationalPair(record, row, template);
        var chosen = Messages(record, "chosen");
        var rejected = Messages(record, "rejected");
        var prompt = new List<(string Role, string Content)>();
        if (Present(record, "prompt"))
        {
            var p = record.GetProperty("prompt");
            if (p.ValueKind == JsonValueKind.Array) prompt = Messages(record, "prompt");
            else if (p.ValueKind == JsonValueKind.String)
            {
                // A prompt string beside whole conversations (HuggingFaceH4/ultrafeedback_binarized) is a copy of their first user turn;
                // beside assistant-only lists it is the user's message.
                if (chosen.All(m => m.Role == "assistant")) prompt.Add(("user", p.GetString()!));
            }
            else throw new RecordException("prompt", $"expected a list of messages or a string, found {Kind(p)}");
        }
        var (context, chosenText) = SplitLastAssistant(AfterPrompt(prompt, chosen), "chosen");
        var (rejectedContext, rejectedText) = SplitLastAssistant(AfterPrompt(prompt, rejected), "rejected");
        if (!context.SequenceEqual(rejectedContext))
            throw new RecordException("rejected", "chosen and rejected differ before their final assistant message; they must share the conversation that is the prompt");
        return new PreferencePair(options.Renderer(context, true), chosenText, rejectedText, row);
    }

    /// <summary>
    /// A conversational pair through the model's chat template, split as TRL does: the prompt is the rendering of the shared
    /// messages with the generation prompt, each completion the rest of its full rendering (reply and end-of-turn text).
    /// </summary>
    static PreferencePair ReadConversationalPair(JsonElement record, long row, ChatTemplate template)
    {
        var chosen = Turns(record, "chosen");
        var rejected = Turns(record, "rejected");
        var prompt = new List<ChatTurn>();
        if (Present(record, "prompt"))
        {
            var p = record.GetProperty("prompt");
            if (p.ValueKind == JsonValueKind.Array) prompt = Turns(record, "prompt");
            else if (p.ValueKind == JsonValueKind.String)
            {
                if (chosen.All(m => m.Role == "assistant")) prompt.Add(ChatTurn.User(p.GetString()!));
            }
            else throw new RecordException("prompt", $"expected a list of messages or a string, found {Kind(p)}");
        }
        var (context, chosenLast) = SplitLastAssistant(AfterPrompt(prompt, chosen), "chosen");
        var (rejectedContext, rejectedLast) = SplitLastAssistant(AfterPrompt(prompt, rejected), "rejected");
        if (!SameTurns(context, rejectedContext))
            throw new RecordException("rejected", "chosen and rejected differ before their final assistant message; they must share the conversation that is the prompt");
        var (promptText, completions) = Split(template, context, new[] { new[] { chosenLast }, new[] { rejectedLast } }, "chosen");
        return new PreferencePair(promptText, completions[0], completions[1], row);
    }

    static (string Prompt, IReadOnlyList<string> Completions) Split(ChatTemplate template, List<ChatTurn> context, ChatTurn[][] completions, string field)
    {
        try
        {
            return template.SplitForTraining(context, completions);
        }
        catch (ArgumentException e)
        {
            throw new RecordException(field, e.Message);
        }
    }

    static List<ChatTurn> AfterPrompt(List<ChatTurn> prompt, List<ChatTurn> completion) =>
        prompt.Count > 0 && completion.Count > prompt.Count && SameTurns(completion.Take(prompt.Count).ToList(), prompt)
            ? completion
            : prompt.Concat(completion).ToList();

    static bool SameTurns(IReadOnlyList<ChatTurn> a, IReadOnlyList<ChatTurn> b)
    {
        if (a.Count != b.Count) return false;
        for (int i = 0; i < a.Count; i++)
        {
            if (a[i].Role != b[i].Role || a[i].Content != b[i].Content) return false;
            var fa = a[i].Fields;
            var fb = b[i].Fields;
            if (fa is null || fb is null) { if (fa != fb) return false; continue; }
            if (fa.Count != fb.Count) return false;
            foreach (var (k, v) in fa)
                if (!fb.TryGetValue(k, out var w) || !JsonNode.DeepEquals(v as JsonNode, w as JsonNode)) return false;
        }
        return true;
    }

    static (List<ChatTurn> Context, ChatTurn Last) SplitLastAssistant(List<ChatTurn> messages, string field)
    {
        if (messages.Count == 0) throw new RecordException(field, "the conversation is empty");
        var last = messages[^1];
        if (last.Role != "assistant")
            throw new RecordException(field, "the last message must be an assistant message (role 'assistant')", $"found role '{last.Role}'");
        return (messages.GetRange(0, messages.Count - 1), last);
    }

    /// <summary>The whole conversation: the prompt messages, then the completion's — unless the completion already repeats them.</summary>
    static List<(string Role, string Content)> AfterPrompt(List<(string Role, string Content)> prompt, List<(string Role, string Content)> completion) =>
        prompt.Count > 0 && completion.Count > prompt.Count && completion.Take(prompt.Count).SequenceEqual(prompt)
            ? completion
            : prompt.Concat(completion).ToList();

    public static ScoredPrompt ReadScored(JsonElement record, long row)
    {
        RequireObject(record);
        string promptField = !Present(record, "prompt") && Present(record, "instruction") ? "instruction" : "prompt";
        string prompt = String(record, promptField);
        var list = Array(record, "completions");
        var completions = new List<ScoredCompletion>();
        int i = 0;
        foreach (var item in list.EnumerateArray())
        {
            string field = $"completions[{i++}]";
            if (item.ValueKind != JsonValueKind.Object) throw new RecordException(field, $"expected an object, found {Kind(item)}");
            string textField = new[] { "response", "text", "content" }.FirstOrDefault(f => Present(item, f)) ?? "response";
            string text = String(item, textField, field + ".");
            double overall = item.TryGetProperty("overall_score", out var score) ? Score(score, field + ".overall_score") : double.NaN;
            string? ratingsField = new[] { "annotations", "ratings" }.FirstOrDefault(f => Present(item, f));
            completions.Add(new ScoredCompletion(text, overall, ratingsField is null ? null : Ratings(item.GetProperty(ratingsField), $"{field}.{ratingsField}")));
        }
        return new ScoredPrompt(prompt, completions, row);
    }

    static Dictionary<string, double> Ratings(JsonElement ratings, string field)
    {
        if (ratings.ValueKind != JsonValueKind.Object) throw new RecordException(field, $"expected an object of per-aspect ratings, found {Kind(ratings)}");
        var result = new Dictionary<string, double>(StringComparer.Ordinal);
        foreach (var aspect in ratings.EnumerateObject())
        {
            var value = aspect.Value;
            string aspectField = $"{field}.{aspect.Name}";
            // UltraFeedback: {"helpfulness": {"Rating": "4", "Rationale": "..."}}; or a plain {"helpfulness": 4}.
            if (value.ValueKind == JsonValueKind.Object)
            {
                string? ratingName = value.EnumerateObject().Select(p => p.Name).FirstOrDefault(n => string.Equals(n, "rating", StringComparison.OrdinalIgnoreCase));
                if (ratingName is null) throw new RecordException(aspectField, "expected a number or an object with a 'Rating'");
                result[aspect.Name] = Score(value.GetProperty(ratingName), aspectField + "." + ratingName);
            }
            else result[aspect.Name] = Score(value, aspectField);
        }
        return result;
    }

    /// <summary>A score: a number, or a string holding one; null and unparsable strings ("N/A") are NaN (unusable, not malformed).</summary>
    static double Score(JsonElement value, string field) => value.ValueKind switch
    {
        JsonValueKind.Number => value.GetDouble(),
        JsonValueKind.Null => double.NaN,
        JsonValueKind.String => double.TryParse(value.GetString(), NumberStyles.Float, CultureInfo.InvariantCulture, out double d) ? d : double.NaN,
        _ => throw new RecordException(field, $"expected a number, found {Kind(value)}"),
    };

    // ---- SFT layouts ----

    public static CompletionExample ReadCompletion(JsonElement record, long row, CompletionLayout layout, DataFileOptions options)
    {
        RequireObject(record);
        bool conversational = layout == CompletionLayout.Messages || (Present(record, "prompt") && record.GetProperty("prompt").ValueKind == JsonValueKind.Array);
        if (options.ChatTemplate is { } template && conversational)
        {
            var (context, last) = layout == CompletionLayout.Messages
                ? SplitLastAssistant(Turns(record, "messages"), "messages")
                : SplitLastAssistant(Turns(record, "prompt").Concat(Turns(record, "completion")).ToList(), "completion");
            var (promptText, completions) = Split(template, context, new[] { new[] { last } }, layout == CompletionLayout.Messages ? "messages" : "completion");
            return new CompletionExample(promptText, completions[0], row);
        }
        if (layout == CompletionLayout.Messages)
        {
            var (context, text) = SplitLastAssistant(Messages(record, "messages"), "messages");
            return new CompletionExample(options.Renderer(context, true), text, row);
        }
        if (Present(record, "prompt") && record.GetProperty("prompt").ValueKind == JsonValueKind.Array)
        {
            var (context, text) = SplitLastAssistant(Messages(record, "prompt").Concat(Messages(record, "completion")).ToList(), "completion");
            return new CompletionExample(options.Renderer(context, true), text, row);
        }
        return new CompletionExample(String(record, "prompt"), String(record, "completion"), row);
    }

    // ---- unpaired (KTO) layout ----

    /// <summary>Whether a record is an unpaired preference (<c>prompt</c>, <c>completion</c>, <c>label</c>), as TRL's unpaired preference type.</summary>
    public static bool IsUnpaired(JsonElement record) => record.ValueKind == JsonValueKind.Object && Present(record, "label");

    /// <summary>An unpaired preference: the prompt and completion as an SFT record (strings or message lists) and a boolean <c>label</c>.</summary>
    public static UnpairedPreference ReadUnpaired(JsonElement record, long row, DataFileOptions options)
    {
        RequireObject(record);
        if (!record.TryGetProperty("label", out var label) || label.ValueKind == JsonValueKind.Null) throw new RecordException("label", "missing");
        if (label.ValueKind is not (JsonValueKind.True or JsonValueKind.False))
            throw new RecordException("label", $"expected true (desirable) or false (undesirable), found {Kind(label)}");
        if (!Present(record, "prompt") || !Present(record, "completion"))
            throw new RecordException(Present(record, "prompt") ? "completion" : "prompt", "missing", "an unpaired record has 'prompt', 'completion' and 'label'; fields present: " + Describe(record));
        var example = ReadCompletion(record, row, CompletionLayout.PromptCompletion, options);
        return new UnpairedPreference(example.Prompt, example.Completion, label.ValueKind == JsonValueKind.True, row);
    }

    // ---- prompts only (online RL) ----

    /// <summary>
    /// The prompt of any record with a <c>prompt</c> field: a string as it is, a message list rendered with the generation prompt
    /// (through the chat template when given). A pairs or SFT record's other fields are ignored.
    /// </summary>
    public static string ReadPrompt(JsonElement record, CompletionDataLoadOptions options)
    {
        RequireObject(record);
        if (!Present(record, "prompt"))
            throw new RecordException("prompt", "missing: online RL reads the 'prompt' field of each record (a string or a list of messages)", "fields present: " + Describe(record));
        if (record.GetProperty("prompt").ValueKind == JsonValueKind.Array)
            return options.ChatTemplate is { } template ? template.Render(Turns(record, "prompt"), true) : options.Renderer(Messages(record, "prompt"), true);
        return String(record, "prompt");
    }

    // ---- fields ----

    static (List<(string Role, string Content)> Context, string Completion) SplitLastAssistant(List<(string Role, string Content)> messages, string field)
    {
        if (messages.Count == 0) throw new RecordException(field, "the conversation is empty");
        var last = messages[^1];
        if (last.Role != "assistant")
            throw new RecordException(field, "the last message must be an assistant message (role 'assistant')", $"found role '{last.Role}'");
        return (messages.GetRange(0, messages.Count - 1), last.Content);
    }

    /// <summary>Parses a JSON array of {role, content} messages (the value of a text column); <see cref="RecordException"/> or <see cref="JsonException"/> when malformed.</summary>
    internal static List<(string Role, string Content)> MessagesFromJson(string json, string field)
    {
        using var document = JsonDocument.Parse("{\"m\":" + json + "}");
        var messages = Messages(document.RootElement, "m");
        return messages;
    }

    /// <summary>Parses a JSON array of messages with all their fields (the value of a text column), for a model's own chat template.</summary>
    internal static List<ChatTurn> TurnsFromJson(string json, string field)
    {
        using var document = JsonDocument.Parse("{\"m\":" + json + "}");
        return Turns(document.RootElement, "m");
    }

    /// <summary>Messages with their other keys (tool_calls, name, ...) kept as JSON for the model's chat template.</summary>
    static List<ChatTurn> Turns(JsonElement record, string field)
    {
        var list = Array(record, field);
        var messages = new List<ChatTurn>();
        int i = 0;
        foreach (var item in list.EnumerateArray())
        {
            string itemField = $"{field}[{i++}]";
            if (item.ValueKind != JsonValueKind.Object) throw new RecordException(itemField, $"expected a message object {{role, content}}, found {Kind(item)}");
            string role = String(item, "role", itemField + ".");
            string content = String(item, "content", itemField + ".");
            Dictionary<string, object?>? fields = null;
            foreach (var property in item.EnumerateObject())
                if (property.Name is not ("role" or "content"))
                    (fields ??= new(StringComparer.Ordinal))[property.Name] = JsonNode.Parse(property.Value.GetRawText());
            messages.Add(new ChatTurn(role, content, fields));
        }
        return messages;
    }

    static List<(string Role, string Content)> Messages(JsonElement record, string field) =>
        Turns(record, field).Select(t => (t.Role, t.Content)).ToList();

    static JsonElement Array(JsonElement record, string field)
    {
        if (!record.TryGetProperty(field, out var value) || value.ValueKind == JsonValueKind.Null) throw new RecordException(field, "missing");
        if (value.ValueKind != JsonValueKind.Array) throw new RecordException(field, $"expected a list, found {Kind(value)}");
        return value;
    }

    static string String(JsonElement record, string field, string prefix = "")
    {
        if (!record.TryGetProperty(field, out var value) || value.ValueKind == JsonValueKind.Null) throw new RecordException(prefix + field, "missing");
        if (value.ValueKind != JsonValueKind.String) throw new RecordException(prefix + field, $"expected a string, found {Kind(value)}");
        return value.GetString()!;
    }

    static bool Present(JsonElement record, string field) =>
        record.TryGetProperty(field, out var value) && value.ValueKind != JsonValueKind.Null;

    static void RequireObject(JsonElement record)
    {
        if (record.ValueKind != JsonValueKind.Object) throw new RecordException(null, $"a record must be a JSON object, found {Kind(record)}");
    }

    static string Kind(JsonElement value) => value.ValueKind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "a list",
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        _ => "null",
    };

    static string Describe(JsonElement record)
    {
        var names = record.EnumerateObject().Select(p => $"'{p.Name}'").ToList();
        return names.Count == 0 ? "(none)" : string.Join(", ", names);
    }

    static string Escape(string text) => text.Replace("\n", "\\n").Replace("\r", "\\r");
}
