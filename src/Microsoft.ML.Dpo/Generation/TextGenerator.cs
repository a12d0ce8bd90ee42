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

    /// <summary>Generates a completion for each text prompt and returns the decoded new text (prompt excluded).</summary>
    public IReadOnlyList<string> Generate(IReadOnlyList<string> prompts, GenerationOptions? options = null)
    {
        var tok = tokenizer ?? throw new InvalidOperationException("This model has no tokenizer: pass token ids instead of text.");
        var ids = prompts.Select(p => tok.Encode(p, addBos: tok.BosTokenId.HasValue).ToArray()).ToList();
        return Generate(ids, options).Select(r => tok.Decode(r)).ToList();
    }

    /// <summary>Generates new token ids (prompt excluded) for each prompt; <paramref name="onToken"/> streams them as they come.</summary>
    public IReadOnlyList<int[]> Generate(IReadOnlyList<int[]> prompts, GenerationOptions? options = null, Action<GeneratedToken>? onToken = null)
    {
        options ??= new GenerationOptions();
        options.Validate();
        if (prompts.Count == 0) return [];
        if (options.StopStrings.Count > 0 && tokenizer is null)
            throw new InvalidOperationException("Stop strings need a tokenizer to decode the generated text.");
        int context = model.Config.MaxPositionEmbeddings;
        var rows = prompts.Select((p, i) => FitContext(p, i, context, options)).ToArray();
        int maxNew = Math.Min(options.MaxNewTokens, context - rows.Max(r => r.Length));
        var eos = options.StopAtEos ? new HashSet<int>(model.Config.EosTokenIds) : [];
        int padId = model.Config.PadTokenId ?? model.Config.EosTokenIds.FirstOrDefault();

        var generated = rows.Select(_ => new List<int>()).ToArray();
        var finished = new bool[rows.Length];
        var device = model.parameters().First().device;
        using var generator = options.Temperature > 0 ? new Generator((ulong)options.Seed, CPU) : null;
        using var _ = no_grad();
        using var cache = model.CreateCache();
        using var outer = NewDisposeScope();

        // Left-padded prompt batch.
        int width = rows.Max(r => r.Length);
        var ids = new long[rows.Length * width];
        var mask = new long[rows.Length * width];
        for (int i = 0; i < rows.Length; i++)
            for (int j = 0; j < rows[i].Length; j++)
            {
                ids[i * width + width - rows[i].Length + j] = rows[i][j];
                mask[i * width + width - rows[i].Length + j] = 1;
            }
        for (int i = 0; i < ids.Length; i++) if (mask[i] == 0) ids[i] = padId;
        Tensor attention = tensor(mask, new long[] { rows.Length, width }, device: device);
        Tensor input = tensor(ids, new long[] { rows.Length, width }, device: device);

        for (int step = 0; step < maxNew; step++)
        {
            using var scope = NewDisposeScope();
            Tensor logits = model.Forward(input, attention, cache)[.., -1, ..].to(float32);    // [B, V]
            long[] next = Choose(logits, rows, generated, options, generator);
            for (int i = 0; i < next.Length; i++)
            {
                if (finished[i]) { next[i] = padId; continue; }
                generated[i].Add((int)next[i]);
                onToken?.Invoke(new GeneratedToken(i, (int)next[i], step));
                if (eos.Contains((int)next[i])) { generated[i].RemoveAt(generated[i].Count - 1); finished[i] = true; }
                else if (HitStopString(generated[i], options)) finished[i] = true;
            }
            if (finished.All(f => f)) break;
            input = tensor(next, new long[] { rows.Length, 1 }, device: device).MoveToOuterDisposeScope();
            attention = cat([attention, ones(rows.Length, 1, dtype: int64, device: device)], 1).MoveToOuterDisposeScope();
        }
        return generated.Select(g => g.ToArray()).ToList();
    }

    int[] FitContext(int[] prompt, int row, int context, GenerationOptions options)
    {
        if (prompt.Length == 0) throw new ArgumentException($"Prompt {row} is empty: generation needs at least one token (e.g. BOS).");
        if (prompt.Length < context) return prompt;
        if (!options.TruncateLongPrompts)
            throw new ArgumentException($"Prompt {row} has {prompt.Length} tokens but the model's context is {context}. Shorten it or set TruncateLongPrompts to keep its last tokens.");
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

    bool HitStopString(List<int> generated, GenerationOptions options)
    {
        if (options.StopStrings.Count == 0) return false;
        string text = tokenizer!.Decode(generated);
        foreach (string stop in options.StopStrings)
        {
            int at = text.IndexOf(stop, StringComparison.Ordinal);
            if (at < 0) continue;
            // Drop the tokens that produced the stop string.
            while (generated.Count > 0 && tokenizer.Decode(generated).Length > at) generated.RemoveAt(generated.Count - 1);
            return true;
        }
        return false;
    }
}
