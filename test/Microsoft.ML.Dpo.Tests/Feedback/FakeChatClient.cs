using System.Runtime.CompilerServices;
using Microsoft.Extensions.AI;

namespace Microsoft.ML.Dpo.Tests.Feedback;

/// <summary>A deterministic in-process chat client: answers each request with <c>answer(lastUserMessage)</c>.</summary>
internal sealed class FakeChatClient(Func<string, string> answer) : IChatClient
{
    public int Calls;

    public Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        Interlocked.Increment(ref Calls);
        string user = messages.Last(m => m.Role == ChatRole.User).Text;
        return Task.FromResult(new ChatResponse(new ChatMessage(ChatRole.Assistant, answer(user))));
    }

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var response = await GetResponseAsync(messages, options, cancellationToken);
        foreach (var update in response.ToChatResponseUpdates()) yield return update;
    }

    public object? GetService(Type serviceType, object? serviceKey = null) => serviceType.IsInstanceOfType(this) ? this : null;

    public void Dispose() { }

    /// <summary>The completion text between "[Answer]" and "[End of answer]" of a default rating request.</summary>
    public static string AnswerOf(string request)
    {
        int start = request.IndexOf("[Answer]\n", StringComparison.Ordinal) + "[Answer]\n".Length;
        int end = request.IndexOf("\n\n[End of answer]", start, StringComparison.Ordinal);
        return request[start..end];
    }
}
