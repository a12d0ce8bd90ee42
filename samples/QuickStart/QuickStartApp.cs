using System.Text.Json;
using Microsoft.ML;
using Microsoft.ML.Dpo;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Generation;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tokenization;
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

/// <summary>What the quick start measured.</summary>
public sealed record QuickStartSummary(
    double SftHeldOutPreferenceForChosen, double DpoHeldOutPreferenceAccuracy, double DpoWinRateOverSft,
    double? LoraDpoHeldOutPreferenceAccuracy, double? LoraDpoWinRateOverSft, IReadOnlyList<string> Plots, double Seconds);

/// <summary>SFT → DPO → evaluation, with live progress and the evidence (plots, numbers, examples) written to disk.</summary>
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

        // 1. The starting model: yours, or the "tiny" preset over a byte-level tokenizer (107K parameters, random weights).
        using var baseModel = demo
            ? ModelPresets.CreateModel("llama", "tiny", TextTokenizer.CreateByteLevel(Path.Combine(output, "tokenizer")), settings.Seed)
            : LanguageModel.Load(settings.Model!);
        AnsiConsole.MarkupLine($"[bold]Base model[/]: {Markup.Escape(settings.Model ?? "tiny llama preset, byte-level tokenizer, random weights")} " +
                               $"({ModelPresets.CountParameters(baseModel.Network):N0} parameters)");

        // 2. Data: the built-in task, or your files (10% of your pairs held out).
        var (sftData, trainPairs, heldOut) = LoadData(ml, settings);
        var heldOutPrompts = heldOut.Select(p => p.Prompt).Distinct().ToList();
        AnsiConsole.MarkupLine($"[bold]Data[/]: {trainPairs.Count} training pairs, {heldOut.Count} held-out pairs ({heldOutPrompts.Count} prompts never seen in training)");

        // 3. SFT.
        using var sft = display.Run("SFT", () => ml.Alignment().Trainers.Sft(new SftTrainer.Options
        {
            BaseModel = baseModel, Epochs = demo ? (settings.Quick ? 8 : 20) : 1, BatchSize = 8, LearningRate = demo ? 3e-3 : 2e-5,
            WarmupSteps = 5, MaxLength = 128, MaxPromptLength = 96, Seed = settings.Seed, LoggingInterval = 5,
            CheckpointDirectory = Path.Combine(output, "sft-run"), Progress = display.Progress, Log = display.Log,
        }).Fit(ml.Data.LoadFromCompletions(sftData)));

        // 4. DPO against the frozen SFT model.
        var pairsView = ml.Data.LoadFromPreferencePairs(trainPairs);
        using var dpo = display.Run("DPO", () => ml.Alignment().Trainers.Dpo(new DpoTrainer.Options
        {
            BaseModel = sft.Model, Beta = 0.1, Epochs = demo ? int.Parse(Environment.GetEnvironmentVariable("XE") ?? "3") : 1, BatchSize = 8, LearningRate = demo ? double.Parse(Environment.GetEnvironmentVariable("XLR") ?? "1e-4") : 1e-6,
            MaxLength = 128, MaxPromptLength = 96, Seed = settings.Seed, LoggingInterval = 2,
            CheckpointDirectory = Path.Combine(output, "dpo-run"), Progress = display.Progress, Log = display.Log,
        }).Fit(pairsView));

        // 5. Evidence: held-out preference accuracy, judged win rate, plots, examples.
        var evaluation = PreferenceEvaluator.Evaluate(dpo.Model, sft.Model, heldOut, beta: 0.1);
        double sftPrefersChosen = heldOut.Average(p => sft.LogProbability(p.Prompt, p.Chosen) > sft.LogProbability(p.Prompt, p.Rejected) ? 1.0 : 0.0);
        var judge = StyleJudge.Train(ml, trainPairs);
        var generation = new GenerationOptions { MaxNewTokens = 32, StopStrings = ["\n"] };
        var sftAnswers = sft.Model.CreateGenerator().Generate(heldOutPrompts, generation);
        var dpoAnswers = dpo.Model.CreateGenerator().Generate(heldOutPrompts, generation);
        double winRate = judge.WinRate(heldOutPrompts, dpoAnswers, sftAnswers);

        var plots = new List<string>();
        string plotDir = Directory.CreateDirectory(Path.Combine(output, "plots")).FullName;
        var dpoMetrics = Plots.Read(Path.Combine(output, "dpo-run", "metrics.jsonl"), "loss", "rewards/margins", "rewards/accuracies");
        foreach (string metric in dpoMetrics.Keys)
            plots.Add(Plots.Save(Path.Combine(plotDir, "dpo-" + metric.Replace('/', '-') + ".png"), metric, new Dictionary<string, List<(double, double)>> { ["DPO"] = dpoMetrics[metric] }));
        plots.Add(Plots.Save(Path.Combine(plotDir, "sft-loss.png"), "loss", Plots.Read(Path.Combine(output, "sft-run", "metrics.jsonl"), "loss").ToDictionary(kv => "SFT", kv => kv.Value)));

        var table = new Table().AddColumns("held-out prompt", "SFT answer", "DPO answer");
        foreach (int i in new[] { 0, heldOutPrompts.Count / 2, heldOutPrompts.Count - 1 })
            table.AddRow(Markup.Escape(heldOutPrompts[i].Trim()), Markup.Escape(sftAnswers[i]), Markup.Escape(dpoAnswers[i]));
        AnsiConsole.Write(table);

        var summary = new QuickStartSummary(sftPrefersChosen, evaluation.PreferenceAccuracy, winRate, null, null, plots, clock.Elapsed.TotalSeconds);
        File.WriteAllText(Path.Combine(output, "summary.json"), JsonSerializer.Serialize(summary, new JsonSerializerOptions { WriteIndented = true }));
        AnsiConsole.MarkupLine($"[bold]Held-out preference for the chosen answer[/]: SFT model {sftPrefersChosen:P0} (log-likelihood), " +
                               $"DPO model {evaluation.PreferenceAccuracy:P0} (implicit reward, mean margin {evaluation.MeanMargin:F2})");
        AnsiConsole.MarkupLine($"[bold]Judged win rate of DPO over SFT[/] on {heldOutPrompts.Count} held-out prompts: {winRate:P0}");
        AnsiConsole.MarkupLine($"Plots: {Markup.Escape(plotDir)}; summary: {Markup.Escape(Path.Combine(output, "summary.json"))}; {clock.Elapsed.TotalSeconds:F0} s");
        return summary;
    }

    static (List<CompletionExample> Sft, List<PreferencePair> Train, List<PreferencePair> HeldOut) LoadData(MLContext ml, QuickStartSettings settings)
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
