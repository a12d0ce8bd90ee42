namespace Microsoft.ML.Dpo.Tokenization;

/// <summary>One message of a conversation: who speaks (<c>system</c>, <c>user</c> or <c>assistant</c>) and what is said.</summary>
public sealed record ChatTurn
{
    /// <summary>Creates a message.</summary>
    /// <param name="role">The speaker: <c>system</c>, <c>user</c> or <c>assistant</c> (lower case, as in Hugging Face datasets).</param>
    /// <param name="content">The text of the message.</param>
    public ChatTurn(string role, string content)
    {
        ArgumentException.ThrowIfNullOrEmpty(role);
        ArgumentNullException.ThrowIfNull(content);
        Role = role;
        Content = content;
    }

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
