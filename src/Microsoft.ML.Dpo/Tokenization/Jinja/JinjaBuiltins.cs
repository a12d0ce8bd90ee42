using System.Globalization;
using System.Net;
using System.Text;

namespace Microsoft.ML.Dpo.Tokenization.Jinja;

// Filters, tests, string and dict methods, and global functions, with the behaviour of Jinja2 3.1 and Python 3 (and
// Hugging Face's own tojson, raise_exception and strftime_now).
sealed partial class Interpreter
{
    public static readonly string[] FilterNames =
    {
        "abs", "attr", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e", "escape", "first", "float", "format", "indent",
        "int", "items", "join", "keys", "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr",
        "replace", "reverse", "round", "safe", "select", "selectattr", "sort", "string", "sum", "title", "tojson", "trim",
        "unique", "upper", "values", "wordcount",
    };

    public static readonly string[] TestNames =
    {
        "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "even", "false", "float", "ge", "gt", "in",
        "integer", "iterable", "le", "lower", "lt", "mapping", "ne", "none", "number", "odd", "sameas", "sequence",
        "string", "true", "undefined", "upper", "==", "!=", "<", "<=", ">", ">=", "greaterthan", "lessthan",
    };

    /// <summary>The globals every template sees: <c>range</c>, <c>namespace</c>, <c>dict</c>, <c>raise_exception</c>, <c>strftime_now</c>.</summary>
    public void AddGlobals(Scope globals)
    {
        globals.Vars["range"] = new Callable("range", (args, _) =>
        {
            if (args.Count is < 1 or > 3) throw new InvalidOperationException($"range expected 1 to 3 arguments, got {args.Count}");
            long start = 0, stop, step = 1;
            if (args.Count == 1) stop = Py.ToLong(args[0]);
            else { start = Py.ToLong(args[0]); stop = Py.ToLong(args[1]); if (args.Count == 3) step = Py.ToLong(args[2]); }
            if (step == 0) throw new InvalidOperationException("range() arg 3 must not be zero");
            var result = new List<object?>();
            for (long i = start; step > 0 ? i < stop : i > stop; i += step)
            {
                result.Add(i);
                if (result.Count > 1_000_000) throw new InvalidOperationException("range too big");
            }
            return result;
        });
        globals.Vars["namespace"] = new Callable("namespace", (args, kwargs) =>
        {
            var ns = new Namespace();
            foreach (var a in args)
            {
                if (a is not Dictionary<object, object?> d) throw new InvalidOperationException("namespace() takes a dict or keyword arguments");
                foreach (var (k, v) in d) ns.Attributes[Py.Str(k)] = v;
            }
            foreach (var (k, v) in kwargs) ns.Attributes[k] = v;
            return ns;
        });
        globals.Vars["dict"] = new Callable("dict", (args, kwargs) =>
        {
            var d = new Dictionary<object, object?>();
            foreach (var a in args)
                if (a is Dictionary<object, object?> src) foreach (var (k, v) in src) d[k] = v;
                else throw new InvalidOperationException("dict() takes a dict or keyword arguments");
            foreach (var (k, v) in kwargs) d[k] = v;
            return d;
        });
        globals.Vars["raise_exception"] = new Callable("raise_exception", (args, _) =>
            throw new TemplateRaisedException(args.Count > 0 ? Py.Str(args[0]) : "raise_exception() was called"));
        globals.Vars["strftime_now"] = new Callable("strftime_now", (args, _) =>
            Strftime(now(), args.Count > 0 && args[0] is string f ? f : throw new InvalidOperationException("strftime_now(format) needs a format string")));
    }

    /// <summary>Thrown by <c>raise_exception</c>; becomes a <see cref="JinjaException"/> with <see cref="JinjaException.RaisedByTemplate"/>.</summary>
    internal sealed class TemplateRaisedException(string message) : Exception(message);

    // ---- filters ----

    object? ApplyFilter(FilterExpr filter, object? value, Scope scope)
    {
        var args = new List<object?>(filter.Args.Count);
        var kwargs = new Dictionary<string, object?>(StringComparer.Ordinal);
        EvalArguments(filter.Args, filter.Kwargs, scope, args, kwargs);
        try
        {
            return Filter(filter.Name, value, args, kwargs, filter.Pos);
        }
        catch (Exception e) when (e is InvalidOperationException or NotSupportedException or ArgumentException or FormatException or OverflowException)
        {
            throw Error($"filter '{filter.Name}': {e.Message}", filter.Pos);
        }
    }

    static object? Arg(List<object?> args, Dictionary<string, object?> kwargs, int position, string name, object? defaultValue)
    {
        if (kwargs.TryGetValue(name, out var v)) return v;
        return position < args.Count ? args[position] : defaultValue;
    }

    object? Filter(string name, object? value, List<object?> args, Dictionary<string, object?> kwargs, int pos)
    {
        switch (name)
        {
            case "default":
            case "d":
            {
                var fallback = Arg(args, kwargs, 0, "default_value", "");
                bool boolean = Py.Truthy(Arg(args, kwargs, 1, "boolean", false));
                return value is Undefined || (boolean && !Py.Truthy(value)) ? fallback : value;
            }
            case "safe": return value;
            case "string": return Py.Str(value);
        }
        // Jinja2's Undefined prints as "" and iterates as empty, so most filters accept it; these do not.
        if (value is Undefined u && name is "abs" or "round" or "dictsort" or "attr" or "reverse" or "int" or "float" or "indent")
            throw UndefinedUse((Undefined)value!);
        switch (name)
        {
            case "trim": return Strip(Str(value, name), Arg(args, kwargs, 0, "chars", null) as string, true, true);
            case "upper": return Str(value, name).ToUpperInvariant();
            case "lower": return Str(value, name).ToLowerInvariant();
            case "capitalize": return Capitalize(Str(value, name));
            case "title": return JinjaTitle(Str(value, name));
            case "length":
            case "count": return Py.Length(value);
            case "first":
            {
                if (value is Undefined) return new Undefined("first of an undefined value");
                var items = Py.Iterate(value);
                return items.Count > 0 ? items[0] : new Undefined("first of an empty sequence");
            }
            case "last":
            {
                if (value is Undefined) return new Undefined("last of an undefined value");
                var items = Py.Iterate(value);
                return items.Count > 0 ? items[^1] : new Undefined("last of an empty sequence");
            }
            case "join":
            {
                string separator = Py.Str(Arg(args, kwargs, 0, "d", ""));
                var attribute = Arg(args, kwargs, 1, "attribute", null);
                var items = Py.Iterate(value);
                var sb = new StringBuilder();
                for (int i = 0; i < items.Count; i++)
                {
                    if (i > 0) sb.Append(separator);
                    sb.Append(Py.Str(attribute is null ? items[i] : Attribute(items[i], attribute)));
                }
                return sb.ToString();
            }
            case "replace":
            {
                string s = Str(value, name);
                string old = Py.Str(args.Count > 0 ? args[0] : throw new InvalidOperationException("replace needs the old and new strings"));
                string replacement = Py.Str(args.Count > 1 ? args[1] : throw new InvalidOperationException("replace needs the old and new strings"));
                var count = Arg(args, kwargs, 2, "count", null);
                return Replace(s, old, replacement, count is null ? -1 : Py.ToLong(count));
            }
            case "items":
                if (value is Undefined) return new List<object?>();
                if (value is not Dictionary<object, object?> itemsDict) throw new InvalidOperationException($"can only get item pairs from a mapping, not {Py.TypeName(value)}");
                return itemsDict.Select(kv => (object?)new object?[] { kv.Key, kv.Value }).ToList();
            case "keys": return value is Dictionary<object, object?> dk ? dk.Keys.Cast<object?>().ToList() : throw new InvalidOperationException("keys needs a mapping");
            case "values": return value is Dictionary<object, object?> dv ? dv.Values.ToList() : throw new InvalidOperationException("values needs a mapping");
            case "list": return new List<object?>(Py.Iterate(value));
            case "int":
            {
                var fallback = Arg(args, kwargs, 0, "default", 0L);
                long numberBase = Py.ToLong(Arg(args, kwargs, 1, "base", 10L));
                switch (value)
                {
                    case long or bool: return Py.ToLong(value);
                    case double di: return double.IsFinite(di) ? (long)Math.Truncate(di) : fallback;
                    case string s:
                    {
                        string t = s.Trim().Replace("_", "");
                        if (numberBase == 10 && long.TryParse(t, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long l)) return l;
                        if (numberBase != 10)
                        {
                            try { return Convert.ToInt64(t, (int)numberBase); } catch (Exception e) when (e is FormatException or ArgumentException or OverflowException) { return fallback; }
                        }
                        return double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out double f) && double.IsFinite(f) ? (long)Math.Truncate(f) : fallback;
                    }
                    default: return fallback;
                }
            }
            case "float":
            {
                var fallback = Arg(args, kwargs, 0, "default", 0.0);
                return value switch
                {
                    long or bool or double => Py.ToDouble(value),
                    string s => ParsePythonFloat(s.Trim()) ?? fallback,
                    _ => fallback,
                };
            }
            case "abs":
                return value switch
                {
                    long l => (object)Math.Abs(l),
                    double da => Math.Abs(da),
                    bool b => b ? 1L : 0L,
                    _ => throw new InvalidOperationException($"bad operand type for abs(): '{Py.TypeName(value)}'"),
                };
            case "round":
            {
                int precision = (int)Py.ToLong(Arg(args, kwargs, 0, "precision", 0L));
                string method = Py.Str(Arg(args, kwargs, 1, "method", "common"));
                if (method == "common")
                {
                    if (value is long or bool) return Py.ToLong(value);
                    return Math.Round(Py.ToDouble(value), Math.Clamp(precision, 0, 15), MidpointRounding.ToEven);
                }
                double scale = Math.Pow(10, precision), x = Py.ToDouble(value) * scale;
                return method switch
                {
                    "ceil" => Math.Ceiling(x) / scale,
                    "floor" => Math.Floor(x) / scale,
                    _ => throw new InvalidOperationException("method must be common, ceil or floor"),
                };
            }
            case "tojson":
            {
                bool ensureAscii = Py.Truthy(Arg(args, kwargs, 0, "ensure_ascii", false));
                var indent = Arg(args, kwargs, 1, "indent", null);
                var separators = Arg(args, kwargs, 2, "separators", null);
                bool sortKeys = Py.Truthy(Arg(args, kwargs, 3, "sort_keys", false));
                string? indentText = indent switch
                {
                    null => null,
                    long n => new string(' ', (int)Math.Max(0, n)),
                    string s => s,
                    _ => throw new InvalidOperationException("indent must be an integer or a string"),
                };
                string? itemSep = null, keySep = null;
                if (separators != null)
                {
                    var parts = Py.Iterate(separators);
                    if (parts.Count != 2) throw new InvalidOperationException("separators must be an (item_separator, key_separator) pair");
                    itemSep = Py.Str(parts[0]);
                    keySep = Py.Str(parts[1]);
                }
                string json = Py.ToJson(value, indentText, itemSep, keySep, sortKeys);
                return ensureAscii ? EscapeNonAscii(json) : json;
            }
            case "indent":
            {
                var width = Arg(args, kwargs, 0, "width", 4L);
                string indentation = width is string ws ? ws : new string(' ', (int)Py.ToLong(width));
                bool first = Py.Truthy(Arg(args, kwargs, 1, "first", false));
                bool blank = Py.Truthy(Arg(args, kwargs, 2, "blank", false));
                string s = Str(value, name) + "\n";
                var lines = SplitLines(s);
                string rv;
                if (blank) rv = string.Join("\n" + indentation, lines);
                else
                {
                    rv = lines[0];
                    if (lines.Count > 1)
                        rv += "\n" + string.Join("\n", lines.Skip(1).Select(line => line.Length > 0 ? indentation + line : line));
                }
                return first ? indentation + rv : rv;
            }
            case "select":
            case "reject":
            {
                var items = Py.Iterate(value);
                bool keep = name == "select";
                string? test = args.Count > 0 ? Py.Str(args[0]) : null;
                var testArgs = args.Skip(1).ToList();
                return items.Where(x => (test is null ? Py.Truthy(x) : ApplyTest(test, x, testArgs, pos)) == keep).ToList();
            }
            case "selectattr":
            case "rejectattr":
            {
                var items = Py.Iterate(value);
                bool keep = name == "selectattr";
                if (args.Count == 0) throw new InvalidOperationException("needs an attribute name");
                var attribute = args[0];
                string? test = args.Count > 1 ? Py.Str(args[1]) : null;
                var testArgs = args.Skip(2).ToList();
                return items.Where(x =>
                {
                    var a = Attribute(x, attribute);
                    return (test is null ? Py.Truthy(a) : ApplyTest(test, a, testArgs, pos)) == keep;
                }).ToList();
            }
            case "map":
            {
                var items = Py.Iterate(value);
                if (kwargs.TryGetValue("attribute", out var attribute))
                {
                    kwargs.TryGetValue("default", out var fallback);
                    bool hasDefault = kwargs.ContainsKey("default");
                    return items.Select(x =>
                    {
                        var a = Attribute(x, attribute);
                        return a is Undefined && hasDefault ? fallback : a;
                    }).ToList();
                }
                if (args.Count == 0) throw new InvalidOperationException("map needs a filter name or attribute=");
                string filterName = Py.Str(args[0]);
                var filterArgs = args.Skip(1).ToList();
                return items.Select(x => Filter(filterName, x, filterArgs, kwargs, pos)).ToList();
            }
            case "unique":
            {
                bool caseSensitive = Py.Truthy(Arg(args, kwargs, 0, "case_sensitive", false));
                var attribute = Arg(args, kwargs, 1, "attribute", null);
                var seen = new List<object?>();
                var result = new List<object?>();
                foreach (var x in Py.Iterate(value))
                {
                    var key = SortKey(attribute is null ? x : Attribute(x, attribute), caseSensitive);
                    if (seen.Exists(k => Py.Equals(k, key))) continue;
                    seen.Add(key);
                    result.Add(x);
                }
                return result;
            }
            case "sort":
            {
                bool reverse = Py.Truthy(Arg(args, kwargs, 0, "reverse", false));
                bool caseSensitive = Py.Truthy(Arg(args, kwargs, 1, "case_sensitive", false));
                var attribute = Arg(args, kwargs, 2, "attribute", null);
                var items = new List<object?>(Py.Iterate(value));
                var keyed = items.Select((x, i) => (Key: SortKey(attribute is null ? x : Attribute(x, attribute), caseSensitive), Item: x, Index: i)).ToList();
                keyed.Sort((p, q) =>
                {
                    int c = Py.Compare(p.Key, q.Key);
                    if (reverse) c = -c;
                    return c != 0 ? c : p.Index.CompareTo(q.Index);
                });
                return keyed.Select(k => k.Item).ToList();
            }
            case "dictsort":
            {
                if (value is not Dictionary<object, object?> sortDict) throw new InvalidOperationException("dictsort needs a mapping");
                bool caseSensitive = Py.Truthy(Arg(args, kwargs, 0, "case_sensitive", false));
                string by = Py.Str(Arg(args, kwargs, 1, "by", "key"));
                bool reverse = Py.Truthy(Arg(args, kwargs, 2, "reverse", false));
                var pairs = sortDict.Select(kv => new object?[] { kv.Key, kv.Value }).ToList();
                pairs.Sort((p, q) =>
                {
                    int i = by == "value" ? 1 : 0;
                    int c = Py.Compare(SortKey(p[i], caseSensitive), SortKey(q[i], caseSensitive));
                    return reverse ? -c : c;
                });
                return pairs.Cast<object?>().ToList();
            }
            case "reverse":
                if (value is string rs) { var chars = Py.Chars(rs); chars.Reverse(); return string.Concat(chars.Cast<string>()); }
                { var items = new List<object?>(Py.Iterate(value)); items.Reverse(); return items; }
            case "batch":
            {
                long size = Py.ToLong(Arg(args, kwargs, 0, "linecount", null));
                if (size <= 0) throw new InvalidOperationException("linecount must be positive");
                bool fill = args.Count > 1 || kwargs.ContainsKey("fill_with");
                var fillWith = Arg(args, kwargs, 1, "fill_with", null);
                var result = new List<object?>();
                List<object?>? current = null;
                foreach (var x in Py.Iterate(value))
                {
                    current ??= new List<object?>();
                    current.Add(x);
                    if (current.Count == size) { result.Add(current); current = null; }
                }
                if (current != null)
                {
                    if (fill) while (current.Count < size) current.Add(fillWith);
                    result.Add(current);
                }
                return result;
            }
            case "e":
            case "escape":
                return WebUtility.HtmlEncode(Py.Str(value)).Replace("&#39;", "&#39;").Replace("&quot;", "&#34;");
            case "sum":
            {
                var attribute = Arg(args, kwargs, 0, "attribute", null);
                object? total = Arg(args, kwargs, 1, "start", 0L);
                foreach (var x in Py.Iterate(value)) total = Binary("+", total, attribute is null ? x : Attribute(x, attribute));
                return total;
            }
            case "min":
            case "max":
            {
                bool caseSensitive = Py.Truthy(Arg(args, kwargs, 0, "case_sensitive", false));
                var attribute = Arg(args, kwargs, 1, "attribute", null);
                var items = Py.Iterate(value);
                if (items.Count == 0) return new Undefined($"{name} of an empty sequence");
                var best = items[0];
                foreach (var x in items.Skip(1))
                {
                    int c = Py.Compare(SortKey(attribute is null ? x : Attribute(x, attribute), caseSensitive), SortKey(attribute is null ? best : Attribute(best, attribute), caseSensitive));
                    if (name == "min" ? c < 0 : c > 0) best = x;
                }
                return best;
            }
            case "attr": return GetAttribute(value, Py.Str(args.Count > 0 ? args[0] : null));
            case "wordcount": return (long)Str(value, name).Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries).Length;
            case "center": return Center(Str(value, name), (int)Py.ToLong(Arg(args, kwargs, 0, "width", 80L)), ' ');
            case "format":
                if (args.Count > 0 && kwargs.Count > 0) throw new InvalidOperationException("can't handle positional and keyword arguments at the same time");
                return PrintfFormat(Str(value, name), kwargs.Count > 0 ? kwargs.ToDictionary(kv => (object)kv.Key, kv => kv.Value) : args.Count == 1 ? args[0] : args.ToArray());
        }
        throw Error($"unknown filter '{name}' (supported: {string.Join(", ", FilterNames)})", pos);
    }

    static string Str(object? value, string filter) => value as string ?? Py.Str(value);

    static string Center(string s, int width, char fill)
    {
        int n = (int)Py.Length(s);
        if (width <= n) return s;
        int marg = width - n, left = marg / 2 + (marg & width & 1);
        return new string(fill, left) + s + new string(fill, marg - left);
    }

    /// <summary>Python's printf-style <c>format % values</c> (the <c>format</c> filter and the <c>%</c> operator on strings):
    /// conversions s r a d i u f F e E g G x X o c %, with flags, width, precision and <c>%(name)s</c> keys.</summary>
    internal static string PrintfFormat(string format, object? values)
    {
        var sb = new StringBuilder();
        var items = values is object?[] tuple ? tuple : new[] { values };
        int next = 0;
        object? Take()
        {
            if (next >= items.Length) throw new InvalidOperationException("not enough arguments for format string");
            return items[next++];
        }
        for (int i = 0; i < format.Length; i++)
        {
            char c = format[i];
            if (c != '%') { sb.Append(c); continue; }
            if (++i >= format.Length) throw new InvalidOperationException("incomplete format");
            object? arg = null;
            bool haveArg = false;
            if (format[i] == '(')
            {
                int close = format.IndexOf(')', i);
                if (close < 0) throw new InvalidOperationException("incomplete format key");
                string key = format[(i + 1)..close];
                if (values is not Dictionary<object, object?> map) throw new InvalidOperationException("format requires a mapping");
                arg = map.TryGetValue(key, out var found) ? found : throw new InvalidOperationException($"KeyError: '{key}'");
                haveArg = true;
                i = close + 1;
            }
            string flags = "";
            while (i < format.Length && "-+ #0".Contains(format[i])) flags += format[i++];
            int width = 0;
            while (i < format.Length && char.IsAsciiDigit(format[i])) width = width * 10 + (format[i++] - '0');
            int precision = -1;
            if (i < format.Length && format[i] == '.')
            {
                i++;
                precision = 0;
                while (i < format.Length && char.IsAsciiDigit(format[i])) precision = precision * 10 + (format[i++] - '0');
            }
            if (i >= format.Length) throw new InvalidOperationException("incomplete format");
            char conv = format[i];
            if (conv == '%') { sb.Append('%'); continue; }
            if (!haveArg) arg = Take();
            var ci = CultureInfo.InvariantCulture;
            string text = conv switch
            {
                's' => Py.Str(arg),
                'r' or 'a' => Py.Repr(arg),
                'd' or 'i' or 'u' => ((long)Math.Truncate(Py.ToDouble(arg))).ToString(ci),
                'f' or 'F' => Py.ToDouble(arg).ToString("F" + (precision < 0 ? 6 : precision), ci),
                'e' or 'E' => FormatExponent(Py.ToDouble(arg), precision < 0 ? 6 : precision, conv),
                'g' or 'G' => Py.ToDouble(arg).ToString((conv == 'g' ? "g" : "G") + (precision < 0 ? 6 : Math.Max(precision, 1)), ci),
                'x' => Py.ToLong(arg).ToString("x", ci),
                'X' => Py.ToLong(arg).ToString("X", ci),
                'o' => Convert.ToString(Py.ToLong(arg), 8),
                'c' => arg is string cs ? cs : char.ConvertFromUtf32((int)Py.ToLong(arg)),
                _ => throw new NotSupportedException($"unsupported format character '{conv}'"),
            };
            if (conv is 's' or 'r' or 'a' && precision >= 0 && text.Length > precision) text = text[..precision];
            if (conv is 'd' or 'i' or 'u' or 'f' or 'F' or 'e' or 'E' or 'g' or 'G' && !text.StartsWith('-'))
                text = flags.Contains('+') ? "+" + text : flags.Contains(' ') ? " " + text : text;
            if (text.Length < width)
            {
                if (flags.Contains('-')) text = text.PadRight(width);
                else if (flags.Contains('0') && conv is not ('s' or 'r' or 'a' or 'c'))
                {
                    int sign = text.Length > 0 && (text[0] is '-' or '+' or ' ') ? 1 : 0;
                    text = text[..sign] + new string('0', width - text.Length) + text[sign..];
                }
                else text = text.PadLeft(width);
            }
            sb.Append(text);
        }
        if (next < items.Length && values is not Dictionary<object, object?>) throw new InvalidOperationException("not all arguments converted during string formatting");
        return sb.ToString();
    }

    static string FormatExponent(double d, int precision, char conv)
    {
        string s = d.ToString((conv == 'e' ? "e" : "E") + precision, CultureInfo.InvariantCulture);   // e.g. 1.500000e+003
        int e = s.IndexOfAny(new[] { 'e', 'E' });
        string mantissa = s[..e], exponent = s[(e + 2)..].TrimStart('0');
        return mantissa + s[e] + s[e + 1] + (exponent.Length < 2 ? exponent.PadLeft(2, '0') : exponent);
    }

    object? Attribute(object? item, object? attribute)
    {
        // Jinja's attribute="a.b" or an integer index.
        if (attribute is long l) return GetItem(item, l);
        object? current = item;
        foreach (string part in Py.Str(attribute).Split('.'))
        {
            if (current is Undefined) return current;
            current = long.TryParse(part, NumberStyles.None, CultureInfo.InvariantCulture, out long index) && current is List<object?> or object?[]
                ? GetItem(current, index)
                : GetItem(current, part);
        }
        return current;
    }

    static object? SortKey(object? v, bool caseSensitive) => !caseSensitive && v is string s ? s.ToLowerInvariant() : v;

    static double? ParsePythonFloat(string s)
    {
        string t = s.Replace("_", "").ToLowerInvariant();
        if (t is "inf" or "+inf" or "infinity" or "+infinity") return double.PositiveInfinity;
        if (t is "-inf" or "-infinity") return double.NegativeInfinity;
        if (t is "nan" or "+nan" or "-nan") return double.NaN;
        return double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out double d) ? d : null;
    }

    static string EscapeNonAscii(string s)
    {
        var sb = new StringBuilder(s.Length);
        foreach (char c in s)
            if (c < 128) sb.Append(c);
            else sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
        return sb.ToString();
    }

    /// <summary>Python's <c>str.splitlines()</c>.</summary>
    static List<string> SplitLines(string s)
    {
        var lines = new List<string>();
        int start = 0;
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            if (c is '\n' or '\r' or '\v' or '\f' or '\x1c' or '\x1d' or '\x1e' or '\x85' or '\u2028' or '\u2029')
            {
                lines.Add(s[start..i]);
                if (c == '\r' && i + 1 < s.Length && s[i + 1] == '\n') i++;
                start = i + 1;
            }
        }
        if (start < s.Length) lines.Add(s[start..]);
        return lines;
    }

    static string Capitalize(string s)
    {
        if (s.Length == 0) return s;
        int firstLength = char.IsHighSurrogate(s[0]) && s.Length > 1 ? 2 : 1;
        return s[..firstLength].ToUpperInvariant() + s[firstLength..].ToLowerInvariant();
    }

    /// <summary>Jinja's <c>title</c> filter: each word (split at runs of '-', white space and opening brackets) capitalized.</summary>
    static string JinjaTitle(string s)
    {
        var sb = new StringBuilder(s.Length);
        bool wordStart = true;
        foreach (char c in s)
        {
            bool separator = c is '-' or '(' or '{' or '[' or '<' || JinjaLexer.IsPythonSpace(c);
            if (separator) { sb.Append(c); wordStart = true; }
            else if (wordStart) { sb.Append(char.ToUpperInvariant(c)); wordStart = false; }
            else sb.Append(char.ToLowerInvariant(c));
        }
        return sb.ToString();
    }

    /// <summary>Python's <c>str.title()</c>: a cased letter after an uncased character starts a word.</summary>
    static string PythonTitle(string s)
    {
        var sb = new StringBuilder(s.Length);
        bool previousCased = false;
        foreach (char c in s)
        {
            if (char.IsUpper(c) || char.IsLower(c) || CharUnicodeInfo.GetUnicodeCategory(c) == UnicodeCategory.TitlecaseLetter)
            {
                sb.Append(previousCased ? char.ToLowerInvariant(c) : char.ToUpperInvariant(c));
                previousCased = true;
            }
            else { sb.Append(c); previousCased = false; }
        }
        return sb.ToString();
    }

    static string Strip(string s, string? chars, bool left, bool right)
    {
        int start = 0, end = s.Length;
        Func<char, bool> strip = chars is null ? JinjaLexer.IsPythonSpace : c => chars.Contains(c);
        if (left) while (start < end && strip(s[start])) start++;
        if (right) while (end > start && strip(s[end - 1])) end--;
        return s[start..end];
    }

    static string Replace(string s, string old, string replacement, long count)
    {
        if (count < 0) return old.Length == 0 ? InsertEverywhere(s, replacement, long.MaxValue) : s.Replace(old, replacement, StringComparison.Ordinal);
        if (old.Length == 0) return InsertEverywhere(s, replacement, count);
        var sb = new StringBuilder();
        int pos = 0;
        for (long n = 0; n < count; n++)
        {
            int at = s.IndexOf(old, pos, StringComparison.Ordinal);
            if (at < 0) break;
            sb.Append(s, pos, at - pos).Append(replacement);
            pos = at + old.Length;
        }
        return sb.Append(s, pos, s.Length - pos).ToString();
    }

    static string InsertEverywhere(string s, string insert, long count)
    {
        var sb = new StringBuilder();
        long n = 0;
        foreach (var c in Py.Chars(s))
        {
            if (n++ < count) sb.Append(insert);
            sb.Append((string)c!);
        }
        if (n < count) sb.Append(insert);
        return sb.ToString();
    }

    // ---- tests ----

    bool ApplyTest(string name, object? value, List<object?> args, int pos)
    {
        object? Arg0() => args.Count > 0 ? args[0] : throw new InvalidOperationException($"test '{name}' needs an argument");
        switch (name)
        {
            case "defined": return value is not Undefined;
            case "undefined": return value is Undefined;
            case "none": return value is null;
            case "string": return value is string;
            case "number": return value is long or double or bool;
            case "integer": return value is long;
            case "float": return value is double;
            case "boolean": return value is bool;
            case "true": return value is true;
            case "false": return value is false;
            case "mapping": return value is Dictionary<object, object?>;
            case "iterable": return value is string or List<object?> or object?[] or Dictionary<object, object?> or Undefined;
            case "sequence": return value is string or List<object?> or object?[] or Dictionary<object, object?>;
            case "callable": return value is Callable;
            case "equalto" or "eq" or "==": return Py.Equals(value, Arg0());
            case "ne" or "!=": return !Py.Equals(value, Arg0());
            case "lt" or "<" or "lessthan": return Py.Compare(Check(value), Check(Arg0())) < 0;
            case "le" or "<=": return Py.Compare(Check(value), Check(Arg0())) <= 0;
            case "gt" or ">" or "greaterthan": return Py.Compare(Check(value), Check(Arg0())) > 0;
            case "ge" or ">=": return Py.Compare(Check(value), Check(Arg0())) >= 0;
            case "odd": return Py.ToLong(Check(value)) % 2 != 0;
            case "even": return Py.ToLong(Check(value)) % 2 == 0;
            case "divisibleby": { long d = Py.ToLong(Arg0()); return d != 0 ? Py.ToLong(Check(value)) % d == 0 : throw new DivideByZeroException("integer division or modulo by zero"); }
            case "in": return Contains(Arg0(), value);
            case "sameas": return value is null ? Arg0() is null : value is bool b ? Arg0() is bool c && b == c : ReferenceEquals(value, Arg0()) || (value is long l && Arg0() is long m && l == m);
            case "lower": return value is string ls && ls == ls.ToLowerInvariant();
            case "upper": return value is string us && us == us.ToUpperInvariant();
        }
        throw Error($"unknown test '{name}' (supported: {string.Join(", ", TestNames.Where(t => char.IsLetter(t[0])))})", pos);
    }

    static object? Check(object? v) => v is Undefined u ? throw UndefinedUse(u) : v;

    // ---- methods ----

    static bool IsStringMethod(string name) => name is "strip" or "lstrip" or "rstrip" or "split" or "rsplit" or "startswith" or "endswith"
        or "upper" or "lower" or "title" or "capitalize" or "replace" or "format" or "join" or "find" or "rfind" or "count"
        or "splitlines" or "isdigit" or "isalpha" or "isalnum" or "isspace" or "isupper" or "islower" or "removeprefix" or "removesuffix"
        or "index" or "rindex" or "ljust" or "rjust" or "center" or "zfill" or "partition" or "rpartition" or "swapcase" or "casefold";

    bool TryCallMethod(object? target, string name, List<object?> args, Dictionary<string, object?> kwargs, out object? result, int pos)
    {
        result = null;
        switch (target)
        {
            case string s when IsStringMethod(name):
                result = StringMethod(s, name, args, kwargs);
                return true;
            case Dictionary<object, object?> d:
                switch (name)
                {
                    case "get":
                    {
                        if (args.Count == 0) throw new InvalidOperationException("get expected at least 1 argument");
                        var key = args[0];
                        result = key != null && key is not Undefined && d.TryGetValue(NormalizeKey(key), out var v) ? v : args.Count > 1 ? args[1] : kwargs.GetValueOrDefault("default");
                        return true;
                    }
                    case "items": result = d.Select(kv => (object?)new object?[] { kv.Key, kv.Value }).ToList(); return true;
                    case "keys": result = d.Keys.Cast<object?>().ToList(); return true;
                    case "values": result = d.Values.ToList(); return true;
                    case "pop" or "update" or "setdefault" or "clear" or "popitem":
                        throw new InvalidOperationException($"dict.{name} is not allowed: Hugging Face renders chat templates in an immutable sandbox");
                }
                return false;
            case List<object?> list:
                switch (name)
                {
                    case "index":
                        for (int i = 0; i < list.Count; i++) if (Py.Equals(list[i], args.ElementAtOrDefault(0))) { result = (long)i; return true; }
                        throw new InvalidOperationException($"{Py.Repr(args.ElementAtOrDefault(0))} is not in list");
                    case "count": result = (long)list.Count(x => Py.Equals(x, args.ElementAtOrDefault(0))); return true;
                    case "append" or "extend" or "insert" or "pop" or "remove" or "clear" or "sort" or "reverse":
                        throw new InvalidOperationException($"list.{name} is not allowed: Hugging Face renders chat templates in an immutable sandbox");
                }
                return false;
        }
        return false;
    }

    object? StringMethod(string s, string name, List<object?> args, Dictionary<string, object?> kwargs)
    {
        string? StrArg(int i, string argName) => Arg(args, kwargs, i, argName, null) switch
        {
            null => null,
            string a => a,
            var other => throw new InvalidOperationException($"str.{name}() argument must be str or None, not {Py.TypeName(other)}"),
        };
        switch (name)
        {
            case "strip": return Strip(s, StrArg(0, "chars"), true, true);
            case "lstrip": return Strip(s, StrArg(0, "chars"), true, false);
            case "rstrip": return Strip(s, StrArg(0, "chars"), false, true);
            case "upper": return s.ToUpperInvariant();
            case "lower": return s.ToLowerInvariant();
            case "title": return PythonTitle(s);
            case "capitalize": return Capitalize(s);
            case "isdigit": return s.Length > 0 && s.All(char.IsDigit);
            case "isalpha": return s.Length > 0 && s.All(char.IsLetter);
            case "isalnum": return s.Length > 0 && s.All(char.IsLetterOrDigit);
            case "isspace": return s.Length > 0 && s.All(JinjaLexer.IsPythonSpace);
            case "isupper": return s.Any(char.IsLetter) && s == s.ToUpperInvariant();
            case "islower": return s.Any(char.IsLetter) && s == s.ToLowerInvariant();
            case "removeprefix": { string p = StrArg(0, "prefix") ?? ""; return s.StartsWith(p, StringComparison.Ordinal) ? s[p.Length..] : s; }
            case "removesuffix": { string p = StrArg(0, "suffix") ?? ""; return p.Length > 0 && s.EndsWith(p, StringComparison.Ordinal) ? s[..^p.Length] : s; }
            case "startswith":
            case "endswith":
            {
                var prefixes = Arg(args, kwargs, 0, "prefix", null) switch
                {
                    string p => new List<object?> { p },
                    object?[] t => t.ToList(),
                    List<object?> l => l,
                    var other => throw new InvalidOperationException($"{name} first arg must be str or a tuple of str, not {Py.TypeName(other)}"),
                };
                string sub = s;
                if (args.Count > 1 && args[1] is long start) sub = (string)Slice(sub, start, args.Count > 2 ? args[2] : null, null)!;
                return prefixes.Any(p => p is string ps && (name == "startswith" ? sub.StartsWith(ps, StringComparison.Ordinal) : sub.EndsWith(ps, StringComparison.Ordinal)));
            }
            case "split":
            case "rsplit":
            {
                string? sep = StrArg(0, "sep");
                long max = Py.ToLong(Arg(args, kwargs, 1, "maxsplit", -1L));
                return Split(s, sep, max, name == "rsplit").Cast<object?>().ToList();
            }
            case "splitlines": return SplitLines(s).Cast<object?>().ToList();
            case "replace":
            {
                string old = StrArg(0, "old") ?? throw new InvalidOperationException("replace needs 2 arguments");
                string replacement = StrArg(1, "new") ?? throw new InvalidOperationException("replace needs 2 arguments");
                return Replace(s, old, replacement, Py.ToLong(Arg(args, kwargs, 2, "count", -1L)));
            }
            case "join": return string.Join(s, Py.Iterate(args.ElementAtOrDefault(0)).Select(x => x as string ?? throw new InvalidOperationException($"sequence item: expected str instance, {Py.TypeName(x)} found")));
            case "find": return (long)s.IndexOf(StrArg(0, "sub") ?? "", StringComparison.Ordinal);
            case "rfind": return (long)s.LastIndexOf(StrArg(0, "sub") ?? "", StringComparison.Ordinal);
            case "count":
            {
                string sub = StrArg(0, "sub") ?? "";
                if (sub.Length == 0) return Py.Length(s) + 1;
                long n = 0;
                for (int at = s.IndexOf(sub, StringComparison.Ordinal); at >= 0; at = s.IndexOf(sub, at + sub.Length, StringComparison.Ordinal)) n++;
                return n;
            }
            case "format": return Format(s, args, kwargs);
            case "index":
            case "rindex":
            {
                string sub = StrArg(0, "sub") ?? "";
                int at = name == "index" ? s.IndexOf(sub, StringComparison.Ordinal) : s.LastIndexOf(sub, StringComparison.Ordinal);
                return at >= 0 ? (long)at : throw new InvalidOperationException("substring not found");
            }
            case "ljust": return s.PadRight((int)Py.ToLong(Arg(args, kwargs, 0, "width", 0L)), (StrArg(1, "fillchar") ?? " ")[0]);
            case "rjust": return s.PadLeft((int)Py.ToLong(Arg(args, kwargs, 0, "width", 0L)), (StrArg(1, "fillchar") ?? " ")[0]);
            case "center": return Center(s, (int)Py.ToLong(Arg(args, kwargs, 0, "width", 0L)), (StrArg(1, "fillchar") ?? " ")[0]);
            case "zfill":
            {
                int width = (int)Py.ToLong(Arg(args, kwargs, 0, "width", 0L));
                if (s.Length >= width) return s;
                int sign = s.Length > 0 && s[0] is '-' or '+' ? 1 : 0;
                return s[..sign] + new string('0', width - s.Length) + s[sign..];
            }
            case "partition":
            case "rpartition":
            {
                string sep = StrArg(0, "sep") ?? throw new InvalidOperationException("empty separator");
                int at = name == "partition" ? s.IndexOf(sep, StringComparison.Ordinal) : s.LastIndexOf(sep, StringComparison.Ordinal);
                if (at < 0) return name == "partition" ? new object?[] { s, "", "" } : new object?[] { "", "", s };
                return new object?[] { s[..at], sep, s[(at + sep.Length)..] };
            }
            case "swapcase": return string.Concat(s.Select(ch => char.IsUpper(ch) ? char.ToLowerInvariant(ch) : char.ToUpperInvariant(ch)));
            case "casefold": return s.ToLowerInvariant();
        }
        throw new InvalidOperationException($"'str' object has no attribute '{name}'");
    }

    static List<string> Split(string s, string? sep, long max, bool fromRight)
    {
        var parts = new List<string>();
        if (sep is null)
        {
            // Runs of white space; leading and trailing white space ignored.
            var words = new List<(int Start, int End)>();
            int i = 0;
            while (i < s.Length)
            {
                while (i < s.Length && JinjaLexer.IsPythonSpace(s[i])) i++;
                if (i >= s.Length) break;
                int start = i;
                while (i < s.Length && !JinjaLexer.IsPythonSpace(s[i])) i++;
                words.Add((start, i));
            }
            if (max < 0 || words.Count <= max) return words.Select(w => s[w.Start..w.End]).ToList();
            if (!fromRight)
            {
                for (int k = 0; k < max; k++) parts.Add(s[words[k].Start..words[k].End]);
                parts.Add(s[words[(int)max].Start..]);
            }
            else
            {
                int first = words.Count - (int)max;
                parts.Add(s[..words[first - 1].End]);
                for (int k = first; k < words.Count; k++) parts.Add(s[words[k].Start..words[k].End]);
            }
            return parts;
        }
        if (sep.Length == 0) throw new InvalidOperationException("empty separator");
        if (!fromRight)
        {
            int pos = 0;
            while (max < 0 || parts.Count < max)
            {
                int at = s.IndexOf(sep, pos, StringComparison.Ordinal);
                if (at < 0) break;
                parts.Add(s[pos..at]);
                pos = at + sep.Length;
            }
            parts.Add(s[pos..]);
            return parts;
        }
        int end = s.Length;
        var reversed = new List<string>();
        while (max < 0 || reversed.Count < max)
        {
            int at = end - sep.Length < 0 ? -1 : s.LastIndexOf(sep, end - 1, StringComparison.Ordinal);
            if (at < 0 || at + sep.Length > end) break;
            reversed.Add(s[(at + sep.Length)..end]);
            end = at;
        }
        reversed.Add(s[..end]);
        reversed.Reverse();
        return reversed;
    }

    /// <summary>Python's <c>str.format</c> for <c>{}</c>, <c>{0}</c>, <c>{name}</c>, <c>{{</c> and <c>}}</c> (format specs are not supported).</summary>
    static string Format(string s, List<object?> args, Dictionary<string, object?> kwargs)
    {
        var sb = new StringBuilder();
        int auto = 0;
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            if (c == '{' && i + 1 < s.Length && s[i + 1] == '{') { sb.Append('{'); i++; continue; }
            if (c == '}' && i + 1 < s.Length && s[i + 1] == '}') { sb.Append('}'); i++; continue; }
            if (c != '{') { sb.Append(c); continue; }
            int close = s.IndexOf('}', i);
            if (close < 0) throw new InvalidOperationException("Single '{' encountered in format string");
            string field = s[(i + 1)..close];
            if (field.Contains(':') || field.Contains('!')) throw new NotSupportedException("format specifications in str.format are not supported");
            object? value;
            if (field.Length == 0) value = auto < args.Count ? args[auto++] : throw new InvalidOperationException("Replacement index out of range");
            else if (int.TryParse(field, NumberStyles.None, CultureInfo.InvariantCulture, out int n)) value = n < args.Count ? args[n] : throw new InvalidOperationException("Replacement index out of range");
            else value = kwargs.TryGetValue(field, out var kv) ? kv : throw new InvalidOperationException($"KeyError: '{field}'");
            sb.Append(Py.Str(value));
            i = close;
        }
        return sb.ToString();
    }

    /// <summary>Python's <c>datetime.strftime</c> for the directives templates use (C locale).</summary>
    static string Strftime(DateTime t, string format)
    {
        var c = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        for (int i = 0; i < format.Length; i++)
        {
            if (format[i] != '%' || i + 1 >= format.Length) { sb.Append(format[i]); continue; }
            char d = format[++i];
            sb.Append(d switch
            {
                'Y' => t.Year.ToString("0000", c),
                'y' => (t.Year % 100).ToString("00", c),
                'm' => t.Month.ToString("00", c),
                'd' => t.Day.ToString("00", c),
                'e' => t.Day.ToString(c).PadLeft(2),
                'H' => t.Hour.ToString("00", c),
                'I' => ((t.Hour + 11) % 12 + 1).ToString("00", c),
                'M' => t.Minute.ToString("00", c),
                'S' => t.Second.ToString("00", c),
                'p' => t.Hour < 12 ? "AM" : "PM",
                'b' => t.ToString("MMM", c),
                'B' => t.ToString("MMMM", c),
                'a' => t.ToString("ddd", c),
                'A' => t.ToString("dddd", c),
                'j' => t.DayOfYear.ToString("000", c),
                'f' => (t.Ticks % TimeSpan.TicksPerSecond / 10).ToString("000000", c),
                'w' => ((int)t.DayOfWeek).ToString(c),
                '%' => "%",
                _ => throw new NotSupportedException($"strftime directive '%{d}' is not supported"),
            });
        }
        return sb.ToString();
    }
}
