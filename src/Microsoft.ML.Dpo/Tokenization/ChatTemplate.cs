using System.Text;
using System.Text.RegularExpressions;

namespace Microsoft.ML.Dpo.Tokenization;

/// <summary>
/// Formats a conversation into the single string a chat model was trained on. The built-in templates reproduce,
/// character for character, the Jinja chat templates of their model families as Hugging Face transformers renders
/// them (<c>apply_chat_template(..., tokenize=False)</c>): <see cref="ChatML"/> (Qwen2, SmolLM-Instruct),
/// <see cref="Llama2"/> (Llama-2-chat), <see cref="Zephyr"/> (Zephyr, TinyLlama-Chat) and <see cref="Plain"/> (base
/// models with no template). Special tokens appear as text (e.g. <c>&lt;|im_start|&gt;</c>, <c>&lt;/s&gt;</c>);
/// <see cref="TextTokenizer.Encode"/> maps them to their single ids.
/// </summary>
public abstract class ChatTemplate
{
    /// <summary>The names accepted by <see cref="FromName"/>.</summary>
    public static IReadOnlyList<string> Names { get; } = new[] { "chatml", "llama2", "zephyr", "plain" };

    private protected ChatTemplate() { }

    /// <summary>The template's name, one of <see cref="Names"/>.</summary>
    public abstract string Name { get; }

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
    /// with the generation prompt) and the completion (the rest of the full rendering: the reply and the template's
    /// end-of-turn text, e.g. <c>&lt;|im_end|&gt;\n</c>), such that <c>prompt + completion</c> equals
    /// <c>Render(messages, false)</c>.
    /// </summary>
    /// <param name="messages">The conversation; its last message must have the role <c>assistant</c>.</param>
    /// <returns>The prompt and the completion.</returns>
    /// <exception cref="ArgumentException">The conversation does not end with an assistant message, or the
    /// template's rendering of it does not start with the rendering of the prompt.</exception>
    public (string Prompt, string Completion) SplitForTraining(IReadOnlyList<ChatTurn> messages)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (messages.Count == 0 || messages[^1].Role != "assistant")
            throw new ArgumentException("The conversation must end with an 'assistant' message, the completion to train on.", nameof(messages));
        string prompt = Render(messages.Take(messages.Count - 1).ToArray(), addGenerationPrompt: true);
        string full = Render(messages, addGenerationPrompt: false);
        if (!full.StartsWith(prompt, StringComparison.Ordinal))
            throw new ArgumentException($"The '{Name}' template renders the conversation without its last message as a text that is not a prefix of the full conversation; it cannot be split into prompt and completion.", nameof(messages));
        return (prompt, full[prompt.Length..]);
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
    /// Recognizes the Jinja <c>chat_template</c> of a tokenizer_config.json as one of the built-in families, by
    /// distinctive markers: <c>&lt;|im_start|&gt;</c> and <c>&lt;|im_end|&gt;</c> (ChatML, with Qwen2's default system
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
