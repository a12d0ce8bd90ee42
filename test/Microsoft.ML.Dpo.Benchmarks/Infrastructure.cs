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
