using MlDpo.Commands;

namespace Microsoft.ML.Dpo.Tests;

/// <summary>Runs <c>mldpo</c> in process, as the CLI tests do: the exit code and both streams, echoed to the test log.</summary>
internal static class CliRunner
{
    /// <summary>Runs <c>mldpo <paramref name="args"/></c>; the command line, exit code and output go to the test's standard output.</summary>
    public static (int Code, string Out, string Error) Run(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = CliApp.Run(args, output, error);
        Console.WriteLine($"mldpo {string.Join(' ', args)} -> {code}\n{output}{error}");
        return (code, output.ToString(), error.ToString());
    }
}
