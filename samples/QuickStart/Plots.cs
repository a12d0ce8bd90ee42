using System.Text.Json;

namespace QuickStart;

/// <summary>Line plots (PNG, ScottPlot) of training metrics read from a run's metrics.jsonl.</summary>
internal static class Plots
{
    /// <summary>Reads (step, value) series of the named metrics from metrics.jsonl.</summary>
    public static Dictionary<string, List<(double Step, double Value)>> Read(string metricsFile, params string[] names)
    {
        var series = names.ToDictionary(n => n, _ => new List<(double, double)>());
        foreach (string line in File.ReadLines(metricsFile))
        {
            using var json = JsonDocument.Parse(line);
            double step = json.RootElement.GetProperty("step").GetDouble();
            foreach (string name in names)
                if (json.RootElement.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.Number)
                    series[name].Add((step, value.GetDouble()));
        }
        return series;
    }

    /// <summary>Writes one PNG with a line per run for <paramref name="metric"/>.</summary>
    public static string Save(string path, string metric, IReadOnlyDictionary<string, List<(double Step, double Value)>> runs)
    {
        var plot = new ScottPlot.Plot();
        foreach (var (run, points) in runs)
        {
            if (points.Count == 0) continue;
            var line = plot.Add.Scatter(points.Select(p => p.Step).ToArray(), points.Select(p => p.Value).ToArray());
            line.LegendText = run;
            line.MarkerSize = 3;
        }
        plot.Title(metric);
        plot.XLabel("optimizer step");
        plot.YLabel(metric);
        plot.ShowLegend();
        plot.SavePng(path, 720, 420);
        return path;
    }
}
