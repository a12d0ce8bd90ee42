using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using TorchSharp;

namespace Microsoft.ML.Dpo.Runtime;

/// <summary>
/// TorchSharp's native libraries could not be loaded. The message says which case it is and what to change:
/// the application references no native package (add <c>TorchSharp-cpu</c>), or the system's libstdc++ is older than
/// the one TorchSharp's library was built against (Debian 12, Ubuntu 22.04), or another loader error.
/// </summary>
public sealed class NativeLibraryException(string message, Exception? innerException = null)
    : InvalidOperationException(message, innerException);

/// <summary>Why TorchSharp's native libraries did not load.</summary>
public enum NativeLibraryProblem
{
    /// <summary>No libtorch binaries beside the application: the application references only the managed TorchSharp package.</summary>
    MissingNativePackage,
    /// <summary>libLibTorchSharp needs a newer libstdc++ (a <c>GLIBCXX_x.y.z</c> version) than the system has.</summary>
    OldLibStdCxx,
    /// <summary>The libraries are there but the loader refused them for another reason.</summary>
    LoadFailed,
}

/// <summary>
/// The check that runs before the library first touches libtorch (<see cref="DpoRuntime.EnsureNativeLibrary"/>), and the
/// one-paragraph explanation that replaces TorchSharp's <see cref="TypeInitializationException"/>.
/// </summary>
internal static class NativeLibraryCheck
{
    const string TorchSharpVersion = "0.107.0";
    static readonly Regex GlibcxxVersion = new(@"GLIBCXX_[0-9.]*[0-9]", RegexOptions.CultureInvariant);

    /// <summary>The explanation of <paramref name="problem"/>; pure, so it can be tested with simulated failures.</summary>
    /// <param name="problem">What went wrong.</param>
    /// <param name="loaderError">The dynamic loader's message for libLibTorchSharp, when one was obtained.</param>
    internal static string Explain(NativeLibraryProblem problem, string? loaderError)
    {
        string? glibcxx = loaderError is null ? null : GlibcxxVersion.Match(loaderError) is { Success: true } m ? m.Value : null;
        string loader = loaderError is null ? "" : $" (loader: {OneLine(loaderError)})";
        string libStdCxxFix =
            $"TorchSharp's libLibTorchSharp.so needs {glibcxx ?? "GLIBCXX_3.4.32"} (the libstdc++ of GCC 13), which this system's " +
            "libstdc++ lacks (Debian 12, Ubuntu 22.04). Microsoft.ML.Dpo's build step patches the copy in your build output, but it " +
            "runs only in projects that reference the Microsoft.ML.Dpo NuGet package or are inside its repository: with a " +
            "ProjectReference from elsewhere, add <Import Project=\"PATH-TO-REPOSITORY/build/LibStdCxxCompat/LibStdCxxCompat.targets\" /> " +
            "to your application's project file and rebuild (or run on a system whose libstdc++ comes from GCC 13 or newer).";
        return problem switch
        {
            NativeLibraryProblem.MissingNativePackage =>
                "TorchSharp's native libraries (libtorch) are not in this application's output: Microsoft.ML.Dpo references only " +
                "the managed TorchSharp package so that the application chooses CPU or GPU. Add " +
                $"<PackageReference Include=\"TorchSharp-cpu\" Version=\"{TorchSharpVersion}\" /> to your application's project " +
                "(or TorchSharp-cuda-linux / TorchSharp-cuda-windows for a GPU) and rebuild." +
                (glibcxx is null ? "" : " Then, on this system: " + libStdCxxFix) + loader,
            NativeLibraryProblem.OldLibStdCxx => libStdCxxFix + loader,
            _ => "TorchSharp's native library failed to load" + (loaderError is null ? "." : $": {OneLine(loaderError)}") +
                 " Check that the TorchSharp-cpu (or TorchSharp-cuda-*) package matches TorchSharp " + TorchSharpVersion +
                 " and this machine's operating system and architecture.",
        };
    }

    /// <summary>Runs TorchSharp's initialisation; on failure inspects the output folder and throws <see cref="NativeLibraryException"/>.</summary>
    internal static void Run()
    {
        // TorchSharp prints its loader trace to standard output when it fails; that trace stays in the inner exception.
        TextWriter stdout = Console.Out;
        var captured = new StringWriter();
        Exception? failure = null;
        Console.SetOut(captured);
        try
        {
            torch.InitializeDeviceType(DeviceType.CPU);
        }
        catch (Exception e) when (e is TypeInitializationException or NotSupportedException or DllNotFoundException
                                    or EntryPointNotFoundException or BadImageFormatException)
        {
            failure = e;
        }
        finally
        {
            Console.SetOut(stdout);
        }
        if (failure is null)
        {
            stdout.Write(captured.ToString());
            return;
        }
        string baseDir = AppContext.BaseDirectory;
        (NativeLibraryProblem problem, string? loaderError) = Diagnose(CandidateDirectories().ToList(),
            new[] { Path.Combine(baseDir, "cpu"), Path.Combine(baseDir, "cuda") });
        throw new NativeLibraryException(Explain(problem, loaderError), failure);
    }

    /// <summary>
    /// Looks for libtorch in <paramref name="dirs"/> (the application's output) and tries to load libLibTorchSharp from
    /// there and from <paramref name="fallbackDirs"/> to obtain the dynamic loader's message.
    /// </summary>
    /// <param name="dirs">Where the application's native packages put their files.</param>
    /// <param name="fallbackDirs">Where TorchSharp itself may have copied binaries from the NuGet cache ("cpu"/"cuda"
    /// sub-folders, its fallback): their loader error still tells whether libstdc++ is the next obstacle.</param>
    internal static (NativeLibraryProblem Problem, string? LoaderError) Diagnose(IReadOnlyList<string> dirs, IEnumerable<string> fallbackDirs)
    {
        string ext = OperatingSystem.IsWindows() ? ".dll" : OperatingSystem.IsMacOS() ? ".dylib" : ".so";
        string prefix = OperatingSystem.IsWindows() ? "" : "lib";
        bool haveLibTorch = dirs.Any(d => File.Exists(Path.Combine(d, prefix + "torch_cpu" + ext)));
        var libraries = dirs.Concat(fallbackDirs)
                            .Select(d => Path.Combine(d, prefix + "LibTorchSharp" + ext))
                            .Where(File.Exists).ToList();
        string? loaderError = null;
        foreach (string library in libraries)
        {
            // libtorch first, as TorchSharp does (its failure is not the interesting one: libLibTorchSharp's error names
            // the missing dependency or version too).
            string torchCpu = Path.Combine(Path.GetDirectoryName(library)!, prefix + "torch_cpu" + ext);
            if (File.Exists(torchCpu)) NativeLibrary.TryLoad(torchCpu, out _);
            try
            {
                NativeLibrary.Load(library);
            }
            catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
            {
                loaderError = e.Message;
                if (GlibcxxVersion.IsMatch(e.Message)) break;
            }
        }
        if (!haveLibTorch) return (NativeLibraryProblem.MissingNativePackage, loaderError);
        if (loaderError is not null && GlibcxxVersion.IsMatch(loaderError)) return (NativeLibraryProblem.OldLibStdCxx, loaderError);
        return (NativeLibraryProblem.LoadFailed, loaderError);
    }

    static IEnumerable<string> CandidateDirectories()
    {
        string rid = (OperatingSystem.IsWindows() ? "win" : OperatingSystem.IsMacOS() ? "osx" : "linux") + "-" +
                     RuntimeInformation.ProcessArchitecture.ToString().ToLowerInvariant();
        var roots = new[] { AppContext.BaseDirectory, Path.GetDirectoryName(typeof(torch).Assembly.Location) ?? "" }
            .Where(r => r.Length > 0).Distinct();
        foreach (string root in roots)
        {
            yield return root;
            yield return Path.Combine(root, "runtimes", rid, "native");
        }
    }

    /// <summary>The loader's message without the .NET boilerplate and line breaks.</summary>
    static string OneLine(string message)
    {
        string[] lines = message.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        string pick = lines.FirstOrDefault(l => l.Contains("GLIBCXX_", StringComparison.Ordinal) || l.Contains("not found", StringComparison.Ordinal))
                      ?? lines.LastOrDefault() ?? message;
        return pick.Trim();
    }
}
