using System.Text.Json;

namespace Microsoft.ML.Dpo.Training;

/// <summary>Averages metrics between reports and appends each report as one JSON line to metrics.jsonl.</summary>
internal sealed class MetricsLog : IDisposable
{
    readonly Dictionary<string, (double Sum, int Count)> pending = new();
    readonly StreamWriter? file;

    public MetricsLog(string? directory, bool append)
    {
        if (directory is null) return;
        Directory.CreateDirectory(directory);
        file = new StreamWriter(Path.Combine(directory, "metrics.jsonl"), append) { AutoFlush = true };
    }

    /// <summary>The metrics file's path, or null when metrics are not written.</summary>
    public string? FilePath => (file?.BaseStream as FileStream)?.Name;

    public void Add(string name, double value)
    {
        pending.TryGetValue(name, out var acc);
        pending[name] = (acc.Sum + value, acc.Count + 1);
    }

    public void Add(IReadOnlyDictionary<string, double> metrics)
    {
        foreach (var (name, value) in metrics) Add(name, value);
    }

    /// <summary>The averages since the last report, written to the file, then reset.</summary>
    public IReadOnlyDictionary<string, double> Flush(int step, double epoch)
    {
        var means = new SortedDictionary<string, double>(StringComparer.Ordinal);
        foreach (var (name, acc) in pending) means[name] = acc.Sum / acc.Count;
        pending.Clear();
        if (file != null)
        {
            var line = new Dictionary<string, object> { ["step"] = step, ["epoch"] = Math.Round(epoch, 4) };
            foreach (var (name, value) in means) line[name] = double.IsFinite(value) ? value : value.ToString(System.Globalization.CultureInfo.InvariantCulture);
            file.WriteLine(JsonSerializer.Serialize(line));
        }
        return means;
    }

    public void Dispose() => file?.Dispose();
}
