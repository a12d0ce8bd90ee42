using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Microsoft.Extensions.AI;
using Microsoft.ML.Dpo.Generation;
using Microsoft.ML.Dpo.Tokenization;

namespace Microsoft.ML.Dpo.Feedback;

/// <summary>
/// Any <see cref="LanguageModel"/> of this library as a Microsoft.Extensions.AI <see cref="IChatClient"/>: messages are rendered
/// with the tokenizer's <see cref="ChatTemplate"/> and answered by <see cref="TextGenerator"/>. <see cref="ChatOptions"/> map to
/// <see cref="GenerationOptions"/>: MaxOutputTokens → MaxNewTokens, Temperature, TopP, TopK, Seed, StopSequences → StopStrings
/// (options not set fall back to <see cref="DefaultGenerationOptions"/>). Streaming yields one update per generated token.
/// </summary>
/// <remarks>
/// Generation runs synchronously on a worker thread (TorchSharp's dispose scopes and no-grad state are per thread, so none is
/// held across an await); requests on one client are served one at a time. Roles: system, user, assistant (others are rejected).
/// <see cref="ChatOptions.Instructions"/> is sent as a system message first.
/// </remarks>
public sealed class LanguageModelChatClient : IChatClient
{
    readonly LanguageModel model;
    readonly bool ownsModel;
    readonly SemaphoreSlim gate = new(1, 1);
    readonly ChatClientMetadata metadata;

    /// <summary>Creates a chat client over <paramref name="model"/>.</summary>
    /// <param name="model">The model; it must have a tokenizer.</param>
    /// <param name="defaultOptions">Generation options used where the request's <see cref="ChatOptions"/> say nothing; greedy, 128 tokens when null.</param>
    /// <param name="modelId">The model id reported in responses and metadata. Default "microsoft-ml-dpo-local".</param>
    /// <param name="ownsModel">Whether <see cref="Dispose"/> disposes the model. Default false.</param>
    public LanguageModelChatClient(LanguageModel model, GenerationOptions? defaultOptions = null, string? modelId = null, bool ownsModel = false)
    {
        this.model = model ?? throw new ArgumentNullException(nameof(model));
        model.RequireTokenizer();
        DefaultGenerationOptions = defaultOptions ?? new GenerationOptions();
        DefaultGenerationOptions.Validate();
        ModelId = modelId ?? "microsoft-ml-dpo-local";
        this.ownsModel = ownsModel;
        metadata = new ChatClientMetadata("Microsoft.ML.Dpo", providerUri: null, defaultModelId: ModelId);
    }

    /// <summary>Generation options used where a request does not set them.</summary>
    public GenerationOptions DefaultGenerationOptions { get; }

    /// <summary>The model id reported in responses.</summary>
    public string ModelId { get; }

    /// <summary>The prompt text a conversation is rendered to (chat template with the generation prompt).</summary>
    /// <param name="messages">The conversation.</param>
    /// <param name="options">Request options (their <see cref="ChatOptions.Instructions"/> become a first system message).</param>
    public string RenderPrompt(IEnumerable<ChatMessage> messages, ChatOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var turns = new List<ChatTurn>();
        if (!string.IsNullOrEmpty(options?.Instructions)) turns.Add(ChatTurn.System(options.Instructions));
        foreach (var m in messages)
        {
            string role = m.Role.Value.ToLowerInvariant();
            if (role is not ("system" or "user" or "assistant"))
                throw new NotSupportedException($"Role '{m.Role.Value}' is not supported by LanguageModelChatClient (system, user, assistant only; no tools).");
            turns.Add(new ChatTurn(role, m.Text));
        }
        return model.RequireTokenizer().ChatTemplate.Render(turns, addGenerationPrompt: true);
    }

    /// <summary>The generation options of a request: <paramref name="options"/> over <see cref="DefaultGenerationOptions"/>.</summary>
    /// <param name="options">The request's chat options, or null.</param>
    public GenerationOptions ToGenerationOptions(ChatOptions? options)
    {
        var d = DefaultGenerationOptions;
        var g = new GenerationOptions
        {
            MaxNewTokens = options?.MaxOutputTokens ?? d.MaxNewTokens,
            Temperature = options?.Temperature is float t ? t : d.Temperature,
            TopP = options?.TopP is float p ? p : d.TopP,
            TopK = options?.TopK ?? d.TopK,
            Seed = options?.Seed ?? d.Seed,
            StopStrings = options?.StopSequences is { Count: > 0 } stops ? stops.ToList() : d.StopStrings,
            RepetitionPenalty = d.RepetitionPenalty, StopAtEos = d.StopAtEos, TruncateLongPrompts = d.TruncateLongPrompts,
        };
        g.Validate();
        return g;
    }

    /// <inheritdoc />
    public async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var (prompt, generation) = Prepare(messages, options);
        await gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var result = await Task.Run(() => Generate(prompt, generation, onToken: null, cancellationToken), cancellationToken).ConfigureAwait(false);
            return ToResponse(result);
        }
        finally
        {
            gate.Release();
        }
    }

    /// <inheritdoc />
    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var (prompt, generation) = Prepare(messages, options);
        var tokenizer = model.RequireTokenizer();
        string responseId = NewId();
        await gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var channel = Channel.CreateUnbounded<int>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
            var producer = Task.Run(() =>
            {
                try { return Generate(prompt, generation, id => channel.Writer.TryWrite(id), cancellationToken); }
                finally { channel.Writer.TryComplete(); }
            }, CancellationToken.None);

            // Decode the growing token list and emit what is new, holding back text that may still turn into a stop string
            // or an incomplete UTF-8 character.
            var ids = new List<int>();
            string emitted = "";
            await foreach (int id in channel.Reader.ReadAllAsync(cancellationToken).ConfigureAwait(false))
            {
                ids.Add(id);
                string text = tokenizer.Decode(ids);
                int safe = SafeLength(text, generation.StopStrings);
                if (safe > emitted.Length && text.StartsWith(emitted, StringComparison.Ordinal))
                {
                    string delta = text[emitted.Length..safe];
                    emitted = text[..safe];
                    yield return Update(delta, responseId);
                }
            }
            var result = await producer.ConfigureAwait(false);
            if (result.Text.Length > emitted.Length && result.Text.StartsWith(emitted, StringComparison.Ordinal))
                yield return Update(result.Text[emitted.Length..], responseId);
            yield return new ChatResponseUpdate(ChatRole.Assistant, [new UsageContent(Usage(result))])
            {
                ResponseId = responseId, ModelId = ModelId, FinishReason = result.FinishReason, CreatedAt = DateTimeOffset.UtcNow,
            };
        }
        finally
        {
            gate.Release();
        }
    }

    /// <inheritdoc />
    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(ChatClientMetadata)) return metadata;
        if (serviceType == typeof(LanguageModel)) return model;
        return serviceType.IsInstanceOfType(this) ? this : null;
    }

    /// <summary>Disposes the model when this client owns it.</summary>
    public void Dispose()
    {
        if (ownsModel) model.Dispose();
    }

    sealed record Generated(string Text, int PromptTokens, int OutputTokens, ChatFinishReason FinishReason);

    (string Prompt, GenerationOptions Options) Prepare(IEnumerable<ChatMessage> messages, ChatOptions? options) =>
        (RenderPrompt(messages, options), ToGenerationOptions(options));

    Generated Generate(string prompt, GenerationOptions options, Action<int>? onToken, CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        var tokenizer = model.RequireTokenizer();
        int[] ids = tokenizer.EncodePrompt(prompt).ToArray();
        var generator = model.CreateGenerator();
        int steps = 0;
        var output = generator.Generate([ids], options, token =>
        {
            steps++;
            cancellationToken.ThrowIfCancellationRequested();
            onToken?.Invoke(token.TokenId);
        })[0];
        // Length-limited when every allowed token was generated and none was an EOS or part of a stop string (both are removed from the output).
        int limit = Math.Min(options.MaxNewTokens, model.Network.Config.MaxPositionEmbeddings - ids.Length);
        bool hitLimit = steps >= limit && output.Length == steps;
        return new Generated(tokenizer.Decode(output), ids.Length, steps, hitLimit ? ChatFinishReason.Length : ChatFinishReason.Stop);
    }

    ChatResponse ToResponse(Generated result) => new(new ChatMessage(ChatRole.Assistant, result.Text))
    {
        ResponseId = NewId(), ModelId = ModelId, FinishReason = result.FinishReason, CreatedAt = DateTimeOffset.UtcNow, Usage = Usage(result),
    };

    static UsageDetails Usage(Generated result) => new()
    {
        InputTokenCount = result.PromptTokens, OutputTokenCount = result.OutputTokens, TotalTokenCount = result.PromptTokens + result.OutputTokens,
    };

    ChatResponseUpdate Update(string text, string responseId) => new(ChatRole.Assistant, text)
    {
        ResponseId = responseId, ModelId = ModelId, CreatedAt = DateTimeOffset.UtcNow,
    };

    static string NewId() => "mldpo-" + Guid.NewGuid().ToString("N")[..12];

    /// <summary>How much of <paramref name="text"/> can be emitted: not a trailing partial character, not a possible start of a stop string.</summary>
    static int SafeLength(string text, IReadOnlyList<string> stops)
    {
        int safe = text.Length;
        if (safe > 0 && text[^1] == '\uFFFD') safe--;                     // an incomplete multi-byte character so far
        if (safe > 0 && char.IsHighSurrogate(text[safe - 1])) safe--;
        foreach (string stop in stops)
        {
            int at = text.IndexOf(stop, StringComparison.Ordinal);
            if (at >= 0) { safe = Math.Min(safe, at); continue; }
            for (int k = Math.Min(stop.Length - 1, text.Length); k > 0; k--)
                if (text.AsSpan(text.Length - k).SequenceEqual(stop.AsSpan(0, k))) { safe = Math.Min(safe, text.Length - k); break; }
        }
        return safe;
    }
}
