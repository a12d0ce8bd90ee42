using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Microsoft.ML.Dpo.Distributed;

/// <summary>
/// NCCL's C API for GPU collectives on CUDA tensors' memory (Horovod's pattern: MPI launches and bootstraps, NCCL reduces).
/// Rank 0 creates the unique id, MPI broadcasts it, every rank joins the communicator with its rank. Only the functions the
/// gradient all-reduce needs are bound. <b>Compiled but not exercised</b> in this project's environment: there is no GPU
/// and no CUDA build of libtorch here, so this code has run on no machine yet.
/// </summary>
internal sealed unsafe class NcclCommunicator : IDisposable
{
    const string Library = "libnccl.so.2";   // the runtime soname NVIDIA's packages and the CUDA containers install
    const int NcclFloat32 = 7, NcclSum = 0;   // nccl.h: ncclFloat32 = 7, ncclSum = 0

    [InlineArray(128)]
    struct UniqueId { byte first; }   // ncclUniqueId: 128 opaque bytes (NCCL_UNIQUE_ID_BYTES)

    [DllImport(Library)] static extern int ncclGetUniqueId(UniqueId* id);
    [DllImport(Library)] static extern int ncclCommInitRank(nint* comm, int nranks, UniqueId id, int rank);
    [DllImport(Library)] static extern int ncclAllReduce(nint sendbuff, nint recvbuff, nuint count, int datatype, int op, nint comm, nint stream);
    [DllImport(Library)] static extern int ncclCommDestroy(nint comm);
    [DllImport(Library)] static extern nint ncclGetErrorString(int result);

    nint comm;

    NcclCommunicator(nint comm) => this.comm = comm;

    /// <summary>Joins every rank of <paramref name="world"/> into one NCCL communicator (a collective: all ranks call it).</summary>
    public static NcclCommunicator Create(DistributedWorld world)
    {
        var id = new UniqueId();
        if (world.IsMain) Check(ncclGetUniqueId(&id), "ncclGetUniqueId");
        world.Broadcast(MemoryMarshal.CreateSpan(ref id[0], 128));
        nint comm;
        Check(ncclCommInitRank(&comm, world.Size, id, world.Rank), "ncclCommInitRank");
        return new NcclCommunicator(comm);
    }

    /// <summary>
    /// True when NCCL can be used: several ranks whose parameters live on CUDA, and libnccl loadable.
    /// <c>MLDPO_NCCL=0</c> turns it off (gradients then travel through host memory and MPI).
    /// </summary>
    public static bool Available(bool onCuda) =>
        onCuda && Environment.GetEnvironmentVariable("MLDPO_NCCL") != "0" && NativeLibrary.TryLoad(Library, out _);

    /// <summary>
    /// Sums <paramref name="count"/> float32 values at device pointer <paramref name="buffer"/> over all ranks, in place, on the
    /// legacy default stream (the stream libtorch's kernels run on unless told otherwise, so the order with them is kept).
    /// </summary>
    public void AllReduceSum(nint buffer, long count) => Check(ncclAllReduce(buffer, buffer, (nuint)count, NcclFloat32, NcclSum, comm, 0), "ncclAllReduce");

    [DllImport("LibTorchSharp")]
    static extern nint THSTensor_data(nint handle);

    /// <summary>The address of a contiguous tensor's first element (TorchSharp's native export; device memory for a CUDA tensor).</summary>
    public static nint DataPointer(TorchSharp.torch.Tensor tensor) => THSTensor_data(tensor.Handle);

    static void Check(int result, string function)
    {
        if (result != 0)
            throw new InvalidOperationException($"{function} failed: {Marshal.PtrToStringAnsi(ncclGetErrorString(result))} (NCCL result {result}).");
    }

    public void Dispose()
    {
        if (comm != 0) ncclCommDestroy(comm);
        comm = 0;
    }
}
