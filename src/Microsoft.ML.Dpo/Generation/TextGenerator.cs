using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Generation;

/// <summary>A token produced during streaming generation.</summary>
/// <param name="Row">The prompt's index in the batch.</param>
/// <param name="TokenId">The new token.</param>
/// <param name="Step">0 for the first new token of the batch, 1 for the second, ...</param>
public readonly record struct GeneratedToken(int Row, int TokenId, int Step);

/// <summary>A sampled completion with each token's log-probability at sampling time.</summary>
/// <param name="Tokens">The new tokens, ending with the end-of-sequence token when the row stopped there.</param>
/// <param name="LogProbs">One log-probability per entry of <paramref name="Tokens"/>.</param>
/// <param name="EndedAtEos">Whether the row stopped at end-of-sequence (otherwise it reached the token limit or a stop string).</param>
internal readonly record struct SampledSequence(int[] Tokens, float[] LogProbs, bool EndedAtEos);

/// <summary>
/// Batched autoregressive generation with a KV cache. Prompts of different lengths are padded on the left, so every
/// row's next token sits in the last column; the model derives positions from the attention mask, so padding does
/// not shift them. Greedy, temperature, top-k, top-p, repetition penalty, a seeded sampler, stop on EOS and on stop strings.
/// </summary>
public sealed class TextGenerator
{
    readonly CausalLM model;
    readonly TextTokenizer? tokenizer;

    /// <summary>Creates a generator over <paramref name="model"/>; a <paramref name="tokenizer"/> is needed for text prompts and stop strings.</summary>
    public TextGenerator(CausalLM model, TextTokenizer? tokenizer = null)
    {
        this.model = model ?? throw new ArgumentNullException(nameof(model));
        this.tokenizer = tokenizer;
    }

    /// <summary>
    /// Generates a completion for each text prompt and returns the decoded new text (prompt excluded). Prompts are encoded
    /// with <see cref="TextTokenizer.EncodePrompt"/>, exactly as the trainers encode them. When a stop string
    /// ends a completion, the text is cut exactly where the stop string begins.
    /// </summary>
    /// <param name="prompts">The prompts.</param>
    /// <param name="options">Decoding options; null for the defaults (greedy, 128 new tokens).</param>
    /// <returns>One completion per prompt.</returns>
    /// <exception cref="InvalidOperationException">The generator was created without a tokenizer.</exception>
    public IReadOnlyList<string> Generate(IReadOnlyList<string> prompts, GenerationOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(prompts);
        var tok = tokenizer ?? throw new InvalidOperationException("This model has no tokenizer: pass token ids instead of text.");
        return GenerateText(prompts.Select(p => tok.EncodePrompt(p).ToArray()).ToList(), options);
    }

    /// <summary>The decoded new text for prompts already encoded with <see cref="TextTokenizer.EncodePrompt"/> (one batch).</summary>
    internal IReadOnlyList<string> GenerateText(IReadOnlyList<int[]> promptIds, GenerationOptions? options)
    {
        var tok = tokenizer ?? throw new InvalidOperationException("This model has no tokenizer: pass token ids instead of text.");
        return GenerateCore(promptIds, options, null).Select(r => r.StopText ?? tok.Decode(r.Tokens)).ToList();
    }

    /// <summary>
    /// Whether a prompt of <paramref name="length"/> tokens gets exactly the new-token budget it would get alone when it is
    /// generated in a batch: one batch shares min(MaxNewTokens, context − longest prompt), so only prompts that leave
    /// <see cref="GenerationOptions.MaxNewTokens"/> free positions are batched; the others (and prompts that must be
    /// truncated or refused) are generated alone.
    /// </summary>
    internal bool FitsBatch(int length, GenerationOptions options) =>
        length > 0 && length < model.Config.MaxPositionEmbeddings && length <= model.Config.MaxPositionEmbeddings - options.MaxNewTokens;

    /// <summary>
    /// Generates new token ids (prompt excluded) for each prompt; <paramref name="onToken"/> streams them as they come.
    /// An end-of-sequence token ends its row and is neither returned nor streamed. Tokens that complete a stop string are
    /// streamed before the stop string is recognised, and then left out of the result.
    /// </summary>
    /// <param name="prompts">Token ids of each prompt (at least one token each; rows may differ in length).</param>
    /// <param name="options">Decoding options; null for the defaults (greedy, 128 new tokens).</param>
    /// <param name="onToken">Optional callback, called once per new token in the order they are produced.</param>
    /// <returns>The new tokens of each prompt.</returns>
    /// <exception cref="ArgumentException">A prompt is empty, or does not fit the model's context and <see cref="GenerationOptions.TruncateLongPrompts"/> is off.</exception>
    public IReadOnlyList<int[]> Generate(IReadOnlyList<int[]> prompts, GenerationOptions? options = null, Action<GeneratedToken>? onToken = null)
        => GenerateCore(prompts, options, onToken).Select(r => r.Tokens).ToList();

    /// <summary>
    /// Samples <paramref name="copies"/> completions of each prompt (rows prompt-major: prompt 0's copies first) for
    /// reinforcement learning. Each prompt is prefilled once and its KV cache repeated for the copies. Every new token's
    /// log-probability under the temperature-scaled distribution (log-softmax of logits ÷ temperature, before top-k/top-p, as
    /// TRL scores its rollouts) is recorded; a row that ends at end-of-sequence keeps that token as its last one.
    /// </summary>
    internal IReadOnlyList<SampledSequence> Sample(IReadOnlyList<int[]> prompts, int copies, GenerationOptions options)
    {
        if (copies < 1) throw new ArgumentOutOfRangeException(nameof(copies), copies, "copies must be at least 1.");
        if (!(options.Temperature > 0)) throw new ArgumentOutOfRangeException(nameof(options), options.Temperature, "Sampling rollouts needs a temperature > 0.");
        return GenerateCore(prompts, options, null, copies, record: true)
            .Select(r => new SampledSequence(r.Eos is int eos ? [.. r.Tokens, eos] : r.Tokens, r.LogProbs!, r.Eos is not null)).ToList();
    }

    readonly record struct RowResult(int[] Tokens, string? StopText, int? Eos = null, float[]? LogProbs = null);

    List<RowResult> GenerateCore(IReadOnlyList<int[]> prompts, GenerationOptions? options, Action<GeneratedToken>? onToken, int copies = 1, bool record = false)
    {
        ArgumentNullException.ThrowIfNull(prompts);
        options ??= new GenerationOptions();
        options.Validate();
        if (prompts.Count == 0) return [];
        if (options.StopStrings.Count > 0 && tokenizer is null)
            throw new InvalidOperationException("Stop strings need a tokenizer to decode the generated text.");
        int context = model.Config.MaxPositionEmbeddings;
        var prefill = prompts.Select((p, i) => FitContext(p, i, context, options)).ToArray();
        var rows = prefill.SelectMany(p => Enumerable.Repeat(p, copies)).ToArray();      // the decoded rows: each prompt's copies together
        int width = prefill.Max(r => r.Length);
        int maxNew = Math.Min(options.MaxNewTokens, context - width);
        var eos = options.StopAtEos ? new HashSet<int>(model.Config.EosTokenIds) : [];
        int padId = model.Config.PadTokenId ?? model.Config.EosTokenIds.FirstOrDefault();

        var generated = rows.Select(_ => new List<int>()).ToArray();
        var logProbs = record ? rows.Select(_ => new List<float>()).ToArray() : null;
        var stopTexts = new string?[rows.Length];
        var ended = new int?[rows.Length];
        var finished = new bool[rows.Length];
        RowResult Result(int i) => new(generated[i].ToArray(), stopTexts[i], ended[i], logProbs?[i].ToArray());
        if (maxNew <= 0) return rows.Select((_, i) => Result(i)).ToList();
        var device = model.Device;
        using var generator = options.Temperature > 0 ? new Generator((ulong)options.Seed, CPU) : null;
        using var _ = no_grad();
        using var cache = model.CreateCache();
        using var outer = NewDisposeScope();

        // Left-padded prompt batch (one row per prompt: the copies share its prefill); the mask holds the prompt columns
        // followed by ones for every new token, and each step uses its first (width + step) columns.
        int total = width + maxNew;
        var ids = new long[prefill.Length * width];
        var mask = new long[prefill.Length * total];
        for (int i = 0; i < prefill.Length; i++)
        {
            int offset = width - prefill[i].Length;
            for (int j = 0; j < width; j++)
            {
                bool real = j >= offset;
                ids[i * width + j] = real ? prefill[i][j - offset] : padId;
                mask[i * total + j] = real ? 1 : 0;
            }
            for (int j = width; j < total; j++) mask[i * total + j] = 1;
        }
        Tensor fullMask = tensor(mask, new long[] { prefill.Length, total }, device: device);
        Tensor input = tensor(ids, new long[] { prefill.Length, width }, device: device);
        var nextIds = new long[rows.Length];

        for (int step = 0; step < maxNew; step++)
        {
            using var scope = NewDisposeScope();
            var hidden = model.HiddenStates(input, fullMask.narrow(1, 0, width + step), cache);      // [B, T, H]
            Tensor logits = model.LogitsFromHidden(hidden.narrow(1, hidden.shape[1] - 1, 1)).select(1, 0).to(float32);   // [B, V]
            if (step == 0 && copies > 1)
            {
                // The prompts were prefilled once; from here on every copy is its own row.
                logits = logits.repeat_interleave(copies, 0);
                cache.RepeatInterleave(copies);
                var repeatedMask = fullMask.repeat_interleave(copies, 0).MoveToOuterDisposeScope();
                fullMask.Dispose();
                fullMask = repeatedMask;
            }
            long[] next = Choose(logits, rows, generated, options, generator);
            float[]? chosenLogProbs = record ? ChosenLogProbs(logits, next, options.Temperature) : null;
            for (int i = 0; i < next.Length; i++)
            {
                if (finished[i]) { nextIds[i] = padId; continue; }
                nextIds[i] = next[i];
                logProbs?[i].Add(chosenLogProbs![i]);
                if (eos.Contains((int)next[i])) { finished[i] = true; ended[i] = (int)next[i]; continue; }
                generated[i].Add((int)next[i]);
                onToken?.Invoke(new GeneratedToken(i, (int)next[i], step));
                if (HitStopString(generated[i], options) is string cut) { stopTexts[i] = cut; finished[i] = true; }
            }
            if (finished.All(f => f) || step == maxNew - 1) break;
            var newInput = tensor(nextIds, new long[] { rows.Length, 1 }, device: device).MoveToOuterDisposeScope();
            input.Dispose();
            input = newInput;
        }
        return rows.Select((_, i) => Result(i)).ToList();
    }

    /// <summary>log-softmax(logits ÷ temperature) at each row's chosen token: the sampled token's log-probability.</summary>
    static float[] ChosenLogProbs(Tensor logits, long[] chosen, double temperature)
    {
        using var scope = NewDisposeScope();
        using var index = tensor(chosen, device: logits.device).unsqueeze(1);
        return (logits / temperature).log_softmax(-1).gather(1, index).squeeze(1).cpu().data<float>().ToArray();
    }

    int[] FitContext(int[] prompt, int row, int context, GenerationOptions options)
    {
        if (prompt is null) throw new ArgumentException($"Prompt {row} is null.", "prompts");
        if (prompt.Length == 0) throw new ArgumentException($"Prompt {row} is empty: generation needs at least one token (e.g. BOS).", "prompts");
        if (prompt.Length < context) return prompt;
        if (!options.TruncateLongPrompts)
            throw new ArgumentException(
                $"Prompt {row} has {prompt.Length} tokens but the model's context is {context} (at most {context - 1} prompt tokens leave room for a new one). " +
                "Shorten it or set TruncateLongPrompts to keep its last tokens.", "prompts");
        return prompt[^(context - 1)..];
    }

    /// <summary>Picks the next token of each row from the last-position logits [B, V].</summary>
    static long[] Choose(Tensor logits, int[][] prompts, List<int>[] generated, GenerationOptions options, Generator? generator)
    {
        if (options.RepetitionPenalty != 1.0)
        {
            logits = logits.clone();
            for (int i = 0; i < prompts.Length; i++)
            {
                var seen = prompts[i].Concat(generated[i]).Distinct().Select(t => (long)t).ToArray();
                using var index = tensor(seen, device: logits.device);
                var row = logits[i];
                var values = row.index_select(0, index);
                row.index_copy_(0, index, where(values > 0, values / options.RepetitionPenalty, values * options.RepetitionPenalty));
            }
        }
        if (options.Temperature == 0) return logits.argmax(-1).cpu().data<long>().ToArray();

        logits = logits / options.Temperature;
        if (options.TopK > 0 && options.TopK < logits.shape[^1])
        {
            var kth = logits.topk(options.TopK, -1).values[.., ^1..];                          // [B, 1]
            logits = logits.masked_fill(logits < kth, double.NegativeInfinity);
        }
        if (options.TopP < 1.0)
        {
            var (sorted, order) = logits.sort(-1, descending: true);
            var cumulative = sorted.softmax(-1).cumsum(-1);
            var drop = (cumulative - sorted.softmax(-1)) > options.TopP;                        // keep the token that crosses P
            logits = logits.scatter(-1, order, sorted.masked_fill(drop, double.NegativeInfinity));
        }
        var probabilities = logits.softmax(-1).cpu();
        return multinomial(probabilities, 1, generator: generator).squeeze(-1).data<long>().ToArray();
    }

    /// <summary>
    /// When the decoded text of <paramref name="generated"/> contains a stop string, drops the tokens from the one where the
    /// earliest stop string begins and returns the text before it; otherwise null.
    /// </summary>
    string? HitStopString(List<int> generated, GenerationOptions options)
    {
        if (options.StopStrings.Count == 0) return null;
        string text = tokenizer!.Decode(generated);
        int at = -1;
        foreach (string stop in options.StopStrings)
        {
            if (string.IsNullOrEmpty(stop)) continue;
            int found = text.IndexOf(stop, StringComparison.Ordinal);
            if (found >= 0 && (at < 0 || found < at)) at = found;
        }
        if (at < 0) return null;
        while (generated.Count > 0 && tokenizer.Decode(generated).Length > at) generated.RemoveAt(generated.Count - 1);
        return text[..at];
    }
}
