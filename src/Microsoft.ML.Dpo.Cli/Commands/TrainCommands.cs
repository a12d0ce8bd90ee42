using Microsoft.ML.Dpo.Lora;
using Microsoft.ML.Dpo.Checkpoints;
using Microsoft.ML.Dpo.Training;
using System.CommandLine;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Dpo;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Losses;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tokenization;
using Microsoft.ML.Dpo.Trainers;

namespace MlDpo.Commands;

/// <summary><c>mldpo sft</c> and <c>mldpo dpo</c>: train with the library's trainers, export a Hugging Face directory with metrics.jsonl.</summary>
internal static partial class TrainCommands
{
    /// <summary>The library's defaults, which the flags' defaults are read from (one set of defaults for C# and the CLI).</summary>
    static readonly DpoTrainer.Options Defaults = new();

    /// <summary>The options sft and dpo share.</summary>
    sealed class Common
    {
        public readonly Option<string> Model = Cli.Required("--model", "The starting model: a Hugging Face directory with tokenizer files.");
        public readonly Option<string> Data = Cli.Required("--data", "The training data: JSON Lines, JSON or Parquet, in any layout the loaders read (standard, conversational, ...).");
        public readonly Option<string> Output = Cli.Required("--output", "The trained model's directory (Hugging Face format, plus metrics.jsonl), written atomically. " +
            "An existing folder is replaced only when it is empty or mldpo wrote it (see --force).");
        public readonly Option<bool> Force = Cli.Option("--force", "Replace --output even when it holds files mldpo did not write (never the current folder, " +
            "--model, --data, --reference or the checkpoint folder, nor a folder containing them).", false);
        public readonly Option<int> Epochs = Cli.Option("--epochs", "Passes over the data.", Defaults.Epochs);
        public readonly Option<int> BatchSize = Cli.Option("--batch-size", "Examples per optimizer step (DPO: pairs), over all ranks of an MPI launch.", Defaults.BatchSize);
        public readonly Option<int> PerRankBatchSize = Cli.Option("--per-rank-batch-size", "Under mpirun: the most examples a rank runs in one forward pass " +
            "(its share of --batch-size is run in passes of this size; same result, less memory). 0: the whole share.", 0);
        public readonly Option<bool> PaddingFree = Cli.Option("--padding-free", "SFT, DPO, ORPO, KTO: pack each batch's sequences into one row without padding " +
            "(positions restart per sequence, attention stays within each; same results up to float rounding, less work on length-skewed data). Online RL stays padded.", Defaults.PaddingFree);
        public readonly Option<int> MaxTokensPerBatch = Cli.Option("--max-tokens-per-batch", "Form each micro-batch by this token budget instead of --batch-size examples " +
            "(real tokens with --padding-free, else rows x longest row; a DPO pair counts both sequences; seeded, resumable). 0: off. Not for online RL.", Defaults.MaxTokensPerBatch);
        public readonly Option<int?> MaxLength = Cli.Optional<int?>("--max-length", "Longest prompt + completion in tokens (default: 512, or the model's context when shorter).");
        public readonly Option<int?> MaxPromptLength = Cli.Optional<int?>("--max-prompt-length", "Longest prompt in tokens; longer prompts keep their end (default: half of --max-length).");
        public readonly Option<string> TruncationMode = Cli.Choice("--truncation-mode", "Which end of a prompt longer than --max-prompt-length is kept: " +
            "keep_end (the text closest to the answer; TRL's default) or keep_start.", "keep_end", "keep_end", "keep_start");
        public readonly DataFlags DataFiles = new();
        public readonly Option<int> WarmupSteps = Cli.Option("--warmup-steps", "Steps of linear learning-rate warm-up (then linear decay); above 0 it overrides --warmup-ratio.", Defaults.WarmupSteps);
        public readonly Option<double?> WarmupRatio = Cli.Optional<double?>("--warmup-ratio", "The share of the steps spent in linear warm-up when --warmup-steps is 0, in [0, 1) " +
            $"(default: {TrainingDefaults.DpoWarmupRatio:G} for dpo, 0 for the other trainers).");
        public readonly Option<int> MaxSteps = Cli.Option("--max-steps", "Stop after this many optimizer steps (0: no limit).", 0);
        public readonly Option<int> Seed = Cli.Option("--seed", "Seed of the data order.", Defaults.Seed);
        public readonly Option<int> LoggingSteps = Cli.Option("--logging-steps", "Steps between metric reports (log lines and metrics.jsonl rows).", Defaults.LoggingInterval);
        public readonly Option<string?> CheckpointDir = Cli.Optional<string?>("--checkpoint-dir", "Folder for checkpoints and metrics (default: OUTPUT.checkpoints beside the output).");
        public readonly Option<int> CheckpointSteps = Cli.Option("--checkpoint-steps", "Steps between checkpoints (0: at the end and on Ctrl+C only).", 0);
        public readonly Option<bool> Resume = Cli.Option("--resume", "Continue from the checkpoint in the checkpoint folder (same data and options).", false);
        public readonly Option<bool> Restart = Cli.Option("--restart", "Discard the checkpoint (and metrics) of an earlier run in the checkpoint folder and start afresh; " +
            "without --resume or --restart an existing checkpoint stops the command.", false);
        public readonly Option<string?> ChatTemplateName = Cli.Optional<string?>("--chat-template", "The built-in chat template that renders conversational data: " +
            string.Join(", ", Microsoft.ML.Dpo.Tokenization.ChatTemplate.Names) + " (default: the model's own; a template mldpo does not recognise is refused).")
            .AcceptOnlyFromAmong([.. Microsoft.ML.Dpo.Tokenization.ChatTemplate.Names]);
        public readonly Option<bool> SkipInvalid = Cli.Option("--skip-invalid", "Skip malformed records and empty values (counted) instead of failing.", false);
        public readonly Option<string> Device = Cli.Option("--device", "auto, cpu, cuda or cuda:N.", "auto");
        public readonly Option<string> MixedPrecision = Cli.Choice("--mixed-precision", "Mixed-precision training: none, bf16 or fp16 (with dynamic loss scaling) " +
            "matmuls over float32 master weights; gradients, optimizer state, norms, softmax and the loss stay float32. On a CPU bf16 pays only with native " +
            "bf16 matmuls (AVX512-BF16, AMX); fp16 is for GPUs.", MixedPrecisionFlag(Defaults.MixedPrecision), "none", "bf16", "fp16");
        public readonly Option<int?> LoraRank = Cli.Optional<int?>("--lora-rank", "Train LoRA adapters of this rank instead of all weights (the DPO reference is then the model with adapters off).");
        public readonly Option<double?> LoraAlpha = Cli.Optional<double?>("--lora-alpha", "LoRA scaling numerator (scale = alpha / rank; default 2 x rank).");
        public readonly Option<string?> LoraTargets = Cli.Optional<string?>("--lora-targets", "Comma-separated projections to adapt: q,k,v,o,gate,up,down (Llama, Qwen, Gemma, OLMo 2), qkv,o,gate_up,down (Phi-3), c_attn,c_proj,c_fc (GPT-2), or all-linear (default: q,v / qkv / c_attn); " +
            "MoE experts: w1,w2,w3 (Mixtral) or gate,up,down (Qwen3-MoE); routers only when 'router' is listed.");
        public readonly Option<double?> RouterAuxLossCoef = Cli.Optional<double?>("--router-aux-loss-coef", "MoE models: weight of the load-balancing loss added to the objective (default: the config's router_aux_loss_coef, 0.001; 0 turns it off).");
        public readonly Option<double> RouterZLossCoef = Cli.Option("--router-z-loss-coef", "MoE models: weight of the router z-loss (default 0: off).", 0.0);
        public readonly Option<bool> GradientCheckpointing = Cli.Option("--gradient-checkpointing", "Keep only each layer's input in the training forward pass and " +
            "recompute the layer in the backward pass: less activation memory, one more forward per step, the same gradients " +
            "(on a GPU: LoRA dropout and MoE router jitter must be 0).", Defaults.GradientCheckpointing);
        public readonly Option<string> ReleaseFreedMemory = Cli.Choice("--release-freed-memory", "Linux (glibc): give every freed block of 1 MiB or more " +
            "back to the system at once instead of keeping it in malloc's heaps, where a step's activations fragment: about half the peak resident memory " +
            "for LoRA-DPO of a 0.5B model, for 1.03-1.35x the step time (on or off).", Defaults.ReleaseFreedMemory ? "on" : "off", "on", "off");
        public readonly Option<double?> PeakFlops = Cli.Optional<double?>("--peak-flops", "The peak FLOP/s of one device (e.g. 9.89e14 for an H100's dense bf16), " +
            "to log the model FLOPs utilization (mfu) beside the achieved flops_per_second (default: none, no mfu).");
        public readonly Option<string> ChunkedLogProbs = Cli.Choice("--chunked-log-probs", "Compute the completion tokens' log-probs a chunk of positions at a time, " +
            "recomputing each chunk's logits in the backward pass, so no [tokens, vocabulary] logits tensor is kept for the step (same results, less memory): " +
            $"on, off, or auto (when the vocabulary exceeds {TrainingOptions.ChunkedLogProbsVocabularyThreshold} tokens).", "auto", "auto", "on", "off");
        public readonly Option<int> LogProbChunkSize = Cli.Option("--log-prob-chunk-size", "Positions per chunk of --chunked-log-probs.", Defaults.LogProbChunkSize);

        public void AddTo(Command command)
        {
            foreach (Option option in new Option[] { Model, Data, Output, Force, Epochs, BatchSize, PerRankBatchSize, PaddingFree, MaxTokensPerBatch, MaxLength, MaxPromptLength, TruncationMode, WarmupSteps, WarmupRatio, MaxSteps, Seed,
                LoggingSteps, CheckpointDir, CheckpointSteps, Resume, Restart, ChatTemplateName, SkipInvalid, Device, MixedPrecision, LoraRank, LoraAlpha, LoraTargets, RouterAuxLossCoef, RouterZLossCoef,
                ChunkedLogProbs, LogProbChunkSize, PeakFlops, GradientCheckpointing, ReleaseFreedMemory })
                command.Options.Add(option);
        }

        static string MixedPrecisionFlag(MixedPrecisionKind kind) =>
            kind switch { MixedPrecisionKind.BFloat16 => "bf16", MixedPrecisionKind.Float16 => "fp16", _ => "none" };

        /// <summary>Whether --output may replace a folder holding files mldpo did not write.</summary>
        public OutputOverwrite Overwrite(ParseResult result) => result.GetValue(Force) ? OutputOverwrite.Always : OutputOverwrite.OwnOutputOnly;

        /// <summary>
        /// Fills the shared trainer options; returns the checkpoint folder. Refuses, before anything is read or trained, an
        /// --output that may not be replaced (<see cref="OutputFolder"/>: never one that is or contains the current folder, an input or the checkpoints).
        /// </summary>
        public string Apply(ParseResult result, LanguageModelTrainerOptions options, TrainingDisplay display, CancellationToken cancellation, params string?[] protectedPaths)
        {
            string model = result.GetValue(Model)!, output = result.GetValue(Output)!;
            string checkpoints = result.GetValue(CheckpointDir) ?? Path.TrimEndingDirectorySeparator(Path.GetFullPath(output)) + ".checkpoints";
            OutputFolder.EnsureReplaceable(output, Overwrite(result), [model, result.GetValue(Data), checkpoints, .. protectedPaths]);
            if (result.GetValue(Resume) && result.GetValue(Restart)) throw new CliException("Give --resume or --restart, not both.");
            if (!Directory.Exists(model))
                throw new CliException(File.Exists(model)
                    ? $"'{model}' is a single-file (llama2.c) checkpoint without a tokenizer; training on text needs a Hugging Face directory with tokenizer files."
                    : $"Model directory '{model}' does not exist.");
            int context = CausalLMConfig.Load(Path.Combine(model, "config.json")).MaxPositionEmbeddings;
            int maxLength = result.GetValue(MaxLength) ?? Math.Min(512, context);
            options.BaseModelPath = model;
            options.Epochs = result.GetValue(Epochs);
            options.BatchSize = result.GetValue(BatchSize);
            options.PerRankBatchSize = result.GetValue(PerRankBatchSize);
            options.PaddingFree = result.GetValue(PaddingFree);
            options.MaxTokensPerBatch = result.GetValue(MaxTokensPerBatch);
            options.MaxLength = maxLength;
            options.MaxPromptLength = result.GetValue(MaxPromptLength) ?? Math.Max(1, maxLength / 2);
            options.Truncation = result.GetValue(TruncationMode) == "keep_start" ? Microsoft.ML.Dpo.Training.TruncationMode.KeepStart : Microsoft.ML.Dpo.Training.TruncationMode.KeepEnd;
            options.WarmupSteps = result.GetValue(WarmupSteps);
            options.WarmupRatio = result.GetValue(WarmupRatio);
            options.MaxSteps = result.GetValue(MaxSteps);
            options.GradientCheckpointing = result.GetValue(GradientCheckpointing);
            options.ReleaseFreedMemory = result.GetValue(ReleaseFreedMemory) == "on";
            options.Seed = result.GetValue(Seed);
            options.LoggingInterval = result.GetValue(LoggingSteps);
            options.CheckpointDirectory = checkpoints;
            options.CheckpointInterval = result.GetValue(CheckpointSteps);
            options.ExistingCheckpoint = result.GetValue(Resume) ? ExistingCheckpointAction.Resume
                : result.GetValue(Restart) ? ExistingCheckpointAction.Restart : ExistingCheckpointAction.Refuse;
            options.SkipInvalidRows = result.GetValue(SkipInvalid);
            options.Device = result.GetValue(Device)!;
            options.MixedPrecision = result.GetValue(MixedPrecision) switch
            {
                "bf16" => MixedPrecisionKind.BFloat16,
                "fp16" => MixedPrecisionKind.Float16,
                _ => MixedPrecisionKind.None,
            };
            options.Log = line => display.Log(line.StartsWith("warning", StringComparison.Ordinal) ? CliMessages.ForCli(line) : line);
            options.Progress = display.Progress;
            options.CancellationToken = cancellation;
            options.RouterAuxLossCoefficient = result.GetValue(RouterAuxLossCoef);
            options.RouterZLossCoefficient = result.GetValue(RouterZLossCoef);
            options.ChunkedLogProbs = result.GetValue(ChunkedLogProbs) switch { "on" => true, "off" => false, _ => null };
            options.LogProbChunkSize = result.GetValue(LogProbChunkSize);
            options.PeakFlops = result.GetValue(PeakFlops);
            if (result.GetValue(LoraRank) is int rank)
                options.Lora = new LoraOptions
                {
                    Rank = rank,
                    Alpha = result.GetValue(LoraAlpha) ?? 2.0 * rank,
                    TargetModules = result.GetValue(LoraTargets)?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries),
                };
            else if (result.GetValue(LoraAlpha) is not null || result.GetValue(LoraTargets) is not null)
                throw new CliException("--lora-alpha and --lora-targets need --lora-rank.");
            return checkpoints;
        }

        public string DataPath(ParseResult result)
        {
            string data = result.GetValue(Data)!;
            if (!File.Exists(data)) throw new CliException($"Data file '{data}' does not exist.");
            return data;
        }

        /// <summary>
        /// The chat template that renders conversational records: the built-in that --chat-template names, else the model's own
        /// (its Jinja chat_template, rendered as transformers renders it) when its tokenizer files carry one; null (plain
        /// "Role: content" text) otherwise. Prints which one is used; a template that cannot be rendered is refused.
        /// </summary>
        public ChatTemplate? ChatTemplate(ParseResult result, TextWriter stdout)
        {
            string model = result.GetValue(Model)!;
            string? name = result.GetValue(ChatTemplateName);
            TextTokenizer tokenizer;
            try { tokenizer = TextTokenizer.FromDirectory(model, chatTemplateName: name); }
            catch (Exception e) when (e is FileNotFoundException or InvalidDataException) { return null; }
            if (name is null && tokenizer.ChatTemplateSource is null)
            {
                stdout.WriteLine("Chat template: none in the model's tokenizer files; conversations are rendered as plain \"Role: content\" lines.");
                return null;
            }
            ChatTemplate template;
            try { template = tokenizer.ChatTemplate; }
            catch (NotSupportedException e)
            {
                throw new CliException($"{e.Message} Rather than train conversations in another format, mldpo stops: pass --chat-template with one of "
                    + $"{string.Join(", ", Microsoft.ML.Dpo.Tokenization.ChatTemplate.Names)} to choose the format they are rendered in.");
            }
            stdout.WriteLine($"Chat template: {template}.");
            return template;
        }
    }

    public static Command CreateSft()
    {
        var common = new Common();
        var learningRate = Cli.Optional<double?>("--learning-rate", "Peak AdamW learning rate (default: chosen by the model's origin and printed: " +
            $"{TrainingDefaults.FromScratchLearningRate:G} for a model trained from scratch — an mldpo init preset and what is trained from it — else {TrainingDefaults.PretrainedSftLearningRate:G}).");
        var allTokens = Cli.Option("--all-tokens", "Learn the prompt tokens too (default: completion tokens only).", false);
        var command = new Command("sft", "Supervised fine-tuning on (prompt, completion) records; writes the model as a Hugging Face directory with metrics.jsonl.");
        common.AddTo(command);
        common.DataFiles.AddCompletion(command);
        command.Options.Add(learningRate);
        command.Options.Add(allTokens);
        var evaluation = new EvaluationFlags();
        evaluation.AddTo(command);
        Cli.SetAction(command, (result, cancellation) =>
        {
            var (stdout, _) = Cli.Writers(result);
            var display = new TrainingDisplay(stdout, Cli.IsTerminal(result));
            var options = new SftTrainer.Options { LearningRate = result.GetValue(learningRate), CompletionOnlyLoss = !result.GetValue(allTokens) };
            string checkpoints = common.Apply(result, options, display, cancellation);
            var chatTemplate = common.ChatTemplate(result, stdout);
            using var judges = evaluation.Apply(result, options, chatTemplate);
            var ml = new MLContext(seed: options.Seed);
            var loadReport = new DataLoadReport();
            var data = ml.Data.LoadCompletions(common.DataPath(result),
                common.DataFiles.Apply(result, new CompletionDataLoadOptions
                {
                    SkipMalformedRows = options.SkipInvalidRows, ChatTemplate = chatTemplate, CancellationToken = cancellation, Log = display.Log,
                }), loadReport);
            stdout.WriteLine($"Data: {loadReport}");
            return Train(result, common, stdout, display, "sft", checkpoints, () => ml.Alignment().Trainers.Sft(options).Fit(data));
        });
        return command;
    }

    public static Command CreateDpo()
    {
        var common = new Common();
        var learningRate = Cli.Optional<double?>("--learning-rate", "Peak AdamW learning rate (default: chosen by the model's origin and printed: " +
            $"{TrainingDefaults.FromScratchLearningRate:G} for a model trained from scratch — an mldpo init preset and what is trained from it — else {TrainingDefaults.PretrainedDpoLearningRate:G}).");
        var beta = Cli.Optional<double?>("--beta", "β: strength of the KL regularisation toward the reference model (default: chosen by the model's origin and printed: " +
            $"{TrainingDefaults.FromScratchDpoBeta:G} for a model trained from scratch, else {TrainingDefaults.PretrainedDpoBeta:G}).");
        var loss = Cli.Option("--loss", "The preference loss, or a comma-separated list summed with --loss-weights (TRL's loss_type names): " +
            string.Join(", ", PreferenceLossNames.LossNames) + ". E.g. sigmoid,sft (RPO) or sigmoid,bco_pair,sft with 0.8,0.2,1 (MPO).", "sigmoid");
        var lossWeights = Cli.Optional<string?>("--loss-weights", "Comma-separated weights, one per --loss entry (default: 1 each).");
        var rpoAlpha = Cli.Optional<double?>("--rpo-alpha", "Weight of an NLL term on the chosen answers (RPO): shorthand for adding sft with this weight to --loss; " +
            $"the remedy when the chosen answers' likelihood falls during DPO (default: {TrainingDefaults.RpoAlpha:G} with the default --loss sigmoid, 0 with a --loss you choose; 0 turns it off).");
        var labelSmoothing = Cli.Option("--label-smoothing", "ε: label smoothing for sigmoid (conservative DPO), robust, exo_pair (needs > 0), aot, aot_unpaired, simpo, cpo.", Defaults.LabelSmoothing);
        var simpoGamma = Cli.Option("--simpo-gamma", "γ: SimPO's target reward margin.", Defaults.SimPOGamma);
        var discopopTau = Cli.Option("--discopop-tau", "τ: DiscoPOP's mixing temperature.", Defaults.DiscoPopTau);
        var cpoAlpha = Cli.Option("--cpo-alpha", "Weight of CPO's own NLL term.", Defaults.CpoAlpha);
        var fDivergence = Cli.Choice("--f-divergence", "The divergence regularising toward the reference.", "reverse_kl", PreferenceLossNames.DivergenceNames.ToArray());
        var alphaCoef = Cli.Option("--alpha-divergence-coef", "α of --f-divergence alpha_divergence.", Defaults.AlphaDivergenceCoefficient);
        var ldAlpha = Cli.Optional<double?>("--ld-alpha", "LD-DPO: weight in [0, 1] of the completion tokens beyond the shorter answer of each pair (default: off, i.e. 1).");
        var useWeighting = Cli.Option("--use-weighting", "WPO: weight each pair by its answers' length-normalised, sampling-aligned probabilities.", false);
        var syncRefSteps = Cli.Option("--sync-ref-steps", "TR-DPO: every N optimizer steps move the reference toward the policy (0: frozen reference).", 0);
        var syncRefAlpha = Cli.Option("--sync-ref-alpha", "TR-DPO: the policy's weight α in the updated reference, α·policy + (1−α)·reference (1: hard copy).", Defaults.SyncReferenceAlpha);
        var precompute = Cli.Option("--precompute-reference", "Compute the reference log-probabilities in one pass before training and free the reference model " +
            "(cached in the checkpoint folder).", false);
        var reference = Cli.Optional<string?>("--reference", "A separate reference model directory (default: a frozen copy of --model).");
        var evaluation = new EvaluationFlags();
        var shard = Cli.Optional<string?>("--shard", "With --precompute-reference: compute only shard i/n of the reference log-probs (0-based i), write it into the " +
            "checkpoint folder and stop; once all n shards are there, the same command without --shard joins them and trains.");
        var command = new Command("dpo", "Direct Preference Optimization on (prompt, chosen, rejected) records against a frozen reference; " +
            "writes the model as a Hugging Face directory with metrics.jsonl.");
        common.AddTo(command);
        common.DataFiles.AddPreference(command);
        foreach (Option option in new Option[] { learningRate, beta, loss, lossWeights, rpoAlpha, labelSmoothing, simpoGamma, discopopTau, cpoAlpha,
            fDivergence, alphaCoef, ldAlpha, useWeighting, syncRefSteps, syncRefAlpha, precompute, reference, shard })
            command.Options.Add(option);
        evaluation.AddTo(command);
        Cli.SetAction(command, (result, cancellation) =>
        {
            var (stdout, _) = Cli.Writers(result);
            var display = new TrainingDisplay(stdout, Cli.IsTerminal(result));
            string? referencePath = result.GetValue(reference);
            var kinds = ParseList(result.GetValue(loss)!, "--loss", PreferenceLossNames.ParseLoss);
            var weights = result.GetValue(lossWeights) is { } w
                ? ParseList(w, "--loss-weights", x => double.Parse(x, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture))
                : null;
            if (weights is not null && weights.Count != kinds.Count)
                throw new CliException($"--loss-weights has {weights.Count} value(s) for {kinds.Count} loss(es) in --loss; give one weight per loss.");
            var options = new DpoTrainer.Options
            {
                LearningRate = result.GetValue(learningRate), Beta = result.GetValue(beta), LabelSmoothing = result.GetValue(labelSmoothing),
                LossKind = kinds.Count == 1 && weights is null ? kinds[0] : PreferenceLossKind.Sigmoid,
                LossKinds = kinds.Count == 1 && weights is null ? null : kinds,
                LossWeights = weights,
                RpoAlpha = result.GetValue(rpoAlpha), SimPOGamma = result.GetValue(simpoGamma), DiscoPopTau = result.GetValue(discopopTau),
                CpoAlpha = result.GetValue(cpoAlpha), FDivergence = PreferenceLossNames.ParseDivergence(result.GetValue(fDivergence)!),
                AlphaDivergenceCoefficient = result.GetValue(alphaCoef), LdAlpha = result.GetValue(ldAlpha), UseWeighting = result.GetValue(useWeighting),
                SyncReferenceSteps = result.GetValue(syncRefSteps), SyncReferenceAlpha = result.GetValue(syncRefAlpha),
                PrecomputeReferenceLogProbs = result.GetValue(precompute),
                Reference = referencePath is null ? ReferenceModelSource.FrozenCopyOfBase : ReferenceModelSource.Separate,
                ReferenceModelPath = referencePath,
            };
            var chatTemplate = common.ChatTemplate(result, stdout);
            string checkpoints = common.Apply(result, options, display, cancellation, referencePath);
            using var judges = evaluation.Apply(result, options, chatTemplate);
            var ml = new MLContext(seed: options.Seed);
            var loadReport = new DataLoadReport();
            var data = ml.Data.LoadPreferencePairs(common.DataPath(result),
                common.DataFiles.Apply(result, new PreferenceDataLoadOptions { SkipMalformedRows = options.SkipInvalidRows, ChatTemplate = chatTemplate, CancellationToken = cancellation, Log = display.Log }), loadReport);
            stdout.WriteLine($"Data: {loadReport}");
            if (result.GetValue(shard) is { } spec)
            {
                var parts = spec.Split('/');
                if (parts.Length != 2 || !int.TryParse(parts[0], out int index) || !int.TryParse(parts[1], out int count) || count < 1 || index < 0 || index >= count)
                    throw new CliException($"--shard '{spec}' is not i/n with 0 <= i < n (e.g. 0/4).");
                if (!options.PrecomputeReferenceLogProbs) throw new CliException("--shard needs --precompute-reference: it shards the reference precomputation.");
                string path = ml.Alignment().Trainers.Dpo(options).PrecomputeReferenceShard(data, index, count);
                stdout.WriteLine($"Reference shard {index}/{count} written to {path}");
                return 0;
            }
            return Train(result, common, stdout, display, "dpo", checkpoints, () => ml.Alignment().Trainers.Dpo(options).Fit(data));
        });
        return command;
    }

    public static Command CreateOrpo()
    {
        var common = new Common();
        var learningRate = Cli.Optional<double?>("--learning-rate", TrainingDefaults.Help(TrainingStage.OddsRatioPreferenceOptimization));
        var beta = Cli.Option("--beta", "λ: the weight of the odds-ratio term against the NLL on the chosen answers (TRL's beta).", 0.1);
        var evaluation = new EvaluationFlags();
        var command = new Command("orpo", "ORPO (odds-ratio preference optimization) on (prompt, chosen, rejected) records: SFT on the chosen answers plus an " +
            "odds-ratio preference term, no reference model; writes the model as a Hugging Face directory with metrics.jsonl.");
        common.AddTo(command);
        common.DataFiles.AddPreference(command);
        command.Options.Add(learningRate);
        command.Options.Add(beta);
        evaluation.AddTo(command);
        Cli.SetAction(command, (result, cancellation) =>
        {
            var (stdout, _) = Cli.Writers(result);
            var display = new TrainingDisplay(stdout, Cli.IsTerminal(result));
            var options = new OrpoTrainer.Options { LearningRate = result.GetValue(learningRate), Beta = result.GetValue(beta) };
            var chatTemplate = common.ChatTemplate(result, stdout);
            string checkpoints = common.Apply(result, options, display, cancellation);
            using var judges = evaluation.Apply(result, options, chatTemplate);
            var ml = new MLContext(seed: options.Seed);
            var loadReport = new DataLoadReport();
            var data = ml.Data.LoadPreferencePairs(common.DataPath(result),
                common.DataFiles.Apply(result, new PreferenceDataLoadOptions { SkipMalformedRows = options.SkipInvalidRows, ChatTemplate = chatTemplate, CancellationToken = cancellation, Log = display.Log }), loadReport);
            stdout.WriteLine($"Data: {loadReport}");
            return Train(result, common, stdout, display, "orpo", checkpoints, () => ml.Alignment().Trainers.Orpo(options).Fit(data));
        });
        return command;
    }

    public static Command CreateKto()
    {
        var common = new Common();
        var learningRate = Cli.Optional<double?>("--learning-rate", TrainingDefaults.Help(TrainingStage.KahnemanTverskyOptimization));
        var beta = Cli.Option("--beta", "β: strength of the KL regularisation toward the reference model.", 0.1);
        var desirableWeight = Cli.Option("--desirable-weight", "Weight of the desirable examples' losses.", 1.0);
        var undesirableWeight = Cli.Option("--undesirable-weight", "Weight of the undesirable examples' losses.", 1.0);
        var reference = Cli.Optional<string?>("--reference", "A separate reference model directory (default: a frozen copy of --model).");
        var evaluation = new EvaluationFlags();
        var command = new Command("kto", "KTO (Kahneman-Tversky optimization) on unpaired (prompt, completion, label) records — or preference pairs, unpaired as " +
            "chosen: desirable, rejected: undesirable — against a frozen reference; writes the model as a Hugging Face directory with metrics.jsonl.");
        common.AddTo(command);
        foreach (Option option in new Option[] { learningRate, beta, desirableWeight, undesirableWeight, reference }) command.Options.Add(option);
        evaluation.AddTo(command);
        Cli.SetAction(command, (result, cancellation) =>
        {
            var (stdout, _) = Cli.Writers(result);
            var display = new TrainingDisplay(stdout, Cli.IsTerminal(result));
            string? referencePath = result.GetValue(reference);
            var options = new KtoTrainer.Options
            {
                LearningRate = result.GetValue(learningRate), Beta = result.GetValue(beta), ReferenceModelPath = referencePath,
                DesirableWeight = result.GetValue(desirableWeight), UndesirableWeight = result.GetValue(undesirableWeight),
            };
            var chatTemplate = common.ChatTemplate(result, stdout);
            string checkpoints = common.Apply(result, options, display, cancellation, referencePath);
            using var judges = evaluation.Apply(result, options, chatTemplate);
            var ml = new MLContext(seed: options.Seed);
            var loadReport = new DataLoadReport();
            var data = ml.Data.LoadUnpairedPreferences(common.DataPath(result),
                new PreferenceDataLoadOptions { SkipMalformedRows = options.SkipInvalidRows, ChatTemplate = chatTemplate, CancellationToken = cancellation, Log = display.Log }, loadReport);
            stdout.WriteLine($"Data: {loadReport}" + (loadReport.PreferenceLayout is not null ? " (pairs unpaired: chosen desirable, rejected undesirable)" : ""));
            return Train(result, common, stdout, display, "kto", checkpoints, () => ml.Alignment().Trainers.Kto(options).Fit(data));
        });
        return command;
    }

    /// <summary>
    /// The flags of evaluation by generation that the training verbs share: --eval-data, --eval-steps, --eval-max-new-tokens,
    /// --judge, --save-best (with --save-best-mode) and early stopping.
    /// </summary>
    internal sealed class EvaluationFlags
    {
        public readonly Option<string?> Data = Cli.Optional<string?>("--eval-data", "Held-out prompts (any pairs, completions, KTO or prompt-only file; its prompt column) that the policy and the reference " +
            "answer during training: logs eval/mean_length, eval/repeated_ngram_share, eval/degenerate_rate, eval/win_rate with --judge, and side-by-side samples.");
        public readonly Option<int> Steps = Cli.Option("--eval-steps", "Optimizer steps between evaluations by generation (0: at the end only).", 0);
        public readonly Option<int> Tokens = Cli.Option("--eval-max-new-tokens", "New tokens per evaluation answer (greedy).", 64);
        public readonly JudgeOptions Judge = new();
        public readonly Option<string?> SaveBest = Cli.Optional<string?>("--save-best", "An eval metric (e.g. eval/win_rate, eval/degenerate_rate) that chooses the best evaluation: " +
            "--output gets that step's weights instead of the last step's (needs --eval-data).");
        public readonly Option<string?> SaveBestMode = Cli.Optional<string?>("--save-best-mode", "max or min: whether larger --save-best values are better " +
            "(default: min for losses, lengths and degeneration measures, max otherwise).").AcceptOnlyFromAmong("max", "min");
        public readonly Option<int> Patience = Cli.Option("--early-stopping-patience", "Stop after this many evaluations without an improvement of --save-best (0: never).", 0);
        public readonly Option<double> Threshold = Cli.Option("--early-stopping-threshold", "How much --save-best must improve to count as an improvement.", 0.0);

        public void AddTo(Command command)
        {
            foreach (Option option in new Option[] { Data, Steps, Tokens, SaveBest, SaveBestMode, Patience, Threshold }) command.Options.Add(option);
            Judge.AddTo(command);
        }

        /// <summary>Fills the evaluation options; the returned object disposes the judge's models.</summary>
        public IDisposable Apply(ParseResult result, LanguageModelTrainerOptions options, ChatTemplate? chatTemplate)
        {
            options.EvaluationSteps = result.GetValue(Steps);
            options.EvaluationGeneration = new Microsoft.ML.Dpo.Generation.GenerationOptions { MaxNewTokens = result.GetValue(Tokens) };
            if (result.GetValue(Data) is { } path) options.EvaluationPrompts = Prompts(path, chatTemplate);
            options.BestModelMetric = result.GetValue(SaveBest);
            options.GreaterIsBetter = result.GetValue(SaveBestMode) is { } mode ? mode == "max" : null;
            options.EarlyStoppingPatience = result.GetValue(Patience);
            options.EarlyStoppingThreshold = result.GetValue(Threshold);
            var owned = new List<IDisposable>();
            options.EvaluationJudge = Judge.Create(result, owned, options.Device);
            return new Owned(owned);
        }

        sealed class Owned(List<IDisposable> items) : IDisposable
        {
            public void Dispose() { foreach (var item in items) item.Dispose(); }
        }
    }

    /// <summary>The distinct prompts of a pairs, completions, KTO or prompt-only file (for --eval-data and evaluate --generate).</summary>
    internal static List<string> Prompts(string path, ChatTemplate? chatTemplate)
    {
        if (!File.Exists(path)) throw new CliException($"Evaluation data file '{path}' does not exist.");
        var ml = new MLContext();
        // Tried in turn (a pairs file's prompts may come from its conversations, which the prompt reader does not split); a file
        // none of them reads gets the last one's error, which names the file, the line and the missing prompt.
        var readers = new Func<IDataView>[]
        {
            () => ml.Data.LoadPreferencePairs(path, new PreferenceDataLoadOptions { ChatTemplate = chatTemplate }),
            () => ml.Data.LoadCompletions(path, new CompletionDataLoadOptions { ChatTemplate = chatTemplate }),
            () => ml.Data.LoadPrompts(path, new CompletionDataLoadOptions { ChatTemplate = chatTemplate }),
        };
        for (int i = 0; ; i++)
        {
            try { return readers[i]().GetColumn<string>("prompt").Distinct().ToList(); }
            catch (InvalidDataException) when (i < readers.Length - 1) { }
        }
    }

    /// <summary>Splits a comma-separated option value and parses each entry; a bad entry is one error naming the option.</summary>
    static List<T> ParseList<T>(string value, string option, Func<string, T> parse)
    {
        var items = value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (items.Length == 0) throw new CliException($"{option} is empty.");
        var parsed = new List<T>();
        foreach (var item in items)
        {
            try { parsed.Add(parse(item)); }
            catch (Exception e) when (e is ArgumentException or FormatException or OverflowException)
            {
                throw new CliException($"{option}: '{item}' is not valid. {(e is ArgumentException ? e.Message : "Expected a number.")}");
            }
        }
        return parsed;
    }

    /// <summary>Runs the trainer, exports the model and copies metrics.jsonl into it; on Ctrl+C says where the checkpoint is.</summary>
    static int Train(ParseResult result, Common common, TextWriter stdout, TrainingDisplay display, string verb, string checkpoints, Func<LanguageModelTransformer> fit)
    {
        string output = result.GetValue(common.Output)!;
        LanguageModelTransformer transformer;
        try
        {
            transformer = display.Run(verb, fit);
        }
        catch (OperationCanceledException)
        {
            string checkpoint = Path.Combine(checkpoints, "checkpoint");
            stdout.WriteLine($"Interrupted: checkpoint written to {checkpoint} (its model/ folder is a loadable Hugging Face directory); " +
                             "rerun the same command with --resume to continue.");
            return 130;
        }
        using (transformer)
        {
            if (!Microsoft.ML.Dpo.Distributed.DistributedWorld.Current.IsMain) return 0;   // data parallel: rank 0 writes the output
            transformer.ExportHuggingFace(output, common.Overwrite(result));   // with LoRA: the merged weights; metrics.jsonl inside
            if (transformer.Model.Lora is not null)
            {
                transformer.ExportAdapter(Path.Combine(output, "adapter"));   // and the adapter alone, in PEFT's format
                stdout.WriteLine($"LoRA adapter written to {Path.Combine(output, "adapter")}");
            }
            var summary = transformer.TrainingSummary;
            if (transformer.DataReport is { } report) stdout.WriteLine($"Prepared: {report}");
            if (summary is not null)
                stdout.WriteLine($"Trained {summary.Steps} steps; final " + string.Join(" ", summary.FinalMetrics.Select(kv => $"{kv.Key}={Cli.Format(kv.Value)}")));
            if (summary is { StoppedEarly: true }) stdout.WriteLine($"Stopped early at step {summary.Steps} (--early-stopping-patience).");
            if (summary?.BestStep is int best)
                stdout.WriteLine($"Best evaluation at step {best} ({Cli.Format(summary.BestMetricValue ?? double.NaN)}): --output has that step's weights.");
            stdout.WriteLine($"Model written to {output} (metrics.jsonl inside); checkpoints in {checkpoints}");
        }
        return 0;
    }
}
