using Microsoft.ML.Dpo.Losses;
using Microsoft.ML.Dpo.Reinforcement;
using Microsoft.ML.Dpo.Training;
using Microsoft.ML.Runtime;

namespace Microsoft.ML.Dpo.Trainers;

/// <summary>
/// Online DPO (Guo et al., 2024; TRL's experimental <c>OnlineDPOTrainer</c>) on a prompt column: for each prompt two completions
/// are sampled from the current policy, <see cref="OnlineRlTrainerOptions.Rewards"/> (typically one judge: an <c>IChatClient</c>
/// through <see cref="Feedback.ChatClientJudge"/>, or a reward model) picks the better, and the DPO loss is taken on that fresh
/// pair against the reference (the starting model; with LoRA, the adapters off). Create it with
/// <c>mlContext.Alignment().Trainers.OnlineDpo(options)</c>. For rounds of offline DPO on judged samples see <see cref="IterativeDpo"/>.
/// </summary>
public sealed class OnlineDpoTrainer : IEstimator<LanguageModelTransformer>
{
    /// <summary>Options of <see cref="OnlineDpoTrainer"/>. <see cref="OnlineRlTrainerOptions.NumGenerations"/> is 2 (a pair per prompt).</summary>
    public sealed class Options : OnlineRlTrainerOptions
    {
        /// <summary>DPO's β (TRL's online DPO default 0.1); must be &gt; 0.</summary>
        public override double Beta { get; set; } = 0.1;
        /// <summary>The preference loss (any reference-based kind). Default <see cref="PreferenceLossKind.Sigmoid"/> (DPO).</summary>
        public PreferenceLossKind LossKind { get; set; } = PreferenceLossKind.Sigmoid;

        /// <summary>Creates options with two completions per prompt.</summary>
        public Options() => NumGenerations = 2;

        internal PreferenceLossOptions LossOptions => new() { Kind = LossKind, Beta = Beta };

        /// <inheritdoc />
        public override void Validate()
        {
            base.Validate();
            if (NumGenerations != 2) throw new ArgumentOutOfRangeException(nameof(NumGenerations), NumGenerations, "Online DPO samples a pair per prompt: NumGenerations must be 2.");
            if (!(Beta > 0)) throw new ArgumentOutOfRangeException(nameof(Beta), Beta, "Online DPO needs β > 0 (its loss compares with the reference).");
            var loss = LossOptions;
            loss.Validate();
            if (!loss.RequiresReference) throw new ArgumentException($"{LossKind} is reference-free; online DPO here trains against the reference.", nameof(LossKind));
        }
    }

    readonly IHostEnvironment? env;
    readonly Options options;

    internal OnlineDpoTrainer(IHostEnvironment? env, Options options)
    {
        this.env = env;
        this.options = options ?? throw new ArgumentNullException(nameof(options));
    }

    /// <summary>Checks the prompt column and adds the generated response column.</summary>
    public SchemaShape GetOutputSchema(SchemaShape inputSchema) => OnlineRlRun.OutputSchema(inputSchema, options);

    /// <summary>Trains a copy of the base model with online DPO on the prompts of <paramref name="input"/>.</summary>
    public LanguageModelTransformer Fit(IDataView input) => OnlineRlRun.Fit(env, input, options, nameof(OnlineDpoTrainer), $"online-dpo;{options.LossOptions}", 1,
        (policy, tokenizer, reference) => new OnlineDpoObjective(policy.Network, tokenizer, new ReferenceLogProbs.Live(reference!.Network, reference.Enter),
            options.LossOptions, options.Rewards, options.Generation, options.Seed, policy.PadTokenId, options.CancellationToken));
}
