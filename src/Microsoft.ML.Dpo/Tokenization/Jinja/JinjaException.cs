namespace Microsoft.ML.Dpo.Tokenization.Jinja;

/// <summary>
/// An error in a Jinja template: a syntax error or an unsupported construct (found when the template is parsed), or an
/// error while rendering (an undefined variable used as a value, a type error, a <c>raise_exception(...)</c> call).
/// The message names the template's line and column (1-based) where they are known.
/// </summary>
public sealed class JinjaException : Exception
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What is wrong, without the position.</param>
    /// <param name="line">The 1-based line in the template, or 0 when unknown.</param>
    /// <param name="column">The 1-based column in the template, or 0 when unknown.</param>
    /// <param name="raisedByTemplate">Whether the template itself raised the error with <c>raise_exception</c>.</param>
    public JinjaException(string message, int line = 0, int column = 0, bool raisedByTemplate = false)
        : base(line > 0 ? $"{message} (template line {line}, column {column})" : message)
    {
        Reason = message;
        Line = line;
        Column = column;
        RaisedByTemplate = raisedByTemplate;
    }

    /// <summary>What is wrong, without the position.</summary>
    public string Reason { get; }

    /// <summary>The 1-based line in the template, or 0 when unknown.</summary>
    public int Line { get; }

    /// <summary>The 1-based column in the template, or 0 when unknown.</summary>
    public int Column { get; }

    /// <summary>Whether the template raised this error itself with <c>raise_exception(message)</c> (e.g. "Conversation roles must alternate").</summary>
    public bool RaisedByTemplate { get; }
}
