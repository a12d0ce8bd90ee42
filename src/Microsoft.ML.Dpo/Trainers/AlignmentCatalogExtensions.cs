using Microsoft.ML.Dpo.Trainers;

// In namespace Microsoft.ML, like ML.NET's own catalog extensions, so `using Microsoft.ML;` is all a pipeline needs.
namespace Microsoft.ML;

/// <summary>Extension methods that add Microsoft.ML.Dpo to <see cref="MLContext"/>.</summary>
public static class AlignmentCatalogExtensions
{
    /// <summary>Preference alignment of language models: SFT and DPO trainers, model save and load.</summary>
    public static AlignmentCatalog Alignment(this MLContext context) => new(context ?? throw new ArgumentNullException(nameof(context)));
}
