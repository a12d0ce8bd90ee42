using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;

namespace Microsoft.ML.Dpo.Distributed;

/// <summary>How the processes of a run were started.</summary>
public enum DistributedLaunch
{
    /// <summary>One process, no launcher: world size 1, no MPI library is loaded.</summary>
    None,
    /// <summary>An MPI launcher (<c>mpirun</c>/<c>mpiexec</c>, Slurm's <c>srun --mpi=pmix</c>, Kubeflow's MPIJob, ...): MPI gives ranks and collectives.</summary>
    Mpi,
}

/// <summary>
/// The processes of a data-parallel run: this process's rank, the world size, its rank on its machine (which selects its
/// GPU), and collectives over flat buffers (all-reduce, broadcast, barrier, all-gather) that every rank must call in the
/// same order. <see cref="Current"/> detects an MPI launch from the launcher's environment (<c>OMPI_COMM_WORLD_SIZE</c>,
/// <c>PMIX_RANK</c>, <c>PMI_SIZE</c>, ...); torchrun-style <c>RANK</c>/<c>WORLD_SIZE</c>/<c>LOCAL_RANK</c> are read too and
/// must agree with MPI (they cannot provide the transport). A process started without a launcher is world size 1 and loads
/// nothing: every collective is then a no-op or a copy.
/// </summary>
/// <remarks>
/// A collective that waits longer than <see cref="Timeout"/> for the other ranks (one died or hangs) ends this process
/// with exit code 1 and a message on stderr; <c>MLDPO_DISTRIBUTED_TIMEOUT</c> (seconds, default 1800) sets it. A rank that
/// exits (or is killed) makes <c>mpirun</c> stop the others.
/// </remarks>
public sealed class DistributedWorld
{
    static readonly object gate = new();
    static DistributedWorld? current;

    readonly MpiLibrary? mpi;
    readonly object callGate = new();
    long collectiveSince;            // Stopwatch timestamp of the collective in progress, 0 when none
    string collectiveName = "";
    bool finished;

    /// <summary>This process's rank, 0 … <see cref="Size"/> − 1.</summary>
    public int Rank { get; }
    /// <summary>The number of processes (world size).</summary>
    public int Size { get; }
    /// <summary>This process's rank among the processes on its machine; rank <c>n</c> on a machine uses <c>cuda:n</c>.</summary>
    public int LocalRank { get; private set; }
    /// <summary>How the run was launched.</summary>
    public DistributedLaunch Launch { get; }
    /// <summary>True for rank 0, the rank that writes checkpoints, metrics and outputs.</summary>
    public bool IsMain => Rank == 0;
    /// <summary>True when there is more than one process.</summary>
    public bool IsDistributed => Size > 1;
    /// <summary>How long a collective may wait for the other ranks before this process gives up (exit code 1).</summary>
    public TimeSpan Timeout { get; }
    /// <summary>The MPI implementation in use ("Open MPI 'libmpi.so.40'"), or null without MPI.</summary>
    public string? Backend => mpi is null ? null : $"{mpi.Family} '{mpi.LibraryName}'";

    DistributedWorld(int rank, int size, int localRank, DistributedLaunch launch, MpiLibrary? mpi, TimeSpan timeout)
    {
        (Rank, Size, LocalRank, Launch, this.mpi, Timeout) = (rank, size, localRank, launch, mpi, timeout);
    }

    /// <summary>A world of one process (what a run without a launcher gets).</summary>
    public static DistributedWorld Single { get; } = new(0, 1, 0, DistributedLaunch.None, null, System.Threading.Timeout.InfiniteTimeSpan);

    /// <summary>
    /// The world of this process, detected once: MPI is initialised only when a launcher started more than one process.
    /// </summary>
    /// <exception cref="InvalidOperationException">The environment names several ranks but no MPI launch, or MPI cannot be loaded.</exception>
    public static DistributedWorld Current
    {
        get
        {
            lock (gate) return current ??= Detect();
        }
    }

    /// <summary>True once <see cref="Current"/> initialised MPI for more than one rank (so <see cref="Finish"/> or <see cref="Abort"/> is due at exit).</summary>
    public static bool IsActive { get { lock (gate) return current?.mpi is not null && !current.finished; } }

    /// <summary>
    /// The rank the launcher's environment gives this process, without loading MPI (0 when there is none): lets a program
    /// quiet the console of ranks other than 0 before anything else runs.
    /// </summary>
    public static int RankFromEnvironment() =>
        Integer("OMPI_COMM_WORLD_RANK") ?? Integer("PMIX_RANK") ?? Integer("PMI_RANK") ?? Integer("MV2_COMM_WORLD_RANK")
        ?? (Integer("WORLD_SIZE") is > 1 ? Integer("RANK") : null) ?? 0;

    static int? Integer(string name) =>
        int.TryParse(Environment.GetEnvironmentVariable(name), NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) ? v : null;

    static DistributedWorld Detect()
    {
        int? mpiSize = Integer("OMPI_COMM_WORLD_SIZE") ?? Integer("PMI_SIZE") ?? Integer("MV2_COMM_WORLD_SIZE");
        bool mpiLaunch = mpiSize is not null || Integer("PMIX_RANK") is not null;
        int? torchrunSize = Integer("WORLD_SIZE");
        if (!mpiLaunch)
        {
            if (torchrunSize is > 1)
                throw new InvalidOperationException($"WORLD_SIZE={torchrunSize} names a multi-process run, but this process was not started by an MPI launcher; " +
                    "mldpo's collectives run over MPI: launch with mpirun/mpiexec, srun --mpi=pmix or an MPIJob (RANK, WORLD_SIZE and LOCAL_RANK are then only checked).");
            return Single;
        }
        if (mpiSize is 1) return Single;   // mpirun -np 1: nothing to share, nothing loaded
        var timeout = TimeSpan.FromSeconds(Integer("MLDPO_DISTRIBUTED_TIMEOUT") is int t && t > 0 ? t : 1800);
        var mpi = MpiLibrary.Open();
        int rank = mpi.Rank, size = mpi.Size;
        if (size == 1 && mpiSize is > 1)
            throw new InvalidOperationException($"The launcher's environment names {mpiSize} processes, but MPI ('{mpi.LibraryName}') sees only this one: the library does not match the launcher (set MLDPO_MPI_LIBRARY to the launcher's libmpi).");
        if (size == 1) { mpi.FinalizeMpi(); return Single; }
        if (torchrunSize is int ws && ws != size || Integer("RANK") is int r && r != rank)
            throw new InvalidOperationException($"RANK/WORLD_SIZE ({Integer("RANK")}/{torchrunSize}) disagree with MPI's rank {rank} of {size}; unset them or launch consistently.");
        var world = new DistributedWorld(rank, size, 0, DistributedLaunch.Mpi, mpi, timeout);
        world.StartWatchdog();
        world.LocalRank = Integer("LOCAL_RANK") ?? Integer("OMPI_COMM_WORLD_LOCAL_RANK") ?? Integer("MPI_LOCALRANKID") ?? world.LocalRankFromHostNames();
        return world;
    }

    /// <summary>Ranks on the same host, counted by an all-gather of host names.</summary>
    int LocalRankFromHostNames()
    {
        const int width = 256;
        var mine = new byte[width];
        Encoding.UTF8.GetBytes(Environment.MachineName.AsSpan(0, Math.Min(Environment.MachineName.Length, 64)), mine);
        var all = new byte[width * Size];
        AllGather<byte>(mine, all);
        int local = 0;
        for (int r = 0; r < Rank; r++) if (all.AsSpan(r * width, width).SequenceEqual(mine)) local++;
        return local;
    }

    /// <summary>
    /// The device this rank trains on: with several ranks, "auto" and "cuda" become <c>cuda:LocalRank</c> when CUDA is
    /// available (one GPU per rank); any other name, and a single process, are returned unchanged.
    /// </summary>
    public string DeviceFor(string requested)
    {
        if (!IsDistributed) return requested;
        string n = requested.Trim().ToLowerInvariant();
        if (n == "cuda" || n == "auto" && TorchSharp.torch.cuda.is_available()) return $"cuda:{LocalRank}";
        return requested;
    }

    /// <summary>Sums <paramref name="values"/> element-wise over all ranks, in place.</summary>
    public unsafe void AllReduceSum(Span<float> values) { fixed (float* p = values) Reduce(p, values.Length, sizeof(float), mpi?.Float ?? 0, false); }
    /// <summary>Sums <paramref name="values"/> element-wise over all ranks, in place.</summary>
    public unsafe void AllReduceSum(Span<double> values) { fixed (double* p = values) Reduce(p, values.Length, sizeof(double), mpi?.Double ?? 0, false); }
    /// <summary>The element-wise maximum over all ranks, in place.</summary>
    public unsafe void AllReduceMax(Span<double> values) { fixed (double* p = values) Reduce(p, values.Length, sizeof(double), mpi?.Double ?? 0, true); }

    /// <summary>Sums a float buffer of <paramref name="count"/> elements at <paramref name="pointer"/> (host memory) over all ranks.</summary>
    internal unsafe void AllReduceSum(nint pointer, long count) => Reduce((void*)pointer, count, sizeof(float), mpi?.Float ?? 0, false);

    unsafe void Reduce(void* buffer, long count, int elementSize, nint type, bool max)
    {
        if (mpi is null || count == 0) return;
        Collective(max ? "all-reduce (max)" : "all-reduce (sum)", () =>
        {
            const int chunk = 1 << 28;   // MPI counts are int
            for (long offset = 0; offset < count; offset += chunk)
                mpi.AllReduce((byte*)buffer + offset * elementSize, (int)Math.Min(chunk, count - offset), type, max ? mpi.Max : mpi.Sum);
        });
    }

    /// <summary>Copies <paramref name="data"/> from rank <paramref name="root"/> to every rank.</summary>
    public unsafe void Broadcast(Span<byte> data, int root = 0)
    {
        if (mpi is null || data.Length == 0) return;
        fixed (byte* p = data)
        {
            byte* q = p;
            int n = data.Length;
            Collective("broadcast", () => mpi.Broadcast(q, n, mpi.Byte, root));
        }
    }

    /// <summary>Copies <paramref name="data"/> from rank <paramref name="root"/> to every rank.</summary>
    public void Broadcast(Span<float> data, int root = 0) => Broadcast(MemoryMarshal.AsBytes(data), root);

    /// <summary>
    /// Gathers every rank's <paramref name="mine"/> (the same length on all ranks) into <paramref name="all"/>, rank by rank
    /// (<c>all.Length = mine.Length × Size</c>).
    /// </summary>
    public unsafe void AllGather<T>(ReadOnlySpan<T> mine, Span<T> all) where T : unmanaged
    {
        if (all.Length != mine.Length * Size) throw new ArgumentException($"AllGather needs a receive buffer of {mine.Length * Size} elements, not {all.Length}.", nameof(all));
        if (mpi is null) { mine.CopyTo(all); return; }
        int bytes = mine.Length * sizeof(T);
        fixed (T* s = mine) fixed (T* r = all)
        {
            T* sp = s, rp = r;
            Collective("all-gather", () => mpi.AllGather(sp, bytes, mpi.Byte, rp));
        }
    }

    /// <summary>Waits until every rank has called it.</summary>
    public void Barrier()
    {
        if (mpi is null) return;
        Collective("barrier", mpi.Barrier);
    }

    /// <summary>Ends MPI cleanly after a successful run (a barrier, then <c>MPI_Finalize</c>); every rank must call it. Nothing without MPI.</summary>
    public void Finish()
    {
        if (mpi is null || finished) return;
        Barrier();
        finished = true;
        mpi.FinalizeMpi();
    }

    /// <summary>Ends every rank of the job with <paramref name="exitCode"/> (<c>MPI_Abort</c>): for a failure seen by this rank only.</summary>
    public void Abort(int exitCode)
    {
        if (mpi is null || finished) return;
        finished = true;
        Console.Error.Flush();
        mpi.Abort(exitCode);
    }

    void Collective(string name, Action action)
    {
        lock (callGate)
        {
            collectiveName = name;
            Volatile.Write(ref collectiveSince, Stopwatch.GetTimestamp());
            try { action(); }
            finally { Volatile.Write(ref collectiveSince, 0); }
        }
    }

    void StartWatchdog()
    {
        if (mpi is null || Timeout == System.Threading.Timeout.InfiniteTimeSpan) return;
        var thread = new Thread(() =>
        {
            while (!finished)
            {
                Thread.Sleep(TimeSpan.FromMilliseconds(Math.Min(1000, Timeout.TotalMilliseconds / 4)));
                long since = Volatile.Read(ref collectiveSince);
                if (since == 0 || finished || Stopwatch.GetElapsedTime(since) < Timeout) continue;
                Console.Error.WriteLine($"mldpo: error: rank {Rank} of {Size} waited more than {Timeout.TotalSeconds:0} s in a {collectiveName} for the other ranks; " +
                    "one of them died or hangs. Stopping (MLDPO_DISTRIBUTED_TIMEOUT sets the limit in seconds).");
                Console.Error.Flush();
                Exit(1);
            }
        }) { IsBackground = true, Name = "mldpo distributed watchdog" };
        thread.Start();
    }

    [DllImport("libc", EntryPoint = "_exit")]
    static extern void UnixExit(int code);

    static void Exit(int code)
    {
        // Environment.Exit would wait on finalizers while the training thread sits in MPI; _exit ends the process now.
        if (!OperatingSystem.IsWindows()) UnixExit(code);
        Environment.FailFast($"distributed collective timed out");
    }
}
