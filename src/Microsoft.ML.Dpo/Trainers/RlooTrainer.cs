using Microsoft.ML.Dpo.Reinforcement;
using Microsoft.ML.Runtime;

namespace Microsoft.ML.Dpo.Trainers;

/// <summary>
/// REINFORCE Leave-One-Out (Ahmadian et al., 2024, "Back to Basics") on a prompt column: K completions per prompt are sampled
/// from the current policy and rewarded, the sequence-level KL to the reference (β · Σ_t log π_old − log π_ref) is subtracted
/// from each reward, and each completion's baseline is the mean reward of the other K − 1; the loss is REINFORCE on the whole
/// sequence. Create it with <c>mlContext.Alignment().Trainers.Rloo(options)</c>.
/// </summary>
public sealed class RlooTrainer : IEstimator<LanguageModelTransformer>
{
    /// <summary>Options of <see cref="RlooTrainer"/>.</summary>
    public sealed class Options : OnlineRlTrainerOptions
    {
        /// <summary>β of the sequence-level KL penalty folded into the reward (TRL's RLOO default 0.05); 0 creates no reference. Default 0.05.</summary>
        public override double Beta { get; set; } = 0.05;
        /// <summary>Standardise the advantages over the batch (TRL's <c>normalize_advantages</c>). Default false.</summary>
        public bool NormalizeAdvantages { get; set; }
    }

    readonly IHostEnvironment? env;
    readonly Options options;

    internal RlooTrainer(IHostEnvironment? env, Options options)
    {
        this.env = env;
        this.options = options ?? throw new ArgumentNullException(nameof(options));
    }

    /// <summary>Checks the prompt column and adds the generated response column.</summary>
    public SchemaShape GetOutputSchema(SchemaShape inputSchema) => OnlineRlRun.OutputSchema(inputSchema, options);

    /// <summary>Trains a copy of the base model with RLOO on the prompts of <paramref name="input"/>.</summary>
    public LanguageModelTransformer Fit(IDataView input) => OnlineRlRun.Fit(env, input, options, nameof(RlooTrainer),
        new OnlineRlSettings(OnlineRlAlgorithm.Rloo, options.NumGenerations, options.Generation, options.Beta, options.Seed,
            NormalizeAdvantages: options.NormalizeAdvantages, MaskTruncatedCompletions: options.MaskTruncatedCompletions));
}
