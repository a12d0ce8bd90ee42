using Microsoft.ML.Dpo.Tokenization.Jinja;

namespace Microsoft.ML.Dpo.Tokenization;

/// <summary>What a chat template is rendered with besides the messages, as the arguments of Hugging Face's <c>apply_chat_template</c>.</summary>
public sealed class ChatRenderOptions
{
    /// <summary>Tool (function) definitions, as JSON schemas (<c>tools=</c>); null for none (templates then see None).</summary>
    public object? Tools { get; init; }

    /// <summary>Documents for retrieval-augmented templates (<c>documents=</c>); null for none.</summary>
    public object? Documents { get; init; }

    /// <summary>
    /// End the text inside the last (assistant) message, leaving it open for the model to continue
    /// (<c>continue_final_message=True</c>); cannot be combined with the generation prompt.
    /// </summary>
    public bool ContinueFinalMessage { get; init; }

    /// <summary>Further keyword arguments the template reads, e.g. Qwen3's <c>enable_thinking</c>.</summary>
    public IReadOnlyDictionary<string, object?>? Variables { get; init; }

    /// <summary>The clock for <c>strftime_now</c> (templates that print today's date); null for the local time.</summary>
    public Func<DateTime>? Now { get; init; }
}

/// <summary>A rendered conversation with one flag per character: whether it came from a <c>{% generation %}</c> block.</summary>
/// <param name="Text">The rendered conversation.</param>
/// <param name="AssistantMask">Per character of <see cref="Text"/>: true for the assistant's text (inside the template's
/// <c>{% generation %}…{% endgeneration %}</c> blocks, Hugging Face's <c>return_assistant_tokens_mask</c>).</param>
/// <param name="HasGenerationBlocks">Whether the template marks assistant text at all; when false the mask is all false and
/// cannot tell assistant tokens apart (as transformers warns).</param>
public sealed record ChatRendering(string Text, IReadOnlyList<bool> AssistantMask, bool HasGenerationBlocks);

/// <summary>
/// A model's own Jinja chat template (tokenizer_config.json's <c>chat_template</c> or chat_template.jinja), rendered by
/// the library's Jinja interpreter exactly as transformers renders it: the variables are <c>messages</c> (each a dict
/// of role, content and the message's other fields), <c>add_generation_prompt</c>, <c>tools</c> and
/// <c>documents</c> (None unless given), the tokenizer's special tokens (<c>bos_token</c>, <c>eos_token</c>,
/// <c>unk_token</c>, <c>pad_token</c>) and any further keywords (<see cref="ChatRenderOptions.Variables"/>).
/// </summary>
sealed class JinjaChatTemplate : ChatTemplate
{
    readonly JinjaTemplate template;
    readonly IReadOnlyDictionary<string, string> specialTokens;

    public JinjaChatTemplate(string source, IReadOnlyDictionary<string, string>? specialTokens, string origin)
    {
        template = JinjaTemplate.Parse(source);
        this.specialTokens = specialTokens ?? new Dictionary<string, string>();
        Origin = origin;
        HasGenerationBlocks = source.Contains("generation", StringComparison.Ordinal)
            && System.Text.RegularExpressions.Regex.IsMatch(source, @"\{%-?\s*generation\s*-?%\}");
    }

    public override string Name => "jinja";

    public override string Jinja => template.Source;

    public override bool IsBuiltIn => false;

    /// <summary>Where the template came from, for messages ("tokenizer_config.json chat_template" and the like).</summary>
    public string Origin { get; }

    public bool HasGenerationBlocks { get; }

    public override string Render(IReadOnlyList<ChatTurn> messages, bool addGenerationPrompt) => RenderCore(messages, addGenerationPrompt, null);

    private protected override string RenderCore(IReadOnlyList<ChatTurn> messages, bool addGenerationPrompt, ChatRenderOptions? options) =>
        RenderWithSpans(messages, addGenerationPrompt, options).Text;

    internal JinjaRendering RenderWithSpans(IReadOnlyList<ChatTurn> messages, bool addGenerationPrompt, ChatRenderOptions? options)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var list = new List<object?>(messages.Count);
        foreach (var m in messages)
        {
            var message = new Dictionary<object, object?> { ["role"] = m.Role, ["content"] = m.Content };
            if (m.Fields != null)
                foreach (var (k, v) in m.Fields)
                    if (k is not ("role" or "content")) message[k] = Py.FromClr(v);
            list.Add(message);
        }
        var variables = new Dictionary<string, object?>(StringComparer.Ordinal)
        {
            ["messages"] = list,
            ["tools"] = options?.Tools,
            ["documents"] = options?.Documents,
            ["add_generation_prompt"] = addGenerationPrompt,
        };
        foreach (var (k, v) in specialTokens) variables[k] = v;
        if (options?.Variables != null) foreach (var (k, v) in options.Variables) variables[k] = v;
        try
        {
            return template.RenderWithGenerationSpans(variables, options?.Now);
        }
        catch (JinjaException e) when (e.RaisedByTemplate)
        {
            throw new ArgumentException($"The model's chat template ({Origin}) refused the conversation: {e.Reason}", nameof(messages), e);
        }
        catch (JinjaException e)
        {
            throw new ArgumentException($"The model's chat template ({Origin}) failed on the conversation: {e.Message}", nameof(messages), e);
        }
    }

    public override ChatRendering RenderWithAssistantMask(IReadOnlyList<ChatTurn> messages, bool addGenerationPrompt = false, ChatRenderOptions? options = null)
    {
        var rendering = RenderWithSpans(messages, addGenerationPrompt, options);
        return new ChatRendering(rendering.Text, rendering.CharacterMask(), HasGenerationBlocks);
    }

    public override string ToString() => $"the model's own Jinja template ({Origin})";
}
