using Microsoft.ML.Dpo.Runtime;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Runtime;

/// <summary>
/// <see cref="ProcessMemory.ReleaseFreedBlocks"/> (TrainingOptions.ReleaseFreedMemory): on Linux with glibc, tensors of a few
/// MiB, the size of a training step's activations, give their memory back to the system when they are freed.
/// </summary>
[TestClass]
public sealed class ProcessMemoryTests
{
    [TestMethod]
    public void FreedTensorsOfAFewMiBLeaveTheResidentMemory()
    {
        if (!OperatingSystem.IsLinux()) Assert.Inconclusive("glibc's malloc and /proc/self/status are Linux's.");
        Assert.IsTrue(ProcessMemory.ReleaseFreedBlocks(), "mallopt should be found in Debian's glibc");
        Assert.IsTrue(ProcessMemory.ReleaseFreedBlocks(), "a second call is a no-op that still reports the setting in force");

        // Under glibc's default, freeing a mapped 32 MiB block raises the mapping threshold to 32 MiB, and blocks of 3 MiB
        // would then stay in the heap when freed; with the setting in force the threshold stays at 1 MiB.
        full(8L << 20, 1f).Dispose();
        const int count = 160, elements = 3 << 18;                               // 160 tensors of 3 MiB: 480 MiB
        // Earlier tests' tensors freed by finalizers while this measures would lower the RSS under it: free them first.
        for (int i = 0; i < 2; i++) { GC.Collect(); GC.WaitForPendingFinalizers(); }
        long before = ProcessMemory.ResidentBytes()!.Value;
        var tensors = new List<Tensor>();
        for (int i = 0; i < count; i++) tensors.Add(full(elements, (float)i));    // written, so resident
        long held = ProcessMemory.ResidentBytes()!.Value;
        foreach (var t in tensors) t.Dispose();
        tensors.Clear();
        long after = ProcessMemory.ResidentBytes()!.Value;

        double allocated = 4.0 * count * elements;
        // glibc serves a request from free space its heaps already hold before it maps a block: in a process whose heaps grew
        // before the setting (earlier tests in the same run), the tensors may come from resident memory, and nothing can be seen.
        if (held - before < 0.9 * allocated)
            Assert.Inconclusive($"the tensors came from memory already resident ({(held - before) / 1048576.0:F0} MiB of {allocated / 1048576.0:F0} MiB new); run this test alone");
        Assert.IsTrue(held - after > 0.9 * allocated, $"freed, they should leave: RSS fell {(held - after) / 1048576.0:F0} MiB of {allocated / 1048576.0:F0}");
    }
}
