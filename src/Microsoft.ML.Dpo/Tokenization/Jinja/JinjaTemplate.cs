namespace Microsoft.ML.Dpo.Tokenization.Jinja;

/// <summary>
/// A compiled Jinja2 template, rendered as Hugging Face transformers renders chat templates: Jinja2 semantics with
/// <c>trim_blocks=True</c> and <c>lstrip_blocks=True</c>, the loop controls <c>break</c>/<c>continue</c>, Python's
/// value semantics (truthiness, <c>None</c> printing as "None", lists printing as Python lists, <c>//</c> and <c>%</c>
/// flooring), Hugging Face's <c>tojson</c> (Python's <c>json.dumps</c> with <c>ensure_ascii=False</c>),
/// <c>raise_exception(message)</c>, <c>strftime_now(format)</c> and <c>{% generation %}</c> blocks. A construct outside
/// the supported set (e.g. <c>include</c>, <c>extends</c>, an unknown filter or test) is a <see cref="JinjaException"/>
/// at parse time with its line and column. Parsed templates are immutable and may be rendered from several threads.
/// </summary>
public sealed class JinjaTemplate
{
    readonly List<Stmt> body;
    readonly JinjaLexer lexer;

    JinjaTemplate(string source, List<Stmt> body, JinjaLexer lexer)
    {
        Source = source;
        this.body = body;
        this.lexer = lexer;
    }

    /// <summary>The template's source, as given.</summary>
    public string Source { get; }

    /// <summary>Parses a template.</summary>
    /// <param name="source">The Jinja source.</param>
    /// <returns>The template.</returns>
    /// <exception cref="JinjaException">A syntax error, an unclosed block, or an unsupported tag, filter or test; the message names the line and column.</exception>
    public static JinjaTemplate Parse(string source)
    {
        ArgumentNullException.ThrowIfNull(source);
        var (tokens, lexer) = JinjaLexer.Tokenize(source);
        return new JinjaTemplate(source, JinjaParser.Parse(tokens, lexer), lexer);
    }

    /// <summary>Renders the template.</summary>
    /// <param name="variables">The variables: strings, booleans, integers, floating-point numbers, null (Python's None),
    /// lists, dictionaries with string keys, and System.Text.Json nodes or elements (converted as JSON maps to Python).</param>
    /// <param name="now">The clock for <c>strftime_now</c>; null for the local time.</param>
    /// <returns>The rendered text.</returns>
    /// <exception cref="JinjaException">An error while rendering (e.g. an undefined value used in arithmetic, or the template's own <c>raise_exception</c>).</exception>
    public string Render(IReadOnlyDictionary<string, object?> variables, Func<DateTime>? now = null) => RenderWithGenerationSpans(variables, now).Text;

    /// <summary>
    /// Renders the template and reports which characters of the output came from <c>{% generation %}…{% endgeneration %}</c>
    /// blocks (the assistant's text, in templates written for Hugging Face's <c>return_assistant_tokens_mask</c>).
    /// </summary>
    /// <param name="variables">The variables (see <see cref="Render"/>).</param>
    /// <param name="now">The clock for <c>strftime_now</c>; null for the local time.</param>
    /// <returns>The text and the [start, end) character spans of its generation blocks, in order.</returns>
    public JinjaRendering RenderWithGenerationSpans(IReadOnlyDictionary<string, object?> variables, Func<DateTime>? now = null)
    {
        ArgumentNullException.ThrowIfNull(variables);
        var interpreter = new Interpreter(lexer, now ?? (() => DateTime.Now));
        var globals = new Scope(null);
        interpreter.AddGlobals(globals);
        foreach (var (name, value) in variables) globals.Vars[name] = Py.FromClr(value);
        string text = interpreter.Run(body, globals);
        return new JinjaRendering(text, interpreter.GenerationSpans.ToArray());
    }
}

/// <summary>A rendered template and the character spans its <c>{% generation %}</c> blocks produced.</summary>
/// <param name="Text">The rendered text.</param>
/// <param name="GenerationSpans">The [Start, End) character ranges of <see cref="Text"/> written inside generation blocks, in order.</param>
public sealed record JinjaRendering(string Text, IReadOnlyList<(int Start, int End)> GenerationSpans)
{
    /// <summary>One flag per character of <see cref="Text"/>: true inside a generation block.</summary>
    /// <returns>The mask.</returns>
    public bool[] CharacterMask()
    {
        var mask = new bool[Text.Length];
        foreach (var (start, end) in GenerationSpans)
            for (int i = start; i < end; i++) mask[i] = true;
        return mask;
    }
}
