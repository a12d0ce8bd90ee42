using Microsoft.ML.Dpo.Reinforcement;
using Microsoft.ML.Runtime;

namespace Microsoft.ML.Dpo.Trainers;

/// <summary>
/// Group Relative Policy Optimization (Shao et al., 2024, DeepSeekMath) of a causal language model on a prompt column: for
/// every prompt K completions are sampled from the current policy, rewarded, and each completion's advantage is its reward
/// minus the mean of its group (scaled by the group's standard deviation); the loss is PPO's clipped surrogate per token,
/// with an optional k3 KL penalty toward the reference. Defaults follow TRL's <c>GRPOConfig</c>. Create it with
/// <c>mlContext.Alignment().Trainers.Grpo(options)</c>.
/// </summary>
public sealed class GrpoTrainer : IEstimator<LanguageModelTransformer>
{
    /// <summary>Options of <see cref="GrpoTrainer"/>.</summary>
    public sealed class Options : OnlineRlTrainerOptions
    {
        /// <summary>β of the k3 KL penalty toward the reference (TRL's default 0: no reference model is created). Default 0.</summary>
        public override double Beta { get; set; }
        /// <summary>ε: the ratio is clipped to [1 − ε, 1 + ε_high]. Default 0.2.</summary>
        public double Epsilon { get; set; } = 0.2;
        /// <summary>The upper clipping bound ε_high (DAPO's "clip higher" uses 0.28); null (the default): ε.</summary>
        public double? EpsilonHigh { get; set; }
        /// <summary>Optimisation passes over each rollout batch (μ, TRL's <c>num_iterations</c>): each micro-batch of prompts is presented μ times in a row and its rollouts reused. Default 1.</summary>
        public int NumIterations { get; set; } = 1;
        /// <summary>How the token losses are averaged (TRL's <c>loss_type</c>). Default <see cref="GrpoLossType.Dapo"/> (TRL's default).</summary>
        public GrpoLossType LossType { get; set; } = GrpoLossType.Dapo;
        /// <summary>How the centred rewards are scaled (TRL's <c>scale_rewards</c>). Default <see cref="RewardScaling.Group"/>.</summary>
        public RewardScaling ScaleRewards { get; set; } = RewardScaling.Group;

        /// <inheritdoc />
        public override void Validate()
        {
            base.Validate();
            if (!(Epsilon >= 0 && Epsilon < 1)) throw new ArgumentOutOfRangeException(nameof(Epsilon), Epsilon, "Epsilon must lie in [0, 1).");
            if (EpsilonHigh is double high && !(high >= 0 && double.IsFinite(high))) throw new ArgumentOutOfRangeException(nameof(EpsilonHigh), high, "EpsilonHigh must be a finite number ≥ 0.");
            if (NumIterations < 1) throw new ArgumentOutOfRangeException(nameof(NumIterations), NumIterations, "NumIterations must be at least 1.");
            if (NumIterations > 1 && GradientAccumulationSteps > 1)
                throw new NotSupportedException("NumIterations > 1 with GradientAccumulationSteps > 1 is not supported: each micro-batch's μ passes are consecutive optimizer steps, " +
                    "so they cannot be accumulated into one; use a larger BatchSize instead of accumulation.");
        }
    }

    readonly IHostEnvironment? env;
    readonly Options options;

    internal GrpoTrainer(IHostEnvironment? env, Options options)
    {
        this.env = env;
        this.options = options ?? throw new ArgumentNullException(nameof(options));
    }

    /// <summary>Checks the prompt column and adds the generated response column.</summary>
    public SchemaShape GetOutputSchema(SchemaShape inputSchema) => OnlineRlRun.OutputSchema(inputSchema, options);

    /// <summary>Trains a copy of the base model with GRPO on the prompts of <paramref name="input"/>.</summary>
    public LanguageModelTransformer Fit(IDataView input) => OnlineRlRun.Fit(env, input, options, nameof(GrpoTrainer),
        new OnlineRlSettings(OnlineRlAlgorithm.Grpo, options.NumGenerations, options.Generation, options.Beta, options.Seed, options.NumIterations,
            options.Epsilon, options.EpsilonHigh ?? options.Epsilon, options.LossType, options.ScaleRewards, MaskTruncatedCompletions: options.MaskTruncatedCompletions));
}
