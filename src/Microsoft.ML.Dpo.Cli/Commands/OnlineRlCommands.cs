using System.CommandLine;
using Microsoft.ML;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Reinforcement;
using Microsoft.ML.Dpo.Trainers;

namespace MlDpo.Commands;

/// <summary><c>mldpo grpo</c> and <c>mldpo rloo</c>: online RL on the prompts of a data file, rewards from <see cref="RewardOptions"/>.</summary>
internal static partial class TrainCommands
{
    /// <summary>The options grpo and rloo share besides the training ones.</summary>
    sealed class OnlineRl
    {
        public readonly RewardOptions Rewards = new();
        public readonly Option<int> NumGenerations = Cli.Option("--num-generations", "Completions sampled per prompt (K, at least 2); --batch-size counts prompts.", 8);
        public readonly Option<int> MaxCompletionLength = Cli.Option("--max-completion-length", "The most new tokens per completion; longer ones are cut and flagged.", 256);
        public readonly Option<double> Temperature = Cli.Option("--temperature", "Sampling temperature (> 0).", 1.0);
        public readonly Option<double> TopP = Cli.Option("--top-p", "Nucleus sampling: the most likely tokens whose probabilities sum to P (1: off).", 1.0);
        public readonly Option<int> TopK = Cli.Option("--top-k", "Sample among the K most likely tokens only (0: off).", 0);
        public readonly Option<bool> MaskTruncated = Cli.Option("--mask-truncated-completions", "Leave completions cut at --max-completion-length out of the loss.", false);

        public void AddTo(Command command)
        {
            Rewards.AddTo(command);
            foreach (Option option in new Option[] { NumGenerations, MaxCompletionLength, Temperature, TopP, TopK, MaskTruncated }) command.Options.Add(option);
        }

        public void Apply(ParseResult result, OnlineRlTrainerOptions options)
        {
            options.NumGenerations = result.GetValue(NumGenerations);
            options.MaxCompletionLength = result.GetValue(MaxCompletionLength);
            options.Temperature = result.GetValue(Temperature);
            options.TopP = result.GetValue(TopP);
            options.TopK = result.GetValue(TopK);
            options.MaskTruncatedCompletions = result.GetValue(MaskTruncated);
        }
    }

    public static Command CreateGrpo()
    {
        var common = new Common();
        var online = new OnlineRl();
        var learningRate = Cli.Optional<double?>("--learning-rate", TrainingDefaults.Help(TrainingStage.OnlineReinforcement));
        var beta = Cli.Option("--beta", "β of the k3 KL penalty toward the reference (0: no reference model, TRL's default).", 0.0);
        var epsilon = Cli.Option("--epsilon", "ε: the ratio is clipped to [1 − ε, 1 + ε-high].", 0.2);
        var epsilonHigh = Cli.Optional<double?>("--epsilon-high", "Upper clipping bound (DAPO uses 0.28; default: --epsilon).");
        var iterations = Cli.Option("--num-iterations", "Optimisation passes over each rollout batch (μ).", 1);
        var lossType = Cli.Choice("--loss-type", "How token losses are averaged (TRL's loss_type).", "dapo", "grpo", "bnpo", "dr_grpo", "dapo");
        var scale = Cli.Choice("--scale-rewards", "How centred rewards are scaled: by the group's std, the batch's, or not at all (TRL's scale_rewards).", "group", "group", "batch", "none");
        var command = new Command("grpo", "Group Relative Policy Optimization on the prompts of --data (any file with a prompt field): K completions per prompt " +
            "sampled from the policy, rewarded (--reward-function, --reward-model, --judge), group-relative advantages, clipped surrogate; writes a Hugging Face directory with metrics.jsonl.");
        common.AddTo(command);
        online.AddTo(command);
        foreach (Option option in new Option[] { learningRate, beta, epsilon, epsilonHigh, iterations, lossType, scale }) command.Options.Add(option);
        Cli.SetAction(command, (result, cancellation) =>
        {
            var options = new GrpoTrainer.Options
            {
                LearningRate = result.GetValue(learningRate), Beta = result.GetValue(beta), Epsilon = result.GetValue(epsilon), EpsilonHigh = result.GetValue(epsilonHigh),
                NumIterations = result.GetValue(iterations),
                LossType = result.GetValue(lossType) switch { "grpo" => GrpoLossType.Grpo, "bnpo" => GrpoLossType.Bnpo, "dr_grpo" => GrpoLossType.DrGrpo, _ => GrpoLossType.Dapo },
                ScaleRewards = result.GetValue(scale) switch { "batch" => RewardScaling.Batch, "none" => RewardScaling.None, _ => RewardScaling.Group },
            };
            return RunOnline(result, common, online, options, "grpo", cancellation, ml => ml.Alignment().Trainers.Grpo(options));
        });
        return command;
    }

    public static Command CreateRloo()
    {
        var common = new Common();
        var online = new OnlineRl();
        var learningRate = Cli.Optional<double?>("--learning-rate", TrainingDefaults.Help(TrainingStage.OnlineReinforcement));
        var beta = Cli.Option("--beta", "β of the sequence-level KL penalty folded into the reward (0: no reference model).", 0.05);
        var normalize = Cli.Option("--normalize-advantages", "Standardise the advantages over the batch.", false);
        var command = new Command("rloo", "REINFORCE Leave-One-Out on the prompts of --data: K completions per prompt sampled from the policy, rewarded " +
            "(--reward-model, --reward-function, --judge), KL-shaped reward, leave-one-out baseline; writes a Hugging Face directory with metrics.jsonl.");
        common.AddTo(command);
        online.AddTo(command);
        foreach (Option option in new Option[] { learningRate, beta, normalize }) command.Options.Add(option);
        Cli.SetAction(command, (result, cancellation) =>
        {
            var options = new RlooTrainer.Options { LearningRate = result.GetValue(learningRate), Beta = result.GetValue(beta), NormalizeAdvantages = result.GetValue(normalize) };
            return RunOnline(result, common, online, options, "rloo", cancellation, ml => ml.Alignment().Trainers.Rloo(options));
        });
        return command;
    }

    public static Command CreateOnlineDpo()
    {
        var common = new Common();
        var online = new OnlineRl();
        var learningRate = Cli.Optional<double?>("--learning-rate", TrainingDefaults.Help(TrainingStage.OnlineReinforcement));
        var beta = Cli.Option("--beta", "DPO's β (> 0).", 0.1);
        var command = new Command("online-dpo", "Online DPO on the prompts of --data: two completions per prompt sampled from the policy, the rewards " +
            "(--judge, e.g. chat:DIR for an LLM judge; --reward-model, --reward-function) pick the better, DPO loss on the fresh pair; writes a Hugging Face directory with metrics.jsonl.");
        common.AddTo(command);
        online.AddTo(command);
        online.NumGenerations.DefaultValueFactory = _ => 2;
        command.Options.Add(learningRate);
        command.Options.Add(beta);
        Cli.SetAction(command, (result, cancellation) =>
        {
            var options = new OnlineDpoTrainer.Options { LearningRate = result.GetValue(learningRate), Beta = result.GetValue(beta) };
            return RunOnline(result, common, online, options, "online-dpo", cancellation, ml => ml.Alignment().Trainers.OnlineDpo(options));
        });
        return command;
    }

    public static Command CreateReward()
    {
        var common = new Common();
        var learningRate = Cli.Optional<double?>("--learning-rate", TrainingDefaults.Help(TrainingStage.RewardModeling));
        var command = new Command("reward", "Train a reward model (scalar head, Bradley–Terry loss) on (prompt, chosen, rejected) records; writes a directory that " +
            "--reward-model of grpo and rloo reads (a Hugging Face model plus score.safetensors and reward_model.json).");
        common.AddTo(command);
        command.Options.Add(learningRate);
        Cli.SetAction(command, (result, cancellation) =>
        {
            var (stdout, _) = Cli.Writers(result);
            var display = new TrainingDisplay(stdout, Cli.IsTerminal(result));
            var options = new Microsoft.ML.Dpo.Feedback.RewardModelTrainer.Options { LearningRate = result.GetValue(learningRate) };
            string checkpoints = common.Apply(result, options, display, cancellation);
            var ml = new MLContext(seed: options.Seed);
            var loadReport = new DataLoadReport();
            var data = ml.Data.LoadPreferencePairs(common.DataPath(result),
                new PreferenceDataLoadOptions { SkipMalformedRows = options.SkipInvalidRows, ChatTemplate = common.ChatTemplate(result, stdout) }, loadReport);
            stdout.WriteLine($"Data: {loadReport}");
            Microsoft.ML.Dpo.Feedback.RewardModelTransformer model;
            try
            {
                model = display.Run("reward", () => ml.Alignment().Trainers.RewardModel(options).Fit(data));
            }
            catch (OperationCanceledException)
            {
                stdout.WriteLine($"Interrupted: checkpoint written to {Path.Combine(checkpoints, "checkpoint")}; rerun the same command with --resume to continue.");
                return 130;
            }
            using (model)
            {
                string output = result.GetValue(common.Output)!;
                model.Save(output, common.Overwrite(result));
                if (model.TrainingSummary is { } summary)
                    stdout.WriteLine($"Trained {summary.Steps} steps; final " + string.Join(" ", summary.FinalMetrics.Select(kv => $"{kv.Key}={Cli.Format(kv.Value)}")));
                stdout.WriteLine($"Reward model written to {output}; checkpoints in {checkpoints}");
            }
            return 0;
        });
        return command;
    }

    static int RunOnline(ParseResult result, Common common, OnlineRl online, OnlineRlTrainerOptions options, string verb, CancellationToken cancellation,
        Func<MLContext, IEstimator<LanguageModelTransformer>> trainer)
    {
        var (stdout, _) = Cli.Writers(result);
        var display = new TrainingDisplay(stdout, Cli.IsTerminal(result));
        online.Apply(result, options);
        string checkpoints = common.Apply(result, options, display, cancellation, [.. online.Rewards.ModelPaths(result)]);
        var owned = new List<IDisposable>();
        try
        {
            options.Rewards = online.Rewards.Build(result, options.Device, owned);
            var ml = new MLContext(seed: options.Seed);
            var loadReport = new DataLoadReport();
            var data = ml.Data.LoadPrompts(common.DataPath(result),
                new CompletionDataLoadOptions { SkipMalformedRows = options.SkipInvalidRows, ChatTemplate = common.ChatTemplate(result, stdout) }, loadReport);
            stdout.WriteLine($"Data: {loadReport}");
            return Train(result, common, stdout, display, verb, checkpoints, () => trainer(ml).Fit(data));
        }
        finally
        {
            foreach (var model in owned) model.Dispose();
        }
    }
}
