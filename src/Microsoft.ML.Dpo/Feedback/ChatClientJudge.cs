using System.Collections.Concurrent;
using Microsoft.Extensions.AI;

namespace Microsoft.ML.Dpo.Feedback;

/// <summary>Options of <see cref="ChatClientJudge"/>.</summary>
public sealed class ChatClientJudgeOptions
{
    /// <summary>The rating request (rubric, scale, layout). Default: a 1–10 helpfulness/honesty/instruction-following rubric.</summary>
    public RatingPrompt Prompt { get; set; } = new();

    /// <summary>An optional system message sent before the rating request. Default null.</summary>
    public string? SystemMessage { get; set; }

    /// <summary>Options of each chat request (model id, temperature, output length...). Default: temperature 0, at most 256 output tokens.</summary>
    public ChatOptions ChatOptions { get; set; } = new() { Temperature = 0, MaxOutputTokens = 256 };

    /// <summary>Requests in flight at once. Default 4.</summary>
    public int MaxConcurrency { get; set; } = 4;

    /// <summary>
    /// Whether a request that throws (other than cancellation) counts as "no score" instead of failing the whole call. Default true:
    /// one failed request of a long judging run should not lose the rest.
    /// </summary>
    public bool TreatFailuresAsUnscored { get; set; } = true;
}

/// <summary>Counts of what a <see cref="ChatClientJudge"/> has done so far (thread-safe).</summary>
public sealed class JudgeStatistics
{
    long requests, scored, unparsable, failed;
    readonly ConcurrentQueue<string> unparsableSamples = new();

    /// <summary>Requests sent.</summary>
    public long Requests => Interlocked.Read(ref requests);
    /// <summary>Answers with a readable rating in the scale.</summary>
    public long Scored => Interlocked.Read(ref scored);
    /// <summary>Answers without a readable rating (or out of scale): counted, and returned as null, never as a score.</summary>
    public long Unparsable => Interlocked.Read(ref unparsable);
    /// <summary>Requests that threw (with <see cref="ChatClientJudgeOptions.TreatFailuresAsUnscored"/>).</summary>
    public long Failed => Interlocked.Read(ref failed);
    /// <summary>Up to 20 of the unparsable answers, for inspection.</summary>
    public IReadOnlyList<string> UnparsableSamples => unparsableSamples.ToArray();

    internal void AddRequest() => Interlocked.Increment(ref requests);
    internal void AddScored() => Interlocked.Increment(ref scored);
    internal void AddFailed() => Interlocked.Increment(ref failed);
    internal void AddUnparsable(string answer)
    {
        Interlocked.Increment(ref unparsable);
        if (unparsableSamples.Count < 20) unparsableSamples.Enqueue(answer);
    }

    /// <inheritdoc />
    public override string ToString() => $"{Requests} requests: {Scored} scored, {Unparsable} unparsable, {Failed} failed";
}

/// <summary>
/// An LLM-as-a-judge over any <see cref="IChatClient"/> (a hosted model, or a local one through
/// <see cref="LanguageModelChatClient"/>): each completion is sent with a rating rubric (<see cref="RatingPrompt"/>), and the
/// rating is read from the answer by <see cref="RatingParser"/>. Answers without a readable rating are counted in
/// <see cref="Statistics"/> and give null.
/// </summary>
public sealed class ChatClientJudge : IJudge
{
    readonly IChatClient client;

    /// <summary>Creates a judge over <paramref name="client"/>.</summary>
    /// <param name="client">The chat client (not disposed by the judge).</param>
    /// <param name="options">Rubric, chat options and concurrency; the defaults when null.</param>
    public ChatClientJudge(IChatClient client, ChatClientJudgeOptions? options = null)
    {
        this.client = client ?? throw new ArgumentNullException(nameof(client));
        Options = options ?? new ChatClientJudgeOptions();
        Options.Prompt.Validate();
        ArgumentOutOfRangeException.ThrowIfLessThan(Options.MaxConcurrency, 1);
    }

    /// <summary>The options.</summary>
    public ChatClientJudgeOptions Options { get; }

    /// <summary>What the judge has done so far.</summary>
    public JudgeStatistics Statistics { get; } = new();

    /// <summary>The messages sent to rate one completion.</summary>
    /// <param name="prompt">The prompt.</param>
    /// <param name="completion">The completion.</param>
    public IList<ChatMessage> BuildMessages(string prompt, string completion)
    {
        var messages = new List<ChatMessage>();
        if (Options.SystemMessage is { } system) messages.Add(new ChatMessage(ChatRole.System, system));
        messages.Add(new ChatMessage(ChatRole.User, Options.Prompt.Render(prompt, completion)));
        return messages;
    }

    /// <inheritdoc />
    public async Task<IReadOnlyList<double?>> ScoreAsync(IReadOnlyList<(string Prompt, string Completion)> items, CancellationToken cancellationToken = default)
    {
        JudgeExtensions.CheckItems(items);
        var scores = new double?[items.Count];
        var gate = new SemaphoreSlim(Options.MaxConcurrency);   // not disposed: tasks still in flight after a cancellation release it
        var tasks = new Task[items.Count];
        for (int i = 0; i < items.Count; i++)
        {
            int index = i;
            await gate.WaitAsync(cancellationToken).ConfigureAwait(false);
            tasks[i] = Task.Run(async () =>
            {
                try { scores[index] = await RateAsync(items[index].Prompt, items[index].Completion, cancellationToken).ConfigureAwait(false); }
                finally { gate.Release(); }
            }, CancellationToken.None);
        }
        await Task.WhenAll(tasks).ConfigureAwait(false);
        return scores;
    }

    async Task<double?> RateAsync(string prompt, string completion, CancellationToken cancellationToken)
    {
        Statistics.AddRequest();
        string answer;
        try
        {
            var response = await client.GetResponseAsync(BuildMessages(prompt, completion), Options.ChatOptions.Clone(), cancellationToken).ConfigureAwait(false);
            answer = response.Text;
        }
        catch (Exception) when (Options.TreatFailuresAsUnscored && !cancellationToken.IsCancellationRequested)
        {
            Statistics.AddFailed();
            return null;
        }
        if (RatingParser.TryParse(answer, Options.Prompt.MaxRating, out double rating))
        {
            Statistics.AddScored();
            return rating;
        }
        Statistics.AddUnparsable(answer);
        return null;
    }
}
