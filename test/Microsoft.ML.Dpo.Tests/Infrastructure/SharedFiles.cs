namespace Microsoft.ML.Dpo.Tests;

/// <summary>
/// Finds the repository root and the <c>shared/</c> folder that lies beside it on CI and developer machines
/// (real model weights and golden outputs). A user's clone lacks it: tests that need it end inconclusive with the reason.
/// </summary>
internal static class SharedFiles
{
    public static string RepositoryRoot { get; } = FindRepositoryRoot();

    /// <summary>The shared folder: MLDPO_SHARED_DIR if set, else ../shared beside the repository root.</summary>
    public static string SharedRoot =>
        Environment.GetEnvironmentVariable("MLDPO_SHARED_DIR") is { Length: > 0 } env
            ? env
            : Path.GetFullPath(Path.Combine(RepositoryRoot, "..", "shared"));

    /// <summary>The path of <paramref name="relative"/> under the shared folder, or Assert.Inconclusive when it is absent.</summary>
    public static string Require(string relative)
    {
        string path = Path.Combine(SharedRoot, relative);
        if (!File.Exists(path) && !Directory.Exists(path))
            Assert.Inconclusive($"Skipped: '{path}' is not present. It lies outside the repository (CI and the developers' machines have it; a user's clone does not).");
        return path;
    }

    static string FindRepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Dpo.sln")))
                return dir.FullName;
        throw new InvalidOperationException("Dpo.sln not found above " + AppContext.BaseDirectory);
    }
}
