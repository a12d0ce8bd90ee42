using System.Diagnostics;
using System.Text.Json;
using Microsoft.ML.Dpo.Checkpoints;
using MlDpo.Commands;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Distributed;

/// <summary>
/// Data-parallel training: <c>mpirun -np 2 mldpo dpo …</c> against one process with the same global batch, resuming a
/// 2-rank checkpoint on 1 rank, and what happens when a rank dies or hangs. Every process runs with one libtorch thread.
/// Needs Open MPI's <c>mpirun</c> (CI installs openmpi-bin); without it these tests are skipped, saying so.
/// </summary>
[TestClass]
public sealed class DataParallelTests
{
    static readonly string[] Subjects = ["apples", "rivers", "clouds", "tigers", "pianos", "castles", "rockets", "forests", "owls", "lamps"];

    static string Mpirun()
    {
        foreach (string dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries))
            if (File.Exists(Path.Combine(dir, "mpirun"))) return Path.Combine(dir, "mpirun");
        Assert.Inconclusive("mpirun is not installed (Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev; .ci/run does it), so the MPI tests cannot run.");
        return "";
    }

    /// <summary>A tiny llama over bytes and <paramref name="pairs"/> preference pairs of varied lengths.</summary>
    static (string Model, string Data) Setup(TempDirectory dir, int pairs)
    {
        var error = new StringWriter();
        Assert.AreEqual(0, CliApp.Run(["init", "--preset", "tiny", "--tokenizer", "bytes", "--output", dir.Combine("base")], new StringWriter(), error), error.ToString());
        string data = dir.Combine("pairs.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, pairs).Select(i => JsonSerializer.Serialize(new
        {
            prompt = $"Tell me about {Subjects[i % Subjects.Length]} number {i}.",
            chosen = $"Happy to help! {new string('a', i % 7)} {Subjects[(i * 3) % Subjects.Length]} are lovely.",
            rejected = i % 2 == 0 ? "No." : "Go away, I will not talk about that.",
        })));
        return (dir.Combine("base"), data);
    }

    static string[] Dpo(string model, string data, string output, params string[] more) =>
        ["dpo", "--model", model, "--data", data, "--output", output, "--epochs", "1", "--batch-size", "4", "--learning-rate", "1e-3", "--max-length", "64", "--rpo-alpha", "0", .. more];   // one epoch (the step counts below); plain DPO: the RPO term is a token mean per forward pass (a sharding caveat)

    /// <summary>Starts <c>mldpo</c> in its own process: one rank (no launcher) or <paramref name="ranks"/> under mpirun.</summary>
    static Process Start(int ranks, string[] args, Dictionary<string, string>? environment = null)
    {
        string mldpo = Path.Combine(AppContext.BaseDirectory, "mldpo.dll");
        var start = ranks == 1 ? new ProcessStartInfo("dotnet") : new ProcessStartInfo(Mpirun());
        if (ranks > 1)
            foreach (string a in new[] { "--allow-run-as-root", "--oversubscribe", "-np", ranks.ToString(), "dotnet" }) start.ArgumentList.Add(a);
        start.ArgumentList.Add(mldpo);
        foreach (string a in args) start.ArgumentList.Add(a);
        start.RedirectStandardOutput = start.RedirectStandardError = true;
        start.Environment["OMP_NUM_THREADS"] = "1";
        start.Environment["MKL_NUM_THREADS"] = "1";
        foreach (var (k, v) in environment ?? []) start.Environment[k] = v;
        return Process.Start(start)!;
    }

    sealed class Captured(Process process)
    {
        readonly Task<string> stdout = process.StandardOutput.ReadToEndAsync(), stderr = process.StandardError.ReadToEndAsync();
        public Process Process => process;
        public string Text => stdout.Result + stderr.Result;

        public int Wait(TimeSpan limit)
        {
            if (!process.WaitForExit(limit))
            {
                KillTree(process.Id);
                Assert.Fail($"mldpo did not end within {limit.TotalSeconds} s.");
            }
            process.WaitForExit();
            Console.WriteLine(Text);
            return process.ExitCode;
        }
    }

    static string RunOk(int ranks, string[] args, Dictionary<string, string>? environment = null)
    {
        var run = new Captured(Start(ranks, args, environment));
        int code = run.Wait(TimeSpan.FromSeconds(120));
        Assert.AreEqual(0, code, run.Text);
        return run.Text;
    }

    static double MaxDifference(string a, string b)
    {
        var x = Safetensors.LoadDirectory(a);
        var y = Safetensors.LoadDirectory(b);
        try
        {
            CollectionAssert.AreEquivalent(x.Keys.ToList(), y.Keys.ToList());
            return x.Keys.Max(k => (x[k] - y[k]).abs().max().ToDouble());
        }
        finally
        {
            foreach (var t in x.Values.Concat(y.Values)) t.Dispose();
        }
    }

    [TestMethod]
    [Timeout(180_000)]
    public void TwoRanks_EndWithinOneE5OfOneRank_FullDpo()
    {
        Mpirun();
        using var dir = new TempDirectory();
        var (model, data) = Setup(dir, 40);
        RunOk(1, Dpo(model, data, dir.Combine("one"), "--max-steps", "10"));
        string text = RunOk(2, Dpo(model, data, dir.Combine("two"), "--max-steps", "10"));
        StringAssert.Contains(text, "Data parallel: 2 ranks");
        StringAssert.Contains(text, "Trained 10 steps");
        double moved = MaxDifference(model, dir.Combine("one")), difference = MaxDifference(dir.Combine("one"), dir.Combine("two"));
        Console.WriteLine($"max |weight - start| {moved:E2}, max |2 ranks - 1 rank| {difference:E2}");
        Assert.IsTrue(moved > 1e-3, $"training moved the weights by only {moved}");
        Assert.IsTrue(difference <= 1e-5, $"2-rank weights differ from 1-rank weights by {difference}");
        // Rank 0 alone prints and writes: one summary line, one metrics row (logging every 10 steps), no temporary folder left.
        Assert.AreEqual(1, text.Split('\n').Count(l => l.Contains("Trained 10 steps")), text);
        Assert.AreEqual(1, File.ReadAllLines(dir.Combine("two.checkpoints", "metrics.jsonl")).Length);
        Assert.IsFalse(Directory.EnumerateFileSystemEntries(dir.Path, "*", SearchOption.AllDirectories).Any(p => p.Contains(".tmp-")), "no temporary folder is left");
    }

    [TestMethod]
    [Timeout(180_000)]
    public void TwoRanks_EndWithinOneE5OfOneRank_LoraDpo_WithPrecomputedReference()
    {
        Mpirun();
        using var dir = new TempDirectory();
        var (model, data) = Setup(dir, 40);
        string[] lora = ["--max-steps", "10", "--lora-rank", "4", "--lora-targets", "q,v,o", "--precompute-reference"];
        RunOk(1, Dpo(model, data, dir.Combine("one"), lora));
        // Two ranks, each running its share of 2 examples one at a time: the same global batch of 4.
        RunOk(2, Dpo(model, data, dir.Combine("two"), [.. lora, "--per-rank-batch-size", "1"]));
        double moved = MaxDifference(model, dir.Combine("one")), difference = MaxDifference(dir.Combine("one"), dir.Combine("two"));
        Console.WriteLine($"max |merged weight - start| {moved:E2}, max |2 ranks - 1 rank| {difference:E2}");
        Assert.IsTrue(moved > 1e-4, $"training moved the weights by only {moved}");
        Assert.IsTrue(difference <= 1e-5, $"2-rank LoRA weights differ from 1-rank weights by {difference}");
        // The reference log-probs, computed in shares by the two ranks and gathered, are the single process's bit for bit.
        var one = Directory.GetFiles(dir.Combine("one.checkpoints"), "reference_logps.*.bin").Single();
        var two = Directory.GetFiles(dir.Combine("two.checkpoints"), "reference_logps.*.bin").Single();
        Assert.AreEqual(Path.GetFileName(one), Path.GetFileName(two));
        CollectionAssert.AreEqual(File.ReadAllBytes(one), File.ReadAllBytes(two));
    }

    [TestMethod]
    [Timeout(240_000)]
    public void TwoRankCheckpoint_ResumesOnOneRank_AndContinuesTheTwoRankRun()
    {
        Mpirun();
        using var dir = new TempDirectory();
        var (model, data) = Setup(dir, 80);   // 20 steps
        string[] args = ["--checkpoint-steps", "1", "--logging-steps", "1"];
        var interrupted = new Captured(Start(2, Dpo(model, data, dir.Combine("resumed"), args)));
        WaitForMetricsRows(dir.Combine("resumed.checkpoints", "metrics.jsonl"), 3, interrupted.Process);
        Signal("TERM", RankPids(interrupted.Process.Id)[1]);   // Ctrl+C-like stop of rank 1 only: both stop after the same step
        int code = interrupted.Wait(TimeSpan.FromSeconds(60));
        Assert.AreNotEqual(0, code, "an interrupted run does not succeed");
        var state = JsonDocument.Parse(File.ReadAllText(dir.Combine("resumed.checkpoints", "checkpoint", "trainer_state.json"))).RootElement;
        int step = state.GetProperty("Step").GetInt32();
        Assert.IsTrue(step >= 3 && step < 20, $"checkpoint at step {step}");

        string resumed = RunOk(1, Dpo(model, data, dir.Combine("resumed"), [.. args, "--resume"]));
        StringAssert.Contains(resumed, $"at step {step}.");
        RunOk(2, Dpo(model, data, dir.Combine("uninterrupted"), args));
        double difference = MaxDifference(dir.Combine("uninterrupted"), dir.Combine("resumed"));
        Console.WriteLine($"resumed at step {step}; max |resumed on 1 rank - uninterrupted on 2| {difference:E2}");
        Assert.IsTrue(difference <= 1e-5, $"the resumed run differs from the uninterrupted one by {difference}");
        var steps = File.ReadAllLines(dir.Combine("resumed", "metrics.jsonl")).Select(l => JsonDocument.Parse(l).RootElement.GetProperty("step").GetInt32()).ToList();
        CollectionAssert.AreEqual(Enumerable.Range(1, 20).ToList(), steps, "metrics.jsonl holds each step once");
    }

    [TestMethod]
    [DataRow("sft")]
    [DataRow("dpo")]
    public void OneProcess_PerRankBatchSizeOne_EqualsWholeBatches(string verb)
    {
        // No MPI needed: one rank running each batch of 4 as four weighted passes. SFT's loss is a mean over tokens of
        // varied counts, so weighting the passes by examples instead of tokens would be far off.
        using var dir = new TempDirectory();
        var (model, data) = Setup(dir, 24);
        string sftData = dir.Combine("sft.jsonl");
        File.WriteAllLines(sftData, File.ReadAllLines(data).Select(l => JsonDocument.Parse(l).RootElement)
            .Select(r => JsonSerializer.Serialize(new { prompt = r.GetProperty("prompt").GetString(), completion = r.GetProperty("chosen").GetString() })));
        string[] Args(string output) => verb == "sft"
            ? ["sft", "--model", model, "--data", sftData, "--output", output, "--batch-size", "4", "--learning-rate", "1e-3", "--max-length", "64"]
            : Dpo(model, data, output);
        string[] whole = Args(dir.Combine("whole")), passes = [.. Args(dir.Combine("passes")), "--per-rank-batch-size", "1"];
        foreach (var args in new[] { whole, passes })
        {
            var error = new StringWriter();
            Assert.AreEqual(0, CliApp.Run(args, new StringWriter(), error), error.ToString());
        }
        double moved = MaxDifference(model, dir.Combine("whole")), difference = MaxDifference(dir.Combine("whole"), dir.Combine("passes"));
        Console.WriteLine($"{verb}: max |weight - start| {moved:E2}, max |passes of 1 - whole batches| {difference:E2}");
        Assert.IsTrue(moved > 1e-3, $"training moved the weights by only {moved}");
        Assert.IsTrue(difference <= 1e-5, $"{verb}: passes of one example differ from whole batches by {difference}");
    }

    [TestMethod]
    [Timeout(180_000)]
    public void ADivergingRun_StopsEveryRankAtTheSameStep()
    {
        Mpirun();
        using var dir = new TempDirectory();
        var (model, data) = Setup(dir, 40);
        string[] args = [.. Dpo(model, data, dir.Combine("two"))];
        args[Array.IndexOf(args, "--learning-rate") + 1] = "1e30";
        var run = new Captured(Start(2, args));
        int code = run.Wait(TimeSpan.FromSeconds(120));
        Assert.AreNotEqual(0, code);
        // Both ranks print the error (stderr is kept on every rank); the loss they check is the global one, so the step is the same.
        var errors = run.Text.Split('\n').Where(l => l.Contains("mldpo dpo: error: The ")).Select(l => l[l.IndexOf("mldpo dpo: error:")..].Trim()).ToList();
        Assert.AreEqual(2, errors.Count, run.Text);
        Assert.AreEqual(errors[0], errors[1]);
        StringAssert.Contains(errors[0], "training stopped without applying it");
    }

    [TestMethod]
    [Timeout(180_000)]
    public void KillingOneRank_EndsTheOtherWithAnErrorWithinSixtySeconds()
    {
        Mpirun();
        using var dir = new TempDirectory();
        var (model, data) = Setup(dir, 400);
        var run = new Captured(Start(2, Dpo(model, data, dir.Combine("two"), "--logging-steps", "1")));
        WaitForMetricsRows(dir.Combine("two.checkpoints", "metrics.jsonl"), 2, run.Process);
        var ranks = RankPids(run.Process.Id);
        var clock = Stopwatch.StartNew();
        Signal("KILL", ranks[1]);
        int code = run.Wait(TimeSpan.FromSeconds(60));
        Console.WriteLine($"mpirun ended {clock.Elapsed.TotalSeconds:F1} s after rank 1 was killed, exit code {code}");
        Assert.AreNotEqual(0, code);
        Assert.IsFalse(Alive(ranks[0]), "rank 0 is still running");
    }

    [TestMethod]
    [Timeout(180_000)]
    public void AHangingRank_MakesTheOtherGiveUpAfterTheTimeout()
    {
        Mpirun();
        using var dir = new TempDirectory();
        var (model, data) = Setup(dir, 400);
        var run = new Captured(Start(2, Dpo(model, data, dir.Combine("two"), "--logging-steps", "1"),
            new Dictionary<string, string> { ["MLDPO_DISTRIBUTED_TIMEOUT"] = "5" }));
        WaitForMetricsRows(dir.Combine("two.checkpoints", "metrics.jsonl"), 2, run.Process);
        var ranks = RankPids(run.Process.Id);
        Signal("STOP", ranks[1]);   // alive but silent: mpirun sees nothing wrong, only the collective's watchdog can
        try
        {
            int code = run.Wait(TimeSpan.FromSeconds(60));
            Assert.AreNotEqual(0, code);
            StringAssert.Contains(run.Text, "rank 0 of 2 waited more than 5 s");
        }
        finally
        {
            foreach (int pid in ranks.Where(Alive)) Signal("KILL", pid);
        }
    }

    static void WaitForMetricsRows(string path, int rows, Process run)
    {
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < TimeSpan.FromSeconds(90))
        {
            if (run.HasExited) Assert.Fail($"mldpo ended (code {run.ExitCode}) before logging {rows} steps.");
            try { if (File.Exists(path) && File.ReadAllLines(path).Length >= rows) return; } catch (IOException) { }
            Thread.Sleep(20);
        }
        KillTree(run.Id);
        Assert.Fail($"no {rows} metrics rows in {path} after 90 s.");
    }

    /// <summary>The rank processes mpirun started (its children), by rank.</summary>
    static int[] RankPids(int mpirun)
    {
        var ranks = new SortedDictionary<int, int>();
        foreach (string proc in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(proc), out int pid)) continue;
            try
            {
                string stat = File.ReadAllText(Path.Combine(proc, "stat"));
                int parent = int.Parse(stat[(stat.LastIndexOf(')') + 2)..].Split(' ')[1]);
                if (parent != mpirun) continue;
                string rank = File.ReadAllText(Path.Combine(proc, "environ")).Split('\0').FirstOrDefault(e => e.StartsWith("OMPI_COMM_WORLD_RANK=")) ?? "";
                if (rank.Length > 0) ranks[int.Parse(rank["OMPI_COMM_WORLD_RANK=".Length..])] = pid;
            }
            catch (IOException) { }
        }
        Assert.AreEqual(2, ranks.Count, "mpirun's two rank processes");
        return [.. ranks.Values];
    }

    static void Signal(string signal, int pid)
    {
        using var kill = Process.Start(new ProcessStartInfo("kill", $"-{signal} {pid}"))!;
        kill.WaitForExit();
    }

    static bool Alive(int pid) => Directory.Exists($"/proc/{pid}") && !File.ReadAllText($"/proc/{pid}/stat").Contains(") Z ");

    static void KillTree(int pid)
    {
        try { Process.GetProcessById(pid).Kill(entireProcessTree: true); } catch (ArgumentException) { } catch (InvalidOperationException) { }
    }
}
