namespace Microsoft.ML.Dpo.Runtime;

/// <summary>The process's resident memory as Linux reports it in <c>/proc/self/status</c> (null elsewhere).</summary>
internal static class ProcessMemory
{
    /// <summary>The peak resident set size so far (<c>VmHWM</c>), in bytes; null where <c>/proc/self/status</c> is absent.</summary>
    public static long? PeakResidentBytes() => StatusBytes("VmHWM:");

    /// <summary>The current resident set size (<c>VmRSS</c>), in bytes; null where <c>/proc/self/status</c> is absent.</summary>
    public static long? ResidentBytes() => StatusBytes("VmRSS:");

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
