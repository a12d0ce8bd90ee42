using System.Text;
using System.Text.RegularExpressions;

namespace Microsoft.ML.Dpo.Tokenization;

/// <summary>
/// Formats a conversation into the single string a chat model was trained on. A model's own Jinja template
/// (<see cref="FromJinja"/>; what <see cref="TextTokenizer"/> loads from tokenizer_config.json or chat_template.jinja) is
/// rendered by the library's Jinja interpreter exactly as Hugging Face transformers renders it
/// (<c>apply_chat_template(..., tokenize=False)</c>). Four built-in templates are named fallbacks for models without one,
/// each reproducing its family's Jinja template character for character: <see cref="ChatML"/> (Qwen2, SmolLM-Instruct),
/// <see cref="Llama2"/> (Llama-2-chat), <see cref="Zephyr"/> (Zephyr, TinyLlama-Chat) and <see cref="Plain"/> (base
/// models with no template). Special tokens appear as text (e.g. <c>&lt;|im_start|&gt;</c>, <c>&lt;/s&gt;</c>);
/// <see cref="TextTokenizer.Encode"/> maps them to their single ids.
/// </summary>
public abstract class ChatTemplate
{
    /// <summary>The names accepted by <see cref="FromName"/>.</summary>
    public static IReadOnlyList<string> Names { get; } = new[] { "chatml", "llama2", "zephyr", "plain" };

    private protected ChatTemplate() { }

    /// <summary>The template's name: one of <see cref="Names"/> for a built-in template, <c>jinja</c> for a model's own template.</summary>
    public abstract string Name { get; }

    /// <summary>Whether this is one of the four built-in templates (false for a model's own Jinja template).</summary>
    public virtual bool IsBuiltIn => true;

    /// <summary>
    /// A model's own Jinja chat template, rendered by the library's interpreter as transformers renders it.
    /// </summary>
    /// <param name="source">The template source (tokenizer_config.json's <c>chat_template</c> or chat_template.jinja).</param>
    /// <param name="specialTokens">The tokenizer's special tokens the template may use, by variable name (<c>bos_token</c>,
    /// <c>eos_token</c>, <c>unk_token</c>, <c>pad_token</c>); null for none.</param>
    /// <param name="origin">Where the template came from, for messages (e.g. the file's path).</param>
    /// <returns>The template.</returns>
    /// <exception cref="Jinja.JinjaException">The template has a syntax error or uses a construct the interpreter does not
    /// support; the message names the line and column.</exception>
    public static ChatTemplate FromJinja(string source, IReadOnlyDictionary<string, string>? specialTokens = null, string origin = "Jinja chat template")
    {
        ArgumentNullException.ThrowIfNull(source);
        return new JinjaChatTemplate(source, specialTokens, origin);
    }

    /// <summary>
    /// Renders a conversation with the further arguments of Hugging Face's <c>apply_chat_template</c>: tools, documents,
    /// template keywords (e.g. <c>enable_thinking</c>) and <c>continue_final_message</c>. Built-in templates ignore tools,
    /// documents and keywords.
    /// </summary>
    /// <param name="messages">The messages, in order.</param>
    /// <param name="addGenerationPrompt">Whether to end with the cue that starts the assistant's reply.</param>
    /// <param name="options">The further arguments; null for none.</param>
    /// <returns>The formatted text.</returns>
    /// <exception cref="ArgumentException">The template refuses the conversation (its <c>raise_exception</c>, e.g. roles that do
    /// not alternate) or fails on it; or <see cref="ChatRenderOptions.ContinueFinalMessage"/> with a generation prompt, or
    /// with a final message the rendering does not contain.</exception>
    public string Render(IReadOnlyList<ChatTurn> messages, bool addGenerationPrompt, ChatRenderOptions? options)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (options?.ContinueFinalMessage != true) return RenderCore(messages, addGenerationPrompt, options);
        if (addGenerationPrompt) throw new ArgumentException("continue_final_message and add_generation_prompt cannot be combined: the first continues the last message, the second starts a new one.", nameof(options));
        if (messages.Count == 0) throw new ArgumentException("continue_final_message needs a final message.", nameof(messages));
        string text = RenderCore(messages, false, options);
        // transformers: cut the rendering right after the final message's text (keeping its leading space handling).
        string final = messages[^1].Content;
        string stripped = final.Trim();
        int at = text.LastIndexOf(stripped, StringComparison.Ordinal);
        if (stripped.Length == 0 || at < 0)
            throw new ArgumentException("continue_final_message is set but the final message does not appear in the rendered conversation.", nameof(messages));
        string lstripped = final.TrimStart();
        bool keepsTrailingSpace = lstripped == final && at + final.Length <= text.Length && string.CompareOrdinal(text, at, final, 0, final.Length) == 0;
        return keepsTrailingSpace ? text[..(at + lstripped.Length)] : text[..(at + stripped.Length)];
    }

    /// <summary>Renders with the options; built-in templates ignore them.</summary>
    private protected virtual string RenderCore(IReadOnlyList<ChatTurn> messages, bool addGenerationPrompt, ChatRenderOptions? options) =>
        Render(messages, addGenerationPrompt);

    /// <summary>
    /// Renders a conversation and marks the assistant's characters: those inside the template's
    /// <c>{% generation %}…{% endgeneration %}</c> blocks (Hugging Face's <c>return_assistant_tokens_mask</c>, TRL's
    /// <c>assistant_only_loss</c>). Built-in templates and templates without such blocks give an all-false mask and
    /// <see cref="ChatRendering.HasGenerationBlocks"/> false.
    /// </summary>
    /// <param name="messages">The messages, in order.</param>
    /// <param name="addGenerationPrompt">Whether to end with the generation prompt.</param>
    /// <param name="options">Further arguments; null for none.</param>
    /// <returns>The text and its per-character assistant mask.</returns>
    public virtual ChatRendering RenderWithAssistantMask(IReadOnlyList<ChatTurn> messages, bool addGenerationPrompt = false, ChatRenderOptions? options = null)
    {
        string text = Render(messages, addGenerationPrompt, options);
        return new ChatRendering(text, new bool[text.Length], false);
    }

    /// <summary>
    /// The equivalent Hugging Face Jinja template, written as <c>chat_template</c> into tokenizer_config.json when a
    /// tokenizer is saved so that transformers renders conversations the same way.
    /// </summary>
    public abstract string Jinja { get; }

    /// <summary>Renders a conversation.</summary>
    /// <param name="messages">The messages, in order.</param>
    /// <param name="addGenerationPrompt">Whether to end with the cue that starts the assistant's reply (e.g.
    /// <c>&lt;|im_start|&gt;assistant\n</c>); use it for the prompt of a completion to generate or to train on.</param>
    /// <returns>The formatted text.</returns>
    /// <exception cref="ArgumentException">A role the template does not know, or an order it does not allow.</exception>
    public abstract string Render(IReadOnlyList<ChatTurn> messages, bool addGenerationPrompt);

    /// <summary>
    /// Splits a conversation that ends with an assistant message into the prompt (every earlier message, rendered
    /// with the generation prompt, cut back as TRL does to what the full rendering shares with it) and the completion
    /// (the rest of the full rendering: the reply and the template's end-of-turn text, e.g. <c>&lt;|im_end|&gt;\n</c>),
    /// such that <c>prompt + completion</c> equals <c>Render(messages, false)</c>.
    /// </summary>
    /// <param name="messages">The conversation; its last message must have the role <c>assistant</c>.</param>
    /// <returns>The prompt and the completion.</returns>
    /// <exception cref="ArgumentException">The conversation does not end with an assistant message, or the template refuses it.</exception>
    public (string Prompt, string Completion) SplitForTraining(IReadOnlyList<ChatTurn> messages)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (messages.Count == 0 || messages[^1].Role != "assistant")
            throw new ArgumentException("The conversation must end with an 'assistant' message, the completion to train on.", nameof(messages));
        var (prompt, completions) = SplitForTraining(messages.Take(messages.Count - 1).ToArray(), new[] { new[] { messages[^1] } });
        return (prompt, completions[0]);
    }

    /// <summary>
    /// Splits conversations that share a prompt into the prompt text and one completion text each, as TRL's
    /// <c>maybe_apply_chat_template</c> does: the prompt is the rendering of the prompt messages with the generation prompt
    /// (or, when they end with an assistant message, continuing it), cut back to the prefix it shares with every full
    /// rendering (prompt + completion messages, no generation prompt; a template such as DeepSeek-R1's adds to its
    /// generation prompt what the full rendering lacks); each completion is the rest of its full rendering, so
    /// prompt + completion is exactly the full rendering. (TRL cuts the prompt once per completion in turn; cutting it
    /// once for all keeps prompt + completion equal to the full rendering for every completion.)
    /// </summary>
    /// <param name="prompt">The prompt messages (possibly empty).</param>
    /// <param name="completions">The completions, each a list of messages (usually one assistant message).</param>
    /// <param name="options">Further rendering arguments (tools, keywords); null for none.</param>
    /// <returns>The prompt and the completions' texts.</returns>
    /// <exception cref="ArgumentException">The template refuses or fails on a conversation.</exception>
    public (string Prompt, IReadOnlyList<string> Completions) SplitForTraining(IReadOnlyList<ChatTurn> prompt,
        IReadOnlyList<IReadOnlyList<ChatTurn>> completions, ChatRenderOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        ArgumentNullException.ThrowIfNull(completions);
        bool continueFinal = prompt.Count > 0 && prompt[^1].Role == "assistant";
        var promptOptions = new ChatRenderOptions
        {
            Tools = options?.Tools, Documents = options?.Documents, Variables = options?.Variables, Now = options?.Now, ContinueFinalMessage = continueFinal,
        };
        string promptText = Render(prompt, addGenerationPrompt: !continueFinal, promptOptions);
        var fulls = new List<string>(completions.Count);
        int common = promptText.Length;
        foreach (var completion in completions)
        {
            var all = new List<ChatTurn>(prompt.Count + completion.Count);
            all.AddRange(prompt);
            all.AddRange(completion);
            string full = Render(all, false, options is null ? null : new ChatRenderOptions { Tools = options.Tools, Documents = options.Documents, Variables = options.Variables, Now = options.Now });
            int n = 0, limit = Math.Min(common, full.Length);
            while (n < limit && full[n] == promptText[n]) n++;
            common = n;
            fulls.Add(full);
        }
        return (promptText[..common], fulls.Select(f => f[common..]).ToArray());
    }

    /// <inheritdoc/>
    public override string ToString() => Name;

    /// <summary>ChatML: <c>&lt;|im_start|&gt;role\ncontent&lt;|im_end|&gt;\n</c> per message; generation prompt <c>&lt;|im_start|&gt;assistant\n</c>.</summary>
    /// <param name="defaultSystemPrompt">A system message inserted first when the conversation has none, as Qwen2's
    /// template does with "You are a helpful assistant."; null for none (SmolLM-Instruct).</param>
    public static ChatTemplate ChatML(string? defaultSystemPrompt = null) => new ChatMLTemplate(defaultSystemPrompt);

    /// <summary>
    /// Llama 2 chat: <c>&lt;s&gt;[INST] user [/INST] assistant &lt;/s&gt;</c> per exchange, the system message folded
    /// into the first user message as <c>&lt;&lt;SYS&gt;&gt;\n...\n&lt;&lt;/SYS&gt;&gt;\n\n</c>, contents stripped of
    /// surrounding white space. Roles must alternate user/assistant after the optional system message. There is no
    /// separate generation prompt: a prompt ends with <c>[/INST]</c>.
    /// </summary>
    /// <param name="bosToken">The beginning-of-sequence token written before each exchange.</param>
    /// <param name="eosToken">The end-of-sequence token written after each assistant message.</param>
    public static ChatTemplate Llama2(string bosToken = "<s>", string eosToken = "</s>") => new Llama2Template(bosToken, eosToken);

    /// <summary>Zephyr: <c>&lt;|role|&gt;\ncontent&lt;/s&gt;\n</c> per message; generation prompt <c>&lt;|assistant|&gt;\n</c>.</summary>
    /// <param name="eosToken">The end-of-sequence token that closes each message.</param>
    public static ChatTemplate Zephyr(string eosToken = "</s>") => new ZephyrTemplate(eosToken);

    /// <summary>
    /// Plain text for models without a chat template: <c>Role: content\n</c> per message (<c>System</c>,
    /// <c>User</c>, <c>Assistant</c>); generation prompt <c>Assistant:</c>, so that a completion starts with a space.
    /// </summary>
    public static ChatTemplate Plain() => new PlainTemplate();

    /// <summary>A built-in template by name (case-insensitive): <c>chatml</c>, <c>llama2</c>, <c>zephyr</c> or <c>plain</c>.</summary>
    /// <param name="name">The name; <c>llama-2</c>, <c>llama_2</c> and <c>chat-ml</c> are accepted too.</param>
    /// <param name="bosToken">The BOS token for <c>llama2</c>; null for <c>&lt;s&gt;</c>.</param>
    /// <param name="eosToken">The EOS token for <c>llama2</c> and <c>zephyr</c>; null for <c>&lt;/s&gt;</c>.</param>
    /// <returns>The template.</returns>
    /// <exception cref="ArgumentException">An unknown name; the message lists the known ones.</exception>
    public static ChatTemplate FromName(string name, string? bosToken = null, string? eosToken = null)
    {
        ArgumentNullException.ThrowIfNull(name);
        string key = name.Trim().Replace("-", "").Replace("_", "").ToLowerInvariant();
        return key switch
        {
            "chatml" => ChatML(),
            "llama2" => Llama2(bosToken ?? "<s>", eosToken ?? "</s>"),
            "zephyr" => Zephyr(eosToken ?? "</s>"),
            "plain" => Plain(),
            _ => throw new ArgumentException($"Unknown chat template '{name}'. Known templates: {string.Join(", ", Names)}.", nameof(name)),
        };
    }

    /// <summary>
    /// Recognizes a Jinja <c>chat_template</c> as one of the built-in families, by distinctive markers (an approximation:
    /// <see cref="TextTokenizer"/> renders a model's own template with <see cref="FromJinja"/> instead, exactly): <c>&lt;|im_start|&gt;</c> and <c>&lt;|im_end|&gt;</c> (ChatML, with Qwen2's default system
    /// prompt when the template inserts one), <c>[INST]</c> with <c>&lt;&lt;SYS&gt;&gt;</c> (Llama 2),
    /// <c>&lt;|user|&gt;</c> and <c>&lt;|assistant|&gt;</c> closed by <c>eos_token</c> (Zephyr), and the Jinja this
    /// library writes for <see cref="Plain"/>. Null or blank (a base model without a template) gives <see cref="Plain"/>.
    /// </summary>
    /// <param name="jinjaChatTemplate">The template's source, or null.</param>
    /// <param name="bosToken">The tokenizer's BOS token (Llama 2); null for <c>&lt;s&gt;</c>.</param>
    /// <param name="eosToken">The tokenizer's EOS token (Llama 2, Zephyr); null for <c>&lt;/s&gt;</c>.</param>
    /// <returns>The template.</returns>
    /// <exception cref="NotSupportedException">A template of another family (Llama 3, Mistral, Gemma, Phi-3...):
    /// the message says how to choose a built-in one by name instead.</exception>
    public static ChatTemplate Detect(string? jinjaChatTemplate, string? bosToken = null, string? eosToken = null)
    {
        if (TryDetect(jinjaChatTemplate, out var template, bosToken, eosToken)) return template;
        string head = jinjaChatTemplate!.Length > 120 ? jinjaChatTemplate[..120] + "..." : jinjaChatTemplate;
        throw new NotSupportedException(
            $"The tokenizer's chat template is not one that Microsoft.ML.Dpo recognizes (it knows {string.Join(", ", Names)}); it begins: \"{head.ReplaceLineEndings("\\n")}\". "
            + "Choose a built-in template by name instead: set the trainer option ChatTemplateName (e.g. ChatTemplateName = \"chatml\"), "
            + "pass chatTemplateName to TextTokenizer.FromDirectory, or call TextTokenizer.WithChatTemplate(ChatTemplate.FromName(\"...\")).");
    }

    /// <summary>Like <see cref="Detect"/>, without throwing for an unknown template.</summary>
    /// <param name="jinjaChatTemplate">The template's source, or null.</param>
    /// <param name="template">The recognized template, or null.</param>
    /// <param name="bosToken">The tokenizer's BOS token; null for <c>&lt;s&gt;</c>.</param>
    /// <param name="eosToken">The tokenizer's EOS token; null for <c>&lt;/s&gt;</c>.</param>
    /// <returns>Whether the template was recognized.</returns>
    public static bool TryDetect(string? jinjaChatTemplate, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out ChatTemplate? template, string? bosToken = null, string? eosToken = null)
    {
        string? j = jinjaChatTemplate;
        template = null;
        if (string.IsNullOrWhiteSpace(j)) template = Plain();
        else if (j.Contains("<|im_start|>", StringComparison.Ordinal) && j.Contains("<|im_end|>", StringComparison.Ordinal))
        {
            // Qwen2 inserts a default system message: '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' as a literal.
            var m = Regex.Match(j, @"'<\|im_start\|>system(?:\\n|\n)([^'{}+]*?)<\|im_end\|>(?:\\n|\n)'");
            template = ChatML(m.Success ? m.Groups[1].Value : null);
        }
        else if (j.Contains("[INST]", StringComparison.Ordinal) && j.Contains("<<SYS>>", StringComparison.Ordinal) && j.Contains("bos_token", StringComparison.Ordinal))
            template = Llama2(bosToken ?? "<s>", eosToken ?? "</s>");
        else if (j.Contains("<|user|>", StringComparison.Ordinal) && j.Contains("<|assistant|>", StringComparison.Ordinal)
                 && j.Contains("eos_token", StringComparison.Ordinal) && !j.Contains("<|end|>", StringComparison.Ordinal))
            template = Zephyr(eosToken ?? "</s>");
        else if (j.Contains("capitalize", StringComparison.Ordinal) && j.Contains("'Assistant:'", StringComparison.Ordinal))
            template = Plain();   // the Jinja this library writes for Plain
        return template != null;
    }

    private protected static ArgumentException UnknownRole(string template, ChatTurn turn, string known) =>
        new($"The '{template}' chat template does not know the role '{turn.Role}' (known: {known}).", "messages");

    sealed class ChatMLTemplate(string? defaultSystemPrompt) : ChatTemplate
    {
        public override string Name => "chatml";

        public override string Jinja => defaultSystemPrompt is null
            ? "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
            : "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n" + defaultSystemPrompt.Replace("'", "\\'") + "<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

        public override string Render(IReadOnlyList<ChatTurn> messages, bool addGenerationPrompt)
        {
            ArgumentNullException.ThrowIfNull(messages);
            var sb = new StringBuilder();
            if (defaultSystemPrompt != null && messages.Count > 0 && messages[0].Role != "system")
                sb.Append("<|im_start|>system\n").Append(defaultSystemPrompt).Append("<|im_end|>\n");
            foreach (var m in messages)
                sb.Append("<|im_start|>").Append(m.Role).Append('\n').Append(m.Content).Append("<|im_end|>\n");
            if (addGenerationPrompt) sb.Append("<|im_start|>assistant\n");
            return sb.ToString();
        }
    }

    sealed class Llama2Template(string bos, string eos) : ChatTemplate
    {
        public override string Name => "llama2";

        // meta-llama/Llama-2-7b-chat-hf's template.
        public override string Jinja => "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

        public override string Render(IReadOnlyList<ChatTurn> messages, bool addGenerationPrompt)
        {
            ArgumentNullException.ThrowIfNull(messages);
            var sb = new StringBuilder();
            int start = 0;
            string? system = null;
            if (messages.Count > 0 && messages[0].Role == "system") { system = messages[0].Content; start = 1; }
            for (int i = start; i < messages.Count; i++)
            {
                var m = messages[i];
                bool expectUser = (i - start) % 2 == 0;
                if (m.Role != (expectUser ? "user" : "assistant"))
                    throw new ArgumentException($"The 'llama2' chat template needs roles to alternate user/assistant/user/... after an optional first system message; message {i} has the role '{m.Role}'.", nameof(messages));
                string content = i == start && system != null ? "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + m.Content : m.Content;
                if (expectUser) sb.Append(bos).Append("[INST] ").Append(content.Trim()).Append(" [/INST]");
                else sb.Append(' ').Append(content.Trim()).Append(' ').Append(eos);
            }
            return sb.ToString();
        }
    }

    sealed class ZephyrTemplate(string eos) : ChatTemplate
    {
        public override string Name => "zephyr";

        // HuggingFaceH4/zephyr-7b-beta's template (rendered with trim_blocks: the newline after each {{ }} stays).
        public override string Jinja => "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";

        public override string Render(IReadOnlyList<ChatTurn> messages, bool addGenerationPrompt)
        {
            ArgumentNullException.ThrowIfNull(messages);
            var sb = new StringBuilder();
            foreach (var m in messages)
            {
                if (m.Role is not ("system" or "user" or "assistant")) throw UnknownRole(Name, m, "system, user, assistant");
                sb.Append("<|").Append(m.Role).Append("|>\n").Append(m.Content).Append(eos).Append('\n');
            }
            if (addGenerationPrompt && messages.Count > 0) sb.Append("<|assistant|>\n");
            return sb.ToString();
        }
    }

    sealed class PlainTemplate : ChatTemplate
    {
        public override string Name => "plain";

        public override string Jinja => "{% for message in messages %}{{ (message['role'] | capitalize) + ': ' + message['content'] + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

        public override string Render(IReadOnlyList<ChatTurn> messages, bool addGenerationPrompt)
        {
            ArgumentNullException.ThrowIfNull(messages);
            var sb = new StringBuilder();
            foreach (var m in messages)
                sb.Append(char.ToUpperInvariant(m.Role[0])).Append(m.Role[1..].ToLowerInvariant()).Append(": ").Append(m.Content).Append('\n');
            if (addGenerationPrompt) sb.Append("Assistant:");
            return sb.ToString();
        }
    }
}
