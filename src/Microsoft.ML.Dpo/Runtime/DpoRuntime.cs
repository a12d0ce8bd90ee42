using System.Reflection;
using TorchSharp;

namespace Microsoft.ML.Dpo.Runtime;

/// <summary>Versions and compute resources of the running process, as reported by <c>mldpo info</c>.</summary>
/// <param name="LibraryVersion">The Microsoft.ML.Dpo version.</param>
/// <param name="TorchSharpVersion">The managed TorchSharp assembly version.</param>
/// <param name="LibTorchVersion">The native libtorch version TorchSharp loaded.</param>
/// <param name="CudaAvailable">Whether a CUDA device can be used.</param>
/// <param name="DefaultDevice">The device the library picks when none is requested ("cuda" or "cpu").</param>
/// <param name="Threads">The number of intra-op threads libtorch uses on the CPU.</param>
public sealed record DpoRuntimeInfo(string LibraryVersion, string TorchSharpVersion, string LibTorchVersion,
                                    bool CudaAvailable, string DefaultDevice, int Threads);

/// <summary>Process-wide facts about the TorchSharp runtime, and device selection.</summary>
public static class DpoRuntime
{
    /// <summary>Loads the native runtime (if not loaded yet) and describes it.</summary>
    public static DpoRuntimeInfo Describe()
    {
        EnsureNativeLibrary();
        bool cuda = torch.cuda.is_available();
        return new DpoRuntimeInfo(
            VersionOf(typeof(DpoRuntime).Assembly),
            VersionOf(typeof(torch).Assembly),
            torch.__version__,
            cuda,
            cuda ? "cuda" : "cpu",
            torch.get_num_threads());
    }

    /// <summary>
    /// Resolves a device name: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
    /// Asking for CUDA where it is not available is an error rather than a silent fall-back.
    /// </summary>
    public static torch.Device ResolveDevice(string? name)
    {
        EnsureNativeLibrary();
        string n = string.IsNullOrWhiteSpace(name) ? "auto" : name.Trim().ToLowerInvariant();
        if (n == "auto") return torch.cuda.is_available() ? torch.CUDA : torch.CPU;
        if (n.StartsWith("cuda", StringComparison.Ordinal) && !torch.cuda.is_available())
            throw new InvalidOperationException($"Device '{name}' was requested but CUDA is not available. Reference TorchSharp-cuda-linux (or TorchSharp-cuda-windows) instead of TorchSharp-cpu, or use device 'cpu'.");
        if (n != "cpu" && !n.StartsWith("cuda", StringComparison.Ordinal))
            throw new ArgumentException($"Unknown device '{name}'. Use auto, cpu, cuda or cuda:N.", nameof(name));
        return torch.device(n);
    }

    static readonly Lazy<NativeLibraryException?> NativeLibraryFailure = new(() =>
    {
        try { NativeLibraryCheck.Run(); return null; }
        catch (NativeLibraryException e) { return e; }
    });

    /// <summary>
    /// Loads TorchSharp's native libraries, or throws one <see cref="NativeLibraryException"/> that says what to change
    /// (reference <c>TorchSharp-cpu</c>; on Debian 12 / Ubuntu 22.04 import the libstdc++ fix) instead of TorchSharp's
    /// <see cref="TypeInitializationException"/>. The library calls it before it first touches libtorch (device selection,
    /// every model build); an application may call it at start-up to fail early. The result is cached for the process.
    /// </summary>
    /// <exception cref="NativeLibraryException">The native libraries cannot be loaded.</exception>
    public static void EnsureNativeLibrary()
    {
        if (NativeLibraryFailure.Value is { } failure)
            throw new NativeLibraryException(failure.Message, failure.InnerException);
    }

    static string VersionOf(Assembly assembly) =>
        assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion.Split('+')[0]
        ?? assembly.GetName().Version?.ToString() ?? "unknown";
}
