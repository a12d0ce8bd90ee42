using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Tokenization;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Feedback;

/// <summary>Options of <see cref="LanguageModelJudge"/>.</summary>
public sealed class LanguageModelJudgeOptions
{
    /// <summary>The rating request; its <see cref="RatingPrompt.MaxRating"/> must be 2–9 (one digit token per rating). Default: the 1–5 rubric.</summary>
    public RatingPrompt Prompt { get; set; } = new() { MaxRating = 5 };

    /// <summary>Render the request as a user message with the tokenizer's chat template (true, the default) or use it as plain text.</summary>
    public bool UseChatTemplate { get; set; } = true;

    /// <summary>Text appended after the (rendered) request, so that the next token is the rating digit. Default "Rating: ".</summary>
    public string AnswerPrefix { get; set; } = "Rating: ";

    /// <summary>Requests scored in one forward pass. Default 8.</summary>
    public int BatchSize { get; set; } = 8;

    /// <summary>
    /// The least probability the model must put on the rating tokens together for the score to count; below it the model is
    /// not answering with a rating and the item gives no score (counted in <see cref="LanguageModelJudge.Unscored"/>). Default 0.05.
    /// </summary>
    public double MinimumRatingMass { get; set; } = 0.05;
}

/// <summary>
/// A local LLM judge: this library's own causal model is shown the rating request (<see cref="RatingPrompt"/>) followed by
/// <see cref="LanguageModelJudgeOptions.AnswerPrefix"/>, and the score is the expected rating
/// Σ r·p(r) / Σ p(r) over the next-token probabilities of the rating tokens "1".."max" — one forward pass, no sampling, no parsing
/// (the G-Eval way of reading a rating). Deterministic; computed on the calling thread.
/// </summary>
public sealed class LanguageModelJudge : IJudge
{
    readonly LanguageModel model;
    readonly long[] ratingTokens;
    long unscored;

    /// <summary>Creates a judge over <paramref name="model"/> (not disposed by the judge).</summary>
    /// <param name="model">A model with a tokenizer, ideally instruction-tuned.</param>
    /// <param name="options">The request and how it is read; the defaults when null.</param>
    public LanguageModelJudge(LanguageModel model, LanguageModelJudgeOptions? options = null)
    {
        this.model = model ?? throw new ArgumentNullException(nameof(model));
        Options = options ?? new LanguageModelJudgeOptions();
        Options.Prompt.Validate();
        ArgumentOutOfRangeException.ThrowIfGreaterThan(Options.Prompt.MaxRating, 9);
        ArgumentOutOfRangeException.ThrowIfLessThan(Options.BatchSize, 1);
        var tokenizer = model.RequireTokenizer();
        ratingTokens = new long[Options.Prompt.MaxRating];
        for (int r = 1; r <= ratingTokens.Length; r++)
        {
            var ids = tokenizer.Encode(r.ToString(System.Globalization.CultureInfo.InvariantCulture));
            // SentencePiece vocabularies may put a word-start piece first; the digit itself is the last piece.
            if (ids.Count == 0 || tokenizer.Decode([ids[^1]]).Trim() != r.ToString(System.Globalization.CultureInfo.InvariantCulture))
                throw new NotSupportedException($"The tokenizer has no single token for the rating '{r}'.");
            ratingTokens[r - 1] = ids[^1];
        }
        if (ratingTokens.Distinct().Count() != ratingTokens.Length) throw new NotSupportedException("The rating digits do not map to distinct tokens.");
    }

    /// <summary>The options.</summary>
    public LanguageModelJudgeOptions Options { get; }

    /// <summary>Items that got no score because the rating tokens had less than <see cref="LanguageModelJudgeOptions.MinimumRatingMass"/>.</summary>
    public long Unscored => Interlocked.Read(ref unscored);

    /// <summary>The text the model reads for one item (its next token is the rating).</summary>
    /// <param name="prompt">The prompt.</param>
    /// <param name="completion">The completion to rate.</param>
    public string BuildInput(string prompt, string completion)
    {
        string request = Options.Prompt.Render(prompt, completion);
        string text = Options.UseChatTemplate ? model.RequireTokenizer().ChatTemplate.Render([ChatTurn.User(request)], addGenerationPrompt: true) : request;
        return text + Options.AnswerPrefix;
    }

    /// <summary>The probabilities of the ratings 1..max (renormalized over them) and the mass the model put on them, for one item.</summary>
    /// <param name="prompt">The prompt.</param>
    /// <param name="completion">The completion to rate.</param>
    public (double[] Probabilities, double Mass) RatingDistribution(string prompt, string completion) => Distributions([(prompt, completion)])[0];

    /// <inheritdoc />
    public Task<IReadOnlyList<double?>> ScoreAsync(IReadOnlyList<(string Prompt, string Completion)> items, CancellationToken cancellationToken = default)
    {
        JudgeExtensions.CheckItems(items);
        var scores = new double?[items.Count];
        for (int start = 0; start < items.Count; start += Options.BatchSize)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var batch = items.Skip(start).Take(Options.BatchSize).ToList();
            var distributions = Distributions(batch);
            for (int i = 0; i < batch.Count; i++)
            {
                var (p, mass) = distributions[i];
                if (!(mass >= Options.MinimumRatingMass)) { Interlocked.Increment(ref unscored); continue; }
                scores[start + i] = p.Select((q, r) => q * (r + 1)).Sum();
            }
        }
        return Task.FromResult<IReadOnlyList<double?>>(scores);
    }

    List<(double[] Probabilities, double Mass)> Distributions(IReadOnlyList<(string Prompt, string Completion)> items)
    {
        var tokenizer = model.RequireTokenizer();
        var rows = items.Select(i => (Prompt: tokenizer.EncodePrompt(BuildInput(i.Prompt, i.Completion)).ToArray(), Completion: Array.Empty<int>())).ToList();
        int context = model.Network.Config.MaxPositionEmbeddings;
        foreach (var row in rows)
            if (row.Prompt.Length > context)
                throw new ArgumentException($"A rating request has {row.Prompt.Length} tokens but the model's context is {context}; shorten the rubric (RatingPrompt.Instructions) or the texts.");
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        using var batch = SequenceBatch.Collate(rows, model.PadTokenId, model.Network.Device);
        var hidden = model.Network.HiddenStates(batch.InputIds, batch.AttentionMask);             // [N, T, H]
        var last = RewardHeadMath.LastTokenHidden(hidden, batch.AttentionMask);                   // [N, H]
        var logProbs = model.Network.LogitsFromHidden(last.unsqueeze(1)).squeeze(1).to(float64).log_softmax(-1);   // [N, V]
        using var index = tensor(ratingTokens, device: logProbs.device);
        var ratingLogProbs = logProbs.index_select(1, index);                                    // [N, R]
        var mass = ratingLogProbs.logsumexp(1).exp().cpu().data<double>().ToArray();
        var probabilities = ratingLogProbs.softmax(1).cpu().data<double>().ToArray();
        int r = ratingTokens.Length;
        return Enumerable.Range(0, items.Count).Select(i => (probabilities[(i * r)..((i + 1) * r)], mass[i])).ToList();
    }
}
