using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Microsoft.ML.Dpo.Checkpoints;

/// <summary>What a save may do with a folder that already exists at its output path.</summary>
public enum OutputOverwrite
{
    /// <summary>
    /// Replace the folder only when it is empty or holds nothing but what this library wrote there (every folder it writes
    /// carries a <see cref="OutputFolder.MarkerFileName"/> marker listing its entries); anything else is refused. The default.
    /// </summary>
    OwnOutputOnly,

    /// <summary>Replace the folder whatever it holds (<c>mldpo --force</c>). The folders <see cref="OutputFolder"/> always protects stay refused.</summary>
    Always,
}

/// <summary>Thrown when a save refuses to replace an existing folder; nothing was written or deleted.</summary>
public sealed class OutputFolderException(string message) : IOException(message);

/// <summary>
/// The one rule every writer of model folders applies before it replaces one (Hugging Face exports, adapters, reward models,
/// checkpoints, the CLI's <c>--output</c>): a folder is replaced only when it is missing, empty, or written by this library
/// (its <see cref="MarkerFileName"/> lists every entry it holds), unless <see cref="OutputOverwrite.Always"/> is given.
/// A folder that is or contains the current directory or one of the run's inputs is never replaced.
/// </summary>
public static class OutputFolder
{
    /// <summary>The marker file written into every folder the library writes: a small JSON object (tool, version, time, entries).</summary>
    public const string MarkerFileName = ".mldpo-output";

    static readonly StringComparison PathComparison =
        OperatingSystem.IsWindows() || OperatingSystem.IsMacOS() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;

    /// <summary>
    /// Checks that <paramref name="directory"/> may be replaced, and throws <see cref="OutputFolderException"/> (one line naming
    /// the folder and the reason) when not. Always refused, whatever <paramref name="overwrite"/> says: a folder that is or
    /// contains the current directory or any of <paramref name="protectedPaths"/> (a run's model, data, reference, adapter or
    /// checkpoint folder), and an existing file. Paths are compared in full, with symbolic links resolved.
    /// </summary>
    /// <param name="directory">The folder about to be written.</param>
    /// <param name="overwrite">Whether a folder holding files this library did not write may be replaced.</param>
    /// <param name="protectedPaths">Files and folders that must survive the write (null entries are ignored).</param>
    public static void EnsureReplaceable(string directory, OutputOverwrite overwrite, params string?[] protectedPaths)
        => EnsureReplaceable(directory, overwrite, (IEnumerable<string?>)protectedPaths);

    /// <summary>As <see cref="EnsureReplaceable(string, OutputOverwrite, string?[])"/>, with the protected paths as a sequence.</summary>
    public static void EnsureReplaceable(string directory, OutputOverwrite overwrite, IEnumerable<string?> protectedPaths)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        string full = Trim(Path.GetFullPath(directory)), resolved = Resolve(full);
        if (File.Exists(full))
            throw new OutputFolderException($"Output '{directory}' is a file, not a folder; choose a folder path.");
        foreach (var (path, what) in protectedPaths.Where(p => !string.IsNullOrEmpty(p)).Select(p => (p!, "an input of this run"))
                     .Prepend((Environment.CurrentDirectory, "the current directory")))
        {
            string other = Trim(Path.GetFullPath(path));
            if (Contains(full, other) || Contains(resolved, Resolve(other)))
                throw new OutputFolderException(
                    $"Output folder '{directory}' {(SamePath(full, other) || SamePath(resolved, Resolve(other)) ? "is" : "contains")} {what} ('{other}'); " +
                    "it is never replaced, not even with --force (OutputOverwrite.Always). Choose a new folder for the output.");
        }
        if (overwrite == OutputOverwrite.Always || !Directory.Exists(full)) return;
        var foreign = ForeignEntries(full).Take(4).ToList();
        if (foreign.Count > 0)
            throw new OutputFolderException(
                $"Output folder '{directory}' holds files this library did not write ({string.Join(", ", foreign.Take(3))}{(foreign.Count > 3 ? ", …" : "")}); " +
                "it was left untouched. Choose another output folder, or replace it with --force (C#: OutputOverwrite.Always).");
    }

    /// <summary>Writes the marker into a folder whose content is complete (called on the temporary folder before it is moved into place).</summary>
    internal static void WriteMarker(string directory)
    {
        var entries = Directory.EnumerateFileSystemEntries(directory).Select(e => Path.GetFileName(e)).Where(n => n != MarkerFileName)
            .OrderBy(n => n, StringComparer.Ordinal).Select(n => (JsonNode?)JsonValue.Create(n)).ToArray();
        var marker = new JsonObject
        {
            ["tool"] = "Microsoft.ML.Dpo",
            ["version"] = typeof(OutputFolder).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "unknown",
            ["written"] = DateTime.UtcNow.ToString("O", System.Globalization.CultureInfo.InvariantCulture),
            ["entries"] = new JsonArray(entries),
        };
        File.WriteAllText(Path.Combine(directory, MarkerFileName), marker.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>
    /// The entries of <paramref name="directory"/> that this library did not write: all of them without a readable marker;
    /// otherwise those the marker does not list, except sub-folders that are themselves the library's (an adapter written
    /// into an exported model's folder).
    /// </summary>
    internal static IEnumerable<string> ForeignEntries(string directory)
    {
        var entries = Directory.EnumerateFileSystemEntries(directory).Where(e => Path.GetFileName(e) != MarkerFileName).ToList();
        if (entries.Count == 0) return [];
        var listed = ReadMarkerEntries(directory);
        if (listed is null) return entries.Select(e => Path.GetFileName(e)).OrderBy(n => n, StringComparer.Ordinal);
        return entries
            .Where(e => !listed.Contains(Path.GetFileName(e)) && !(Directory.Exists(e) && !IsLink(e) && !ForeignEntries(e).Any() && File.Exists(Path.Combine(e, MarkerFileName))))
            .Select(e => Path.GetFileName(e)).OrderBy(n => n, StringComparer.Ordinal);
    }

    /// <summary>True when <paramref name="directory"/> exists and holds only what this library wrote (its marker lists every entry).</summary>
    internal static bool IsOwn(string directory) =>
        Directory.Exists(directory) && File.Exists(Path.Combine(directory, MarkerFileName)) && !ForeignEntries(directory).Any();

    static HashSet<string>? ReadMarkerEntries(string directory)
    {
        string marker = Path.Combine(directory, MarkerFileName);
        if (!File.Exists(marker) || new FileInfo(marker).Length > 1 << 20) return null;
        try
        {
            if (JsonNode.Parse(File.ReadAllText(marker)) is not JsonObject o || (string?)o["tool"] != "Microsoft.ML.Dpo" || o["entries"] is not JsonArray list)
                return null;
            return list.Select(n => n?.GetValueKind() == JsonValueKind.String ? (string?)n : null).OfType<string>().ToHashSet(StringComparer.Ordinal);
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or IOException) { return null; }
    }

    static bool IsLink(string path)
    {
        try { return new DirectoryInfo(path).LinkTarget is not null; }
        catch (IOException) { return false; }
    }

    /// <summary>True when <paramref name="other"/> is <paramref name="folder"/> or lies below it.</summary>
    static bool Contains(string folder, string other) =>
        SamePath(folder, other) || other.StartsWith(folder.EndsWith(Path.DirectorySeparatorChar) ? folder : folder + Path.DirectorySeparatorChar, PathComparison);

    static bool SamePath(string a, string b) => string.Equals(a, b, PathComparison);

    static string Trim(string full) => Path.GetPathRoot(full) == full ? full : Path.TrimEndingDirectorySeparator(full);

    /// <summary>The full path with every symbolic link along it resolved (as far as the path exists).</summary>
    internal static string Resolve(string path)
    {
        string full = Trim(Path.GetFullPath(path));
        string root = Path.GetPathRoot(full) ?? "";
        string current = root;
        int links = 0;
        foreach (string part in full[root.Length..].Split([Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar], StringSplitOptions.RemoveEmptyEntries))
        {
            current = Path.Combine(current, part);
            if (links > 40) continue;       // a link loop: compare what we have
            try
            {
                FileSystemInfo? target = Directory.Exists(current) ? Directory.ResolveLinkTarget(current, returnFinalTarget: true)
                    : File.Exists(current) ? File.ResolveLinkTarget(current, returnFinalTarget: true) : null;
                if (target is not null) { current = Trim(Path.GetFullPath(target.FullName)); links++; }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        }
        return Trim(current);
    }
}
