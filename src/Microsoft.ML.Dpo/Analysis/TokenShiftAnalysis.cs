using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.ML.Dpo.Generation;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Analysis;

/// <summary>Where the aligned model's token ranks in the base model's distribution (Lin et al., 2023).</summary>
public enum TokenShiftKind
{
    /// <summary>The base model's top-1 token.</summary>
    Unshifted,

    /// <summary>The base model's 2nd or 3rd token.</summary>
    Marginal,

    /// <summary>Outside the base model's top 3.</summary>
    Shifted,
}

/// <summary>Options of <see cref="TokenShiftAnalysis"/>.</summary>
public sealed class TokenShiftOptions
{
    /// <summary>The longest greedy answer of the aligned model, in tokens (default 128, as <see cref="GenerationOptions.MaxNewTokens"/>).</summary>
    public int MaxNewTokens { get; set; } = 128;

    /// <summary>Prompts generated and scored together (default 8).</summary>
    public int BatchSize { get; set; } = 8;

    /// <summary>How many of the most frequently shifted tokens the report lists (default 20).</summary>
    public int TopShiftedTokens { get; set; } = 20;

    /// <summary>
    /// What the aligned model is given instead of the prompt, e.g. URIAL's in-context prompt
    /// (<c>new UrialPromptBuilder().Build</c>) to measure the shift that in-context alignment causes in the base model itself.
    /// The base model is always given the prompt as it is. Null (the default): both get the prompt.
    /// </summary>
    public Func<string, string>? AlignedPromptFormat { get; set; }

    /// <summary>Receives progress: answers generated, then answers scored.</summary>
    public IProgress<TokenShiftProgress>? Progress { get; set; }

    /// <summary>Stops between batches.</summary>
    public CancellationToken CancellationToken { get; set; }

    internal void Validate()
    {
        if (MaxNewTokens < 1) throw new ArgumentOutOfRangeException(nameof(MaxNewTokens), MaxNewTokens, "MaxNewTokens must be at least 1.");
        if (BatchSize < 1) throw new ArgumentOutOfRangeException(nameof(BatchSize), BatchSize, "BatchSize must be at least 1.");
        if (TopShiftedTokens < 0) throw new ArgumentOutOfRangeException(nameof(TopShiftedTokens), TopShiftedTokens, "TopShiftedTokens must not be negative.");
    }
}

/// <summary>Progress of an analysis: <paramref name="Phase"/> "generate" (tokens streamed so far in <paramref name="Tokens"/>) or "score".</summary>
/// <param name="Phase">"generate" or "score".</param>
/// <param name="Done">Answers finished in this phase.</param>
/// <param name="Total">Answers in all.</param>
/// <param name="Tokens">Answer tokens generated so far.</param>
public sealed record TokenShiftProgress(string Phase, int Done, int Total, long Tokens);

/// <summary>One position of an aligned answer.</summary>
/// <param name="Id">The aligned model's token.</param>
/// <param name="Text">The token decoded alone (its id in brackets when the model has no tokenizer).</param>
/// <param name="BaseRank">Its rank in the base model's distribution: 0 is the base's top-1 (ties count for the token).</param>
/// <param name="Kind">Unshifted, marginal or shifted.</param>
/// <param name="Kl">KL(aligned ‖ base) of the two next-token distributions at this position, in nats.</param>
/// <param name="BaseTopId">The base model's top-1 token here.</param>
public sealed record TokenShiftPosition(
    [property: JsonPropertyName("id")] int Id,
    [property: JsonPropertyName("text")] string Text,
    [property: JsonPropertyName("base_rank")] int BaseRank,
    [property: JsonPropertyName("kind")] TokenShiftKind Kind,
    [property: JsonPropertyName("kl")] double Kl,
    [property: JsonPropertyName("base_top_id")] int BaseTopId);

/// <summary>Shares of unshifted, marginal and shifted positions (each in [0, 1]; they sum to 1 over <see cref="Positions"/> &gt; 0).</summary>
public sealed record TokenShiftShares(
    [property: JsonPropertyName("unshifted")] double Unshifted,
    [property: JsonPropertyName("marginal")] double Marginal,
    [property: JsonPropertyName("shifted")] double Shifted,
    [property: JsonPropertyName("positions")] int Positions)
{
    internal static TokenShiftShares Of(IEnumerable<TokenShiftPosition> positions)
    {
        int u = 0, m = 0, s = 0;
        foreach (var p in positions)
        {
            if (p.Kind == TokenShiftKind.Unshifted) u++;
            else if (p.Kind == TokenShiftKind.Marginal) m++;
            else s++;
        }
        int n = u + m + s;
        return n == 0 ? new(0, 0, 0, 0) : new((double)u / n, (double)m / n, (double)s / n, n);
    }
}

/// <summary>One prompt's aligned answer and its positions.</summary>
public sealed record TokenShiftAnswer(
    [property: JsonPropertyName("prompt")] string Prompt,
    [property: JsonPropertyName("answer")] string Answer,
    [property: JsonPropertyName("shares")] TokenShiftShares Shares,
    [property: JsonPropertyName("positions")] IReadOnlyList<TokenShiftPosition> Positions);

/// <summary>A token and how often it was shifted.</summary>
public sealed record ShiftedTokenCount(
    [property: JsonPropertyName("id")] int Id,
    [property: JsonPropertyName("text")] string Text,
    [property: JsonPropertyName("count")] int Count);

/// <summary>The shares of a range of answer positions (0-based, <see cref="To"/> exclusive; null: no end).</summary>
public sealed record TokenShiftBucket(
    [property: JsonPropertyName("name")] string Name,
    [property: JsonPropertyName("from")] int From,
    [property: JsonPropertyName("to")] int? To,
    [property: JsonPropertyName("shares")] TokenShiftShares Shares);

/// <summary>What <see cref="TokenShiftAnalysis.Analyze(LanguageModel, LanguageModel, IReadOnlyList{string}, TokenShiftOptions?)"/> found.</summary>
public sealed class TokenShiftReport
{
    /// <summary>The overall shares (every position of every answer counts once).</summary>
    [JsonPropertyName("unshifted")] public double Unshifted => Overall.Unshifted;

    /// <summary>The overall share of marginal positions.</summary>
    [JsonPropertyName("marginal")] public double Marginal => Overall.Marginal;

    /// <summary>The overall share of shifted positions.</summary>
    [JsonPropertyName("shifted")] public double Shifted => Overall.Shifted;

    /// <summary>The number of positions analysed.</summary>
    [JsonPropertyName("positions")] public int Positions => Overall.Positions;

    /// <summary>The overall shares.</summary>
    [JsonIgnore] public TokenShiftShares Overall { get; internal init; } = new(0, 0, 0, 0);

    /// <summary>The shares by position in the answer: the first 10 tokens, tokens 10–49, tokens 50 and on.</summary>
    [JsonPropertyName("by_position")] public IReadOnlyList<TokenShiftBucket> ByPosition { get; internal init; } = [];

    /// <summary>The shares at each answer position t (over the answers that reach t).</summary>
    [JsonPropertyName("shares_at_position")] public IReadOnlyList<TokenShiftShares> SharesAtPosition { get; internal init; } = [];

    /// <summary>The mean KL(aligned ‖ base) at each answer position t, in nats (over the answers that reach t).</summary>
    [JsonPropertyName("kl_by_position")] public IReadOnlyList<double> KlByPosition { get; internal init; } = [];

    /// <summary>The most frequently shifted tokens, most frequent first.</summary>
    [JsonPropertyName("most_shifted")] public IReadOnlyList<ShiftedTokenCount> MostShifted { get; internal init; } = [];

    /// <summary>Every answer with its positions.</summary>
    [JsonPropertyName("answers")] public IReadOnlyList<TokenShiftAnswer> Answers { get; internal init; } = [];

    static readonly JsonSerializerOptions s_json = new()
    {
        WriteIndented = true,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    /// <summary>The whole report as JSON (keys in snake case; <c>unshifted</c>, <c>marginal</c>, <c>shifted</c> are the overall shares).</summary>
    public string ToJson() => JsonSerializer.Serialize(this, s_json);

    /// <summary>The summary as JSON: the overall shares, the buckets and the most shifted tokens, without the answers.</summary>
    public string SummaryJson() => JsonSerializer.Serialize(new
    {
        unshifted = Unshifted, marginal = Marginal, shifted = Shifted, positions = Positions, answers = Answers.Count,
        by_position = ByPosition.Select(b => new { b.Name, b.Shares.Unshifted, b.Shares.Marginal, b.Shares.Shifted, b.Shares.Positions }),
        most_shifted = MostShifted.Take(10),
    }, new JsonSerializerOptions(s_json) { WriteIndented = false, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower });

    /// <summary>A self-contained HTML page: the shares, and every answer with its shifted tokens in red and marginal ones in yellow.</summary>
    public string ToHtml(string title = "Token distribution shift")
    {
        static string P(double x) => (100 * x).ToString("F1", CultureInfo.InvariantCulture) + " %";
        var sb = new StringBuilder();
        sb.Append("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>").Append(WebUtility.HtmlEncode(title)).Append("</title><style>")
          .Append("body{font-family:sans-serif;max-width:60em;margin:2em auto}span.shifted{background:#f99}span.marginal{background:#fe8}")
          .Append(".answer{white-space:pre-wrap;font-family:monospace;border:1px solid #ccc;padding:.5em;margin-bottom:1em}td,th{padding:0 1em}</style></head><body>")
          .Append("<h1>").Append(WebUtility.HtmlEncode(title)).Append("</h1>")
          .Append("<p>Each aligned token is ranked in the base model's distribution given the same prefix: <b>unshifted</b> = the base's top-1, ")
          .Append("<span class=marginal>marginal</span> = 2nd or 3rd, <span class=shifted>shifted</span> = outside the top 3 (Lin et al., 2023).</p>")
          .Append("<table><tr><th></th><th>unshifted</th><th>marginal</th><th>shifted</th><th>positions</th></tr>");
        foreach (var (name, s) in ByPosition.Select(b => ($"positions {b.Name}", b.Shares)).Prepend(("all", Overall)))
            sb.Append("<tr><td>").Append(WebUtility.HtmlEncode(name)).Append("</td><td>").Append(P(s.Unshifted)).Append("</td><td>").Append(P(s.Marginal))
              .Append("</td><td>").Append(P(s.Shifted)).Append("</td><td>").Append(s.Positions).Append("</td></tr>");
        sb.Append("</table><h2>Most shifted tokens</h2><p>");
        sb.Append(string.Join(", ", MostShifted.Select(t => $"<code>{WebUtility.HtmlEncode(t.Text)}</code> × {t.Count}")));
        sb.Append("</p><h2>Answers</h2>");
        foreach (var a in Answers)
        {
            sb.Append("<p><b>").Append(WebUtility.HtmlEncode(a.Prompt)).Append("</b> — shifted ").Append(P(a.Shares.Shifted)).Append("</p><div class=answer>");
            foreach (var p in a.Positions)
            {
                string text = WebUtility.HtmlEncode(p.Text);
                if (p.Kind == TokenShiftKind.Unshifted) sb.Append(text);
                else sb.Append("<span class=").Append(p.Kind == TokenShiftKind.Shifted ? "shifted" : "marginal")
                       .Append(" title=\"base rank ").Append(p.BaseRank + 1).Append(", KL ").Append(p.Kl.ToString("F3", CultureInfo.InvariantCulture)).Append("\">")
                       .Append(text).Append("</span>");
            }
            sb.Append("</div>");
        }
        return sb.Append("</body></html>").ToString();
    }
}

/// <summary>
/// The token distribution shift of an aligned model from its base (Lin et al., 2023, "The Unlocking Spell on Base LLMs", the
/// analysis behind URIAL): the aligned model answers each prompt greedily; at every position t the base model is given the
/// prompt and the aligned answer's first t tokens, and the aligned model's token t is ranked in the base model's next-token
/// distribution — unshifted (the base's top-1), marginal (2nd or 3rd) or shifted. The paper reports 7.8 % shifted for
/// Llama-2-7b → Llama-2-7b-chat. Answers are generated in batches with the KV cache; each batch of (prompt, answer) sequences
/// is then scored by both models in one forward pass each.
/// </summary>
public static class TokenShiftAnalysis
{
    /// <summary>Analyses text prompts (tokenized with <see cref="Tokenization.TextTokenizer.EncodePrompt"/>, as generation does).</summary>
    /// <param name="baseModel">The base model.</param>
    /// <param name="aligned">The aligned model; it must use the base model's vocabulary.</param>
    /// <param name="prompts">The prompts.</param>
    /// <param name="options">Options; null for the defaults.</param>
    /// <exception cref="ArgumentException">The models' vocabularies differ, or the tokenizers encode a prompt differently.</exception>
    public static TokenShiftReport Analyze(LanguageModel baseModel, LanguageModel aligned, IReadOnlyList<string> prompts, TokenShiftOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(prompts);
        var tokenizer = aligned.RequireTokenizer();
        var ids = new List<int[]>(prompts.Count);
        var alignedIds = new List<int[]>(prompts.Count);
        for (int i = 0; i < prompts.Count; i++)
        {
            int[] a = tokenizer.EncodePrompt(prompts[i]).ToArray();
            if (baseModel.Tokenizer is { } bt && !bt.EncodePrompt(prompts[i]).SequenceEqual(a))
                throw new ArgumentException($"Prompt {i + 1}: the base and aligned tokenizers encode it differently; the shift is only defined over one vocabulary.", nameof(prompts));
            ids.Add(a);
            alignedIds.Add(options?.AlignedPromptFormat is { } format ? tokenizer.EncodePrompt(format(prompts[i])).ToArray() : a);
        }
        return Analyze(baseModel, aligned, ids, alignedIds, options, prompts);
    }

    /// <summary>Analyses prompts given as token ids (models without a tokenizer report token ids as text).</summary>
    public static TokenShiftReport Analyze(LanguageModel baseModel, LanguageModel aligned, IReadOnlyList<int[]> promptIds, TokenShiftOptions? options = null)
        => Analyze(baseModel, aligned, promptIds, promptIds, options, null);

    static TokenShiftReport Analyze(LanguageModel baseModel, LanguageModel aligned, IReadOnlyList<int[]> promptIds, IReadOnlyList<int[]> alignedPromptIds,
        TokenShiftOptions? options, IReadOnlyList<string>? promptTexts)
    {
        ArgumentNullException.ThrowIfNull(baseModel);
        ArgumentNullException.ThrowIfNull(aligned);
        ArgumentNullException.ThrowIfNull(promptIds);
        options ??= new TokenShiftOptions();
        options.Validate();
        if (baseModel.Network.Config.VocabSize != aligned.Network.Config.VocabSize)
            throw new ArgumentException($"The base model's vocabulary ({baseModel.Network.Config.VocabSize}) and the aligned model's ({aligned.Network.Config.VocabSize}) differ; the shift is only defined over one vocabulary.");
        var tokenizer = aligned.Tokenizer;
        string Text(int id) => tokenizer?.Decode([id], skipSpecialTokens: false) ?? $"[{id}]";

        // 1. The aligned model's greedy answers, batched, with the KV cache, streamed to Progress.
        var generator = aligned.CreateGenerator();
        var answers = new List<int[]>(promptIds.Count);
        long tokens = 0;
        for (int start = 0; start < promptIds.Count; start += options.BatchSize)
        {
            options.CancellationToken.ThrowIfCancellationRequested();
            var batch = alignedPromptIds.Skip(start).Take(options.BatchSize).ToList();
            answers.AddRange(generator.Generate(batch, new GenerationOptions { MaxNewTokens = options.MaxNewTokens }, _ =>
            {
                tokens++;
                if (tokens % 16 == 0) options.Progress?.Report(new TokenShiftProgress("generate", answers.Count, promptIds.Count, tokens));
            }));
            options.Progress?.Report(new TokenShiftProgress("generate", answers.Count, promptIds.Count, tokens));
        }

        // 2. Both models score each (prompt, answer) batch in one forward pass.
        var results = new List<TokenShiftAnswer>(promptIds.Count);
        for (int start = 0; start < promptIds.Count; start += options.BatchSize)
        {
            options.CancellationToken.ThrowIfCancellationRequested();
            int count = Math.Min(options.BatchSize, promptIds.Count - start);
            var positions = Score(baseModel, aligned, promptIds.Skip(start).Take(count).ToList(), alignedPromptIds.Skip(start).Take(count).ToList(),
                answers.Skip(start).Take(count).ToList());
            for (int i = 0; i < count; i++)
            {
                int row = start + i;
                var list = positions[i].Select(p => p with { Text = Text(p.Id) }).ToList();
                string prompt = promptTexts?[row] ?? string.Join(" ", promptIds[row]);
                string answer = tokenizer?.Decode(answers[row]) ?? string.Join(" ", answers[row]);
                results.Add(new TokenShiftAnswer(prompt, answer, TokenShiftShares.Of(list), list));
            }
            options.Progress?.Report(new TokenShiftProgress("score", results.Count, promptIds.Count, tokens));
        }
        return Summarize(results, options.TopShiftedTokens);
    }

    internal static TokenShiftReport Summarize(IReadOnlyList<TokenShiftAnswer> answers, int top)
    {
        var all = answers.SelectMany(a => a.Positions).ToList();
        int longest = answers.Count == 0 ? 0 : answers.Max(a => a.Positions.Count);
        var atPosition = Enumerable.Range(0, longest).Select(t => TokenShiftShares.Of(answers.Where(a => a.Positions.Count > t).Select(a => a.Positions[t]))).ToList();
        var kl = Enumerable.Range(0, longest).Select(t => answers.Where(a => a.Positions.Count > t).Average(a => a.Positions[t].Kl)).ToList();
        TokenShiftBucket Bucket(string name, int from, int? to) =>
            new(name, from, to, TokenShiftShares.Of(answers.SelectMany(a => a.Positions.Where((_, t) => t >= from && (to is null || t < to)))));
        var mostShifted = all.Where(p => p.Kind == TokenShiftKind.Shifted).GroupBy(p => p.Id)
            .Select(g => new ShiftedTokenCount(g.Key, g.First().Text, g.Count())).OrderByDescending(c => c.Count).ThenBy(c => c.Id).Take(top).ToList();
        return new TokenShiftReport
        {
            Overall = TokenShiftShares.Of(all),
            ByPosition = [Bucket("<10", 0, 10), Bucket("10-50", 10, 50), Bucket("50+", 50, null)],
            SharesAtPosition = atPosition,
            KlByPosition = kl,
            MostShifted = mostShifted,
            Answers = answers,
        };
    }

    /// <summary>For each row, the positions of its answer: rank of the aligned token under the base model, and the KL.</summary>
    static List<TokenShiftPosition>[] Score(LanguageModel baseModel, LanguageModel aligned, IReadOnlyList<int[]> basePrompts, IReadOnlyList<int[]> alignedPrompts,
        IReadOnlyList<int[]> answers)
    {
        int rows = answers.Count;
        var result = Enumerable.Range(0, rows).Select(_ => new List<TokenShiftPosition>()).ToArray();
        if (answers.All(a => a.Length == 0)) return result;
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var la = AnswerLogProbs(aligned, alignedPrompts, answers);
        var lb = AnswerLogProbs(baseModel, basePrompts, answers);
        for (int i = 0; i < rows; i++)
        {
            if (answers[i].Length == 0) continue;
            var target = tensor(answers[i].Select(x => (long)x).ToArray()).unsqueeze(-1);          // [A, 1]
            long[] rank = (lb[i] > lb[i].gather(-1, target)).sum(-1).data<long>().ToArray();      // tokens the base prefers
            long[] baseTop = lb[i].argmax(-1).data<long>().ToArray();
            double[] kl = (la[i].exp() * (la[i] - lb[i])).sum(-1).to(float64).data<double>().ToArray();
            for (int j = 0; j < answers[i].Length; j++)
            {
                int r = (int)rank[j];
                var kind = r == 0 ? TokenShiftKind.Unshifted : r <= 2 ? TokenShiftKind.Marginal : TokenShiftKind.Shifted;
                result[i].Add(new TokenShiftPosition(answers[i][j], "", r, kind, Math.Max(0, kl[j]), (int)baseTop[j]));
            }
        }
        return result;
    }

    /// <summary>
    /// For each row, the model's next-token log-probabilities <c>[A, V]</c> (on the CPU) before each of the answer's A tokens,
    /// from one left-padded forward pass over the batch of (prompt, answer) sequences.
    /// </summary>
    static Tensor[] AnswerLogProbs(LanguageModel model, IReadOnlyList<int[]> prompts, IReadOnlyList<int[]> answers)
    {
        int rows = prompts.Count;
        int width = Enumerable.Range(0, rows).Max(i => prompts[i].Length + answers[i].Length);
        var ids = new long[rows * width];
        var mask = new long[rows * width];
        int pad = model.PadTokenId;
        for (int i = 0; i < rows; i++)
        {
            int offset = width - prompts[i].Length - answers[i].Length;
            for (int c = 0; c < width; c++)
            {
                int k = c - offset;
                ids[i * width + c] = k < 0 ? pad : k < prompts[i].Length ? prompts[i][k] : answers[i][k - prompts[i].Length];
                mask[i * width + c] = k < 0 ? 0 : 1;
            }
        }
        var device = model.Network.Device;
        var logits = model.Network.Forward(tensor(ids, [rows, width], device: device), tensor(mask, [rows, width], device: device));   // [B, W, V]
        // Row i's answer token j sits at column width − A + j and is predicted at the column before it.
        return Enumerable.Range(0, rows).Select(i => logits[i].narrow(0, width - answers[i].Length - 1, answers[i].Length).to(float32).log_softmax(-1).cpu()).ToArray();
    }
}
