using Microsoft.Extensions.AI;
using Microsoft.ML.Dpo.Feedback;

namespace Microsoft.ML.Dpo.Samples;

/// <summary>
/// The teacher of the offline samples: an <see cref="IChatClient"/> that answers the library's rating request the way a
/// strong model (GPT-4 in Zephyr's recipe) would for this task, by a fixed rubric — 9 for one of the task's warm answers,
/// 3 for a curt one, 1 for anything else (malformed, empty, off-task). It stands in for a hosted or local chat model: the
/// judge that talks to it (<see cref="ChatClientJudge"/>) builds the same request and parses the same kind of answer.
/// </summary>
/// <remarks>It counts the requests it answers (<see cref="Calls"/>): the judge-call budget of the sample's comparison.</remarks>
internal sealed class RubricTeacher : IChatClient
{
    long calls;

    /// <summary>Rating requests answered so far (one per judged completion).</summary>
    public long Calls => Interlocked.Read(ref calls);

    public Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        Interlocked.Increment(ref calls);
        string request = messages.Last().Text;
        string answer = Between(request, "[Answer]\n", "\n\n[End of answer]").Trim();
        int rating = DemoTask.IsPreferredStyle(answer) ? 9 : DemoTask.IsCurtStyle(answer) ? 3 : 1;
        return Task.FromResult(new ChatResponse(new ChatMessage(ChatRole.Assistant, $"The answer is judged against the rubric.\nRating: {rating}")));
    }

    public IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default) =>
        throw new NotSupportedException("The rubric teacher answers whole responses only.");

    public object? GetService(Type serviceType, object? serviceKey = null) => serviceType.IsInstanceOfType(this) ? this : null;

    public void Dispose() { }

    static string Between(string text, string start, string end)
    {
        int a = text.IndexOf(start, StringComparison.Ordinal);
        int b = a < 0 ? -1 : text.IndexOf(end, a + start.Length, StringComparison.Ordinal);
        return a < 0 || b < 0 ? "" : text[(a + start.Length)..b];
    }
}
