namespace Microsoft.ML.Dpo.Tokenization;

/// <summary>One message of a conversation: who speaks (<c>system</c>, <c>user</c> or <c>assistant</c>) and what is said.</summary>
public sealed record ChatTurn
{
    /// <summary>Creates a message.</summary>
    /// <param name="role">The speaker: <c>system</c>, <c>user</c> or <c>assistant</c> (lower case, as in Hugging Face datasets).</param>
    /// <param name="content">The text of the message.</param>
    public ChatTurn(string role, string content) : this(role, content, null) { }

    /// <summary>Creates a message with further fields, as Hugging Face conversations carry them (e.g. <c>tool_calls</c>,
    /// <c>tool_call_id</c>, <c>name</c>, <c>reasoning_content</c>); a model's own Jinja template sees them as keys of the message.</summary>
    /// <param name="role">The speaker: <c>system</c>, <c>user</c>, <c>assistant</c>, <c>tool</c>...</param>
    /// <param name="content">The text of the message.</param>
    /// <param name="fields">The other keys of the message and their values (strings, numbers, booleans, null, lists,
    /// dictionaries or System.Text.Json nodes); null for none.</param>
    public ChatTurn(string role, string content, IReadOnlyDictionary<string, object?>? fields)
    {
        ArgumentException.ThrowIfNullOrEmpty(role);
        ArgumentNullException.ThrowIfNull(content);
        Role = role;
        Content = content;
        Fields = fields;
    }

    /// <summary>The message's other keys (tool calls and the like) passed to Jinja templates, or null. Built-in templates ignore them.</summary>
    public IReadOnlyDictionary<string, object?>? Fields { get; }

    /// <summary>The speaker: <c>system</c>, <c>user</c> or <c>assistant</c>.</summary>
    public string Role { get; }

    /// <summary>The text of the message.</summary>
    public string Content { get; }

    /// <summary>A <c>system</c> message.</summary>
    /// <param name="content">The text of the message.</param>
    public static ChatTurn System(string content) => new("system", content);

    /// <summary>A <c>user</c> message.</summary>
    /// <param name="content">The text of the message.</param>
    public static ChatTurn User(string content) => new("user", content);

    /// <summary>An <c>assistant</c> message.</summary>
    /// <param name="content">The text of the message.</param>
    public static ChatTurn Assistant(string content) => new("assistant", content);
}
