namespace Microsoft.ML.Dpo.Checkpoints;

/// <summary>
/// Writes a directory atomically: into a temporary sibling that then replaces the target as a whole. A crash between the two
/// renames leaves the previous version at <see cref="PreviousVersion"/>, which readers of checkpoints fall back to.
/// </summary>
internal static class AtomicDirectory
{
    /// <summary>Where the previous version waits while the new one is moved into place.</summary>
    public static string PreviousVersion(string directory)
    {
        string full = Path.GetFullPath(directory).TrimEnd(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar);
        return Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileName(full)}.old");
    }

    /// <summary>Calls <paramref name="write"/> with an empty temporary folder, then puts that folder in place of <paramref name="directory"/>.</summary>
    public static void Write(string directory, Action<string> write)
    {
        string full = Path.GetFullPath(directory).TrimEnd(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar);
        string parent = Path.GetDirectoryName(full) ?? throw new ArgumentException($"Cannot write into the root '{directory}'.", nameof(directory));
        Directory.CreateDirectory(parent);
        string tmp = Path.Combine(parent, $".{Path.GetFileName(full)}.tmp-{Guid.NewGuid():N}");
        string old = PreviousVersion(full);
        Directory.CreateDirectory(tmp);
        try
        {
            write(tmp);
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
