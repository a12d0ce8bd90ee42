using System.Runtime.InteropServices;

namespace Microsoft.ML.Dpo.Runtime;

/// <summary>
/// The process's resident memory as Linux reports it in <c>/proc/self/status</c> (null elsewhere), and glibc's policy for
/// giving freed blocks back to the system (<see cref="ReleaseFreedBlocks"/>).
/// </summary>
internal static class ProcessMemory
{
    /// <summary>Blocks of at least this size are mapped apart and unmapped when freed, under <see cref="ReleaseFreedBlocks"/> (1 MiB).</summary>
    public const int ReleaseThresholdBytes = 1 << 20;

    const int M_MMAP_THRESHOLD = -3;   // glibc <malloc.h>

    [DllImport("libc", EntryPoint = "mallopt")]
    static extern int Mallopt(int parameter, int value);

    static int _released;

    /// <summary>The peak resident set size so far (<c>VmHWM</c>), in bytes; null where <c>/proc/self/status</c> is absent.</summary>
    public static long? PeakResidentBytes() => StatusBytes("VmHWM:");

    /// <summary>The current resident set size (<c>VmRSS</c>), in bytes; null where <c>/proc/self/status</c> is absent.</summary>
    public static long? ResidentBytes() => StatusBytes("VmRSS:");

    /// <summary>
    /// Makes glibc's malloc (which libtorch's CPU allocator calls) map every block of <see cref="ReleaseThresholdBytes"/> or
    /// more on its own and unmap it when it is freed, for the rest of the process (<see cref="Training.TrainingOptions.ReleaseFreedMemory"/>).
    /// By default glibc raises that threshold, up to 32 MiB, each time a mapped block is freed, so the activations of a
    /// training step (a few MiB each) come from its heaps, where freed space is kept and fragments: the resident memory of a
    /// LoRA-DPO step of a 0.5B model measured twice the memory its tensors need. Mapping costs page faults on every fresh
    /// block (see the README's Performance section for the measured step time). Returns false, changing nothing, where the
    /// C library is not glibc (mallopt missing) or the platform is not Linux.
    /// </summary>
    public static bool ReleaseFreedBlocks()
    {
        if (!OperatingSystem.IsLinux()) return false;
        if (Volatile.Read(ref _released) == 1) return true;
        try
        {
            if (Mallopt(M_MMAP_THRESHOLD, ReleaseThresholdBytes) != 1) return false;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return false;
        }
        Volatile.Write(ref _released, 1);
        return true;
    }

    static long? StatusBytes(string field)
    {
        const string path = "/proc/self/status";
        if (!File.Exists(path)) return null;
        foreach (string line in File.ReadLines(path))
        {
            if (!line.StartsWith(field, StringComparison.Ordinal)) continue;
            var parts = line[field.Length..].Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);   // "\t  123456 kB"
            return parts.Length > 0 && long.TryParse(parts[0], out long kib) ? kib * 1024 : null;
        }
        return null;
    }
}
