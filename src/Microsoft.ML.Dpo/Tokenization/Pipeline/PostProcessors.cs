namespace Microsoft.ML.Dpo.Tokenization.Pipeline;

/// <summary>A tokenizer.json post-processor: what <c>add_special_tokens=True</c> puts around a single sequence's ids.</summary>
internal abstract class PostProcessor
{
    /// <summary>The ids with the special tokens added.</summary>
    public abstract List<int> AddSpecialTokens(List<int> ids);
}

/// <summary>TemplateProcessing (single sequence): special tokens and the sequence in the template's order.</summary>
internal sealed class TemplatePostProcessor(IReadOnlyList<int[]?> items) : PostProcessor
{
    /// <summary>Each item: the ids of a special token, or null for the sequence.</summary>
    public IReadOnlyList<int[]?> Items => items;

    public override List<int> AddSpecialTokens(List<int> ids)
    {
        var result = new List<int>(ids.Count + items.Count);
        foreach (var item in items)
            if (item == null) result.AddRange(ids); else result.AddRange(item);
        return result;
    }
}

/// <summary>ByteLevel post-processor: only offsets change; the ids stay as they are.</summary>
internal sealed class NoOpPostProcessor : PostProcessor
{
    public override List<int> AddSpecialTokens(List<int> ids) => ids;
}

/// <summary>Sequence: post-processors applied in order.</summary>
internal sealed class SequencePostProcessor(IReadOnlyList<PostProcessor> steps) : PostProcessor
{
    public override List<int> AddSpecialTokens(List<int> ids)
    {
        foreach (var step in steps) ids = step.AddSpecialTokens(ids);
        return ids;
    }
}
