using Microsoft.ML.Dpo.Runtime;
using Microsoft.ML.Dpo.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Training;

/// <summary>
/// <see cref="AdamWOptimizer"/>: the same bits as TorchSharp's AdamW, step after step, with each parameter's temporaries
/// freed before the next parameter's update (TorchSharp keeps all of them until the step ends).
/// </summary>
[TestClass]
public sealed class AdamWOptimizerTests
{
    static List<TorchSharp.Modules.Parameter> Parameters(int count, long size, int seed)
    {
        manual_seed(seed);
        return Enumerable.Range(0, count).Select(_ => new TorchSharp.Modules.Parameter(randn(size))).ToList();
    }

    [TestMethod]
    public void StepsAreBitwiseThoseOfTorchSharpsAdamW()
    {
        var ours = Parameters(3, 1000, 1);
        var theirs = Parameters(3, 1000, 1);
        using var a = new AdamWOptimizer(ours, 1e-2, 0.1);
        using var b = optim.AdamW(theirs, lr: 1e-2, weight_decay: 0.1);
        for (int step = 0; step < 4; step++)
        {
            manual_seed(100 + step);
            for (int i = 0; i < ours.Count; i++)
            {
                using var grad = randn(1000);
                ours[i].grad = grad.clone();
                theirs[i].grad = grad.clone();
            }
            if (step == 2) { ours[1].grad = null; theirs[1].grad = null; }   // a parameter without a gradient is skipped
            foreach (var g in a.ParamGroups) g.LearningRate = 1e-2 / (step + 1);
            foreach (var g in b.ParamGroups) g.LearningRate = 1e-2 / (step + 1);
            a.step();
            b.step();
            for (int i = 0; i < ours.Count; i++)
                Assert.IsTrue(ours[i].eq(theirs[i]).all().item<bool>(), $"parameter {i} differs after step {step + 1}");
        }
        Assert.IsFalse(ours[0].eq(Parameters(3, 1000, 1)[0]).all().item<bool>(), "the steps should move the weights");
    }

    [TestMethod]
    public void OneParametersTemporariesAtATime()
    {
        if (!File.Exists("/proc/self/clear_refs")) Assert.Inconclusive("needs Linux's /proc/self/clear_refs to reset the peak RSS");
        Assert.IsTrue(ProcessMemory.ReleaseFreedBlocks());                       // freed blocks leave the RSS at once
        const int count = 8;
        const long size = 8L << 20;                                             // 8 parameters of 32 MiB
        long Peak(Func<IEnumerable<TorchSharp.Modules.Parameter>, optim.Optimizer> create)
        {
            var parameters = Parameters(count, size, 2);
            foreach (var p in parameters) p.grad = ones(size);
            using var optimizer = create(parameters);
            optimizer.step();                                                   // the AdamW state is allocated at construction
            GC.Collect();
            long before = ProcessMemory.ResidentBytes()!.Value;
            File.WriteAllText("/proc/self/clear_refs", "5");                   // VmHWM := VmRSS
            optimizer.step();
            long rise = ProcessMemory.PeakResidentBytes()!.Value - before;
            foreach (var p in parameters) { p.grad = null; p.Dispose(); }
            return rise;
        }
        long ours = Peak(p => new AdamWOptimizer(p, 1e-3, 0.01));
        long theirs = Peak(p => optim.AdamW(p, lr: 1e-3, weight_decay: 0.01));
        double mib = 1048576.0, parameterBytes = 4.0 * size;
        Assert.IsTrue(theirs > 0.75 * count * 2 * parameterBytes, $"TorchSharp's AdamW was expected to hold 2 temporaries per parameter until the end; its peak rose {theirs / mib:F0} MiB");
        Assert.IsTrue(ours < 3 * parameterBytes, $"one parameter's two temporaries at a time: the peak rose {ours / mib:F0} MiB (TorchSharp's: {theirs / mib:F0} MiB)");
    }
}
