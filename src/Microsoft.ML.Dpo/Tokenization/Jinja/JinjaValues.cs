using System.Collections;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Microsoft.ML.Dpo.Tokenization.Jinja;

// Values at run time, as Python objects: null is None, bool, long (int), double (float), string (str), List<object?>
// (list), object?[] (tuple), Dictionary<object, object?> (dict, insertion-ordered: nothing is ever removed), plus the
// Jinja objects below.

/// <summary>Jinja's <c>Undefined</c>: a missing variable, attribute or item. Prints as "", is false, iterates as empty;
/// using it as a value in any other way is an error naming it.</summary>
sealed class Undefined
{
    public Undefined(string hint) => Hint = hint;
    public string Hint { get; }
    public override string ToString() => "";
}

/// <summary>The result of <c>namespace(...)</c>: attributes that <c>{% set ns.x = ... %}</c> may change from inside loops.</summary>
sealed class Namespace
{
    public Dictionary<string, object?> Attributes { get; } = new(StringComparer.Ordinal);
}

/// <summary>A callable: a macro, <c>caller</c>, a global function or a bound method.</summary>
sealed class Callable
{
    public Callable(string name, Func<List<object?>, Dictionary<string, object?>, object?> invoke)
    {
        Name = name;
        Invoke = invoke;
    }

    public string Name { get; }
    public Func<List<object?>, Dictionary<string, object?>, object?> Invoke { get; }
}

/// <summary>The <c>loop</c> variable of a for loop.</summary>
sealed class LoopInfo
{
    public required List<object?> Items { get; init; }
    public int Index0 { get; set; }

    public object? Get(string name) => name switch
    {
        "index0" => (long)Index0,
        "index" => (long)Index0 + 1,
        "revindex" => (long)(Items.Count - Index0),
        "revindex0" => (long)(Items.Count - Index0 - 1),
        "first" => Index0 == 0,
        "last" => Index0 == Items.Count - 1,
        "length" => (long)Items.Count,
        "depth" => 1L,
        "depth0" => 0L,
        "previtem" => Index0 > 0 ? Items[Index0 - 1] : new Undefined("there is no previous item"),
        "nextitem" => Index0 < Items.Count - 1 ? Items[Index0 + 1] : new Undefined("there is no next item"),
        "cycle" => new Callable("loop.cycle", (args, _) => args.Count == 0 ? throw new InvalidOperationException("loop.cycle() needs at least one argument") : args[Index0 % args.Count]),
        "changed" => throw new NotSupportedException("loop.changed is not supported"),
        _ => new Undefined($"'loop' has no attribute '{name}'"),
    };
}

/// <summary>Python's semantics for the operations templates do on values.</summary>
static class Py
{
    public static bool Truthy(object? v) => v switch
    {
        null => false,
        bool b => b,
        long l => l != 0,
        double d => d != 0,
        string s => s.Length > 0,
        Undefined => false,
        List<object?> list => list.Count > 0,
        object?[] tuple => tuple.Length > 0,
        Dictionary<object, object?> dict => dict.Count > 0,
        _ => true,
    };

    public static string TypeName(object? v) => v switch
    {
        null => "NoneType",
        bool => "bool",
        long => "int",
        double => "float",
        string => "str",
        List<object?> => "list",
        object?[] => "tuple",
        Dictionary<object, object?> => "dict",
        Undefined => "Undefined",
        Namespace => "Namespace",
        Callable => "function",
        LoopInfo => "LoopContext",
        _ => v.GetType().Name,
    };

    /// <summary><c>str(v)</c>: what <c>{{ v }}</c> prints.</summary>
    public static string Str(object? v) => v switch
    {
        string s => s,
        null => "None",
        bool b => b ? "True" : "False",
        long l => l.ToString(CultureInfo.InvariantCulture),
        double d => FloatRepr(d),
        Undefined => "",
        _ => Repr(v),
    };

    /// <summary><c>repr(v)</c>, as Python prints the items of a list or dict.</summary>
    public static string Repr(object? v)
    {
        var sb = new StringBuilder();
        AppendRepr(sb, v);
        return sb.ToString();
    }

    static void AppendRepr(StringBuilder sb, object? v)
    {
        switch (v)
        {
            case string s: AppendStringRepr(sb, s); break;
            case List<object?> list:
                sb.Append('[');
                for (int i = 0; i < list.Count; i++) { if (i > 0) sb.Append(", "); AppendRepr(sb, list[i]); }
                sb.Append(']');
                break;
            case object?[] tuple:
                sb.Append('(');
                for (int i = 0; i < tuple.Length; i++) { if (i > 0) sb.Append(", "); AppendRepr(sb, tuple[i]); }
                if (tuple.Length == 1) sb.Append(',');
                sb.Append(')');
                break;
            case Dictionary<object, object?> dict:
                sb.Append('{');
                bool first = true;
                foreach (var (k, value) in dict)
                {
                    if (!first) sb.Append(", ");
                    first = false;
                    AppendRepr(sb, k);
                    sb.Append(": ");
                    AppendRepr(sb, value);
                }
                sb.Append('}');
                break;
            case Namespace ns:
                sb.Append("<Namespace {");
                bool firstAttr = true;
                foreach (var (k, value) in ns.Attributes)
                {
                    if (!firstAttr) sb.Append(", ");
                    firstAttr = false;
                    AppendStringRepr(sb, k);
                    sb.Append(": ");
                    AppendRepr(sb, value);
                }
                sb.Append("}>");
                break;
            case Callable c: sb.Append("<function ").Append(c.Name).Append('>'); break;
            case Undefined: sb.Append("Undefined"); break;
            case null or bool or long or double: sb.Append(Str(v)); break;
            default: sb.Append(Convert.ToString(v, CultureInfo.InvariantCulture)); break;
        }
    }

    static void AppendStringRepr(StringBuilder sb, string s)
    {
        char quote = s.Contains('\'') && !s.Contains('"') ? '"' : '\'';
        sb.Append(quote);
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            if (c == quote || c == '\\') sb.Append('\\').Append(c);
            else if (c == '\n') sb.Append("\\n");
            else if (c == '\r') sb.Append("\\r");
            else if (c == '\t') sb.Append("\\t");
            else if (char.IsHighSurrogate(c) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]))
            {
                int cp = char.ConvertToUtf32(c, s[i + 1]);
                if (IsPrintable(cp)) sb.Append(c).Append(s[i + 1]); else sb.Append("\\U").Append(cp.ToString("x8", CultureInfo.InvariantCulture));
                i++;
            }
            else if (IsPrintable(c)) sb.Append(c);
            else if (c < 0x100) sb.Append("\\x").Append(((int)c).ToString("x2", CultureInfo.InvariantCulture));
            else sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
        }
        sb.Append(quote);
    }

    /// <summary>Python's <c>str.isprintable</c> for one code point: not a control, format, surrogate, private-use, unassigned or separator other than ' '.</summary>
    static bool IsPrintable(int cp)
    {
        if (cp == ' ') return true;
        if (cp < 0x20 || cp == 0x7f) return false;
        var cat = cp <= 0xFFFF ? CharUnicodeInfo.GetUnicodeCategory((char)cp) : CharUnicodeInfo.GetUnicodeCategory(cp);
        return cat is not (UnicodeCategory.Control or UnicodeCategory.Format or UnicodeCategory.Surrogate or UnicodeCategory.PrivateUse
            or UnicodeCategory.OtherNotAssigned or UnicodeCategory.SpaceSeparator or UnicodeCategory.LineSeparator or UnicodeCategory.ParagraphSeparator);
    }

    /// <summary>Python's <c>repr(float)</c>: the shortest digits that round-trip, in fixed notation for exponents -4 ≤ e &lt; 16.</summary>
    public static string FloatRepr(double d)
    {
        if (double.IsNaN(d)) return "nan";
        if (double.IsPositiveInfinity(d)) return "inf";
        if (double.IsNegativeInfinity(d)) return "-inf";
        if (d == 0) return double.IsNegative(d) ? "-0.0" : "0.0";
        // Shortest round-trip digits: "R" gives them, in either notation; normalize through the exponent form.
        string shortest = d.ToString("R", CultureInfo.InvariantCulture);
        bool negative = shortest.StartsWith('-');
        if (negative) shortest = shortest[1..];
        string mantissa = shortest;
        int exp10 = 0;
        int e = shortest.IndexOfAny(new[] { 'E', 'e' });
        if (e >= 0)
        {
            mantissa = shortest[..e];
            exp10 = int.Parse(shortest[(e + 1)..], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture);
        }
        int dot = mantissa.IndexOf('.');
        string digits = dot >= 0 ? mantissa.Remove(dot, 1) : mantissa;
        int pointPos = (dot >= 0 ? dot : mantissa.Length) + exp10;   // position of the decimal point in digits
        int lead = 0;
        while (lead < digits.Length - 1 && digits[lead] == '0') { lead++; pointPos--; }
        digits = digits[lead..].TrimEnd('0');
        if (digits.Length == 0) digits = "0";
        var sb = new StringBuilder();
        if (negative) sb.Append('-');
        int decpt = pointPos;
        if (decpt <= -4 || decpt > 16)
        {
            sb.Append(digits[0]);
            if (digits.Length > 1) sb.Append('.').Append(digits, 1, digits.Length - 1);
            int exponent = decpt - 1;
            sb.Append('e').Append(exponent < 0 ? '-' : '+').Append(Math.Abs(exponent).ToString("00", CultureInfo.InvariantCulture));
        }
        else if (decpt <= 0) sb.Append("0.").Append('0', -decpt).Append(digits);
        else if (decpt >= digits.Length) sb.Append(digits).Append('0', decpt - digits.Length).Append(".0");
        else sb.Append(digits, 0, decpt).Append('.').Append(digits, decpt, digits.Length - decpt);
        return sb.ToString();
    }

    public static bool IsNumber(object? v) => v is long or double or bool;

    public static double ToDouble(object? v) => v switch
    {
        long l => l,
        double d => d,
        bool b => b ? 1 : 0,
        _ => throw new InvalidOperationException($"expected a number, found {TypeName(v)}"),
    };

    public static new bool Equals(object? a, object? b)
    {
        if (a is Undefined || b is Undefined) return a is Undefined && b is Undefined;
        if (IsNumber(a) && IsNumber(b))
        {
            if (a is double || b is double) return ToDouble(a) == ToDouble(b);
            return ToLong(a) == ToLong(b);
        }
        switch (a)
        {
            case null: return b is null;
            case string s: return b is string t && string.Equals(s, t, StringComparison.Ordinal);
            case List<object?> la when b is List<object?> lb: return SequenceEquals(la, lb);
            case object?[] ta when b is object?[] tb: return SequenceEquals(ta, tb);
            case Dictionary<object, object?> da when b is Dictionary<object, object?> db:
                if (da.Count != db.Count) return false;
                foreach (var (k, v) in da)
                    if (!db.TryGetValue(k, out var w) || !Equals(v, w)) return false;
                return true;
            default: return ReferenceEquals(a, b);
        }
    }

    static bool SequenceEquals(IReadOnlyList<object?> a, IReadOnlyList<object?> b)
    {
        if (a.Count != b.Count) return false;
        for (int i = 0; i < a.Count; i++) if (!Equals(a[i], b[i])) return false;
        return true;
    }

    public static long ToLong(object? v) => v switch
    {
        long l => l,
        bool b => b ? 1 : 0,
        _ => throw new InvalidOperationException($"expected an integer, found {TypeName(v)}"),
    };

    /// <summary>Python's ordering (<c>&lt;</c>): numbers, strings (by code point), lists and tuples; anything else is a type error.</summary>
    public static int Compare(object? a, object? b)
    {
        if (IsNumber(a) && IsNumber(b))
        {
            if (a is double || b is double) return ToDouble(a).CompareTo(ToDouble(b));
            return ToLong(a).CompareTo(ToLong(b));
        }
        if (a is string s && b is string t) return CompareCodePoints(s, t);
        if ((a is List<object?> || a is object?[]) && a?.GetType() == b?.GetType())
        {
            var x = (IReadOnlyList<object?>)a!;
            var y = (IReadOnlyList<object?>)b!;
            for (int i = 0; i < Math.Min(x.Count, y.Count); i++)
            {
                if (Equals(x[i], y[i])) continue;
                return Compare(x[i], y[i]);
            }
            return x.Count.CompareTo(y.Count);
        }
        throw new InvalidOperationException($"'<' not supported between instances of '{TypeName(a)}' and '{TypeName(b)}'");
    }

    public static int CompareCodePoints(string s, string t)
    {
        int n = Math.Min(s.Length, t.Length);
        for (int i = 0; i < n; i++)
        {
            char a = s[i], b = t[i];
            if (a == b) continue;
            // Surrogates (code points above U+FFFF) sort after every BMP character, as code points do.
            bool sa = char.IsSurrogate(a), sb = char.IsSurrogate(b);
            if (sa != sb) return sa ? 1 : -1;
            return a.CompareTo(b);
        }
        return s.Length.CompareTo(t.Length);
    }

    /// <summary>The items a for loop, <c>list</c> or <c>join</c> iterate over: list and tuple items, a dict's keys, a string's characters.</summary>
    public static List<object?> Iterate(object? v) => v switch
    {
        List<object?> list => list,
        object?[] tuple => new List<object?>(tuple),
        Dictionary<object, object?> dict => new List<object?>(dict.Keys),
        string s => Chars(s),
        Undefined => new List<object?>(),
        _ => throw new InvalidOperationException($"'{TypeName(v)}' object is not iterable"),
    };

    /// <summary>A string's characters as Python sees them: code points, a surrogate pair being one.</summary>
    public static List<object?> Chars(string s)
    {
        var result = new List<object?>(s.Length);
        for (int i = 0; i < s.Length; i++)
        {
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { result.Add(s.Substring(i, 2)); i++; }
            else result.Add(s[i].ToString());
        }
        return result;
    }

    public static bool HasSurrogates(string s)
    {
        foreach (char c in s) if (char.IsSurrogate(c)) return true;
        return false;
    }

    /// <summary><c>len(v)</c>.</summary>
    public static long Length(object? v) => v switch
    {
        string s => HasSurrogates(s) ? Chars(s).Count : s.Length,
        List<object?> list => list.Count,
        object?[] tuple => tuple.Length,
        Dictionary<object, object?> dict => dict.Count,
        Undefined => 0,
        _ => throw new InvalidOperationException($"object of type '{TypeName(v)}' has no len()"),
    };

    /// <summary>Converts a caller's value (JSON nodes and elements, dictionaries, lists, numbers...) to a template value.</summary>
    public static object? FromClr(object? v) => v switch
    {
        null => null,
        string or bool or long or double or Undefined or Namespace or Callable => v,
        int i => (long)i,
        short s => (long)s,
        byte b => (long)b,
        uint u => (long)u,
        float f => (double)f,
        decimal m => (double)m,
        JsonNode node => FromJsonNode(node),
        JsonElement element => FromJsonElement(element),
        Dictionary<object, object?> d => d.ToDictionary(kv => kv.Key, kv => FromClr(kv.Value)),
        object?[] t => t.Select(FromClr).ToArray(),
        IDictionary<string, object?> dict => dict.ToDictionary(kv => (object)kv.Key, kv => FromClr(kv.Value)),
        IReadOnlyDictionary<string, object?> dict => dict.ToDictionary(kv => (object)kv.Key, kv => FromClr(kv.Value)),
        IDictionary dict => dict.Keys.Cast<object>().ToDictionary(k => FromClr(k)!, k => FromClr(dict[k])),
        IEnumerable e => e.Cast<object?>().Select(FromClr).ToList(),
        _ => throw new ArgumentException($"A value of type {v.GetType()} cannot be passed to a chat template (use strings, numbers, booleans, lists, dictionaries or JSON)."),
    };

    static object? FromJsonNode(JsonNode? node) => node switch
    {
        null => null,
        JsonObject o => o.ToDictionary(kv => (object)kv.Key, kv => FromJsonNode(kv.Value)),
        JsonArray a => a.Select(FromJsonNode).ToList(),
        JsonValue v => v.TryGetValue(out JsonElement e) ? FromJsonElement(e)
            : v.TryGetValue(out string? s) ? s
            : v.TryGetValue(out bool b) ? b
            : v.TryGetValue(out long l) ? l
            : v.TryGetValue(out double d) ? d
            : FromJsonElement(JsonSerializer.SerializeToElement(v)),
        _ => null,
    };

    public static object? FromJsonElement(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Object => e.EnumerateObject().ToDictionary(p => (object)p.Name, p => FromJsonElement(p.Value)),
        JsonValueKind.Array => e.EnumerateArray().Select(FromJsonElement).ToList(),
        JsonValueKind.String => e.GetString(),
        JsonValueKind.Number => IsIntegerLiteral(e.GetRawText()) && e.TryGetInt64(out long l) ? (object)l : e.GetDouble(),
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        _ => null,
    };

    static bool IsIntegerLiteral(string raw) => raw.AsSpan().IndexOfAny('.', 'e', 'E') < 0;

    /// <summary>
    /// Python's <c>json.dumps(v, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sortKeys)</c>, which
    /// Hugging Face's <c>tojson</c> filter calls: ", " and ": " between items without an indent, "," and ": " with one.
    /// </summary>
    public static string ToJson(object? v, string? indent, string? itemSeparator, string? keySeparator, bool sortKeys)
    {
        var sb = new StringBuilder();
        WriteJson(sb, v, indent, itemSeparator ?? (indent is null ? ", " : ","), keySeparator ?? ": ", sortKeys, 0);
        return sb.ToString();
    }

    static void WriteJson(StringBuilder sb, object? v, string? indent, string itemSep, string keySep, bool sortKeys, int level)
    {
        switch (v)
        {
            case null: sb.Append("null"); break;
            case bool b: sb.Append(b ? "true" : "false"); break;
            case long l: sb.Append(l.ToString(CultureInfo.InvariantCulture)); break;
            case double d:
                sb.Append(double.IsNaN(d) ? "NaN" : double.IsPositiveInfinity(d) ? "Infinity" : double.IsNegativeInfinity(d) ? "-Infinity" : FloatRepr(d));
                break;
            case string s: WriteJsonString(sb, s); break;
            case List<object?> or object?[]:
            {
                var items = (IReadOnlyList<object?>)v;
                if (items.Count == 0) { sb.Append("[]"); break; }
                sb.Append('[');
                for (int i = 0; i < items.Count; i++)
                {
                    if (i > 0) sb.Append(itemSep);
                    NewLine(sb, indent, level + 1);
                    WriteJson(sb, items[i], indent, itemSep, keySep, sortKeys, level + 1);
                }
                NewLine(sb, indent, level);
                sb.Append(']');
                break;
            }
            case Dictionary<object, object?> dict:
            {
                if (dict.Count == 0) { sb.Append("{}"); break; }
                sb.Append('{');
                IEnumerable<KeyValuePair<object, object?>> pairs = dict;
                if (sortKeys) pairs = dict.OrderBy(kv => kv.Key, Comparer<object>.Create((a, b) => Compare(a, b)));
                bool first = true;
                foreach (var (k, value) in pairs)
                {
                    if (!first) sb.Append(itemSep);
                    first = false;
                    NewLine(sb, indent, level + 1);
                    WriteJsonString(sb, k switch
                    {
                        string s => s,
                        bool b => b ? "true" : "false",
                        null => "null",
                        long or double => Str(k),
                        _ => throw new InvalidOperationException($"keys must be str, int, float, bool or None, not {TypeName(k)}"),
                    });
                    sb.Append(keySep);
                    WriteJson(sb, value, indent, itemSep, keySep, sortKeys, level + 1);
                }
                NewLine(sb, indent, level);
                sb.Append('}');
                break;
            }
            case Namespace:
            case Undefined:
            case Callable:
            case LoopInfo:
                throw new InvalidOperationException($"Object of type {TypeName(v)} is not JSON serializable");
            default:
                throw new InvalidOperationException($"Object of type {TypeName(v)} is not JSON serializable");
        }
    }

    static void NewLine(StringBuilder sb, string? indent, int level)
    {
        if (indent is null) return;
        sb.Append('\n');
        for (int i = 0; i < level; i++) sb.Append(indent);
    }

    static void WriteJsonString(StringBuilder sb, string s)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20) sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }
}
