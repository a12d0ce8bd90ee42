using Microsoft.ML.Data;

namespace Microsoft.ML.Dpo.Feedback;

/// <summary>
/// A judge from any fitted ML.NET model that reads text and outputs a numeric score — e.g. a sentiment classifier, the reward
/// of the DPO paper's IMDb experiment. The items become an <see cref="IDataView"/> with the completion (and optionally the
/// prompt) in text columns of the given names; the score is read from <see cref="ScoreColumnName"/> (Single or Double).
/// </summary>
public sealed class TransformerJudge : IJudge
{
    sealed class Row
    {
        public string Prompt { get; set; } = "";
        public string Completion { get; set; } = "";
    }

    readonly MLContext context;
    readonly ITransformer model;
    readonly SchemaDefinition definition;

    /// <summary>Creates a judge over <paramref name="model"/>.</summary>
    /// <param name="context">The ML context.</param>
    /// <param name="model">The fitted model (a chain or a single transformer).</param>
    /// <param name="completionColumnName">The input text column the model reads the completion from.</param>
    /// <param name="scoreColumnName">The output column with the score. Default "Score" (binary classifiers: the margin; use "Probability" for a probability).</param>
    /// <param name="promptColumnName">The input text column for the prompt, when the model reads one; null when it scores the completion alone.</param>
    public TransformerJudge(MLContext context, ITransformer model, string completionColumnName, string scoreColumnName = "Score", string? promptColumnName = null)
    {
        this.context = context ?? throw new ArgumentNullException(nameof(context));
        this.model = model ?? throw new ArgumentNullException(nameof(model));
        CompletionColumnName = completionColumnName ?? throw new ArgumentNullException(nameof(completionColumnName));
        ScoreColumnName = scoreColumnName ?? throw new ArgumentNullException(nameof(scoreColumnName));
        PromptColumnName = promptColumnName;
        if (promptColumnName == completionColumnName) throw new ArgumentException("The prompt and completion columns must differ.", nameof(promptColumnName));
        definition = SchemaDefinition.Create(typeof(Row));
        definition[nameof(Row.Completion)].ColumnName = completionColumnName;
        if (promptColumnName is null) definition.Remove(definition[nameof(Row.Prompt)]);
        else definition[nameof(Row.Prompt)].ColumnName = promptColumnName;
        // Fail now, not at the first call, when the model does not produce a numeric score column from these inputs.
        var output = model.GetOutputSchema(context.Data.LoadFromEnumerable(Array.Empty<Row>(), definition).Schema);
        var score = output.GetColumnOrNull(scoreColumnName)
            ?? throw new ArgumentException($"The model's output has no column '{scoreColumnName}'. Columns: {string.Join(", ", output.Where(c => !c.IsHidden).Select(c => c.Name))}.", nameof(scoreColumnName));
        if (score.Type != NumberDataViewType.Single && score.Type != NumberDataViewType.Double)
            throw new ArgumentException($"The score column '{scoreColumnName}' has type {score.Type}; Single or Double is needed.", nameof(scoreColumnName));
    }

    /// <summary>The input text column of the completion.</summary>
    public string CompletionColumnName { get; }

    /// <summary>The input text column of the prompt, or null.</summary>
    public string? PromptColumnName { get; }

    /// <summary>The output score column.</summary>
    public string ScoreColumnName { get; }

    /// <inheritdoc />
    public Task<IReadOnlyList<double?>> ScoreAsync(IReadOnlyList<(string Prompt, string Completion)> items, CancellationToken cancellationToken = default)
    {
        JudgeExtensions.CheckItems(items);
        var rows = items.Select(i => new Row { Prompt = i.Prompt, Completion = i.Completion }).ToList();
        var scored = model.Transform(context.Data.LoadFromEnumerable(rows, definition));
        var column = scored.Schema[ScoreColumnName];
        var scores = new List<double?>(items.Count);
        using var cursor = scored.GetRowCursor([column]);
        Func<double> read;
        if (column.Type == NumberDataViewType.Single)
        {
            var getter = cursor.GetGetter<float>(column);
            read = () => { float v = 0; getter(ref v); return v; };
        }
        else
        {
            var getter = cursor.GetGetter<double>(column);
            read = () => { double v = 0; getter(ref v); return v; };
        }
        while (cursor.MoveNext())
        {
            cancellationToken.ThrowIfCancellationRequested();
            scores.Add(JudgeExtensions.Usable(read()));
        }
        return Task.FromResult<IReadOnlyList<double?>>(scores);
    }
}
