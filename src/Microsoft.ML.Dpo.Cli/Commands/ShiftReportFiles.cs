using System.Text;
using Microsoft.ML.Dpo.Analysis;

namespace MlDpo.Commands;

/// <summary>
/// Writes a <see cref="TokenShiftReport"/> as its three files: <c>NAME.json</c> (everything), <c>NAME.html</c> (the answers with
/// shifted tokens highlighted) and <c>NAME.png</c> (ScottPlot: the share of each kind at each answer position). Shared as source
/// with the samples. Each file is written to a temporary sibling and renamed into place.
/// </summary>
internal static class ShiftReportFiles
{
    /// <summary>Writes the files beside <paramref name="jsonPath"/>; returns the paths written.</summary>
    public static IReadOnlyList<string> Write(TokenShiftReport report, string jsonPath, string title)
    {
        string json = Path.GetFullPath(jsonPath);
        string html = Path.ChangeExtension(json, ".html"), png = Path.ChangeExtension(json, ".png");
        Directory.CreateDirectory(Path.GetDirectoryName(json)!);
        Atomically(json, tmp => File.WriteAllText(tmp, report.ToJson(), Encoding.UTF8));
        Atomically(html, tmp => File.WriteAllText(tmp, report.ToHtml(title), Encoding.UTF8));
        Atomically(png, tmp => Plot(report, title).SavePng(tmp, 720, 420));
        return [json, html, png];
    }

    /// <summary>The share of unshifted, marginal and shifted tokens at each answer position (percent).</summary>
    static ScottPlot.Plot Plot(TokenShiftReport report, string title)
    {
        var plot = new ScottPlot.Plot();
        double[] x = Enumerable.Range(0, report.SharesAtPosition.Count).Select(t => (double)t).ToArray();
        foreach (var (name, select) in new (string, Func<TokenShiftShares, double>)[] { ("unshifted", s => s.Unshifted), ("marginal", s => s.Marginal), ("shifted", s => s.Shifted) })
        {
            if (x.Length == 0) break;
            var line = plot.Add.Scatter(x, report.SharesAtPosition.Select(s => 100 * select(s)).ToArray());
            line.LegendText = name;
            line.MarkerSize = 3;
        }
        plot.Title($"{title}: {100 * report.Shifted:F1} % shifted, {100 * report.Marginal:F1} % marginal");
        plot.XLabel("answer position (tokens)");
        plot.YLabel("% of answers");
        plot.Axes.SetLimitsY(0, 100);
        plot.ShowLegend();
        return plot;
    }

    static void Atomically(string path, Action<string> write)
    {
        string tmp = path + ".tmp-" + Guid.NewGuid().ToString("N")[..8] + Path.GetExtension(path);
        try
        {
            write(tmp);
            File.Move(tmp, path, overwrite: true);
        }
        finally
        {
            if (File.Exists(tmp)) File.Delete(tmp);
        }
    }
}
