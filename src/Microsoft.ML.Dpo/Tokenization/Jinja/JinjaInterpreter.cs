using System.Text;

namespace Microsoft.ML.Dpo.Tokenization.Jinja;

/// <summary>Variables of one scope; lookups walk up to the template's globals.</summary>
sealed class Scope
{
    public Scope(Scope? parent) => Parent = parent;
    public Scope? Parent { get; }
    public Dictionary<string, object?> Vars { get; } = new(StringComparer.Ordinal);

    public bool TryGet(string name, out object? value)
    {
        for (var s = this; s != null; s = s.Parent)
            if (s.Vars.TryGetValue(name, out value)) return true;
        value = null;
        return false;
    }
}

/// <summary>
/// Executes a parsed template as Jinja2 does: statements write to the current output; a for loop body (each iteration)
/// and a macro call get their own scope, an if does not; <c>namespace()</c> objects carry values out of loops.
/// Errors in an expression become a <see cref="JinjaException"/> at that expression's line and column.
/// </summary>
sealed partial class Interpreter
{
    enum Flow { Normal, Break, Continue }

    readonly JinjaLexer lexer;
    readonly StringBuilder root = new();
    readonly Func<DateTime> now;

    public Interpreter(JinjaLexer lexer, Func<DateTime> now)
    {
        this.lexer = lexer;
        this.now = now;
    }

    public List<(int Start, int End)> GenerationSpans { get; } = new();

    public string Run(List<Stmt> body, Scope globals)
    {
        Exec(body, new Scope(globals), root);
        return root.ToString();
    }

    JinjaException Error(string message, int position, bool raised = false)
    {
        var (line, column) = lexer.Locate(position);
        return new JinjaException(message, line, column, raised);
    }

    // ---- statements ----

    Flow Exec(List<Stmt> body, Scope scope, StringBuilder output)
    {
        foreach (var stmt in body)
        {
            var flow = Exec(stmt, scope, output);
            if (flow != Flow.Normal) return flow;
        }
        return Flow.Normal;
    }

    Flow Exec(Stmt stmt, Scope scope, StringBuilder output)
    {
        switch (stmt)
        {
            case TextStmt text:
                output.Append(text.Text);
                return Flow.Normal;
            case PrintStmt print:
                output.Append(Py.Str(Eval(print.Value, scope)));
                return Flow.Normal;
            case IfStmt ifStmt:
                foreach (var (test, branch) in ifStmt.Branches)
                    if (Py.Truthy(Eval(test, scope))) return Exec(branch, scope, output);
                return ifStmt.Else is null ? Flow.Normal : Exec(ifStmt.Else, scope, output);
            case ForStmt forStmt:
                ExecFor(forStmt, scope, output);
                return Flow.Normal;
            case SetStmt set:
                Assign(set.Target, Eval(set.Value, scope), scope);
                return Flow.Normal;
            case SetBlockStmt setBlock:
            {
                var captured = new StringBuilder();
                Exec(setBlock.Body, scope, captured);
                object? value = captured.ToString();
                foreach (var filter in setBlock.Filters) value = ApplyFilter(filter, value, scope);
                Assign(setBlock.Target, value, scope);
                return Flow.Normal;
            }
            case MacroStmt macro:
                scope.Vars[macro.Name] = MakeMacro(macro.Name, macro.Parameters, macro.Body, scope, macro.Pos, macro.CatchesVarargs, macro.CatchesKwargs);
                return Flow.Normal;
            case CallBlockStmt callBlock:
            {
                var caller = MakeMacro("caller", callBlock.CallerParameters, callBlock.Body, scope, callBlock.Pos);
                output.Append(Py.Str(EvalCall(callBlock.Call, scope, caller)));
                return Flow.Normal;
            }
            case FilterBlockStmt filterBlock:
            {
                var captured = new StringBuilder();
                Exec(filterBlock.Body, scope, captured);
                object? value = captured.ToString();
                foreach (var filter in filterBlock.Filters) value = ApplyFilter(filter, value, scope);
                output.Append(Py.Str(value));
                return Flow.Normal;
            }
            case GenerationStmt generation:
            {
                int start = output.Length;
                var flow = Exec(generation.Body, scope, output);
                if (ReferenceEquals(output, root)) GenerationSpans.Add((start, output.Length));
                return flow;
            }
            case BreakStmt: return Flow.Break;
            case ContinueStmt: return Flow.Continue;
            default:
                throw Error($"unsupported statement {stmt.GetType().Name}", stmt.Pos);
        }
    }

    void ExecFor(ForStmt forStmt, Scope scope, StringBuilder output)
    {
        object? iterable = Eval(forStmt.Iterable, scope);
        List<object?> items;
        try { items = Py.Iterate(iterable); }
        catch (InvalidOperationException e) { throw Error(e.Message, forStmt.Iterable.Pos); }
        if (forStmt.Filter != null)
        {
            var kept = new List<object?>();
            foreach (var item in items)
            {
                var probe = new Scope(scope);
                Assign(forStmt.Target, item, probe);
                if (Py.Truthy(Eval(forStmt.Filter, probe))) kept.Add(item);
            }
            items = kept;
        }
        else if (ReferenceEquals(items, iterable)) items = new List<object?>(items);   // a snapshot, as Python iterates
        if (items.Count == 0)
        {
            if (forStmt.Else != null) Exec(forStmt.Else, scope, output);
            return;
        }
        var loop = new LoopInfo { Items = items };
        for (int i = 0; i < items.Count; i++)
        {
            loop.Index0 = i;
            var iterationScope = new Scope(scope);
            iterationScope.Vars["loop"] = loop;
            Assign(forStmt.Target, items[i], iterationScope);
            if (Exec(forStmt.Body, iterationScope, output) == Flow.Break) break;
        }
    }

    void Assign(Target target, object? value, Scope scope)
    {
        switch (target)
        {
            case NameTarget name:
                scope.Vars[name.Name] = value;
                break;
            case TupleTarget tuple:
            {
                List<object?> values;
                try { values = Py.Iterate(value); }
                catch (InvalidOperationException e) { throw Error($"cannot unpack: {e.Message}", tuple.Pos); }
                if (values.Count != tuple.Items.Count)
                    throw Error($"cannot unpack {values.Count} values into {tuple.Items.Count} names", tuple.Pos);
                for (int i = 0; i < values.Count; i++) Assign(tuple.Items[i], values[i], scope);
                break;
            }
            case AttrTarget attr:
                if (!scope.TryGet(attr.Name, out var ns) || ns is not Namespace nsObject)
                    throw Error($"cannot assign attribute '{attr.Attribute}' on '{attr.Name}': only namespace() objects take attribute assignments", attr.Pos);
                nsObject.Attributes[attr.Attribute] = value;
                break;
        }
    }

    Callable MakeMacro(string name, List<(string Name, Expr? Default)> parameters, List<Stmt> body, Scope definingScope, int pos,
        bool catchesVarargs = false, bool catchesKwargs = false) =>
        new(name, (args, kwargs) =>
        {
            var scope = new Scope(definingScope);
            if (args.Count > parameters.Count && !catchesVarargs)
                throw new InvalidOperationException($"macro '{name}' takes {parameters.Count} positional arguments, {args.Count} given");
            if (catchesVarargs) scope.Vars["varargs"] = args.Skip(parameters.Count).ToArray();   // a tuple, as in Jinja2
            if (catchesKwargs)
                scope.Vars["kwargs"] = kwargs.Where(kv => kv.Key != "caller" && !parameters.Exists(p => p.Name == kv.Key)).ToDictionary(kv => (object)kv.Key, kv => kv.Value);
            for (int i = 0; i < parameters.Count; i++)
            {
                var (pName, pDefault) = parameters[i];
                if (i < args.Count)
                {
                    if (kwargs.ContainsKey(pName)) throw new InvalidOperationException($"macro '{name}' got multiple values for argument '{pName}'");
                    scope.Vars[pName] = args[i];
                }
                else if (kwargs.TryGetValue(pName, out var kv)) scope.Vars[pName] = kv;
                else scope.Vars[pName] = pDefault is null ? new Undefined($"parameter '{pName}' of macro '{name}' was not given") : Eval(pDefault, scope);
            }
            foreach (var key in kwargs.Keys)
            {
                if (key == "caller") { scope.Vars["caller"] = kwargs[key]; continue; }
                if (!parameters.Exists(p => p.Name == key) && !catchesKwargs) throw new InvalidOperationException($"macro '{name}' takes no keyword argument '{key}'");
            }
            var output = new StringBuilder();
            Exec(body, scope, output);
            return output.ToString();
        });

    // ---- expressions ----

    object? Eval(Expr expr, Scope scope)
    {
        try
        {
            return EvalCore(expr, scope);
        }
        catch (Exception e) when (e is InvalidOperationException or NotSupportedException or ArgumentException or FormatException or OverflowException or DivideByZeroException)
        {
            throw Error(e.Message, expr.Pos);
        }
    }

    object? EvalCore(Expr expr, Scope scope)
    {
        switch (expr)
        {
            case ConstExpr c: return c.Value;
            case NameExpr n:
                return scope.TryGet(n.Name, out var found) ? found : new Undefined($"'{n.Name}' is undefined");
            case ListExpr list:
            {
                var result = new List<object?>(list.Items.Count);
                foreach (var item in list.Items) result.Add(Eval(item, scope));
                return result;
            }
            case TupleExpr tuple:
            {
                var result = new object?[tuple.Items.Count];
                for (int i = 0; i < result.Length; i++) result[i] = Eval(tuple.Items[i], scope);
                return result;
            }
            case DictExpr dict:
            {
                var result = new Dictionary<object, object?>();
                foreach (var (k, v) in dict.Items)
                {
                    var key = Eval(k, scope);
                    if (key is null or Undefined or List<object?> or Dictionary<object, object?>) throw Error($"unhashable dict key of type '{Py.TypeName(key)}'", k.Pos);
                    result[key] = Eval(v, scope);
                }
                return result;
            }
            case GetAttrExpr attr: return GetAttribute(Eval(attr.Target, scope), attr.Name);
            case GetItemExpr item: return GetItem(Eval(item.Target, scope), Eval(item.Index, scope));
            case SliceExpr slice:
                return Slice(Eval(slice.Target, scope),
                    slice.Start is null ? null : Eval(slice.Start, scope),
                    slice.Stop is null ? null : Eval(slice.Stop, scope),
                    slice.Step is null ? null : Eval(slice.Step, scope));
            case CallExpr call: return EvalCall(call, scope, null);
            case FilterExpr filter: return ApplyFilter(filter, Eval(filter.Value!, scope), scope);
            case TestExpr test:
            {
                var value = Eval(test.Value, scope);
                var args = new List<object?>(test.Args.Count);
                foreach (var a in test.Args) args.Add(Eval(a, scope));
                bool result = ApplyTest(test.Name, value, args, test.Pos);
                return test.Negated ? !result : result;
            }
            case UnaryExpr unary:
            {
                var operand = Eval(unary.Operand, scope);
                return unary.Op switch
                {
                    "not" => !Py.Truthy(operand),
                    "-" => operand switch
                    {
                        long l => (object)(-l),
                        double d => -d,
                        bool b => b ? -1L : 0L,
                        _ => throw new InvalidOperationException($"bad operand type for unary -: '{Describe(operand)}'"),
                    },
                    _ => operand is long or double ? operand : operand is bool b2 ? (b2 ? 1L : 0L)
                        : throw new InvalidOperationException($"bad operand type for unary +: '{Describe(operand)}'"),
                };
            }
            case BinaryExpr binary:
            {
                if (binary.Op == "and")
                {
                    var left = Eval(binary.Left, scope);
                    return Py.Truthy(left) ? Eval(binary.Right, scope) : left;
                }
                if (binary.Op == "or")
                {
                    var left = Eval(binary.Left, scope);
                    return Py.Truthy(left) ? left : Eval(binary.Right, scope);
                }
                return Binary(binary.Op, Eval(binary.Left, scope), Eval(binary.Right, scope));
            }
            case CompareExpr compare:
            {
                var left = Eval(compare.First, scope);
                foreach (var (op, operandExpr) in compare.Rest)
                {
                    var right = Eval(operandExpr, scope);
                    if (!CompareOp(op, left, right)) return false;
                    left = right;
                }
                return true;
            }
            case CondExpr cond:
                if (Py.Truthy(Eval(cond.Test, scope))) return Eval(cond.Then, scope);
                return cond.Else is null ? new Undefined("the inline if has no else") : Eval(cond.Else, scope);
            default:
                throw Error($"unsupported expression {expr.GetType().Name}", expr.Pos);
        }
    }

    static string Describe(object? v) => v is Undefined u ? $"Undefined ({u.Hint})" : Py.TypeName(v);

    static InvalidOperationException UndefinedUse(Undefined u) => new(u.Hint);

    /// <summary>Evaluates call arguments, expanding <c>*list</c> and <c>**dict</c>.</summary>
    void EvalArguments(List<Expr> argExprs, List<(string Name, Expr Value)> kwargExprs, Scope scope, List<object?> args, Dictionary<string, object?> kwargs)
    {
        foreach (var a in argExprs)
        {
            if (a is not StarExpr star) { args.Add(Eval(a, scope)); continue; }
            var value = Eval(star.Value, scope);
            if (!star.Keywords)
            {
                try { args.AddRange(Py.Iterate(value)); }
                catch (InvalidOperationException e) { throw Error(e.Message, star.Pos); }
            }
            else if (value is Dictionary<object, object?> d) foreach (var (k, v) in d) kwargs[Py.Str(k)] = v;
            else throw Error($"argument after ** must be a mapping, not {Py.TypeName(value)}", star.Pos);
        }
        foreach (var (name, v) in kwargExprs) kwargs[name] = Eval(v, scope);
    }

    object? EvalCall(CallExpr call, Scope scope, Callable? caller)
    {
        var args = new List<object?>(call.Args.Count);
        var kwargs = new Dictionary<string, object?>(StringComparer.Ordinal);
        EvalArguments(call.Args, call.Kwargs, scope, args, kwargs);
        if (caller != null) kwargs["caller"] = caller;
        if (call.Callee is GetAttrExpr method)
        {
            var target = Eval(method.Target, scope);
            if (target is Undefined u) throw Error(u.Hint, method.Target.Pos);
            if (TryCallMethod(target, method.Name, args, kwargs, out var result, call.Pos)) return result;
        }
        var callee = Eval(call.Callee, scope);
        return callee switch
        {
            Callable c => Invoke(c, args, kwargs, call.Pos),
            Undefined u => throw Error(u.Hint + " (called as a function)", call.Callee.Pos),
            _ => throw Error($"'{Py.TypeName(callee)}' object is not callable", call.Callee.Pos),
        };
    }

    object? Invoke(Callable c, List<object?> args, Dictionary<string, object?> kwargs, int pos)
    {
        try
        {
            return c.Invoke(args, kwargs);
        }
        catch (TemplateRaisedException e)
        {
            throw Error(e.Message, pos, raised: true);
        }
    }

    object? GetAttribute(object? target, string name)
    {
        switch (target)
        {
            case Undefined u: throw UndefinedUse(u);
            case Dictionary<object, object?> dict:
                if (name is "items" or "keys" or "values" or "get") return BoundMethod(target, name);
                return dict.TryGetValue(name, out var v) ? v : new Undefined($"'dict object' has no attribute '{name}'");
            case Namespace ns:
                return ns.Attributes.TryGetValue(name, out var a) ? a : new Undefined($"'Namespace' object has no attribute '{name}'");
            case LoopInfo loop: return loop.Get(name);
            case string when IsStringMethod(name): return BoundMethod(target, name);
            default: return new Undefined($"'{Py.TypeName(target)} object' has no attribute '{name}'");
        }
    }

    Callable BoundMethod(object target, string name) =>
        new($"{Py.TypeName(target)}.{name}", (args, kwargs) =>
            TryCallMethod(target, name, args, kwargs, out var result, 0) ? result : throw new InvalidOperationException($"'{Py.TypeName(target)}' has no method '{name}'"));

    object? GetItem(object? target, object? key)
    {
        switch (target)
        {
            case Undefined u: throw UndefinedUse(u);
            case Dictionary<object, object?> dict:
                if (key is Undefined ku) throw UndefinedUse(ku);
                if (key != null && dict.TryGetValue(NormalizeKey(key), out var v)) return v;
                return key is string s ? GetAttribute(target, s) : new Undefined($"'dict object' has no item {Py.Repr(key)}");
            case List<object?> or object?[]:
            {
                var items = (IReadOnlyList<object?>)target;
                if (key is long or bool)
                {
                    long i = Py.ToLong(key);
                    if (i < 0) i += items.Count;
                    return i >= 0 && i < items.Count ? items[(int)i] : new Undefined($"list index {Py.ToLong(key)} out of range");
                }
                if (key is string) return new Undefined($"'{Py.TypeName(target)} object' has no attribute {Py.Repr(key)}");
                throw new InvalidOperationException($"list indices must be integers or slices, not {Py.TypeName(key)}");
            }
            case string str:
            {
                if (key is long or bool)
                {
                    var chars = Py.HasSurrogates(str) ? Py.Chars(str) : null;
                    int count = chars?.Count ?? str.Length;
                    long i = Py.ToLong(key);
                    if (i < 0) i += count;
                    if (i < 0 || i >= count) return new Undefined($"string index {Py.ToLong(key)} out of range");
                    return chars is null ? str[(int)i].ToString() : chars[(int)i];
                }
                return key is string name ? GetAttribute(target, name) : throw new InvalidOperationException($"string indices must be integers, not {Py.TypeName(key)}");
            }
            case Namespace or LoopInfo when key is string name:
                return GetAttribute(target, name);
            default:
                return new Undefined($"'{Py.TypeName(target)} object' has no item {Py.Repr(key)}");
        }
    }

    static object NormalizeKey(object key) => key is bool b ? (b ? 1L : 0L) : key is double d && d == Math.Floor(d) && Math.Abs(d) < 1e15 ? (long)d : key;

    static object? Slice(object? target, object? start, object? stop, object? step)
    {
        if (target is Undefined u) throw UndefinedUse(u);
        long? Int(object? v, string what) => v switch
        {
            null => null,
            long or bool => Py.ToLong(v),
            Undefined => null,
            _ => throw new InvalidOperationException($"slice {what} must be an integer or None, not {Py.TypeName(v)}"),
        };
        long st = Int(step, "step") ?? 1;
        if (st == 0) throw new InvalidOperationException("slice step cannot be zero");
        List<object?> items;
        bool isString = target is string;
        if (target is string s) items = Py.Chars(s);
        else if (target is List<object?> l) items = l;
        else if (target is object?[] t) items = new List<object?>(t);
        else throw new InvalidOperationException($"'{Py.TypeName(target)}' object is not subscriptable");
        int n = items.Count;
        long Clamp(long? v, long defaultValue)
        {
            if (v is null) return defaultValue;
            long x = v.Value;
            if (x < 0) x += n;
            return st > 0 ? Math.Clamp(x, 0, n) : Math.Clamp(x, -1, n - 1);
        }
        long a = Clamp(Int(start, "start"), st > 0 ? 0 : n - 1);
        long b = Clamp(Int(stop, "stop"), st > 0 ? n : -1);
        var result = new List<object?>();
        if (st > 0) for (long i = a; i < b; i += st) result.Add(items[(int)i]);
        else for (long i = a; i > b; i += st) result.Add(items[(int)i]);
        if (isString)
        {
            var sb = new StringBuilder();
            foreach (var c in result) sb.Append((string)c!);
            return sb.ToString();
        }
        return target is object?[] ? result.ToArray() : result;
    }

    static object? Binary(string op, object? a, object? b)
    {
        if (op == "~") return Py.Str(a) + Py.Str(b);
        if (a is Undefined ua) throw UndefinedUse(ua);
        if (b is Undefined ub) throw UndefinedUse(ub);
        switch (op)
        {
            case "+":
                if (a is string sa && b is string sb) return sa + sb;
                if (a is List<object?> la && b is List<object?> lb) { var r = new List<object?>(la); r.AddRange(lb); return r; }
                if (a is object?[] ta && b is object?[] tb) return ta.Concat(tb).ToArray();
                if (Py.IsNumber(a) && Py.IsNumber(b)) return a is double || b is double ? (object)(Py.ToDouble(a) + Py.ToDouble(b)) : checked(Py.ToLong(a) + Py.ToLong(b));
                break;
            case "-":
                if (Py.IsNumber(a) && Py.IsNumber(b)) return a is double || b is double ? (object)(Py.ToDouble(a) - Py.ToDouble(b)) : checked(Py.ToLong(a) - Py.ToLong(b));
                break;
            case "*":
                if (Py.IsNumber(a) && Py.IsNumber(b)) return a is double || b is double ? (object)(Py.ToDouble(a) * Py.ToDouble(b)) : checked(Py.ToLong(a) * Py.ToLong(b));
                if (a is string rs && b is long or bool) return Repeat(rs, Py.ToLong(b));
                if (b is string rs2 && a is long or bool) return Repeat(rs2, Py.ToLong(a));
                if (a is List<object?> rl && b is long or bool) { var r = new List<object?>(); for (long i = 0; i < Py.ToLong(b); i++) r.AddRange(rl); return r; }
                break;
            case "/":
                if (Py.IsNumber(a) && Py.IsNumber(b))
                {
                    double d = Py.ToDouble(b);
                    if (d == 0) throw new DivideByZeroException("division by zero");
                    return Py.ToDouble(a) / d;
                }
                break;
            case "//":
                if (Py.IsNumber(a) && Py.IsNumber(b))
                {
                    if (a is double || b is double)
                    {
                        double d = Py.ToDouble(b);
                        if (d == 0) throw new DivideByZeroException("float floor division by zero");
                        return Math.Floor(Py.ToDouble(a) / d);
                    }
                    long x = Py.ToLong(a), y = Py.ToLong(b);
                    if (y == 0) throw new DivideByZeroException("integer division or modulo by zero");
                    long q = x / y;
                    if ((x % y != 0) && ((x < 0) != (y < 0))) q--;
                    return q;
                }
                break;
            case "%":
                if (Py.IsNumber(a) && Py.IsNumber(b))
                {
                    if (a is double || b is double)
                    {
                        double x = Py.ToDouble(a), y = Py.ToDouble(b);
                        if (y == 0) throw new DivideByZeroException("float modulo");
                        double m = x % y;
                        if (m != 0 && (m < 0) != (y < 0)) m += y;
                        return m;
                    }
                    long xi = Py.ToLong(a), yi = Py.ToLong(b);
                    if (yi == 0) throw new DivideByZeroException("integer division or modulo by zero");
                    long mi = xi % yi;
                    if (mi != 0 && (mi < 0) != (yi < 0)) mi += yi;
                    return mi;
                }
                if (a is string format) return PrintfFormat(format, b);
                break;
            case "**":
                if (Py.IsNumber(a) && Py.IsNumber(b))
                {
                    if (a is double || b is double || Py.ToLong(b) < 0) return Math.Pow(Py.ToDouble(a), Py.ToDouble(b));
                    long result = 1, x = Py.ToLong(a);
                    for (long i = 0; i < Py.ToLong(b); i++) result = checked(result * x);
                    return result;
                }
                break;
        }
        throw new InvalidOperationException($"unsupported operand type(s) for {op}: '{Py.TypeName(a)}' and '{Py.TypeName(b)}'");
    }

    static string Repeat(string s, long n)
    {
        if (n <= 0) return "";
        var sb = new StringBuilder();
        for (long i = 0; i < n; i++) sb.Append(s);
        return sb.ToString();
    }

    static bool CompareOp(string op, object? a, object? b)
    {
        switch (op)
        {
            case "==": return Py.Equals(a, b);
            case "!=": return !Py.Equals(a, b);
            case "in": return Contains(b, a);
            case "not in": return !Contains(b, a);
        }
        if (a is Undefined ua) throw UndefinedUse(ua);
        if (b is Undefined ub) throw UndefinedUse(ub);
        int c = Py.Compare(a, b);
        return op switch { "<" => c < 0, ">" => c > 0, "<=" => c <= 0, _ => c >= 0 };
    }

    internal static bool Contains(object? container, object? item)
    {
        switch (container)
        {
            case string s:
                if (item is string sub) return s.Contains(sub, StringComparison.Ordinal);
                throw new InvalidOperationException($"'in <string>' requires string as left operand, not {Py.TypeName(item)}");
            case Dictionary<object, object?> dict: return item != null && item is not Undefined && dict.ContainsKey(NormalizeKey(item));
            case List<object?> or object?[]:
                foreach (var x in (IReadOnlyList<object?>)container) if (Py.Equals(x, item)) return true;
                return false;
            case Undefined: return false;
            default: throw new InvalidOperationException($"argument of type '{Py.TypeName(container)}' is not iterable");
        }
    }
}
