using System.Diagnostics;
using System.Text.Json.Nodes;
using Microsoft.ML.Dpo.Runtime;
using TorchSharp;

namespace Microsoft.ML.Dpo.Benchmarks;

/// <summary>A named group of measurements, chosen on the command line.</summary>
internal interface IBenchmarkSuite
{
    /// <summary>The command-line name (e.g. <c>generation</c>).</summary>
    string Name { get; }
    /// <summary>One line for the usage text.</summary>
    string Description { get; }
    /// <summary>Runs the suite, printing progress, and returns its results.</summary>
    JsonObject Run(BenchmarkOptions options);
}

/// <summary>Command-line options shared by all suites.</summary>
internal sealed record BenchmarkOptions(string? Output, int Repeats, bool Quick, int? Threads)
{
    public static (BenchmarkOptions Options, List<string> Suites) Parse(string[] args)
    {
        string? output = null;
        int repeats = 3;
        bool quick = false;
        int? threads = null;
        var suites = new List<string>();
        for (int i = 0; i < args.Length; i++)
        {
            string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value.");
            switch (args[i])
            {
                case "--output" or "-o": output = Value(); break;
                case "--repeats":
                    repeats = int.TryParse(Value(), out int r) && r > 0 ? r : throw new ArgumentException("--repeats needs a positive integer.");
                    break;
                case "--quick": quick = true; break;
                case "--threads":
                    threads = int.TryParse(Value(), out int n) && n > 0 ? n : throw new ArgumentException("--threads needs a positive integer.");
                    break;
                default: suites.Add(args[i]); break;
            }
        }
        return (new BenchmarkOptions(output, repeats, quick, threads), suites);
    }
}

/// <summary>Timing helpers: warm-up, repetitions, medians.</summary>
internal static class Measure
{
    /// <summary>Runs <paramref name="action"/> <paramref name="warmup"/> times unmeasured, then <paramref name="repeats"/> times; returns every time in seconds.</summary>
    public static double[] Seconds(Action action, int repeats, int warmup = 1)
    {
        for (int i = 0; i < warmup; i++) action();
        var times = new double[repeats];
        for (int i = 0; i < repeats; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            var sw = Stopwatch.StartNew();
            action();
            times[i] = sw.Elapsed.TotalSeconds;
        }
        return times;
    }

    /// <summary>The median.</summary>
    public static double Median(IReadOnlyCollection<double> values)
    {
        var sorted = values.OrderBy(v => v).ToArray();
        int n = sorted.Length;
        return n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
    }

    public static JsonArray ToJson(IEnumerable<double> values, int digits = 6) => new(values.Select(v => (JsonNode?)Math.Round(v, digits)).ToArray());
}

/// <summary>The machine the numbers come from.</summary>
internal static class MachineInfo
{
    public static JsonObject Collect()
    {
        var runtime = DpoRuntime.Describe();
        return new JsonObject
        {
            ["os"] = System.Runtime.InteropServices.RuntimeInformation.OSDescription,
            ["architecture"] = System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture.ToString(),
            ["dotnet"] = Environment.Version.ToString(),
            ["cores"] = Environment.ProcessorCount,
            ["torchThreads"] = torch.get_num_threads(),
            ["libtorch"] = runtime.LibTorchVersion,
            ["torchSharp"] = runtime.TorchSharpVersion,
            ["microsoftMlDpo"] = runtime.LibraryVersion,
            ["device"] = "cpu",
            ["timestampUtc"] = DateTime.UtcNow.ToString("O"),
        };
    }
}

/// <summary>Finds the <c>shared/</c> folder beside the repository (real model weights), as the tests do.</summary>
internal static class SharedFolder
{
    /// <summary>The path of <paramref name="relative"/> under the shared folder, or null when absent.</summary>
    public static string? Find(string relative)
    {
        if (Environment.GetEnvironmentVariable("MLDPO_SHARED_DIR") is { Length: > 0 } env)
            return Existing(Path.Combine(env, relative));
        foreach (var start in new[] { AppContext.BaseDirectory, Directory.GetCurrentDirectory() })
            for (var dir = new DirectoryInfo(start); dir != null; dir = dir.Parent)
                if (File.Exists(Path.Combine(dir.FullName, "Dpo.sln")))
                    return Existing(Path.GetFullPath(Path.Combine(dir.FullName, "..", "shared", relative)));
        return null;
    }

    static string? Existing(string path) => File.Exists(path) || Directory.Exists(path) ? path : null;
}

/// <summary>
/// A benchmark variant in a fresh child process (this program with an internal verb), so its peak resident memory is its
/// own. The child prints <c>key value</c> lines (<see cref="Report"/>, <see cref="ReportMemory"/>); the parent reads them back.
/// </summary>
internal static class ChildProcess
{
    /// <summary>Runs this program with <paramref name="arguments"/> and returns the child's <c>key value</c> lines; null when it could not start or failed.</summary>
    public static IReadOnlyDictionary<string, double>? Run(params string[] arguments)
    {
        string? self = Environment.ProcessPath;
        if (self is null) return null;
        var start = new ProcessStartInfo(self) { RedirectStandardOutput = true, RedirectStandardError = true };
        if (Path.GetFileNameWithoutExtension(self) == "dotnet") start.ArgumentList.Add(typeof(ChildProcess).Assembly.Location);
        foreach (string argument in arguments) start.ArgumentList.Add(argument);
        using var child = Process.Start(start)!;
        var stderr = child.StandardError.ReadToEndAsync();
        string output = child.StandardOutput.ReadToEnd();
        child.WaitForExit();
        _ = stderr.Result;
        if (child.ExitCode != 0) return null;
        var values = new Dictionary<string, double>();
        foreach (string line in output.Split('\n'))
        {
            var parts = line.Trim().Split(' ');
            if (parts.Length == 2 && double.TryParse(parts[1], System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double value))
                values[parts[0]] = value;
        }
        return values;
    }

    /// <summary>The child side: loads libtorch (one small matmul) and returns the resident memory then, the baseline a variant's peak is measured above.</summary>
    public static long? Baseline()
    {
        using (var warm = torch.ones(8, 8)) warm.matmul(warm).Dispose();
        return ProcessMemory.ResidentBytes();
    }

    /// <summary>The child side: one <c>key value</c> line for the parent.</summary>
    public static void Report(string key, double value) =>
        Console.WriteLine($"{key} {value.ToString("R", System.Globalization.CultureInfo.InvariantCulture)}");

    /// <summary>
    /// The child side: <c>peak-rss-bytes</c> (VmHWM) and, when given, <c>baseline-rss-bytes</c>; false (report nothing) where
    /// Linux's <c>/proc/self/status</c> is absent.
    /// </summary>
    public static bool ReportMemory(long? baselineBytes = null)
    {
        if (ProcessMemory.PeakResidentBytes() is not long peak) return false;
        Report("peak-rss-bytes", peak);
        if (baselineBytes is long baseline) Report("baseline-rss-bytes", baseline);
        return true;
    }
}
