using System.Text.Json.Nodes;
using Microsoft.ML.Dpo.Tokenization.Jinja;

namespace Microsoft.ML.Dpo.Tests.Tokenization;

/// <summary>
/// The Jinja interpreter, construct by construct: 58 small templates (ChatTemplateFixtures/jinja_semantics.json, made by
/// make_semantics.py) rendered identically to Python's jinja2 configured as transformers configures it — printing of
/// values, arithmetic, loops and loop variables, scoping, namespace, macros and call blocks, filter and set blocks, raw,
/// every filter and test, string and dict methods, tojson, whitespace control with trim_blocks/lstrip_blocks,
/// strftime_now, raise_exception and undefined values — plus the error messages and positions.
/// </summary>
[TestClass]
public sealed class JinjaTemplateTests
{
    static readonly Lazy<JsonObject> s_semantics = new(() => (JsonObject)JsonNode.Parse(File.ReadAllText(
        Path.Combine(SharedFiles.RepositoryRoot, "test", "Microsoft.ML.Dpo.Tests", "Tokenization", "ChatTemplateFixtures", "jinja_semantics.json")))!);

    static string Render(string template, Dictionary<string, object?>? variables = null) =>
        JinjaTemplate.Parse(template).Render(variables ?? new Dictionary<string, object?>());

    [TestMethod]
    public void EveryConstructRendersAsPythonJinja2()
    {
        var data = s_semantics.Value;
        var variables = new Dictionary<string, object?>();
        foreach (var (k, v) in data["variables"]!.AsObject()) variables[k] = v;
        var clock = DateTime.Parse((string)data["clock"]!, System.Globalization.CultureInfo.InvariantCulture);
        var failures = new List<string>();
        int n = 0;
        foreach (var c in data["cases"]!.AsArray())
        {
            string template = (string)c!["template"]!;
            n++;
            try
            {
                string text = JinjaTemplate.Parse(template).Render(variables, () => clock);
                if (c["text"] is null) failures.Add($"{template}\n  expected the error {c["error"]}, rendered {text}");
                else if (text != (string)c["text"]!) failures.Add($"{template}\n  expected {Json(c["text"]!)}\n  rendered {Json(text)}");
            }
            catch (JinjaException e)
            {
                if (c["error"] is null) failures.Add($"{template}\n  {e.Message}");
            }
        }
        Assert.AreEqual(58, n);
        Assert.AreEqual(0, failures.Count, string.Join("\n", failures));
    }

    static string Json(object value) => value is JsonNode node ? node.ToJsonString() : System.Text.Json.JsonSerializer.Serialize(value);

    [TestMethod]
    public void PrintsPythonValues()
    {
        var vars = new Dictionary<string, object?>
        {
            ["none"] = null, ["list"] = new List<object?> { 1, "a", null, true, 2.0 }, ["dict"] = new Dictionary<string, object?> { ["k"] = "it's" },
        };
        Assert.AreEqual("None [1, 'a', None, True, 2.0] {'k': \"it's\"} 0.1 1e-07 False", Render("{{ none }} {{ list }} {{ dict }} {{ 0.1 }} {{ 1e-7 }} {{ false }}", vars));
    }

    [TestMethod]
    public void ForLoopVariablesAndElse()
    {
        Assert.AreEqual("1/3 first a>b;2/3 a<b>c;3/3 last b<c;",
            Render("{% for x in ['a', 'b', 'c'] %}{{ loop.index }}/{{ loop.length }} {% if loop.first %}first {{ x }}>{{ loop.nextitem }}{% elif loop.last %}last {{ loop.previtem }}<{{ x }}{% else %}{{ loop.previtem }}<{{ x }}>{{ loop.nextitem }}{% endif %};{% endfor %}"));
        Assert.AreEqual("2 1 0 |none", Render("{% for x in range(3) %}{{ loop.revindex0 }} {% endfor %}|{% for x in [] %}x{% else %}none{% endfor %}"));
        Assert.AreEqual("02", Render("{% for i in range(5) %}{% if i is odd %}{% continue %}{% endif %}{% if i > 3 %}{% break %}{% endif %}{{ i }}{% endfor %}"));
    }

    [TestMethod]
    public void SetInsideALoopStaysInTheLoopButNamespacesCarryOut()
    {
        Assert.AreEqual("0|0 3", Render("{% set total = 0 %}{% set ns = namespace(total=0) %}{% for i in range(3) %}{% set total = total + i %}{% set ns.total = ns.total + i %}{% endfor %}{{ total }}|{{ 0 }} {{ ns.total }}"));
        Assert.AreEqual("in-if", Render("{% if true %}{% set v = 'in-if' %}{% endif %}{{ v }}"), "an if does not open a scope");
    }

    [TestMethod]
    public void MacrosCallBlocksFilterBlocksAndRaw()
    {
        Assert.AreEqual("[a:1] [b:2]", Render("{% macro item(name, n=1) %}[{{ name }}:{{ n }}]{% endmacro %}{{ item('a') }} {{ item('b', n=2) }}"));
        Assert.AreEqual("<<x>>", Render("{% macro wrap() %}<{{ caller() }}>{% endmacro %}{% call wrap() %}<x>{% endcall %}"));
        Assert.AreEqual("HELLO", Render("{% filter upper %}hello{% endfilter %}"));
        Assert.AreEqual("{{ x }}{% if %}", Render("{% raw %}{{ x }}{% if %}{% endraw %}"));
    }

    [TestMethod]
    public void ArgumentUnpackingAndMacroVarargs()
    {
        Assert.AreEqual("a-b|x=1", Render("{% macro pair(a, b) %}{{ a }}-{{ b }}{% endmacro %}{% macro kw() %}{% for k, v in kwargs.items() %}{{ k }}={{ v }}{% endfor %}{% endmacro %}{{ pair(*['a', 'b']) }}|{{ kw(**{'x': 1}) }}"));
        Assert.AreEqual("1:(2, 3)", Render("{% macro head(first) %}{{ first }}:{{ varargs }}{% endmacro %}{{ head(1, 2, 3) }}"));
        var e = Assert.ThrowsExactly<JinjaException>(() => Render("{% macro one(a) %}{{ a }}{% endmacro %}{{ one(1, 2) }}"));
        StringAssert.Contains(e.Message, "takes 1 positional arguments");
    }

    [TestMethod]
    public void WhitespaceControlAsHuggingFaceConfiguresIt()
    {
        Assert.AreEqual("a\nb", Render("{% if true %}\na\n{% endif %}\nb"), "trim_blocks: the newline after a block tag goes");
        Assert.AreEqual("x\n", Render("    {% if true %}\nx\n    {% endif %}\n"), "lstrip_blocks: indentation before a block tag goes; one final newline is dropped");
        Assert.AreEqual("a b", Render("a   {{- ' ' -}}   \nb"), "'-' strips all white space on its side");
        Assert.AreEqual("  x", Render("  {%+ if true %}x{% endif %}"), "{%+ keeps the indentation");
        Assert.AreEqual("a\nb", Render("a\r\nb"), "template newlines are normalized");
    }

    [TestMethod]
    public void ToJsonIsPythonsJsonDumps()
    {
        var vars = new Dictionary<string, object?> { ["tool"] = JsonNode.Parse("""{"name": "f", "parameters": {"city": {"type": "string"}, "n": [1, 2.5, null, true]}, "d": "Zürich \"q\"\n"}""") };
        Assert.AreEqual("""{"name": "f", "parameters": {"city": {"type": "string"}, "n": [1, 2.5, null, true]}, "d": "Zürich \"q\"\n"}""",
            Render("{{ tool | tojson }}", vars), "', ' and ': ' separators, non-ASCII kept, escapes as json.dumps");
        Assert.AreEqual("{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": []\n}", Render("{{ {'a': [1, {}], 'b': []} | tojson(indent=2) }}"));
        Assert.AreEqual("{\"a\":1}", Render("{{ {'a': 1} | tojson(separators=(',', ':')) }}"));
    }

    [TestMethod]
    public void GenerationBlocksMarkTheAssistantCharacters()
    {
        var t = JinjaTemplate.Parse("{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' %}{% generation %}{{ m.content }}!{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}");
        var vars = new Dictionary<string, object?> { ["messages"] = JsonNode.Parse("""[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]""") };
        var r = t.RenderWithGenerationSpans(vars);
        Assert.AreEqual("<user>hi<assistant>yo!<user>q<assistant>a!", r.Text);
        CollectionAssert.AreEqual(new[] { (19, 22), (40, 42) }, r.GenerationSpans.ToArray());
        Assert.AreEqual("yo!a!", new string(r.Text.Where((_, i) => r.CharacterMask()[i]).ToArray()));
    }

    [TestMethod]
    public void StrftimeNowUsesTheGivenClock()
    {
        Assert.AreEqual("07 March 2025, 14:05", JinjaTemplate.Parse("{{ strftime_now('%d %B %Y, %H:%M') }}").Render(new Dictionary<string, object?>(), () => new DateTime(2025, 3, 7, 14, 5, 9)));
    }

    [TestMethod]
    public void RaiseExceptionIsAClearErrorAtItsPosition()
    {
        var e = Assert.ThrowsExactly<JinjaException>(() => Render("line one\n{% if true %}{{ raise_exception('Roles must alternate') }}{% endif %}"));
        Assert.IsTrue(e.RaisedByTemplate);
        Assert.AreEqual("Roles must alternate", e.Reason);
        Assert.AreEqual(2, e.Line);
        Assert.AreEqual(17, e.Column);
    }

    [TestMethod]
    public void UnknownFilterAndTestAreParseErrorsWithLineAndColumn()
    {
        var e = Assert.ThrowsExactly<JinjaException>(() => JinjaTemplate.Parse("{{ x }}\n  {{ x | frobnicate }}"));
        StringAssert.Contains(e.Message, "unknown filter 'frobnicate'");
        Assert.AreEqual((2, 10), (e.Line, e.Column));
        e = Assert.ThrowsExactly<JinjaException>(() => JinjaTemplate.Parse("{% if x is shiny %}{% endif %}"));
        StringAssert.Contains(e.Message, "unknown test 'shiny'");
        Assert.AreEqual((1, 12), (e.Line, e.Column));
    }

    [TestMethod]
    public void UnclosedAndMismatchedBlocksNameTheOpeningTag()
    {
        var e = Assert.ThrowsExactly<JinjaException>(() => JinjaTemplate.Parse("a\n{% for m in messages %}{{ m }}"));
        StringAssert.Contains(e.Message, "unclosed 'for' block");
        StringAssert.Contains(e.Message, "endfor");
        Assert.AreEqual((2, 1), (e.Line, e.Column));
        e = Assert.ThrowsExactly<JinjaException>(() => JinjaTemplate.Parse("{% if x %}{% endfor %}"));
        StringAssert.Contains(e.Message, "unexpected 'endfor'");
        StringAssert.Contains(e.Message, "endif");
        e = Assert.ThrowsExactly<JinjaException>(() => JinjaTemplate.Parse("{{ x "));
        StringAssert.Contains(e.Message, "unclosed '{{'");
        e = Assert.ThrowsExactly<JinjaException>(() => JinjaTemplate.Parse("{# never closed"));
        StringAssert.Contains(e.Message, "unclosed comment");
        e = Assert.ThrowsExactly<JinjaException>(() => JinjaTemplate.Parse("{% raw %}x"));
        StringAssert.Contains(e.Message, "unclosed 'raw' block");
    }

    [TestMethod]
    public void UnsupportedConstructsAreErrors()
    {
        foreach (var (template, expected) in new[]
        {
            ("{% include 'other.jinja' %}", "unsupported tag 'include'"),
            ("{% extends 'base' %}", "unsupported tag 'extends'"),
            ("{% for x in y recursive %}{% endfor %}", "recursive for loops are not supported"),
            ("{% import 'macros.jinja' as m %}", "unsupported tag 'import'"),
            ("{% break %}", "'break' outside a for loop"),
            ("{{ 'a' %}", "unexpected '}'"),
        })
        {
            var e = Assert.ThrowsExactly<JinjaException>(() => JinjaTemplate.Parse(template), template);
            StringAssert.Contains(e.Message, expected, template);
            Assert.AreEqual(1, e.Line, template);
        }
    }

    [TestMethod]
    public void UndefinedValuesFailOnlyWhenUsed()
    {
        Assert.AreEqual("|False|0|d", Render("{{ missing }}|{{ missing is defined }}|{{ missing | length }}|{{ missing | default('d') }}"));
        var e = Assert.ThrowsExactly<JinjaException>(() => Render("{{ missing.attr }}"));
        StringAssert.Contains(e.Message, "'missing' is undefined");
        e = Assert.ThrowsExactly<JinjaException>(() => Render("{{ 1 + missing }}"));
        StringAssert.Contains(e.Message, "'missing' is undefined");
        e = Assert.ThrowsExactly<JinjaException>(() => Render("{{ messages.append(1) }}", new() { ["messages"] = new List<object?>() }));
        StringAssert.Contains(e.Message, "immutable sandbox");
    }
}
