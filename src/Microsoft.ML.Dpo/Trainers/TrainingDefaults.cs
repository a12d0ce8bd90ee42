using System.Globalization;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Training;

namespace Microsoft.ML.Dpo.Trainers;

/// <summary>The training stages whose automatic learning rates differ.</summary>
public enum TrainingStage
{
    /// <summary>Supervised fine-tuning (<see cref="SftTrainer"/>, <c>mldpo sft</c>).</summary>
    SupervisedFineTuning,
    /// <summary>Preference optimization against a reference (<see cref="DpoTrainer"/>, <c>mldpo dpo</c>).</summary>
    PreferenceOptimization,
    /// <summary>ORPO: SFT with an odds-ratio preference term (<see cref="OrpoTrainer"/>, <c>mldpo orpo</c>).</summary>
    OddsRatioPreferenceOptimization,
    /// <summary>KTO on unpaired examples (<see cref="KtoTrainer"/>, <c>mldpo kto</c>).</summary>
    KahnemanTverskyOptimization,
    /// <summary>Online RL on the policy's own samples: GRPO, RLOO, online DPO (<c>mldpo grpo</c>, <c>rloo</c>, <c>online-dpo</c>).</summary>
    OnlineReinforcement,
    /// <summary>Reward-model training (<see cref="Feedback.RewardModelTrainer"/>, <c>mldpo reward</c>).</summary>
    RewardModeling,
}

/// <summary>
/// The one place where the trainers' model-dependent defaults are decided; the C# options and the <c>mldpo</c> command line
/// both leave them unset (null) and get them from here, and the run's log says what was chosen.
/// <para>
/// <b>Learning rate</b> (<see cref="TrainingOptions.LearningRate"/> = null, <c>--learning-rate</c> not given) follows the model's
/// origin, read from its configuration (<see cref="CausalLMConfig.StartedFromRandomWeights"/>): a model whose weights began as a
/// random initialisation by this library (<c>mldpo init</c>, <see cref="ModelPresets"/>) and every model trained from one is
/// being trained from scratch, and learns at <see cref="FromScratchLearningRate"/> (3e-3) in SFT and DPO alike; any other
/// model is taken to be pretrained and gets TRL's fine-tuning rates, <see cref="PretrainedSftLearningRate"/> (2e-5) and
/// <see cref="PretrainedDpoLearningRate"/> (1e-6). A pretrained model fine-tuned at 3e-3 would forget what it knows within a
/// few steps; a random model at 1e-6 learns nothing in any sensible number of epochs — which is why one number cannot serve both.
/// </para>
/// <para>
/// <b>The NLL term of DPO</b> (<see cref="DpoTrainer.Options.RpoAlpha"/> = null, <c>--rpo-alpha</c> not given): the default
/// loss, sigmoid DPO, comes with RPO's NLL term on the chosen answers at weight <see cref="RpoAlpha"/> (1), which keeps the
/// chosen answers likely while the margin grows (without it DPO displaces them: see the README's DPO section); any other loss
/// or list of losses the caller chooses is used exactly as given.
/// </para>
/// </summary>
public static class TrainingDefaults
{
    /// <summary>The learning rate of SFT and DPO for models trained from scratch (<see cref="CausalLMConfig.StartedFromRandomWeights"/>): 3e-3.</summary>
    public const double FromScratchLearningRate = 3e-3;

    /// <summary>The SFT learning rate for pretrained models: 2e-5 (TRL's <c>SFTConfig</c>).</summary>
    public const double PretrainedSftLearningRate = 2e-5;

    /// <summary>The DPO learning rate for pretrained models: 1e-6 (TRL's <c>DPOConfig</c>; 5e-7 to 5e-6 is the usual range).</summary>
    public const double PretrainedDpoLearningRate = 1e-6;

    /// <summary>DPO's β for a model trained from scratch (<see cref="DpoTrainer.Options.Beta"/> null, no <c>--beta</c>): 0.3 (the README's recipe table).</summary>
    public const double FromScratchDpoBeta = 0.3;

    /// <summary>DPO's β for a pretrained model: 0.1 (TRL's <c>DPOConfig</c>, Zephyr).</summary>
    public const double PretrainedDpoBeta = 0.1;

    /// <summary>The automatic β of DPO for a model with configuration <paramref name="config"/>, by its origin as <see cref="LearningRate"/>.</summary>
    /// <param name="config">The starting model's configuration.</param>
    /// <returns><see cref="FromScratchDpoBeta"/> for a model trained from scratch, else <see cref="PretrainedDpoBeta"/>.</returns>
    public static double DpoBeta(CausalLMConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        return config.StartedFromRandomWeights ? FromScratchDpoBeta : PretrainedDpoBeta;
    }

    /// <summary>β as given, or the automatic one (logged with the reason) when it is null.</summary>
    internal static double ResolveDpoBeta(double? beta, LanguageModel policy, Action<string> log)
    {
        if (beta is double given) return given;
        var config = policy.Network.Config;
        double chosen = DpoBeta(config);
        log(string.Create(CultureInfo.InvariantCulture, $"β {chosen:G} (automatic: {Reason(config)}; set Beta or --beta to choose another)."));
        return chosen;
    }

    /// <summary>
    /// The share of a DPO run's steps spent in linear warm-up (<see cref="TrainingOptions.WarmupRatio"/> null, no <c>--warmup-ratio</c>):
    /// 0.1, Zephyr's DPO recipe (Tunstall et al., 2023). Adam's first updates are full-size whatever the gradient's scale; at the
    /// from-scratch rate they can set a habit that the rest of the run never undoes (the README's recipe table).
    /// </summary>
    public const double DpoWarmupRatio = 0.1;

    /// <summary>The automatic warm-up share of <paramref name="stage"/>: <see cref="DpoWarmupRatio"/> for DPO, 0 (none) for the others.</summary>
    /// <param name="stage">The training stage.</param>
    /// <returns>The share of the run's optimizer steps.</returns>
    public static double WarmupRatio(TrainingStage stage) => stage == TrainingStage.PreferenceOptimization ? DpoWarmupRatio : 0;

    /// <summary>The options' warm-up share, or the stage's automatic one (logged when it applies: no <see cref="TrainingOptions.WarmupSteps"/>, a share above 0).</summary>
    internal static double ResolveWarmupRatio(TrainingOptions options, TrainingStage stage, Action<string> log)
    {
        if (options.WarmupRatio is double given) return given;
        double ratio = WarmupRatio(stage);
        if (options.WarmupSteps == 0 && ratio > 0)
            log(string.Create(CultureInfo.InvariantCulture,
                $"Warm-up: the first {ratio * 100:G}% of the steps (automatic; WarmupSteps/--warmup-steps or WarmupRatio/--warmup-ratio to choose, 0 for none)."));
        return ratio;
    }

    /// <summary>The weight of the NLL term that accompanies the default DPO loss (RPO): 1, as in Pang et al. (2024).</summary>
    public const double RpoAlpha = 1.0;

    /// <summary>The automatic learning rate of <paramref name="stage"/> for a model with configuration <paramref name="config"/>.</summary>
    /// <param name="stage">SFT or preference optimization.</param>
    /// <param name="config">The starting model's configuration.</param>
    /// <returns><see cref="FromScratchLearningRate"/> for a model trained from scratch, else the stage's pretrained rate.</returns>
    public static double LearningRate(TrainingStage stage, CausalLMConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        return config.StartedFromRandomWeights ? FromScratch(stage) : Pretrained(stage);
    }

    /// <summary>
    /// The stage's rate for a model trained from scratch. SFT and DPO: <see cref="FromScratchLearningRate"/> (the README's recipe
    /// experiment); ORPO 1e-3, KTO 5e-4, online RL 1e-4 and reward models 1e-3, each the rate its end-to-end tests were measured with.
    /// </summary>
    /// <param name="stage">The training stage.</param>
    /// <returns>The learning rate.</returns>
    public static double FromScratch(TrainingStage stage) => stage switch
    {
        TrainingStage.OddsRatioPreferenceOptimization => 1e-3,
        TrainingStage.KahnemanTverskyOptimization => 5e-4,
        TrainingStage.OnlineReinforcement => 1e-4,
        TrainingStage.RewardModeling => 1e-3,
        _ => FromScratchLearningRate,
    };

    /// <summary>
    /// The stage's rate for a pretrained model, as TRL's configs: SFT 2e-5, DPO, ORPO, KTO and online RL 1e-6, reward models 1e-5.
    /// </summary>
    /// <param name="stage">The training stage.</param>
    /// <returns>The learning rate.</returns>
    public static double Pretrained(TrainingStage stage) => stage switch
    {
        TrainingStage.SupervisedFineTuning => PretrainedSftLearningRate,
        TrainingStage.RewardModeling => 1e-5,
        _ => PretrainedDpoLearningRate,
    };

    /// <summary>How the automatic learning rate of <paramref name="stage"/> is chosen, in one sentence (the CLI's <c>--learning-rate</c> help).</summary>
    /// <param name="stage">The training stage.</param>
    /// <returns>The description.</returns>
    public static string Help(TrainingStage stage) => string.Create(CultureInfo.InvariantCulture,
        $"Peak AdamW learning rate (default: chosen by the model's origin and printed: {FromScratch(stage):G} for a model trained from scratch — an mldpo init preset and what is trained from it — else {Pretrained(stage):G}).");

    /// <summary>Why <see cref="LearningRate"/> chose what it chose, for the log.</summary>
    internal static string Reason(CausalLMConfig config) => config.StartedFromRandomWeights
        ? "the model was trained from scratch (its config.json says mldpo_started_from_random_weights)"
        : "the model is taken to be pretrained (its config.json does not say mldpo_started_from_random_weights)";

    /// <summary>The options' learning rate, or the automatic one (logged with the reason) when it is null.</summary>
    internal static double ResolveLearningRate(TrainingOptions options, TrainingStage stage, LanguageModel policy, Action<string> log)
    {
        if (options.LearningRate is double given) return given;
        var config = policy.Network.Config;
        double rate = LearningRate(stage, config);
        log(string.Create(CultureInfo.InvariantCulture,
            $"Learning rate {rate:G} (automatic: {Reason(config)}; set LearningRate or --learning-rate to choose another)."));
        return rate;
    }
}
