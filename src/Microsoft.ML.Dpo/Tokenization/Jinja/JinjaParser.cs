using System.Globalization;

namespace Microsoft.ML.Dpo.Tokenization.Jinja;

/// <summary>
/// Recursive-descent parser from tokens to the syntax tree, with Jinja2's grammar and operator precedence (lowest first):
/// <c>x if c else y</c>, <c>or</c>, <c>and</c>, <c>not</c>, comparisons and <c>in</c>/<c>not in</c>, <c>+ -</c>, <c>~</c>,
/// <c>* / // %</c>, <c>**</c>, unary <c>- +</c>, then primaries with <c>.attr</c>, <c>[index]</c>, <c>[a:b:c]</c>, calls,
/// <c>| filter</c> and <c>is test</c>. Tags outside the supported set are errors with their line and column.
/// </summary>
sealed class JinjaParser
{
    static readonly HashSet<string> s_supportedTags = new(StringComparer.Ordinal)
    {
        "for", "if", "set", "macro", "call", "filter", "generation", "break", "continue", "raw",
    };

    readonly List<Token> tokens;
    readonly JinjaLexer lexer;
    int index;
    int loopDepth;

    JinjaParser(List<Token> tokens, JinjaLexer lexer)
    {
        this.tokens = tokens;
        this.lexer = lexer;
    }

    public static List<Stmt> Parse(List<Token> tokens, JinjaLexer lexer)
    {
        var parser = new JinjaParser(tokens, lexer);
        var (body, end, _) = parser.ParseBody(null, null, 0);
        if (end != null) throw parser.Error($"unexpected '{end}' without an open block", parser.tokens[parser.index - 1].Position);
        return body;
    }

    Token Current => tokens[index];
    Token Peek(int ahead = 1) => tokens[Math.Min(index + ahead, tokens.Count - 1)];
    Token Next() => tokens[index++];

    JinjaException Error(string message, int position)
    {
        var (line, column) = lexer.Locate(position);
        return new JinjaException(message, line, column);
    }

    static string Describe(Token t) => t.Kind switch
    {
        TokenKind.Eof => "the end of the template",
        TokenKind.BlockEnd => "'%}'",
        TokenKind.VarEnd => "'}}'",
        TokenKind.String => "a string",
        TokenKind.Data => "template text",
        _ => $"'{t.Value}'",
    };

    Token Expect(TokenKind kind, string? value = null)
    {
        var t = Current;
        if (t.Kind != kind || (value != null && t.Value != value))
        {
            string wanted = value != null ? $"'{value}'" : kind switch
            {
                TokenKind.Name => "a name",
                TokenKind.BlockEnd => "'%}'",
                TokenKind.VarEnd => "'}}'",
                _ => kind.ToString(),
            };
            throw Error($"expected {wanted}, found {Describe(t)}", t.Position);
        }
        index++;
        return t;
    }

    bool SkipOperator(string op)
    {
        if (!Current.IsOperator(op)) return false;
        index++;
        return true;
    }

    bool SkipName(string name)
    {
        if (!Current.IsName(name)) return false;
        index++;
        return true;
    }

    // ---- statements ----

    /// <summary>Parses statements until a block tag named in <paramref name="stops"/>; returns the body and that name (null at the end).</summary>
    (List<Stmt> Body, string? End, int EndPos) ParseBody(string[]? stops, string? opener, int openerPos)
    {
        var body = new List<Stmt>();
        while (true)
        {
            var t = Current;
            switch (t.Kind)
            {
                case TokenKind.Eof:
                    if (stops != null)
                        throw Error($"unclosed '{opener}' block: expected '{{% {stops[^1]} %}}' before the end of the template", openerPos);
                    return (body, null, t.Position);
                case TokenKind.Data:
                    index++;
                    body.Add(new TextStmt(t.Position, t.Value));
                    break;
                case TokenKind.VarBegin:
                {
                    index++;
                    var value = ParseTuple(withCondExpr: true);
                    Expect(TokenKind.VarEnd);
                    body.Add(new PrintStmt(t.Position, value));
                    break;
                }
                case TokenKind.BlockBegin:
                {
                    var nameToken = Peek();
                    if (nameToken.Kind != TokenKind.Name) throw Error($"expected a tag name after '{{%', found {Describe(nameToken)}", nameToken.Position);
                    string name = nameToken.Value;
                    if (stops != null && Array.IndexOf(stops, name) >= 0)
                    {
                        index += 2;
                        return (body, name, nameToken.Position);
                    }
                    if (name.StartsWith("end", StringComparison.Ordinal) || name is "elif" or "else")
                    {
                        string where = opener is null ? "" : $" (inside the '{opener}' block opened at {At(openerPos)}, which expects '{stops![^1]}')";
                        throw Error($"unexpected '{name}'{where}", nameToken.Position);
                    }
                    index += 2;
                    body.Add(ParseStatement(name, t.Position, nameToken.Position));
                    break;
                }
                default:
                    throw Error($"unexpected {Describe(t)}", t.Position);
            }
        }
    }

    string At(int pos)
    {
        var (line, column) = lexer.Locate(pos);
        return $"line {line}, column {column}";
    }

    Stmt ParseStatement(string name, int pos, int namePos)
    {
        switch (name)
        {
            case "for": return ParseFor(pos);
            case "if": return ParseIf(pos);
            case "set": return ParseSet(pos);
            case "macro": return ParseMacro(pos);
            case "call": return ParseCallBlock(pos);
            case "filter":
            {
                var filters = ParseFilterChain(null);
                Expect(TokenKind.BlockEnd);
                var (body, _, _) = ParseBody(new[] { "endfilter" }, "filter", pos);
                Expect(TokenKind.BlockEnd);
                return new FilterBlockStmt(pos, filters, body);
            }
            case "generation":
            {
                Expect(TokenKind.BlockEnd);
                var (body, _, _) = ParseBody(new[] { "endgeneration" }, "generation", pos);
                Expect(TokenKind.BlockEnd);
                return new GenerationStmt(pos, body);
            }
            case "break":
            case "continue":
                if (loopDepth == 0) throw Error($"'{name}' outside a for loop", namePos);
                Expect(TokenKind.BlockEnd);
                return name == "break" ? new BreakStmt(pos) : new ContinueStmt(pos);
            default:
                throw Error($"unsupported tag '{name}': chat templates may use {string.Join(", ", s_supportedTags.Order(StringComparer.Ordinal))}", namePos);
        }
    }

    ForStmt ParseFor(int pos)
    {
        var target = ParseAssignTarget(allowAttribute: false);
        Expect(TokenKind.Name, "in");
        var iterable = ParseTuple(withCondExpr: false);
        Expr? filter = null;
        if (SkipName("if")) filter = ParseExpression(withCondExpr: true);
        if (Current.IsName("recursive")) throw Error("recursive for loops are not supported", Current.Position);
        Expect(TokenKind.BlockEnd);
        loopDepth++;
        var (body, end, _) = ParseBody(new[] { "else", "endfor" }, "for", pos);
        loopDepth--;
        Expect(TokenKind.BlockEnd);
        List<Stmt>? elseBody = null;
        if (end == "else")
        {
            (elseBody, _, _) = ParseBody(new[] { "endfor" }, "for", pos);
            Expect(TokenKind.BlockEnd);
        }
        return new ForStmt(pos, target, iterable, filter, body, elseBody);
    }

    IfStmt ParseIf(int pos)
    {
        var branches = new List<(Expr, List<Stmt>)>();
        List<Stmt>? elseBody = null;
        var test = ParseTuple(withCondExpr: false);
        while (true)
        {
            Expect(TokenKind.BlockEnd);
            var (body, end, _) = ParseBody(new[] { "elif", "else", "endif" }, "if", pos);
            branches.Add((test, body));
            if (end == "elif") { test = ParseTuple(withCondExpr: false); continue; }
            Expect(TokenKind.BlockEnd);
            if (end == "else")
            {
                (elseBody, _, _) = ParseBody(new[] { "endif" }, "if", pos);
                Expect(TokenKind.BlockEnd);
            }
            return new IfStmt(pos, branches, elseBody);
        }
    }

    Stmt ParseSet(int pos)
    {
        var target = ParseAssignTarget(allowAttribute: true);
        if (SkipOperator("="))
        {
            var value = ParseTuple(withCondExpr: true);
            Expect(TokenKind.BlockEnd);
            return new SetStmt(pos, target, value);
        }
        var filters = Current.IsOperator("|") ? ParseFilterChain(null) : new List<FilterExpr>();
        Expect(TokenKind.BlockEnd);
        var (body, _, _) = ParseBody(new[] { "endset" }, "set", pos);
        Expect(TokenKind.BlockEnd);
        return new SetBlockStmt(pos, target, filters, body);
    }

    Target ParseAssignTarget(bool allowAttribute)
    {
        var first = ParseSingleTarget(allowAttribute);
        if (!Current.IsOperator(",")) return first;
        var items = new List<Target> { first };
        while (SkipOperator(","))
        {
            if (Current.Kind != TokenKind.Name) break;
            items.Add(ParseSingleTarget(allowAttribute: false));
        }
        return new TupleTarget(first.Pos, items);
    }

    Target ParseSingleTarget(bool allowAttribute)
    {
        if (Current.IsOperator("("))
        {
            int p = Next().Position;
            var inner = ParseAssignTarget(allowAttribute: false);
            Expect(TokenKind.Operator, ")");
            return inner is TupleTarget ? inner : new TupleTarget(p, new List<Target> { inner });
        }
        var name = Expect(TokenKind.Name);
        if (allowAttribute && SkipOperator("."))
        {
            var attribute = Expect(TokenKind.Name);
            return new AttrTarget(name.Position, name.Value, attribute.Value);
        }
        return new NameTarget(name.Position, name.Value);
    }

    List<(string, Expr?)> ParseParameters()
    {
        var parameters = new List<(string, Expr?)>();
        Expect(TokenKind.Operator, "(");
        while (!Current.IsOperator(")"))
        {
            if (parameters.Count > 0) Expect(TokenKind.Operator, ",");
            if (Current.IsOperator(")")) break;
            var name = Expect(TokenKind.Name);
            Expr? defaultValue = SkipOperator("=") ? ParseExpression(withCondExpr: true) : null;
            parameters.Add((name.Value, defaultValue));
        }
        Expect(TokenKind.Operator, ")");
        return parameters;
    }

    MacroStmt ParseMacro(int pos)
    {
        var name = Expect(TokenKind.Name);
        var parameters = ParseParameters();
        Expect(TokenKind.BlockEnd);
        int saved = loopDepth;
        loopDepth = 0;
        int bodyStart = index;
        var (body, _, _) = ParseBody(new[] { "endmacro" }, "macro", pos);
        loopDepth = saved;
        // As in Jinja2, a macro that mentions varargs or kwargs takes extra positional or keyword arguments into them.
        bool varargs = false, kw = false;
        for (int i = bodyStart; i < index; i++)
        {
            if (tokens[i].IsName("varargs")) varargs = true;
            if (tokens[i].IsName("kwargs")) kw = true;
        }
        Expect(TokenKind.BlockEnd);
        return new MacroStmt(pos, name.Value, parameters, body, varargs, kw);
    }

    CallBlockStmt ParseCallBlock(int pos)
    {
        var parameters = Current.IsOperator("(") ? ParseParameters() : new List<(string, Expr?)>();
        var callPos = Current.Position;
        var expr = ParseExpression(withCondExpr: true);
        if (expr is not CallExpr call) throw Error("expected a macro call after 'call'", callPos);
        Expect(TokenKind.BlockEnd);
        var (body, _, _) = ParseBody(new[] { "endcall" }, "call", pos);
        Expect(TokenKind.BlockEnd);
        return new CallBlockStmt(pos, parameters, call, body);
    }

    // ---- expressions ----

    Expr ParseTuple(bool withCondExpr)
    {
        int pos = Current.Position;
        var first = ParseExpression(withCondExpr);
        if (!Current.IsOperator(",")) return first;
        var items = new List<Expr> { first };
        while (SkipOperator(","))
        {
            if (Current.Kind is TokenKind.BlockEnd or TokenKind.VarEnd || Current.IsOperator(")")) break;
            items.Add(ParseExpression(withCondExpr));
        }
        return new TupleExpr(pos, items);
    }

    Expr ParseExpression(bool withCondExpr)
    {
        var expr = ParseOr();
        if (!withCondExpr) return expr;
        while (Current.IsName("if"))
        {
            int pos = Next().Position;
            var test = ParseOr();
            Expr? otherwise = SkipName("else") ? ParseExpression(withCondExpr: true) : null;
            expr = new CondExpr(pos, test, expr, otherwise);
        }
        return expr;
    }

    Expr ParseOr()
    {
        var left = ParseAnd();
        while (Current.IsName("or"))
        {
            int pos = Next().Position;
            left = new BinaryExpr(pos, "or", left, ParseAnd());
        }
        return left;
    }

    Expr ParseAnd()
    {
        var left = ParseNot();
        while (Current.IsName("and"))
        {
            int pos = Next().Position;
            left = new BinaryExpr(pos, "and", left, ParseNot());
        }
        return left;
    }

    Expr ParseNot()
    {
        if (Current.IsName("not"))
        {
            int pos = Next().Position;
            return new UnaryExpr(pos, "not", ParseNot());
        }
        return ParseCompare();
    }

    Expr ParseCompare()
    {
        int pos = Current.Position;
        var first = ParseMath1();
        List<(string, Expr)>? rest = null;
        while (true)
        {
            var t = Current;
            string? op = null;
            if (t.Kind == TokenKind.Operator && t.Value is "==" or "!=" or "<" or ">" or "<=" or ">=") { op = t.Value; index++; }
            else if (t.IsName("in")) { op = "in"; index++; }
            else if (t.IsName("not") && Peek().IsName("in")) { op = "not in"; index += 2; }
            if (op == null) break;
            (rest ??= new()).Add((op, ParseMath1()));
        }
        return rest == null ? first : new CompareExpr(pos, first, rest);
    }

    Expr ParseMath1()
    {
        var left = ParseConcat();
        while (Current.Kind == TokenKind.Operator && Current.Value is "+" or "-")
        {
            var op = Next();
            left = new BinaryExpr(op.Position, op.Value, left, ParseConcat());
        }
        return left;
    }

    Expr ParseConcat()
    {
        var left = ParseMath2();
        while (Current.IsOperator("~"))
        {
            int pos = Next().Position;
            left = new BinaryExpr(pos, "~", left, ParseMath2());
        }
        return left;
    }

    Expr ParseMath2()
    {
        var left = ParsePow();
        while (Current.Kind == TokenKind.Operator && Current.Value is "*" or "/" or "//" or "%")
        {
            var op = Next();
            left = new BinaryExpr(op.Position, op.Value, left, ParsePow());
        }
        return left;
    }

    Expr ParsePow()
    {
        var left = ParseUnary(withFilter: true);
        while (Current.IsOperator("**"))
        {
            int pos = Next().Position;
            left = new BinaryExpr(pos, "**", left, ParseUnary(withFilter: true));
        }
        return left;
    }

    Expr ParseUnary(bool withFilter)
    {
        Expr node;
        if (Current.Kind == TokenKind.Operator && Current.Value is "-" or "+")
        {
            var op = Next();
            node = new UnaryExpr(op.Position, op.Value, ParseUnary(withFilter: false));
        }
        else node = ParsePrimary();
        node = ParsePostfix(node);
        return withFilter ? ParseFilterAndTests(node) : node;
    }

    Expr ParsePrimary()
    {
        var t = Current;
        switch (t.Kind)
        {
            case TokenKind.Name:
                index++;
                return t.Value switch
                {
                    "true" or "True" => new ConstExpr(t.Position, true),
                    "false" or "False" => new ConstExpr(t.Position, false),
                    "none" or "None" => new ConstExpr(t.Position, null),
                    _ => new NameExpr(t.Position, t.Value),
                };
            case TokenKind.String:
            {
                index++;
                string value = t.Value;
                while (Current.Kind == TokenKind.String) value += Next().Value;
                return new ConstExpr(t.Position, value);
            }
            case TokenKind.Integer:
                index++;
                if (!long.TryParse(t.Value, NumberStyles.None, CultureInfo.InvariantCulture, out long l))
                    throw Error($"integer literal {t.Value} is too large", t.Position);
                return new ConstExpr(t.Position, l);
            case TokenKind.Float:
                index++;
                return new ConstExpr(t.Position, double.Parse(t.Value, NumberStyles.Float, CultureInfo.InvariantCulture));
            case TokenKind.Operator when t.Value == "(":
            {
                index++;
                if (SkipOperator(")")) return new TupleExpr(t.Position, new List<Expr>());
                var first = ParseExpression(withCondExpr: true);
                if (Current.IsOperator(","))
                {
                    var items = new List<Expr> { first };
                    while (SkipOperator(","))
                    {
                        if (Current.IsOperator(")")) break;
                        items.Add(ParseExpression(withCondExpr: true));
                    }
                    Expect(TokenKind.Operator, ")");
                    return new TupleExpr(t.Position, items);
                }
                Expect(TokenKind.Operator, ")");
                return first;
            }
            case TokenKind.Operator when t.Value == "[":
            {
                index++;
                var items = new List<Expr>();
                while (!Current.IsOperator("]"))
                {
                    if (items.Count > 0) Expect(TokenKind.Operator, ",");
                    if (Current.IsOperator("]")) break;
                    items.Add(ParseExpression(withCondExpr: true));
                }
                Expect(TokenKind.Operator, "]");
                return new ListExpr(t.Position, items);
            }
            case TokenKind.Operator when t.Value == "{":
            {
                index++;
                var items = new List<(Expr, Expr)>();
                while (!Current.IsOperator("}"))
                {
                    if (items.Count > 0) Expect(TokenKind.Operator, ",");
                    if (Current.IsOperator("}")) break;
                    var key = ParseExpression(withCondExpr: true);
                    Expect(TokenKind.Operator, ":");
                    items.Add((key, ParseExpression(withCondExpr: true)));
                }
                Expect(TokenKind.Operator, "}");
                return new DictExpr(t.Position, items);
            }
            default:
                throw Error($"expected an expression, found {Describe(t)}", t.Position);
        }
    }

    Expr ParsePostfix(Expr node)
    {
        while (true)
        {
            var t = Current;
            if (t.IsOperator("."))
            {
                index++;
                var name = Current;
                if (name.Kind == TokenKind.Name) { index++; node = new GetAttrExpr(t.Position, node, name.Value); }
                else if (name.Kind == TokenKind.Integer) { index++; node = new GetItemExpr(t.Position, node, new ConstExpr(name.Position, long.Parse(name.Value, CultureInfo.InvariantCulture))); }
                else throw Error($"expected an attribute name after '.', found {Describe(name)}", name.Position);
            }
            else if (t.IsOperator("[")) node = ParseSubscript(node);
            else if (t.IsOperator("(")) node = ParseCall(node);
            else return node;
        }
    }

    Expr ParseSubscript(Expr target)
    {
        int pos = Expect(TokenKind.Operator, "[").Position;
        Expr? start = null, stop = null, step = null;
        bool slice = false;
        if (!Current.IsOperator(":")) start = ParseExpression(withCondExpr: true);
        if (SkipOperator(":"))
        {
            slice = true;
            if (!Current.IsOperator("]") && !Current.IsOperator(":")) stop = ParseExpression(withCondExpr: true);
            if (SkipOperator(":") && !Current.IsOperator("]")) step = ParseExpression(withCondExpr: true);
        }
        if (Current.IsOperator(",")) throw Error("tuple subscripts (x[a, b]) are not supported", Current.Position);
        Expect(TokenKind.Operator, "]");
        return slice ? new SliceExpr(pos, target, start, stop, step) : new GetItemExpr(pos, target, start!);
    }

    (List<Expr>, List<(string, Expr)>) ParseArguments()
    {
        Expect(TokenKind.Operator, "(");
        var args = new List<Expr>();
        var kwargs = new List<(string, Expr)>();
        while (!Current.IsOperator(")"))
        {
            if (args.Count + kwargs.Count > 0) Expect(TokenKind.Operator, ",");
            if (Current.IsOperator(")")) break;
            if (Current.IsOperator("*") || Current.IsOperator("**"))
            {
                var star = Next();
                args.Add(new StarExpr(star.Position, ParseExpression(withCondExpr: true), star.Value == "**"));
                continue;
            }
            if (Current.Kind == TokenKind.Name && Peek().IsOperator("="))
            {
                string name = Next().Value;
                index++;
                kwargs.Add((name, ParseExpression(withCondExpr: true)));
            }
            else
            {
                if (kwargs.Count > 0 || args.Exists(a => a is StarExpr { Keywords: true })) throw Error("a positional argument follows a keyword argument", Current.Position);
                args.Add(ParseExpression(withCondExpr: true));
            }
        }
        Expect(TokenKind.Operator, ")");
        return (args, kwargs);
    }

    CallExpr ParseCall(Expr callee)
    {
        int pos = callee.Pos;
        var (args, kwargs) = ParseArguments();
        return new CallExpr(pos, callee, args, kwargs);
    }

    List<FilterExpr> ParseFilterChain(Expr? first)
    {
        var filters = new List<FilterExpr>();
        bool needBar = false;
        while (true)
        {
            if (needBar && !SkipOperator("|")) return filters;
            if (!needBar && Current.IsOperator("|")) index++;
            filters.Add(ParseFilter(first));
            first = null;
            needBar = true;
        }
    }

    FilterExpr ParseFilter(Expr? value)
    {
        var name = Expect(TokenKind.Name);
        string fullName = name.Value;
        while (Current.IsOperator(".") && Peek().Kind == TokenKind.Name) { index++; fullName += "." + Next().Value; }
        if (Array.IndexOf(Interpreter.FilterNames, fullName) < 0)
            throw Error($"unknown filter '{fullName}' (supported: {string.Join(", ", Interpreter.FilterNames)})", name.Position);
        if (Current.IsOperator("("))
        {
            var (args, kwargs) = ParseArguments();
            return new FilterExpr(name.Position, value, fullName, args, kwargs);
        }
        return new FilterExpr(name.Position, value, fullName, new(), new());
    }

    Expr ParseFilterAndTests(Expr node)
    {
        while (true)
        {
            if (SkipOperator("|"))
            {
                var f = ParseFilter(node);
                node = f;
                if (Current.IsOperator("(")) node = ParseCall(node);
            }
            else if (Current.IsName("is"))
            {
                int pos = Next().Position;
                bool negated = SkipName("not");
                var name = Expect(TokenKind.Name);
                string fullName = name.Value;
                while (Current.IsOperator(".") && Peek().Kind == TokenKind.Name) { index++; fullName += "." + Next().Value; }
                if (Array.IndexOf(Interpreter.TestNames, fullName) < 0)
                    throw Error($"unknown test '{fullName}' (supported: {string.Join(", ", Interpreter.TestNames.Where(t => char.IsLetter(t[0])))})", name.Position);
                var args = new List<Expr>();
                if (Current.IsOperator("("))
                {
                    var (a, kw) = ParseArguments();
                    if (kw.Count > 0) throw Error("keyword arguments to tests are not supported", pos);
                    args = a;
                }
                else if ((Current.Kind is TokenKind.Name or TokenKind.String or TokenKind.Integer or TokenKind.Float
                          || Current.IsOperator("[") || Current.IsOperator("{"))
                         && !(Current.IsName("else") || Current.IsName("or") || Current.IsName("and")))
                {
                    args.Add(ParsePostfix(ParsePrimary()));
                }
                node = new TestExpr(pos, node, fullName, args, negated);
            }
            else if (Current.IsOperator("(")) node = ParseCall(node);
            else return node;
        }
    }
}
