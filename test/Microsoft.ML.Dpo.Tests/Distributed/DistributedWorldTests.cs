using Microsoft.ML.Dpo.Distributed;

namespace Microsoft.ML.Dpo.Tests.Distributed;

/// <summary>The world of a process started without a launcher: size 1, no MPI, collectives that change nothing.</summary>
[TestClass]
public sealed class DistributedWorldTests
{
    [TestMethod]
    public void WithoutALauncher_TheWorldIsOneProcessAndLoadsNoMpi()
    {
        if (Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_SIZE") is not null || Environment.GetEnvironmentVariable("PMIX_RANK") is not null)
            Assert.Inconclusive("the tests themselves run under an MPI launcher");
        var world = DistributedWorld.Current;
        Assert.AreSame(DistributedWorld.Single, world);
        Assert.AreEqual((0, 1, 0), (world.Rank, world.Size, world.LocalRank));
        Assert.AreEqual(DistributedLaunch.None, world.Launch);
        Assert.IsNull(world.Backend);
        Assert.IsTrue(world.IsMain);
        Assert.IsFalse(world.IsDistributed);
        Assert.IsFalse(DistributedWorld.IsActive);
        Assert.AreEqual("auto", world.DeviceFor("auto"));
    }

    [TestMethod]
    public void OneProcess_CollectivesKeepOrCopyTheValues()
    {
        var world = DistributedWorld.Single;
        float[] f = [1.5f, -2f];
        world.AllReduceSum(f);
        CollectionAssert.AreEqual(new[] { 1.5f, -2f }, f);
        double[] d = [3, double.NaN];
        world.AllReduceMax(d);
        Assert.AreEqual(3, d[0]);
        Assert.IsTrue(double.IsNaN(d[1]));
        var all = new int[2];
        world.AllGather<int>(new[] { 7, 8 }, all);
        CollectionAssert.AreEqual(new[] { 7, 8 }, all);
        Assert.ThrowsExactly<ArgumentException>(() => world.AllGather<int>(new[] { 7 }, new int[2]));
        byte[] b = [1, 2];
        world.Broadcast(b);
        world.Barrier();
        world.Finish();
        CollectionAssert.AreEqual(new byte[] { 1, 2 }, b);
    }
}
