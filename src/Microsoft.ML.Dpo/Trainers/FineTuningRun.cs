using Microsoft.ML.Runtime;
using System.Security.Cryptography;
using System.Text;
using Microsoft.ML.Dpo.Checkpoints;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Lora;
using Microsoft.ML.Dpo.Training;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Trainers;

/// <summary>The steps SFT and DPO share around the training loop: the starting model, tokenization, checkpoints, logging.</summary>
internal static class FineTuningRun
{
    /// <summary>
    /// The starting model that training may modify: a fresh copy of <see cref="LanguageModelTrainerOptions.BaseModel"/>, or the
    /// model loaded from <see cref="LanguageModelTrainerOptions.BaseModelPath"/>; with <see cref="LanguageModelTrainerOptions.Lora"/>
    /// set, with fresh adapters. LoRA freezes every base weight and never writes one, so an in-memory base model without
    /// adapters is not copied: the policy is a second network over the same weight storage (<see cref="LanguageModel.ShareWeights"/>),
    /// and the caller's model keeps its own modules, untouched. One full copy of the weights exists, not two.
    /// </summary>
    public static LanguageModel LoadPolicy(LanguageModelTrainerOptions options)
    {
        var policy = options.BaseModel is { } inMemory
            ? options.Lora is not null && inMemory.Lora is null ? inMemory.ShareWeights() : inMemory.Clone()
            : LanguageModel.Load(options.BaseModelPath!, options.Precision, Distributed.DistributedWorld.Current.DeviceFor(options.Device));   // one GPU per rank
        if (options.Lora is null) return policy;
        try
        {
            LoraAdapters.Apply(policy, options.Lora).BaseModelNameOrPath = options.BaseModelPath;
            return policy;
        }
        catch
        {
            policy.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Says (once, at the start of a run) when the length limits exceed the model's context: sequences are then capped at the
    /// context, as every architecture does through <see cref="LanguageModel.EncodeExample"/> (<see cref="SequenceTruncation.WithinContext"/>).
    /// </summary>
    public static void WarnBeyondContext(TrainingOptions options, LanguageModel model, Action<string> log)
    {
        int context = model.Network.Config.MaxPositionEmbeddings;
        var (maxLength, maxPromptLength) = SequenceTruncation.WithinContext(options.MaxLength, options.MaxPromptLength, context);
        if (maxLength == options.MaxLength && maxPromptLength == options.MaxPromptLength) return;
        log($"warning: the maximum length {options.MaxLength} (MaxLength, --max-length) exceeds the model's context of {context} positions " +
            $"(max_position_embeddings); sequences are capped at {maxLength} tokens, prompts at {maxPromptLength}.");
    }

    /// <summary>
    /// Tokenizes preference pairs within the given limits; truncations and the examples kept are counted in <paramref name="report"/>.
    /// Checks <paramref name="cancellation"/> between rows, and writes a progress line to <paramref name="log"/> every few seconds.
    /// </summary>
    public static List<TokenizedPreference> TokenizePairs(LanguageModel model, IEnumerable<PreferencePair> pairs,
        int maxLength, int maxPromptLength, TruncationMode mode, DataPreparationReport report, CancellationToken cancellation = default,
        Action<string>? log = null)
    {
        var examples = new List<TokenizedPreference>();
        var progress = new PreparationProgress(log, "Tokenizing", (pairs as ICollection<PreferencePair>)?.Count);
        foreach (var pair in pairs)
        {
            cancellation.ThrowIfCancellationRequested(); // between rows: Ctrl+C stops a long tokenization
            progress.Advance();
            if (model.EncodeExample(pair.Prompt, [pair.Chosen, pair.Rejected], maxLength, maxPromptLength, mode, out var prompt, out var completions))
                report.Truncated++;
            examples.Add(new TokenizedPreference(prompt, completions[0], completions[1], pair.Row, examples.Count));
        }
        report.Kept = examples.Count;
        return examples;
    }

    /// <summary>Tokenizes preference pairs within the options' limits.</summary>
    public static List<TokenizedPreference> TokenizePairs(LanguageModel model, IEnumerable<PreferencePair> pairs, TrainingOptions options, DataPreparationReport report,
        Action<string>? log = null) =>
        TokenizePairs(model, pairs, options.MaxLength, options.MaxPromptLength, options.Truncation, report, options.CancellationToken, log);

    /// <summary>A checkpoint store that writes the model as a Hugging Face directory (so any checkpoint is loadable) and reads its weights back.</summary>
    public static TrainingCheckpoint? Checkpoint(TrainingOptions options, LanguageModel policy)
    {
        if (options.CheckpointDirectory is null) return null;
        if (policy.Lora is { } lora)    // only the adapters change: save and restore just them
            return new TrainingCheckpoint(options.CheckpointDirectory, dir => lora.Save(Path.Combine(dir, "adapter")), dir => lora.LoadWeights(Path.Combine(dir, "adapter")));
        return new TrainingCheckpoint(options.CheckpointDirectory,
            dir => policy.Save(Path.Combine(dir, "model")),
            dir =>
            {
                var saved = Safetensors.LoadDirectory(Path.Combine(dir, "model"));
                try
                {
                    using var _ = no_grad();
                    foreach (var (name, parameter) in policy.Network.named_parameters())
                        parameter.copy_(saved.TryGetValue(name, out var t) ? t : throw new InvalidDataException($"Checkpoint in '{dir}' lacks tensor '{name}'."));
                }
                finally
                {
                    foreach (var t in saved.Values) t.Dispose();
                }
            });
    }

    /// <summary>The parameters training updates.</summary>
    public static List<Parameter> Trainable(LanguageModel policy) => policy.Network.parameters().Where(p => p.requires_grad).ToList();

    /// <summary>A fingerprint of what determines a run (options and data), so a checkpoint is only resumed by the same run.</summary>
    public static string Fingerprint(LanguageModel policy, string optionsSummary, IEnumerable<int[]> tokenizedData)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(Encoding.UTF8.GetBytes(policy.Network.Config.ToJson()));
        hash.AppendData(Encoding.UTF8.GetBytes(optionsSummary));
        foreach (var ids in tokenizedData)
        {
            hash.AppendData(BitConverter.GetBytes(ids.Length));
            hash.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(ids.AsSpan()));
        }
        return Convert.ToHexString(hash.GetHashAndReset())[..16].ToLowerInvariant();
    }

    /// <summary>The shared options that change a run's result, as text (<paramref name="learningRate"/>, <paramref name="warmupRatio"/>: the resolved values when the options' are automatic).</summary>
    public static string Summary(TrainingOptions o, double? learningRate = null, double? warmupRatio = null) =>
        $"epochs={o.Epochs};batch={o.BatchSize};accum={o.GradientAccumulationSteps};lr={learningRate ?? o.LearningRate:R};wd={o.WeightDecay:R};warmup={o.WarmupSteps};" +
        ((warmupRatio ?? o.WarmupRatio ?? 0) is var ratio && ratio != 0 ? $"warmupratio={ratio:R};" : "") +
        $"schedule={o.Schedule};clip={o.MaxGradNorm:R};seed={o.Seed};maxlen={o.MaxLength};maxprompt={o.MaxPromptLength};trunc={o.Truncation};maxsteps={o.MaxSteps}" +
        (o.MixedPrecision != MixedPrecisionKind.None ? ";mixed=" + o.MixedPrecision : "") +
        (o.MaxTokensPerBatch > 0 ? $";maxtokens={o.MaxTokensPerBatch};packed={o.PaddingFree}" : "") +
        (o is LanguageModelTrainerOptions { Lora: { } lora } ? ";lora=" + lora : "") +
        (o is LanguageModelTrainerOptions { RouterAuxLossCoefficient: double aux } ? $";aux={aux:R}" : "") +
        (o is LanguageModelTrainerOptions { RouterZLossCoefficient: > 0 and var z } ? $";zloss={z:R}" : "");

    /// <summary>The objective with the MoE router losses added when <paramref name="network"/> is a sparse mixture of experts (<see cref="RouterAuxLossObjective{TExample}"/>).</summary>
    public static ITrainingObjective<TExample> WithRouterLosses<TExample>(ITrainingObjective<TExample> objective, Modeling.CausalLM network, LanguageModelTrainerOptions options) =>
        RouterAuxLossObjective<TExample>.Wrap(objective, network, options.RouterAuxLossCoefficient, options.RouterZLossCoefficient);

    /// <summary>Evaluation by generation as the options ask for it (<see cref="LanguageModelTrainerOptions.EvaluationPrompts"/>), or null.</summary>
    public static GenerationEvaluation? CreateEvaluation(LanguageModelTrainerOptions options, Action<string> log) =>
        options.EvaluationPrompts is { } prompts
            ? new GenerationEvaluation(prompts, options.EvaluationJudge, options.EvaluationGeneration ?? new Generation.GenerationOptions { MaxNewTokens = 64 }, log,
                options.EvaluationSteps, options.BestModelMetric is { } metric
                    ? new BestModelRule(metric, options.BestIsGreater, options.EarlyStoppingPatience, options.EarlyStoppingThreshold) : null)
            : null;

    /// <summary>
    /// Runs the one training loop on <paramref name="policy"/> with the evaluation by generation hooked in; with a best-model
    /// metric the policy ends with the best evaluation's weights. The network is in eval mode afterwards.
    /// </summary>
    public static TrainingSummary Train<TExample>(LanguageModelTrainerOptions options, LanguageModel policy, ITrainingObjective<TExample> objective,
        string fingerprint, Action<string> log, GenerationEvaluation? evaluation, IReadOnlyList<TExample> examples, double? learningRate = null,
        double? warmupRatio = null)
    {
        try
        {
            policy.Network.train();
            var summary = new TrainingLoop<TExample>(options, Trainable(policy), objective, Checkpoint(options, policy), fingerprint, log,
                evaluation is null ? null : (done, last) => evaluation.AfterStep(policy, done, last, options.CancellationToken),
                evaluation is null ? null : () => evaluation.StopRequested, learningRate: learningRate, warmupRatio: warmupRatio).Run(examples);
            policy.Network.eval();
            if (evaluation?.BestStep is not int bestStep) return summary;
            evaluation.RestoreBest(policy, summary.Steps);
            return summary with { BestStep = bestStep, BestMetricValue = evaluation.BestValue };
        }
        finally
        {
            policy.Network.eval();
            evaluation?.DisposeSnapshot();
        }
    }

    /// <summary>
    /// Routes log lines to the options' callback and to ML.NET's log channel, and puts the options' log-prob chunking in force;
    /// dispose it when the run ends (it closes the channel).
    /// </summary>
    public sealed class RunLog(IHostEnvironment? env, LanguageModelTrainerOptions options, string component) : IDisposable
    {
        readonly IChannel? channel = env?.Start(component);
        // The run's log-prob chunking (ChunkedLogProbs, LogProbChunkSize) is in force while the run's log is open: for the
        // whole of Fit, including a reference precomputation and evaluation.
        readonly IDisposable chunking = LogProbChunking.Use(LogProbChunking.From(options));

        /// <summary>Writes one line.</summary>
        public void Write(string line)
        {
            options.Log?.Invoke(line);
            channel?.Info(MessageSensitivity.None, line);
        }

        /// <summary>Writes one warning: to <see cref="LanguageModelTrainerOptions.Log"/> prefixed "warning: ", and as a warning on the ML.NET channel.</summary>
        public void Warn(string line)
        {
            options.Log?.Invoke("warning: " + line);
            channel?.Warning(MessageSensitivity.None, line);
        }

        /// <summary>Closes the ML.NET channel and ends the run's log-prob chunking setting.</summary>
        public void Dispose()
        {
            chunking.Dispose();
            channel?.Dispose();
        }
    }
}
