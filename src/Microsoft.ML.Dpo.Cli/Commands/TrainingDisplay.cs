using System.Globalization;
using Microsoft.ML.Dpo.Training;
using Spectre.Console;

namespace MlDpo.Commands;

/// <summary>
/// Shows training progress: a Spectre.Console progress bar (step, loss, reward accuracy, tokens/s, MFU or FLOP/s, peak memory, ETA) on an interactive terminal,
/// plain log lines (one per logging step) otherwise.
/// </summary>
internal sealed class TrainingDisplay(TextWriter output, bool progressBar) : IProgress<TrainingProgress>
{
    ProgressTask? task;

    /// <summary>Receives the trainers' log lines.</summary>
    public void Log(string line)
    {
        if (!progressBar) output.WriteLine(line);
        else if (!line.StartsWith("step ", StringComparison.Ordinal)) AnsiConsole.MarkupLine(Markup.Escape(line));   // steps are on the bar
    }

    /// <summary>The progress sink for <see cref="TrainingOptions.Progress"/> (null in plain mode: the log lines say it all).</summary>
    public IProgress<TrainingProgress>? Progress => progressBar ? this : null;

    /// <summary>Runs <paramref name="train"/>, inside a live progress bar when enabled.</summary>
    public T Run<T>(string title, Func<T> train)
    {
        if (!progressBar) return train();
        T result = default!;
        AnsiConsole.Progress()
            .AutoClear(false)
            .HideCompleted(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new SpinnerColumn())
            .Start(context =>
            {
                task = context.AddTask(Markup.Escape($"{title}: preparing"), maxValue: 1);
                result = train();
                task.Value = task.MaxValue;
            });
        return result;
    }

    void IProgress<TrainingProgress>.Report(TrainingProgress value)
    {
        if (task is null) return;
        task.MaxValue = Math.Max(1, value.TotalSteps);
        task.Value = value.Step;
        var text = new System.Text.StringBuilder().Append(CultureInfo.InvariantCulture, $"step {value.Step}/{value.TotalSteps}");
        if (value.Metrics.TryGetValue("loss", out double loss)) text.Append(CultureInfo.InvariantCulture, $"  loss {loss:F4}");
        if (value.Metrics.TryGetValue("rewards/accuracies", out double accuracy)) text.Append(CultureInfo.InvariantCulture, $"  acc {accuracy:P0}");
        if (value.Metrics.TryGetValue("tokens_per_second", out double tokens)) text.Append(CultureInfo.InvariantCulture, $"  {tokens:F0} tok/s");
        if (value.Metrics.TryGetValue("mfu", out double mfu)) text.Append(CultureInfo.InvariantCulture, $"  MFU {mfu:P1}");
        else if (value.Metrics.TryGetValue("flops_per_second", out double flops)) text.Append(CultureInfo.InvariantCulture, $"  {flops / 1e9:F1} GFLOP/s");
        if (value.Metrics.TryGetValue("peak_rss_mib", out double rss)) text.Append(CultureInfo.InvariantCulture, $"  peak {rss / 1024:F1} GiB");
        if (value.EstimatedRemaining is { } eta) text.Append(CultureInfo.InvariantCulture, $"  eta {eta:hh\\:mm\\:ss}");
        task.Description = Markup.Escape(text.ToString());
    }
}
