using System.Text.Json;
using Microsoft.ML;
using Microsoft.ML.Dpo;
using Microsoft.ML.Dpo.Analysis;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Feedback;
using Microsoft.ML.Dpo.Generation;
using Microsoft.ML.Dpo.Lora;
using Microsoft.ML.Dpo.Samples;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tokenization;
using Microsoft.ML.Dpo.Training;
using Microsoft.ML.Dpo.Trainers;
using MlDpo.Commands;
using Spectre.Console;

namespace QuickStart;

/// <summary>Command-line settings of the quick start.</summary>
public sealed record QuickStartSettings(string Output, string? Model, string? Data, string? SftData, bool Quick, int Seed)
{
    /// <summary>Parses <c>--output</c>, <c>--model</c>, <c>--data</c>, <c>--sft-data</c>, <c>--quick</c>, <c>--seed</c>.</summary>
    public static QuickStartSettings Parse(string[] args)
    {
        var settings = new QuickStartSettings("quickstart-output", null, null, null, false, 42);
        for (int i = 0; i < args.Length; i++)
        {
            string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value.");
            settings = args[i] switch
            {
                "--output" => settings with { Output = Value() },
                "--model" => settings with { Model = Value() },
                "--data" => settings with { Data = Value() },
                "--sft-data" => settings with { SftData = Value() },
                "--quick" => settings with { Quick = true },
                "--seed" => settings with { Seed = int.Parse(Value()) },
                _ => throw new ArgumentException($"Unknown argument '{args[i]}'. Use --model DIR, --data FILE, --sft-data FILE, --output DIR, --quick, --seed N."),
            };
        }
        return settings;
    }
}

/// <summary>The evidence for one aligned model, measured on the held-out prompts.</summary>
/// <param name="Name">"DPO" or "LoRA-DPO".</param>
/// <param name="PreferenceAccuracy">Share of held-out pairs whose chosen answer gets the higher implicit reward.</param>
/// <param name="MeanMargin">Mean implicit-reward margin (chosen − rejected) on the held-out pairs.</param>
/// <param name="WinRateOverSft">Judged win rate of its greedy answers over the SFT model's (ties count half).</param>
/// <param name="PreferredStyleRate">Share of its greedy answers that are exactly a preferred answer (built-in task only).</param>
/// <param name="TrainableParameters">Parameters that training updated.</param>
public sealed record AlignedModelReport(string Name, double PreferenceAccuracy, double MeanMargin, double WinRateOverSft, double? PreferredStyleRate, long TrainableParameters);

/// <summary>What the quick start measured.</summary>
/// <param name="SftPrefersChosen">Share of held-out pairs where the SFT model gives the chosen answer the higher likelihood.</param>
/// <param name="SftPreferredStyleRate">Share of the SFT model's greedy answers that are a preferred answer (built-in task only).</param>
/// <param name="Models">The aligned models.</param>
/// <param name="Plots">The PNG files written.</param>
/// <param name="Seconds">Wall time of the whole run.</param>
/// <param name="Shifts">The token distribution shifts measured (DPO vs SFT, URIAL vs the base model).</param>
public sealed record QuickStartSummary(double SftPrefersChosen, double? SftPreferredStyleRate, IReadOnlyList<AlignedModelReport> Models, IReadOnlyList<string> Plots, double Seconds,
    IReadOnlyList<ShiftSummary>? Shifts = null);

/// <summary>One token distribution shift (<see cref="TokenShiftAnalysis"/>): shares of the aligned side's answer tokens by their rank under the other model.</summary>
/// <param name="Name">"DPO vs SFT" or "URIAL vs base".</param>
/// <param name="Unshifted">Share that is the other model's top-1 token.</param>
/// <param name="Marginal">Share that is its 2nd or 3rd.</param>
/// <param name="Shifted">Share outside its top 3.</param>
/// <param name="Positions">Tokens analysed.</param>
/// <param name="Report">The JSON report (an HTML page and a PNG plot lie beside it).</param>
public sealed record ShiftSummary(string Name, double Unshifted, double Marginal, double Shifted, int Positions, string Report);

/// <summary>SFT → DPO (full and LoRA) → evaluation, with live progress and the evidence (plots, numbers, examples) written to disk.</summary>
public static class QuickStartApp
{
    /// <summary>Runs the quick start; returns the process exit code.</summary>
    public static int Run(string[] args)
    {
        QuickStartSettings settings;
        try { settings = QuickStartSettings.Parse(args); }
        catch (Exception e) when (e is ArgumentException or FormatException)
        {
            Console.Error.WriteLine(e.Message);
            return 2;
        }
        Run(settings);
        return 0;
    }

    /// <summary>Runs the quick start with <paramref name="settings"/> and returns its summary.</summary>
    public static QuickStartSummary Run(QuickStartSettings settings)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        string output = Path.GetFullPath(settings.Output);
        Directory.CreateDirectory(output);
        var ml = new MLContext(seed: settings.Seed);
        var display = new TrainingDisplay(Console.Out, progressBar: !Console.IsOutputRedirected);
        bool demo = settings.Model is null;

        // 1. The starting model: yours, or the "small" preset over a byte-level tokenizer, with random weights.
        using var baseModel = demo
            ? ModelPresets.CreateModel("llama", "small", TextTokenizer.CreateByteLevel(Path.Combine(output, "tokenizer")), settings.Seed)
            : LanguageModel.Load(settings.Model!);
        AnsiConsole.MarkupLine($"[bold]Base model[/]: {Markup.Escape(settings.Model ?? "small llama preset, byte-level tokenizer, random weights")} " +
                               $"({ModelPresets.CountParameters(baseModel.Network):N0} parameters)");

        // 2. Data: the built-in task, or your files (10% of your pairs held out).
        var (sftData, trainPairs, heldOut) = LoadData(settings);
        var heldOutPrompts = heldOut.Select(p => p.Prompt).Distinct().ToList();
        AnsiConsole.MarkupLine($"[bold]Data[/]: {sftData.Count} SFT examples, {trainPairs.Count} training pairs, {heldOut.Count} held-out pairs " +
                               $"({heldOutPrompts.Count} prompts never seen in training)");

        // 3. SFT.
        using var sft = display.Run("SFT", () => ml.Alignment().Trainers.Sft(new SftTrainer.Options
        {
            BaseModel = baseModel, Epochs = demo ? 20 : 1, BatchSize = 8, LearningRate = demo ? 3e-3 : 2e-5,
            WarmupSteps = 5, MaxLength = 128, MaxPromptLength = 96, Seed = settings.Seed, LoggingInterval = 5,
            CheckpointDirectory = Path.Combine(output, "sft-run"), ExistingCheckpoint = ExistingCheckpointAction.Restart,   // each run starts afresh
            Progress = display.Progress, Log = display.Log,
        }).Fit(ml.Data.LoadFromCompletions(sftData)));

        // 4. DPO against the frozen SFT model: full fine-tuning, then LoRA (the reference is the SFT model with adapters off).
        var generation = new GenerationOptions { MaxNewTokens = 32, StopStrings = ["\n"] };
        var sftAnswers = sft.Model.CreateGenerator().Generate(heldOutPrompts, generation);
        var judge = Judges.TrainClassifier(ml, trainPairs);
        var pairsView = ml.Data.LoadFromPreferencePairs(trainPairs);
        var runs = new List<(string Name, LoraOptions? Lora, double LearningRate)> { ("DPO", null, demo ? 1e-4 : 1e-6) };
        if (!settings.Quick) runs.Add(("LoRA-DPO", new LoraOptions { Rank = 8, Alpha = 16, TargetModules = ["all-linear"] }, demo ? 1e-3 : 1e-5));
        var reports = new List<AlignedModelReport>();
        var answers = new Dictionary<string, IReadOnlyList<string>> { ["SFT"] = sftAnswers };
        var metrics = new Dictionary<string, Dictionary<string, List<(double Step, double Value)>>>();
        var shifts = new List<ShiftSummary>();
        string shiftDir = Directory.CreateDirectory(Path.Combine(output, "shift")).FullName;
        ShiftSummary Shift(string name, string file, LanguageModel other, LanguageModel alignedSide, Func<string, string>? format = null)
        {
            var report = TokenShiftAnalysis.Analyze(other, alignedSide, heldOutPrompts, new TokenShiftOptions { MaxNewTokens = 32, AlignedPromptFormat = format });
            string path = Path.Combine(shiftDir, file);
            ShiftReportFiles.Write(report, path, name);
            return new ShiftSummary(name, report.Unshifted, report.Marginal, report.Shifted, report.Positions, path);
        }
        foreach (var (name, lora, learningRate) in runs)
        {
            string runDir = Path.Combine(output, name.ToLowerInvariant() + "-run");
            using var aligned = display.Run(name, () => ml.Alignment().Trainers.Dpo(new DpoTrainer.Options
            {
                BaseModel = sft.Model, Lora = lora, Beta = 0.1, Epochs = demo ? 3 : 1, BatchSize = 8, LearningRate = learningRate,
                RpoAlpha = 0,   // plain DPO, the recipe the README's quick-start numbers were measured with (the default adds RPO's NLL term)
                MaxLength = 128, MaxPromptLength = 96, Seed = settings.Seed, LoggingInterval = 1,
                CheckpointDirectory = runDir, ExistingCheckpoint = ExistingCheckpointAction.Restart, Progress = display.Progress, Log = display.Log,
            }).Fit(pairsView));
            var evaluation = PreferenceEvaluator.Evaluate(aligned.Model, sft.Model, heldOut, beta: 0.1);
            answers[name] = aligned.Model.CreateGenerator().Generate(heldOutPrompts, generation);
            long trainable = aligned.Model.Lora?.ParameterCount ?? ModelPresets.CountParameters(aligned.Model.Network);
            reports.Add(new AlignedModelReport(name, evaluation.PreferenceAccuracy, evaluation.MeanMargin,
                Judges.WinRate(judge, heldOutPrompts, answers[name], sftAnswers),
                demo ? answers[name].Average(a => DemoTask.IsPreferredStyle(a) ? 1.0 : 0.0) : null, trainable));
            metrics[name] = Plots.Read(Path.Combine(runDir, "metrics.jsonl"), "loss", "rewards/margins", "rewards/accuracies");
            // What DPO changed, token by token: its greedy answers ranked in the SFT model's distribution (Lin et al., 2023).
            if (name == "DPO") shifts.Add(Shift("DPO vs SFT", "dpo-vs-sft.json", sft.Model, aligned.Model));
        }

        // URIAL (alignment by in-context examples alone) on the base model. With the built-in task the base has random weights, so
        // URIAL's premise — a pretrained base that already knows how to answer — does not hold: the number shows the method, not the claim.
        var urial = demo
            ? new UrialPromptBuilder { SystemPrompt = null, Examples = [new UrialExample(trainPairs[0].Prompt.Trim(), trainPairs[0].Chosen)] }
            : new UrialPromptBuilder();
        shifts.Add(Shift("URIAL vs base", "urial-vs-base.json", baseModel, baseModel, urial.Build));

        // 5. Evidence: plots, examples side by side, numbers.
        string plotDir = Directory.CreateDirectory(Path.Combine(output, "plots")).FullName;
        var plots = new List<string>();
        foreach (string metric in new[] { "loss", "rewards/margins", "rewards/accuracies" })
            plots.Add(Plots.Save(Path.Combine(plotDir, "dpo-" + metric.Replace('/', '-') + ".png"), metric, metrics.ToDictionary(kv => kv.Key, kv => kv.Value[metric])));
        plots.Add(Plots.Save(Path.Combine(plotDir, "sft-loss.png"), "loss", new Dictionary<string, List<(double, double)>>
            { ["SFT"] = Plots.Read(Path.Combine(output, "sft-run", "metrics.jsonl"), "loss")["loss"] }));

        var table = new Table().AddColumn("held-out prompt");
        foreach (string name in answers.Keys) table.AddColumn(name + " answer");
        foreach (int i in new[] { 0, heldOutPrompts.Count / 2, heldOutPrompts.Count - 1 })
            table.AddRow([Markup.Escape(heldOutPrompts[i].Trim()), .. answers.Values.Select(a => Markup.Escape(a[i]))]);
        AnsiConsole.Write(table);

        double sftPrefersChosen = heldOut.Average(p => sft.LogProbability(p.Prompt, p.Chosen) > sft.LogProbability(p.Prompt, p.Rejected) ? 1.0 : 0.0);
        double? sftStyle = demo ? sftAnswers.Average(a => DemoTask.IsPreferredStyle(a) ? 1.0 : 0.0) : null;
        var results = new Table().AddColumns("model", "held-out preference accuracy", "judged win rate over SFT", "preferred-style answers", "trainable parameters");
        results.AddRow("SFT", $"{sftPrefersChosen:P0} (likelihood)", "—", sftStyle is double s ? $"{s:P0}" : "n/a", ModelPresets.CountParameters(sft.Model.Network).ToString("N0"));
        foreach (var r in reports)
            results.AddRow(r.Name, $"{r.PreferenceAccuracy:P0} (margin {r.MeanMargin:F2})", $"{r.WinRateOverSft:P0}", r.PreferredStyleRate is double p ? $"{p:P0}" : "n/a", r.TrainableParameters.ToString("N0"));
        AnsiConsole.Write(results);
        var shiftTable = new Table().AddColumns("token distribution shift", "unshifted", "marginal", "shifted", "tokens");
        foreach (var sh in shifts) shiftTable.AddRow(sh.Name, $"{sh.Unshifted:P1}", $"{sh.Marginal:P1}", $"{sh.Shifted:P1}", sh.Positions.ToString("N0"));
        AnsiConsole.Write(shiftTable);
        if (demo) AnsiConsole.MarkupLine("[grey]URIAL vs base: the base model here has random weights, so URIAL's premise (a pretrained base) does not hold.[/]");

        var summary = new QuickStartSummary(sftPrefersChosen, sftStyle, reports, plots, clock.Elapsed.TotalSeconds, shifts);
        File.WriteAllText(Path.Combine(output, "summary.json"), JsonSerializer.Serialize(summary, new JsonSerializerOptions { WriteIndented = true }));
        AnsiConsole.MarkupLine($"Plots: {Markup.Escape(plotDir)}; summary: {Markup.Escape(Path.Combine(output, "summary.json"))}; {clock.Elapsed.TotalSeconds:F0} s");
        return summary;
    }

    static (List<CompletionExample> Sft, List<PreferencePair> Train, List<PreferencePair> HeldOut) LoadData(QuickStartSettings settings)
    {
        if (settings.Data is null) return (DemoTask.SftExamples(), DemoTask.TrainPairs(), DemoTask.HeldOutPairs());
        var pairs = PreferenceDataFile.ReadPreferencePairs(settings.Data);
        var random = new Random(settings.Seed);
        var shuffled = pairs.OrderBy(_ => random.Next()).ToList();
        int held = Math.Max(1, shuffled.Count / 10);
        var heldOut = shuffled.Take(held).ToList();
        var train = shuffled.Skip(held).ToList();
        var sft = settings.SftData is not null ? PreferenceDataFile.ReadCompletions(settings.SftData)
                                               : train.Select(p => new CompletionExample(p.Prompt, p.Chosen)).ToList();
        return (sft, train, heldOut);
    }
}
