using System.CommandLine;
using System.Globalization;
using Microsoft.ML.Dpo.Training;

namespace MlDpo.Commands;

/// <summary>Helpers the verbs share: option factories and the error handling around each action.</summary>
internal static class Cli
{
    public static Option<T> Option<T>(string name, string description, T defaultValue) =>
        new(name) { Description = description, DefaultValueFactory = _ => defaultValue };

    public static Option<T> Optional<T>(string name, string description) => new(name) { Description = description };

    public static Option<string> Required(string name, string description) => new(name) { Description = description, Required = true };

    public static Option<string> Choice(string name, string description, string defaultValue, params string[] values) =>
        Option(name, description, defaultValue).AcceptOnlyFromAmong(values);

    /// <summary>The writers of this invocation (the console, or what a test passed in).</summary>
    public static (TextWriter Out, TextWriter Error) Writers(ParseResult result) =>
        (result.InvocationConfiguration.Output, result.InvocationConfiguration.Error);

    /// <summary>True when the invocation writes to a real, interactive terminal (progress bars allowed).</summary>
    public static bool IsTerminal(ParseResult result) =>
        ReferenceEquals(result.InvocationConfiguration.Output, Console.Out) && !Console.IsOutputRedirected;

    /// <summary>
    /// Sets a synchronous action that runs on a worker thread (so Ctrl+C is handled while it computes) and turns the library's
    /// user-facing exceptions into one "error:" line on stderr and exit code 1; cancellation gives exit code 130.
    /// </summary>
    public static void SetAction(Command command, Func<ParseResult, CancellationToken, int> action)
    {
        command.SetAction((result, cancellation) => Task.Run(() =>
        {
            var error = result.InvocationConfiguration.Error;
            try
            {
                return action(result, cancellation);
            }
            catch (OperationCanceledException)
            {
                error.WriteLine($"mldpo {command.Name}: cancelled.");
                return 130;
            }
            catch (Exception e) when (e is CliException or FileNotFoundException or DirectoryNotFoundException or InvalidDataException
                or ArgumentException or InvalidOperationException or NotSupportedException or FormatException or TrainingDivergedException or IOException)
            {
                error.WriteLine($"mldpo {command.Name}: error: {CliMessages.ForCli(e.Message)}");
                return 1;
            }
        }));
    }

    public static string Format(double value) =>
        double.IsFinite(value) ? value.ToString("G6", CultureInfo.InvariantCulture) : value.ToString(CultureInfo.InvariantCulture);
}

/// <summary>A usage error with a message for the user.</summary>
internal sealed class CliException(string message) : Exception(message);
