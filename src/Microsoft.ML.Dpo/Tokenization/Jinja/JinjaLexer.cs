using System.Globalization;
using System.Text;

namespace Microsoft.ML.Dpo.Tokenization.Jinja;

enum TokenKind { Data, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Integer, Float, Operator, Eof }

readonly record struct Token(TokenKind Kind, string Value, int Position)
{
    public bool Is(TokenKind kind, string value) => Kind == kind && Value == value;
    public bool IsOperator(string value) => Kind == TokenKind.Operator && Value == value;
    public bool IsName(string value) => Kind == TokenKind.Name && Value == value;
}

/// <summary>
/// Splits a template into tokens as Jinja2's lexer does with Hugging Face's settings (<c>trim_blocks=True</c>,
/// <c>lstrip_blocks=True</c>, <c>keep_trailing_newline=False</c>): template newlines are normalized to "\n" and one final
/// newline is dropped; <c>{%-</c>/<c>-%}</c> (and the same on <c>{{</c>, <c>{#</c>) strip all white space on that side;
/// the first newline after a block or comment tag is removed (not after <c>+%}</c>); spaces and tabs from the start of a
/// line up to a block or comment tag are removed (not before <c>{%+</c>). <c>{% raw %}…{% endraw %}</c> becomes data here.
/// </summary>
sealed class JinjaLexer
{
    readonly string src;
    readonly List<int> lineStarts = new() { 0 };
    readonly List<Token> tokens = new();
    int pos;
    bool lineStarting = true;   // the text consumed so far ended with a newline (or nothing was consumed)

    JinjaLexer(string source)
    {
        src = Normalize(source);
        for (int i = 0; i < src.Length; i++) if (src[i] == '\n') lineStarts.Add(i + 1);
    }

    public string Source => src;

    /// <summary>The 1-based line and column of a position.</summary>
    public (int Line, int Column) Locate(int position)
    {
        int lo = 0, hi = lineStarts.Count - 1;
        while (lo < hi)
        {
            int mid = (lo + hi + 1) / 2;
            if (lineStarts[mid] <= position) lo = mid; else hi = mid - 1;
        }
        return (lo + 1, position - lineStarts[lo] + 1);
    }

    public static (List<Token> Tokens, JinjaLexer Lexer) Tokenize(string source)
    {
        var lexer = new JinjaLexer(source);
        lexer.Run();
        return (lexer.tokens, lexer);
    }

    static string Normalize(string source)
    {
        string s = source.Contains('\r') ? source.Replace("\r\n", "\n").Replace('\r', '\n') : source;
        return s.EndsWith('\n') ? s[..^1] : s;
    }

    JinjaException Error(string message, int position)
    {
        var (line, column) = Locate(position);
        return new JinjaException(message, line, column);
    }

    void Run()
    {
        while (pos < src.Length)
        {
            int open = FindOpen(pos);
            if (open < 0)
            {
                AddData(src[pos..], pos);
                pos = src.Length;
                break;
            }
            char kind = src[open + 1];
            char sign = open + 2 < src.Length && (src[open + 2] == '-' || src[open + 2] == '+') ? src[open + 2] : '\0';
            string text = src[pos..open];
            if (sign == '-') text = RStrip(text);
            else if (sign != '+' && kind != '{') text = LStripBlock(text);
            AddData(text, pos);
            int inner = open + 2 + (sign != '\0' ? 1 : 0);
            if (kind == '#') LexComment(open, inner);
            else if (kind == '%' && IsRawBegin(inner, out int afterRaw)) LexRaw(open, afterRaw);
            else LexTag(kind, open, inner);
        }
        tokens.Add(new Token(TokenKind.Eof, "", src.Length));
    }

    int FindOpen(int from)
    {
        for (int i = src.IndexOf('{', from); i >= 0 && i + 1 < src.Length; i = src.IndexOf('{', i + 1))
        {
            char c = src[i + 1];
            if (c == '{' || c == '%' || c == '#') return i;
        }
        return -1;
    }

    /// <summary>lstrip_blocks: drops the spaces and tabs between the last newline (or the start) and a block tag.</summary>
    string LStripBlock(string text)
    {
        int lPos = text.LastIndexOf('\n') + 1;
        if (lPos == 0 && !lineStarting) return text;
        if (lPos == text.Length) return text;
        for (int i = lPos; i < text.Length; i++) if (!IsPythonSpace(text[i])) return text;
        return text[..lPos];
    }

    void AddData(string text, int position)
    {
        if (text.Length > 0) tokens.Add(new Token(TokenKind.Data, text, position));
    }

    /// <summary>After a tag that ends at <paramref name="end"/>: '-' strips all following white space; trim_blocks drops one newline.</summary>
    void AfterTag(int end, char endSign, bool trimBlocks)
    {
        pos = end;
        if (endSign == '-') { while (pos < src.Length && IsPythonSpace(src[pos])) pos++; }
        else if (trimBlocks && endSign != '+' && pos < src.Length && src[pos] == '\n') pos++;
        lineStarting = pos > 0 && src[pos - 1] == '\n';
    }

    void LexComment(int open, int inner)
    {
        int close = src.IndexOf("#}", inner, StringComparison.Ordinal);
        if (close < 0) throw Error("unclosed comment: '{#' without '#}'", open);
        char endSign = close > inner && (src[close - 1] == '-' || src[close - 1] == '+') ? src[close - 1] : '\0';
        AfterTag(close + 2, endSign, trimBlocks: true);
    }

    bool IsRawBegin(int inner, out int after)
    {
        after = 0;
        int i = SkipSpace(inner);
        if (string.CompareOrdinal(src, i, "raw", 0, 3) != 0) return false;
        i += 3;
        if (i < src.Length && (char.IsLetterOrDigit(src[i]) || src[i] == '_')) return false;
        i = SkipSpace(i);
        after = i;
        return true;
    }

    int SkipSpace(int i)
    {
        while (i < src.Length && IsPythonSpace(src[i])) i++;
        return i;
    }

    void LexRaw(int open, int afterName)
    {
        int i = afterName;
        // The raw tag's own end: "-%}" strips what follows; trim_blocks does not apply to it (as in Jinja2).
        if (i + 2 < src.Length + 1 && string.CompareOrdinal(src, i, "-%}", 0, 3) == 0) { i += 3; while (i < src.Length && IsPythonSpace(src[i])) i++; }
        else if (string.CompareOrdinal(src, i, "%}", 0, 2) == 0) i += 2;
        else throw Error("expected '%}' after 'raw'", i);
        int search = i;
        while (true)
        {
            int tag = src.IndexOf("{%", search, StringComparison.Ordinal);
            if (tag < 0) throw Error("unclosed 'raw' block: expected '{% endraw %}'", open);
            int j = tag + 2;
            char sign = j < src.Length && (src[j] == '-' || src[j] == '+') ? src[j] : '\0';
            if (sign != '\0') j++;
            j = SkipSpace(j);
            if (string.CompareOrdinal(src, j, "endraw", 0, 6) == 0)
            {
                int k = SkipSpace(j + 6);
                char endSign = k < src.Length && (src[k] == '-' || src[k] == '+') ? src[k] : '\0';
                int kk = endSign != '\0' ? k + 1 : k;
                if (string.CompareOrdinal(src, kk, "%}", 0, 2) == 0)
                {
                    string body = src[i..tag];
                    if (sign == '-') body = RStrip(body);
                    else if (sign != '+') { lineStarting = i > 0 && src[i - 1] == '\n'; body = LStripBlock(body); }
                    AddData(body, i);
                    AfterTag(kk + 2, endSign, trimBlocks: true);
                    return;
                }
            }
            search = tag + 2;
        }
    }

    void LexTag(char kind, int open, int inner)
    {
        tokens.Add(new Token(kind == '{' ? TokenKind.VarBegin : TokenKind.BlockBegin, kind == '{' ? "{{" : "{%", open));
        int depth = 0;
        int i = inner;
        while (true)
        {
            while (i < src.Length && IsPythonSpace(src[i])) i++;
            if (i >= src.Length) throw Error(kind == '{' ? "unclosed '{{': expected '}}'" : "unclosed '{%': expected '%}'", open);
            char c = src[i];
            // Tag ends ('-' / '+' whitespace control first).
            if (depth == 0)
            {
                string end = kind == '{' ? "}}" : "%}";
                if ((c == '-' || c == '+') && string.CompareOrdinal(src, i + 1, end, 0, 2) == 0)
                {
                    tokens.Add(new Token(kind == '{' ? TokenKind.VarEnd : TokenKind.BlockEnd, end, i));
                    AfterTag(i + 3, c, trimBlocks: kind == '%');
                    return;
                }
                if (string.CompareOrdinal(src, i, end, 0, 2) == 0)
                {
                    tokens.Add(new Token(kind == '{' ? TokenKind.VarEnd : TokenKind.BlockEnd, end, i));
                    AfterTag(i + 2, '\0', trimBlocks: kind == '%');
                    return;
                }
            }
            if (c == '\'' || c == '"') { i = LexString(i); continue; }
            if (char.IsAsciiDigit(c)) { i = LexNumber(i); continue; }
            if (char.IsLetter(c) || c == '_')
            {
                int start = i;
                while (i < src.Length && (char.IsLetterOrDigit(src[i]) || src[i] == '_')) i++;
                tokens.Add(new Token(TokenKind.Name, src[start..i], start));
                continue;
            }
            string op = ReadOperator(i);
            if (op.Length == 0) throw Error($"unexpected character '{c}'", i);
            if (op is "(" or "[" or "{") depth++;
            else if (op is ")" or "]" or "}") { if (depth == 0) throw Error($"unexpected '{op}'", i); depth--; }
            tokens.Add(new Token(TokenKind.Operator, op, i));
            i += op.Length;
        }
    }

    static readonly string[] s_operators =
    {
        "**", "//", "==", "!=", "<=", ">=",
        "+", "-", "*", "/", "%", "~", "<", ">", "=", ".", ",", ":", "|", "(", ")", "[", "]", "{", "}",
    };

    string ReadOperator(int i)
    {
        foreach (string op in s_operators)
            if (string.CompareOrdinal(src, i, op, 0, op.Length) == 0) return op;
        return "";
    }

    int LexNumber(int i)
    {
        int start = i;
        while (i < src.Length && (char.IsAsciiDigit(src[i]) || src[i] == '_')) i++;
        bool isFloat = false;
        if (i + 1 < src.Length && src[i] == '.' && char.IsAsciiDigit(src[i + 1]))
        {
            isFloat = true;
            i++;
            while (i < src.Length && (char.IsAsciiDigit(src[i]) || src[i] == '_')) i++;
        }
        if (i < src.Length && (src[i] == 'e' || src[i] == 'E'))
        {
            int j = i + 1;
            if (j < src.Length && (src[j] == '+' || src[j] == '-')) j++;
            if (j < src.Length && char.IsAsciiDigit(src[j]))
            {
                isFloat = true;
                i = j;
                while (i < src.Length && char.IsAsciiDigit(src[i])) i++;
            }
        }
        tokens.Add(new Token(isFloat ? TokenKind.Float : TokenKind.Integer, src[start..i].Replace("_", ""), start));
        return i;
    }

    /// <summary>A string literal, with Python's escapes (Jinja2 decodes them as <c>unicode-escape</c>; unknown escapes stay as written).</summary>
    int LexString(int i)
    {
        char quote = src[i];
        int start = i;
        var sb = new StringBuilder();
        i++;
        while (true)
        {
            if (i >= src.Length) throw Error("unterminated string literal", start);
            char c = src[i];
            if (c == quote) { i++; break; }
            if (c != '\\') { sb.Append(c); i++; continue; }
            if (i + 1 >= src.Length) throw Error("unterminated string literal", start);
            char e = src[i + 1];
            i += 2;
            switch (e)
            {
                case 'n': sb.Append('\n'); break;
                case 't': sb.Append('\t'); break;
                case 'r': sb.Append('\r'); break;
                case '\\': sb.Append('\\'); break;
                case '\'': sb.Append('\''); break;
                case '"': sb.Append('"'); break;
                case 'a': sb.Append('\a'); break;
                case 'b': sb.Append('\b'); break;
                case 'f': sb.Append('\f'); break;
                case 'v': sb.Append('\v'); break;
                case '\n': break;   // line continuation
                case 'x': i = Hex(i, 2, sb, start); break;
                case 'u': i = Hex(i, 4, sb, start); break;
                case 'U': i = Hex(i, 8, sb, start); break;
                case >= '0' and <= '7':
                {
                    int value = e - '0', n = 1;
                    while (n < 3 && i < src.Length && src[i] >= '0' && src[i] <= '7') { value = value * 8 + (src[i] - '0'); i++; n++; }
                    sb.Append((char)value);
                    break;
                }
                default: sb.Append('\\').Append(e); break;
            }
        }
        tokens.Add(new Token(TokenKind.String, sb.ToString(), start));
        return i;
    }

    int Hex(int i, int digits, StringBuilder sb, int start)
    {
        if (i + digits > src.Length || !int.TryParse(src.AsSpan(i, digits), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out int value))
            throw Error("truncated \\x, \\u or \\U escape in a string literal", start);
        sb.Append(char.ConvertFromUtf32(value));
        return i + digits;
    }

    static string RStrip(string s)
    {
        int n = s.Length;
        while (n > 0 && IsPythonSpace(s[n - 1])) n--;
        return s[..n];
    }

    /// <summary>Python's <c>str.isspace</c> for one UTF-16 unit (what <c>\s</c> and <c>str.strip()</c> use).</summary>
    internal static bool IsPythonSpace(char c) =>
        c is ' ' or '\t' or '\n' or '\r' or '\v' or '\f' or '\x1c' or '\x1d' or '\x1e' or '\x1f' or '\x85'
        || (c > 127 && char.IsWhiteSpace(c));
}
