using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Distributed;
using Microsoft.ML.Dpo.Losses;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Benchmarks;

/// <summary>
/// Data-parallel scaling: the same DPO step (22.9M Llama, a global batch of 4 pairs of 256 tokens, precomputed reference)
/// on 1 process and on 2 MPI ranks (2 pairs each), one libtorch thread per process. Scaling efficiency = t₁ / (2 · t₂);
/// the all-reduce share is the time of the gradient all-reduce (waiting for the slower rank included) over the 2-rank step.
/// Each configuration runs in fresh processes (this program's <c>distributed-worker</c> mode, under <c>mpirun -np 2</c> for two ranks).
/// </summary>
internal sealed class DistributedSuite : IBenchmarkSuite
{
    const int SequenceLength = 256, PromptLength = 64, GlobalPairs = 4;

    public string Name => "distributed";
    public string Description => "data parallel: 2 MPI ranks vs 1 process (1 thread each), scaling efficiency and all-reduce share of a step";

    public JsonObject Run(BenchmarkOptions options)
    {
        string? mpirun = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Select(d => Path.Combine(d, "mpirun")).FirstOrDefault(File.Exists);
        if (mpirun is null) return new JsonObject { ["skipped"] = "mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev)" };
        int steps = options.Quick ? 2 : options.Repeats + 2;
        var one = Worker(null, steps);
        var two = Worker(mpirun, steps);
        double t1 = (double)one["stepSeconds"]!, t2 = (double)two["stepSeconds"]!;
        double efficiency = t1 / (2 * t2);
        double cpuRatio = (double)two["cpuSecondsPerStepAllRanks"]! / (double)one["cpuSecondsPerStepAllRanks"]!;
        Console.WriteLine($"  1 process: {t1:F3} s/step; 2 ranks: {t2:F3} s/step (all-reduce {(double)two["allReduceSeconds"]!:F3} s); " +
                          $"scaling efficiency {efficiency:F2}, all-reduce share {(double)two["allReduceShare"]!:F2}; CPU seconds per step, 2 ranks ÷ 1 process: {cpuRatio:F2}");
        return new JsonObject
        {
            ["globalPairs"] = GlobalPairs, ["sequenceLength"] = SequenceLength, ["threadsPerProcess"] = 1,
            ["oneProcess"] = one, ["twoRanks"] = two, ["scalingEfficiency"] = Math.Round(efficiency, 3),
            ["cpuSecondsRatioTwoRanksToOne"] = Math.Round(cpuRatio, 3),
        };
    }

    static JsonObject Worker(string? mpirun, int steps)
    {
        string self = typeof(DistributedSuite).Assembly.Location;
        var start = new ProcessStartInfo(mpirun ?? "dotnet") { RedirectStandardOutput = true };
        // --bind-to none: on a machine shared with other jobs, pinning each rank to one core keeps it off a less busy one.
        if (mpirun is not null) foreach (string a in new[] { "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", "2", "dotnet" }) start.ArgumentList.Add(a);
        foreach (string a in new[] { self, "distributed-worker", steps.ToString() }) start.ArgumentList.Add(a);
        start.Environment["OMP_NUM_THREADS"] = "1";
        start.Environment["MKL_NUM_THREADS"] = "1";
        using var process = Process.Start(start)!;
        string output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        // Under mpirun a rank's stdout may be a terminal, and .NET may then write terminal escapes before the line.
        string? line = output.Split('\n').FirstOrDefault(l => l.Contains("RESULT {", StringComparison.Ordinal));
        Console.WriteLine($"  {(mpirun is null ? "1 process" : "2 ranks")}: {line?.Trim()}");
        if (process.ExitCode != 0 || line is null) throw new InvalidOperationException($"distributed worker failed (exit {process.ExitCode}):\n{output}");
        return JsonNode.Parse(line[(line.IndexOf("RESULT {", StringComparison.Ordinal) + "RESULT ".Length)..])!.AsObject();
    }

    /// <summary>The worker: times <paramref name="steps"/> DPO steps (after one warm-up) in this world; rank 0 prints the result.</summary>
    internal static int RunWorker(int steps)
    {
        torch.set_num_threads(1);
        var world = DistributedWorld.Current;
        var config = GenerationSuite.Llama21M();
        manual_seed(7);
        using var policy = CausalLM.Create(config);
        long parameters = policy.parameters().Sum(p => p.numel());
        var random = new Random(3);
        int[] Ids(int n) => Enumerable.Range(0, n).Select(_ => random.Next(3, config.VocabSize)).ToArray();
        var examples = Enumerable.Range(0, GlobalPairs).Select(i => new TokenizedPreference(Ids(PromptLength), Ids(SequenceLength - PromptLength), Ids(SequenceLength - PromptLength), i, i)).ToList();
        var reference = ReferenceLogProbs.Precomputed.Compute(policy, examples, GlobalPairs, padId: 0, cacheDirectory: null, log: null, CancellationToken.None);
        var objective = new DpoObjective(policy, reference, new PreferenceLossOptions(), new DpoStepOptions(), padId: 0);
        var trainable = policy.parameters().ToList();
        using var optimizer = optim.AdamW(trainable, lr: 1e-5);
        var parallel = DataParallel<TokenizedPreference>.For(new TrainingOptions { BatchSize = GlobalPairs }, world, objective, null);
        var stepTimes = new List<double>();
        var cpu = TimeSpan.Zero;   // this process's CPU time over the measured steps (a shared machine slows wall time, not this)
        var reduceTimes = new List<double>();
        for (int s = 0; s <= steps; s++)
        {
            world.Barrier();
            var clock = Stopwatch.StartNew();
            var cpuBefore = Process.GetCurrentProcess().TotalProcessorTime;
            if (parallel is null)
            {
                using var scope = NewDisposeScope();
                objective.Compute(examples).Loss.backward();
            }
            else parallel.Backward(objective, examples, 1, false);
            var reduce = Stopwatch.StartNew();
            parallel?.SyncGradients(trainable);
            reduce.Stop();
            optimizer.step();
            optimizer.zero_grad();
            if (s == 0) continue;   // warm-up
            cpu += Process.GetCurrentProcess().TotalProcessorTime - cpuBefore;
            stepTimes.Add(clock.Elapsed.TotalSeconds);
            reduceTimes.Add(reduce.Elapsed.TotalSeconds);
        }
        var cpuSeconds = new[] { cpu.TotalSeconds };
        world.AllReduceSum(cpuSeconds);   // all ranks together
        if (world.IsMain)
        {
            double step = Measure.Median(stepTimes), allReduce = Measure.Median(reduceTimes);
            Console.WriteLine("RESULT " + JsonSerializer.Serialize(new
            {
                ranks = world.Size, parameters, steps, stepSeconds = Math.Round(step, 4), allReduceSeconds = Math.Round(allReduce, 4),
                allReduceShare = Math.Round(allReduce / step, 3), backend = world.Backend,
                gradientMiB = Math.Round(parameters * 4 / 1048576.0, 1),
                cpuSecondsPerStepAllRanks = Math.Round(cpuSeconds[0] / steps, 3),
            }));
        }
        world.Finish();
        return 0;
    }
}
