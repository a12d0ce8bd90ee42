namespace Microsoft.ML.Dpo.Checkpoints;

/// <summary>
/// Writes a directory atomically: into a temporary sibling that then replaces the target as a whole. A crash between the two
/// renames leaves the previous version at <see cref="PreviousVersion"/>, which readers of checkpoints fall back to.
/// Every folder written carries <see cref="OutputFolder.MarkerFileName"/>, and an existing folder is replaced only as
/// <see cref="OutputFolder.EnsureReplaceable(string, OutputOverwrite, IEnumerable{string?})"/> allows.
/// </summary>
internal static class AtomicDirectory
{
    /// <summary>Where the previous version waits while the new one is moved into place.</summary>
    public static string PreviousVersion(string directory)
    {
        string full = Path.GetFullPath(directory).TrimEnd(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar);
        return Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileName(full)}.old");
    }

    /// <summary>The prefix of the temporary folders <see cref="Write"/> creates beside <paramref name="directory"/> (a 32-digit hex id follows).</summary>
    public static string TemporaryPrefix(string directory) => $".{Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(directory)))}.tmp-";

    /// <summary>
    /// Calls <paramref name="write"/> with an empty temporary folder, then puts that folder in place of <paramref name="directory"/>
    /// — after checking, before anything is written, that an existing folder may be replaced (<paramref name="overwrite"/>;
    /// never one that is or contains the current directory or one of <paramref name="protectedPaths"/>).
    /// </summary>
    public static void Write(string directory, Action<string> write, OutputOverwrite overwrite = OutputOverwrite.OwnOutputOnly, IEnumerable<string?>? protectedPaths = null)
    {
        OutputFolder.EnsureReplaceable(directory, overwrite, protectedPaths ?? []);
        string full = Path.GetFullPath(directory).TrimEnd(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar);
        string parent = Path.GetDirectoryName(full) ?? throw new ArgumentException($"Cannot write into the root '{directory}'.", nameof(directory));
        Directory.CreateDirectory(parent);
        string tmp = Path.Combine(parent, $"{TemporaryPrefix(full)}{Guid.NewGuid():N}");
        string old = PreviousVersion(full);
        if (Directory.Exists(old) && overwrite != OutputOverwrite.Always && !OutputFolder.IsOwn(old))
            throw new OutputFolderException($"'{old}', where the previous version of '{directory}' is kept while it is replaced, holds files this library did not write; move it away first.");
        Directory.CreateDirectory(tmp);
        try
        {
            write(tmp);
            OutputFolder.WriteMarker(tmp);
            if (Directory.Exists(old)) Directory.Delete(old, recursive: true);
            if (Directory.Exists(full)) Directory.Move(full, old);
            Directory.Move(tmp, full);
            if (Directory.Exists(old)) Directory.Delete(old, recursive: true);
        }
        catch
        {
            try { if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true); } catch (IOException) { }
            if (!Directory.Exists(full) && Directory.Exists(old)) Directory.Move(old, full);   // put the previous version back
            throw;
        }
    }
}
