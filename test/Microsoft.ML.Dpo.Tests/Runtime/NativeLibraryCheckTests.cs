using Microsoft.ML.Dpo.Build;
using Microsoft.ML.Dpo.Runtime;

namespace Microsoft.ML.Dpo.Tests.Runtime;

/// <summary>
/// The first use of libtorch explains a missing native package or a too-old libstdc++ in one message instead of
/// TorchSharp's TypeInitializationException (issue 14, "The C# on-ramp").
/// </summary>
[TestClass]
public sealed class NativeLibraryCheckTests
{
    // What .NET's NativeLibrary.Load says on Debian 12 for the unpatched libLibTorchSharp.so (seen on this machine).
    const string Debian12LoaderError =
        "Unable to load shared library '/app/bin/runtimes/linux-x64/native/libLibTorchSharp.so' or one of its dependencies. " +
        "In order to help diagnose loading problems, consider using a tool like strace. If you're using glibc, consider setting the LD_DEBUG environment variable: \n" +
        "/lib/x86_64-linux-gnu/libstdc++.so.6: version `GLIBCXX_3.4.32' not found (required by /app/bin/runtimes/linux-x64/native/libLibTorchSharp.so)\n";

    [TestMethod]
    public void MissingPackageSaysToReferenceTorchSharpCpu()
    {
        string message = NativeLibraryCheck.Explain(NativeLibraryProblem.MissingNativePackage, null);
        StringAssert.Contains(message, "<PackageReference Include=\"TorchSharp-cpu\" Version=\"0.107.0\" />");
        StringAssert.Contains(message, "references only the managed TorchSharp package");
        Assert.IsFalse(message.Contains("GLIBCXX", StringComparison.Ordinal), message);
        Assert.IsFalse(message.Contains('\n'), "one paragraph");
    }

    [TestMethod]
    public void MissingPackageOnAnOldLibStdCxxSaysBothSteps()
    {
        string message = NativeLibraryCheck.Explain(NativeLibraryProblem.MissingNativePackage, Debian12LoaderError);
        StringAssert.Contains(message, "TorchSharp-cpu");
        StringAssert.Contains(message, "build/LibStdCxxCompat/LibStdCxxCompat.targets");
        StringAssert.Contains(message, "GLIBCXX_3.4.32");
    }

    [TestMethod]
    public void OldLibStdCxxSaysWhichVersionAndHowToImportTheFix()
    {
        string message = NativeLibraryCheck.Explain(NativeLibraryProblem.OldLibStdCxx, Debian12LoaderError);
        StringAssert.Contains(message, "GLIBCXX_3.4.32");
        StringAssert.Contains(message, "<Import Project=\"PATH-TO-REPOSITORY/build/LibStdCxxCompat/LibStdCxxCompat.targets\" />");
        StringAssert.Contains(message, "/lib/x86_64-linux-gnu/libstdc++.so.6: version `GLIBCXX_3.4.32' not found");
        Assert.IsFalse(message.Contains("TorchSharp-cpu\" Version", StringComparison.Ordinal), "the package is there: not the advice");
        Assert.IsFalse(message.Contains('\n'), "one paragraph");
    }

    [TestMethod]
    public void OtherLoaderErrorsAreQuoted()
    {
        string message = NativeLibraryCheck.Explain(NativeLibraryProblem.LoadFailed,
            "Unable to load shared library 'x' or one of its dependencies.\nlibfoo.so: cannot open shared object file: No such file or directory");
        StringAssert.Contains(message, "libfoo.so: cannot open shared object file");
    }

    [TestMethod]
    public void AnOutputFolderWithoutLibTorchIsAMissingPackage()
    {
        using var dir = new TempDirectory();
        var (problem, _) = NativeLibraryCheck.Diagnose([dir.Path], []);
        Assert.AreEqual(NativeLibraryProblem.MissingNativePackage, problem);
    }

    [TestMethod]
    public void TheUnpatchedLibraryOnThisSystemIsDiagnosedAsOldLibStdCxx()
    {
        if (!OperatingSystem.IsLinux() || LibStdCxxCompatPatcher.SystemLibStdCxxHasNewVersion())
            Assert.Inconclusive("Needs Linux with a libstdc++ older than GCC 13 (Debian 12, Ubuntu 22.04).");
        string nuget = Environment.GetEnvironmentVariable("NUGET_PACKAGES")
                       ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        string unpatched = Path.Combine(nuget, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        string libTorch = Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", "libtorch_cpu.so");
        if (!File.Exists(unpatched) || !File.Exists(libTorch))
            Assert.Inconclusive($"Needs '{unpatched}' and '{libTorch}'.");

        // An application folder as a ProjectReference from outside the repository leaves it: TorchSharp-cpu's files, and
        // libLibTorchSharp.so as the package ships it (the build step that patches it did not run).
        DpoRuntime.EnsureNativeLibrary(); // libtorch is loaded, as it would be in that application (from beside the library)
        using var dir = new TempDirectory();
        File.Copy(unpatched, dir.Combine("libLibTorchSharp.so"));
        File.CreateSymbolicLink(dir.Combine("libtorch_cpu.so"), libTorch);
        var (problem, loaderError) = NativeLibraryCheck.Diagnose([dir.Path], []);
        Assert.AreEqual(NativeLibraryProblem.OldLibStdCxx, problem, loaderError);
        StringAssert.Contains(NativeLibraryCheck.Explain(problem, loaderError), "GLIBCXX_3.4.32");
    }

    [TestMethod]
    public void ThisProcessLoadsTheNativeLibrary()
    {
        DpoRuntime.EnsureNativeLibrary(); // the test project references TorchSharp-cpu and is patched: no exception
        DpoRuntime.EnsureNativeLibrary(); // cached
    }
}
