using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.ML.Dpo.Benchmarks;

// Usage: dotnet run -c Release --project test/Microsoft.ML.Dpo.Benchmarks -- <suite>... [--output FILE] [--repeats N] [--threads N] [--quick]
// Each suite returns a JSON object; the results of all suites run, with the machine's description, go to --output.

var suites = new IBenchmarkSuite[]
{
    new GenerationSuite(),
    new DpoSuite(),
    new MoeSuite(),
    new TokenizerSuite(),
    new ChatTemplateSuite(),
    new DistributedSuite(),
    new RlSuite(),
    new TransformSuite(),
    new PrecisionSuite(),
    new PackingSuite(),
    new ChunkedSuite(),
    new ScaleSuite(),
    // Further suites (dpo, lora) register here.
}.ToDictionary(s => s.Name, StringComparer.OrdinalIgnoreCase);

// Internal: timed DPO steps in this process's world, 1 process or an MPI rank (DistributedSuite starts it).
if (args.Length == 2 && args[0] == "distributed-worker") return DistributedSuite.RunWorker(int.Parse(args[1]));
// Internal: one DPO step variant in a fresh process, for its peak memory (DpoSuite starts it).
if (args.Length == 2 && args[0] == "dpo-variant") return DpoSuite.RunVariantAndReportPeak(args[1]);
// Internal: DPO steps of one mixed-precision kind in a fresh process, for its peak memory (PrecisionSuite starts it).
if (args.Length == 2 && args[0] == "precision-variant") return PrecisionSuite.RunVariantAndReportPeak(args[1]);
// Internal: DPO steps with chunked log-probs at a chunk size, or "off", for peak memory and step time (ChunkedSuite starts it).
if (args.Length == 2 && args[0] == "chunked-variant") return ChunkedSuite.RunVariant(args[1]);
// Internal: one DPO variant at a 0.5B/1B shape, for its peak memory and interleaved step/matmul times (ScaleSuite starts it).
if (args.Length == 2 && args[0] == "scale-variant") return ScaleSuite.RunVariant(args[1]);
// Internal: decoding of a 0.5B/1B shape against the memory bandwidth (ScaleSuite starts it).
if (args.Length == 2 && args[0] == "scale-decode") return ScaleSuite.RunDecode(args[1]);
// Internal: save a random model of a 0.5B/1B shape, or load it and report the peak memory (ScaleSuite starts it).
if (args.Length == 2 && args[0] == "scale-load") return ScaleSuite.RunLoad(args[1]);
// Internal: one DPO step on the MoE benchmark model or its dense twin, for its peak memory (MoeSuite starts it).
if (args.Length == 2 && args[0] == "moe-dpo-step") return MoeSuite.RunDpoStepAndReportPeak(args[1]);

BenchmarkOptions options;
List<string> chosen;
try
{
    (options, chosen) = BenchmarkOptions.Parse(args);
}
catch (ArgumentException e)
{
    Console.Error.WriteLine(e.Message);
    PrintUsage(suites.Values);
    return 2;
}
if (chosen.Count == 0 || chosen.Contains("--help") || chosen.Contains("-h"))
{
    PrintUsage(suites.Values);
    return chosen.Count == 0 ? 2 : 0;
}
if (chosen.Contains("all", StringComparer.OrdinalIgnoreCase)) chosen = suites.Keys.ToList();
foreach (var name in chosen.Where(n => !suites.ContainsKey(n)))
{
    Console.Error.WriteLine($"Unknown suite '{name}'.");
    PrintUsage(suites.Values);
    return 2;
}

if (options.Threads is int threads) TorchSharp.torch.set_num_threads(threads);
var machine = MachineInfo.Collect();
Console.WriteLine($"machine: {machine.ToJsonString()}");
var results = new JsonObject { ["machine"] = machine, ["repeats"] = options.Repeats, ["quick"] = options.Quick, ["command"] = "dotnet run -c Release --project test/Microsoft.ML.Dpo.Benchmarks -- " + string.Join(" ", args) };
var suiteResults = new JsonObject();
foreach (var name in chosen)
{
    var suite = suites[name];
    Console.WriteLine($"== {suite.Name}: {suite.Description}");
    suiteResults[suite.Name] = suite.Run(options);
}
results["suites"] = suiteResults;

string json = results.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
if (options.Output is { } output)
{
    Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(output))!);
    File.WriteAllText(output, json);
    Console.WriteLine($"wrote {Path.GetFullPath(output)}");
}
else Console.WriteLine(json);
return 0;

static void PrintUsage(IEnumerable<IBenchmarkSuite> suites)
{
    Console.Error.WriteLine("usage: Microsoft.ML.Dpo.Benchmarks <suite>... [--output FILE] [--repeats N] [--threads N] [--quick]");
    Console.Error.WriteLine("suites (or 'all'):");
    foreach (var s in suites) Console.Error.WriteLine($"  {s.Name,-12} {s.Description}");
}
