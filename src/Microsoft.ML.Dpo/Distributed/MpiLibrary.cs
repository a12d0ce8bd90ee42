using System.Runtime.InteropServices;

namespace Microsoft.ML.Dpo.Distributed;

/// <summary>
/// The handful of MPI C functions the collectives need, bound at run time from the system's <c>libmpi</c> (no MPI package,
/// no build-time dependency). MPI fixes the C API but not the ABI of its handles: Open MPI's <c>MPI_COMM_WORLD</c>,
/// <c>MPI_FLOAT</c> or <c>MPI_SUM</c> are addresses of global objects (<c>&amp;ompi_mpi_comm_world</c>, ...), resolved here
/// with <see cref="NativeLibrary.GetExport"/>; MPICH and its derivatives (Intel MPI, MVAPICH, Cray MPICH) use integer
/// constants from their <c>mpi.h</c>. Only Open MPI is tested (Debian's 4.1); the MPICH constants are there for those
/// families. Errors use MPI's default handler (<c>MPI_ERRORS_ARE_FATAL</c>): a failed collective ends the job.
/// </summary>
internal sealed unsafe class MpiLibrary
{
    const int ThreadSerialized = 2;   // MPI_THREAD_SERIALIZED in both families: any thread may call, one at a time

    readonly delegate* unmanaged<int*, int> initialized, finalized;
    readonly delegate* unmanaged<int*, nint*, int, int*, int> initThread;
    readonly delegate* unmanaged<int> finalize;
    readonly delegate* unmanaged<nint, int*, int> commRank, commSize;
    readonly delegate* unmanaged<nint, nint, int, nint, nint, nint, int> allreduce;
    readonly delegate* unmanaged<nint, int, nint, int, nint, int> bcast;
    readonly delegate* unmanaged<nint, int, nint, nint, int, nint, nint, int> allgather;
    readonly delegate* unmanaged<nint, int> barrier;
    readonly delegate* unmanaged<nint, int, int> abort;

    /// <summary>The MPI family whose handle ABI is used ("Open MPI" or "MPICH").</summary>
    public string Family { get; }
    /// <summary>The library file that was loaded.</summary>
    public string LibraryName { get; }
    public nint CommWorld { get; }
    public nint Float { get; }
    public nint Double { get; }
    public nint Byte { get; }
    public nint Sum { get; }
    public nint Max { get; }
    public nint InPlace { get; }

    MpiLibrary(string name, nint handle)
    {
        LibraryName = name;
        nint Function(string symbol) => NativeLibrary.TryGetExport(handle, symbol, out nint f) ? f
            : throw new InvalidOperationException($"The MPI library '{name}' has no function {symbol}.");
        initialized = (delegate* unmanaged<int*, int>)Function("MPI_Initialized");
        finalized = (delegate* unmanaged<int*, int>)Function("MPI_Finalized");
        initThread = (delegate* unmanaged<int*, nint*, int, int*, int>)Function("MPI_Init_thread");
        finalize = (delegate* unmanaged<int>)Function("MPI_Finalize");
        commRank = (delegate* unmanaged<nint, int*, int>)Function("MPI_Comm_rank");
        commSize = (delegate* unmanaged<nint, int*, int>)Function("MPI_Comm_size");
        allreduce = (delegate* unmanaged<nint, nint, int, nint, nint, nint, int>)Function("MPI_Allreduce");
        bcast = (delegate* unmanaged<nint, int, nint, int, nint, int>)Function("MPI_Bcast");
        allgather = (delegate* unmanaged<nint, int, nint, nint, int, nint, nint, int>)Function("MPI_Allgather");
        barrier = (delegate* unmanaged<nint, int>)Function("MPI_Barrier");
        abort = (delegate* unmanaged<nint, int, int>)Function("MPI_Abort");
        if (NativeLibrary.TryGetExport(handle, "ompi_mpi_comm_world", out nint world))
        {
            Family = "Open MPI";
            CommWorld = world;
            Float = Function("ompi_mpi_float");
            Double = Function("ompi_mpi_double");
            Byte = Function("ompi_mpi_byte");
            Sum = Function("ompi_mpi_op_sum");
            Max = Function("ompi_mpi_op_max");
            InPlace = 1;                 // mpi.h: #define MPI_IN_PLACE ((void *) 1)
        }
        else
        {
            Family = "MPICH";            // mpi.h of MPICH 3/4 (also Intel MPI, MVAPICH): integer handles
            CommWorld = 0x44000000;
            Float = 0x4c00040a;
            Double = 0x4c00080b;
            Byte = 0x4c00010d;
            Sum = 0x58000003;
            Max = 0x58000001;
            InPlace = -1;                // #define MPI_IN_PLACE (void *) -1
        }
    }

    /// <summary>
    /// Loads libmpi (the file named by <c>MLDPO_MPI_LIBRARY</c>, else the usual sonames) with its symbols global, as
    /// Open MPI's plug-ins expect, and initialises MPI for serialized multi-threaded use.
    /// </summary>
    public static MpiLibrary Open()
    {
        string? configured = Environment.GetEnvironmentVariable("MLDPO_MPI_LIBRARY");
        string[] names = configured is { Length: > 0 } ? [configured]
            : OperatingSystem.IsWindows() ? ["msmpi.dll", "impi.dll"]
            : OperatingSystem.IsMacOS() ? ["libmpi.40.dylib", "libmpi.12.dylib", "libmpi.dylib"]
            : ["libmpi.so.40", "libmpi.so.12", "libmpi.so"];
        var failures = new List<string>();
        foreach (string name in names)
        {
            if (!OperatingSystem.IsWindows()) GlobalDlopen(name);   // RTLD_GLOBAL first; NativeLibrary.Load then finds the same handle
            if (NativeLibrary.TryLoad(name, out nint handle))
            {
                var library = new MpiLibrary(name, handle);
                library.Initialize();
                return library;
            }
            failures.Add(name);
        }
        throw new InvalidOperationException($"This process was launched by an MPI launcher, but no MPI library could be loaded (tried {string.Join(", ", failures)}). " +
            "Install Open MPI (Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev) or set MLDPO_MPI_LIBRARY to the path of libmpi.");
    }

    [DllImport("libc", EntryPoint = "dlopen")]
    static extern nint Dlopen(string file, int mode);

    static void GlobalDlopen(string name)
    {
        const int RtldNow = 2, RtldGlobal = 0x100;   // glibc values
        try { Dlopen(name, RtldNow | RtldGlobal); }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { }   // not glibc: NativeLibrary.Load alone
    }

    void Initialize()
    {
        int flag;
        Check(initialized(&flag), "MPI_Initialized");
        if (flag != 0) return;
        int provided;
        Check(initThread(null, null, ThreadSerialized, &provided), "MPI_Init_thread");
        if (provided < ThreadSerialized)
            throw new InvalidOperationException($"The MPI library '{LibraryName}' provides thread level {provided}; mldpo needs MPI_THREAD_SERIALIZED (2), because the .NET runtime may call it from any thread.");
    }

    static void Check(int code, string function)
    {
        if (code != 0) throw new InvalidOperationException($"{function} failed with MPI error code {code}.");
    }

    public int Rank { get { int r; Check(commRank(CommWorld, &r), "MPI_Comm_rank"); return r; } }
    public int Size { get { int s; Check(commSize(CommWorld, &s), "MPI_Comm_size"); return s; } }

    public void AllReduce(void* buffer, int count, nint type, nint op) => Check(allreduce(InPlace, (nint)buffer, count, type, op, CommWorld), "MPI_Allreduce");
    public void Broadcast(void* buffer, int count, nint type, int root) => Check(bcast((nint)buffer, count, type, root, CommWorld), "MPI_Bcast");
    public void AllGather(void* send, int count, nint type, void* receive) => Check(allgather((nint)send, count, type, (nint)receive, count, type, CommWorld), "MPI_Allgather");
    public void Barrier() => Check(barrier(CommWorld), "MPI_Barrier");
    public void Abort(int code) => abort(CommWorld, code);

    public void FinalizeMpi()
    {
        int flag;
        Check(finalized(&flag), "MPI_Finalized");
        if (flag == 0) Check(finalize(), "MPI_Finalize");
    }
}
