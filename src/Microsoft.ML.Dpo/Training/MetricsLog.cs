using System.Text.Json;

namespace Microsoft.ML.Dpo.Training;

/// <summary>Averages metrics between reports and appends each report as one JSON line to metrics.jsonl.</summary>
internal sealed class MetricsLog : IDisposable
{
    readonly Dictionary<string, (double Sum, int Count)> pending = new();
    readonly StreamWriter? file;

    /// <summary>The file's name in the checkpoint folder.</summary>
    public const string FileName = "metrics.jsonl";

    /// <summary>
    /// Opens <c>metrics.jsonl</c> in <paramref name="directory"/> (nothing when null): a new file for a run from step 0; for a
    /// run resumed at <paramref name="resumedStep"/>, the earlier file cut to its rows up to that step (a killed run may have
    /// logged steps after its last checkpoint, which the resumed run replays), then appended to.
    /// </summary>
    public MetricsLog(string? directory, int resumedStep)
    {
        if (directory is null) return;
        Directory.CreateDirectory(directory);
        string path = Path.Combine(directory, FileName);
        if (resumedStep > 0 && File.Exists(path)) TruncateAfter(path, resumedStep);
        file = new StreamWriter(path, append: resumedStep > 0) { AutoFlush = true };
    }

    /// <summary>Keeps the rows whose step is at most <paramref name="step"/> (and drops a torn last line), replacing the file atomically.</summary>
    static void TruncateAfter(string path, int step)
    {
        var kept = new List<string>();
        foreach (string line in File.ReadLines(path))
        {
            try
            {
                using var row = JsonDocument.Parse(line);
                if (row.RootElement.TryGetProperty("step", out var s) && s.TryGetInt32(out int rowStep) && rowStep <= step) kept.Add(line);
            }
            catch (JsonException) { }   // a line torn by a kill
        }
        string temp = path + ".tmp";
        File.WriteAllLines(temp, kept);
        File.Move(temp, path, overwrite: true);
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
