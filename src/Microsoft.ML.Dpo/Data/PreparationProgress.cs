using System.Diagnostics;

namespace Microsoft.ML.Dpo.Data;

/// <summary>
/// Progress lines for a long data preparation (reading a file, tokenizing): one line at most every <see cref="Interval"/>,
/// none for a preparation that ends sooner, so short runs stay quiet.
/// </summary>
internal sealed class PreparationProgress(Action<string>? log, string what, int? total = null, string unit = "rows")
{
    /// <summary>The least time between two lines (2 s; tests lower it).</summary>
    internal static TimeSpan Interval { get; set; } = TimeSpan.FromSeconds(2);

    readonly Stopwatch clock = Stopwatch.StartNew();
    TimeSpan next = Interval;
    long count;

    /// <summary>Counts one more row, and writes a line when <see cref="Interval"/> has passed since the last.</summary>
    public void Advance()
    {
        count++;
        if (log is null || clock.Elapsed < next) return;
        next = clock.Elapsed + Interval;
        log(total is int t and > 0
            ? FormattableString.Invariant($"{what}: {count:N0} of {t:N0} {unit} ({100.0 * count / t:F0} %)")
            : FormattableString.Invariant($"{what}: {count:N0} {unit}"));
    }
}
