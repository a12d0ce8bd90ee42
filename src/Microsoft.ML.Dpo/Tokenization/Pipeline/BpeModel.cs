using System.Collections.Concurrent;
using System.Text;

namespace Microsoft.ML.Dpo.Tokenization.Pipeline;

/// <summary>
/// Byte-pair encoding of one pre-token (word) into ids, as Hugging Face's BPE model: the word's characters, then
/// merges applied lowest rank first (equal ranks: leftmost first) until none applies. The merge loop keeps a priority
/// queue over adjacent pairs, so a word of n characters costs O(n log n) (a 2-million-character line without spaces
/// is no harder than many short words). Also used for SentencePiece BPE (<c>tokenizer.model</c>), whose merges are
/// every pair whose concatenation is a piece, ranked by the piece's score (equal scores: leftmost first, as
/// sentencepiece does).
/// </summary>
internal sealed class BpeModel
{
    readonly Dictionary<string, int> _vocab;
    readonly string?[] _idToToken;
    readonly Dictionary<long, (int Rank, int NewId)> _merges;
    readonly int? _unkId;
    readonly bool _fuseUnk, _byteFallback, _ignoreMerges;
    readonly int[]? _byteIds; // <0xNN> ids when byte fallback is on
    readonly int[] _charIds;  // the id of each one-character token of the Basic Multilingual Plane, else -1
    readonly Lazy<HashSet<uint>> _adjacentPairs;
    readonly ConcurrentDictionary<string, int[]> _cache = new(StringComparer.Ordinal);
    const int CacheCapacity = 10_000, MaxCachedLength = 256;
    int _cacheCount;

    public BpeModel(Dictionary<string, int> vocab, Dictionary<long, (int Rank, int NewId)> merges, int? unkId, bool fuseUnk, bool byteFallback, bool ignoreMerges)
    {
        _vocab = vocab;
        _merges = merges;
        _unkId = unkId;
        _fuseUnk = fuseUnk;
        _byteFallback = byteFallback;
        _ignoreMerges = ignoreMerges;
        int max = -1;
        foreach (int id in vocab.Values) max = Math.Max(max, id);
        _adjacentPairs = new Lazy<HashSet<uint>>(AdjacentPairs);
        _charIds = new int[char.MaxValue + 1];
        Array.Fill(_charIds, -1);
        foreach (var (t, id) in vocab) if (t.Length == 1 && !char.IsSurrogate(t[0])) _charIds[t[0]] = id;
        _idToToken = new string?[max + 1];
        foreach (var (t, id) in vocab) if (id >= 0) _idToToken[id] = t;
        if (byteFallback)
        {
            _byteIds = new int[256];
            for (int b = 0; b < 256; b++) _byteIds[b] = vocab.TryGetValue($"<0x{b:X2}>", out int id) ? id : -1;
        }
    }

    /// <summary>The vocabulary (token → id), without added tokens.</summary>
    public IReadOnlyDictionary<string, int> Vocabulary => _vocab;

    /// <summary>The merges: (left id, right id) key (<see cref="Key"/>) → (rank, id of the merged token).</summary>
    public IReadOnlyDictionary<long, (int Rank, int NewId)> Merges => _merges;

    /// <summary>The unknown token's id, or null.</summary>
    public int? UnknownId => _unkId;

    /// <summary>Whether characters outside the vocabulary fall back to <c>&lt;0xNN&gt;</c> byte tokens (SentencePiece-style BPE).</summary>
    public bool ByteFallback => _byteFallback;

    /// <summary>Whether a word that is itself in the vocabulary is taken whole, before any merge.</summary>
    public bool IgnoreMerges => _ignoreMerges;

    /// <summary>The token of an id of the vocabulary, or null.</summary>
    public string? IdToToken(int id) => id >= 0 && id < _idToToken.Length ? _idToToken[id] : null;

    /// <summary>The merge key of two ids.</summary>
    public static long Key(int left, int right) => ((long)left << 32) | (uint)right;

    /// <summary>Builds Hugging Face merges ("a b" pairs in priority order) over a vocabulary.</summary>
    /// <exception cref="InvalidDataException">A merge names a token that is not in the vocabulary.</exception>
    public static Dictionary<long, (int, int)> MergesFromPairs(IReadOnlyList<(string Left, string Right)> pairs, Dictionary<string, int> vocab, string where)
    {
        var merges = new Dictionary<long, (int, int)>(pairs.Count);
        for (int rank = 0; rank < pairs.Count; rank++)
        {
            var (l, r) = pairs[rank];
            if (!vocab.TryGetValue(l, out int a) || !vocab.TryGetValue(r, out int b))
                throw new InvalidDataException($"{where}[{rank}]: merge \"{l} {r}\" names a token that is not in the vocabulary.");
            if (!vocab.TryGetValue(l + r, out int merged))
                throw new InvalidDataException($"{where}[{rank}]: the merge \"{l} {r}\" makes \"{l + r}\", which is not in the vocabulary.");
            merges.TryAdd(Key(a, b), (rank, merged));
        }
        return merges;
    }

    /// <summary>Appends the ids of one word.</summary>
    public void Encode(string word, List<int> ids)
    {
        if (word.Length == 0) return;
        if (_ignoreMerges && _vocab.TryGetValue(word, out int whole)) { ids.Add(whole); return; }
        if (word.Length < MaxCachedLength && _cache.TryGetValue(word, out var cached)) { ids.AddRange(cached); return; }
        if (word.Length >= MaxCachedLength) { EncodeLong(word, ids); return; }
        var result = Merge(word);
        if (word.Length < MaxCachedLength)
        {
            // ConcurrentDictionary.Count takes every lock; an approximate count of our own is enough for a bound.
            if (Interlocked.Increment(ref _cacheCount) > CacheCapacity) { _cache.Clear(); Interlocked.Exchange(ref _cacheCount, 0); }
            _cache.TryAdd(word, result);
        }
        ids.AddRange(result);
    }

    /// <summary>
    /// A long word (a whole SentencePiece-style text has no pre-tokenizer; a line without spaces) is cut where no merge can
    /// ever join its neighbours: between two characters that are both tokens and never adjacent inside any token of the
    /// vocabulary. Every merge makes a vocabulary token, so none crosses such a cut and merging the parts separately gives
    /// exactly the ids of merging the whole word; the parts are short and cached.
    /// </summary>
    void EncodeLong(string word, List<int> ids)
    {
        var pairs = _adjacentPairs.Value;
        int start = 0;
        for (int i = 1; i < word.Length; i++)
        {
            char a = word[i - 1], b = word[i];
            if (_charIds[a] < 0 || _charIds[b] < 0 || pairs.Contains(((uint)a << 16) | b)) continue;
            Encode(word[start..i], ids);
            start = i;
        }
        if (start == 0) ids.AddRange(Merge(word));
        else Encode(word[start..], ids);
    }

    /// <summary>Every pair of UTF-16 units adjacent inside some token of the vocabulary.</summary>
    HashSet<uint> AdjacentPairs()
    {
        var pairs = new HashSet<uint>();
        foreach (string token in _vocab.Keys)
            for (int i = 1; i < token.Length; i++) pairs.Add(((uint)token[i - 1] << 16) | token[i]);
        return pairs;
    }

    int[] Merge(string word)
    {
        // Initial symbols: one per character (code point); unknown characters become their <0xNN> bytes (byte fallback)
        // or the unknown token (consecutive ones fused when fuse_unk).
        var symbols = new List<int>(word.Length);
        bool lastWasUnk = false;
        Span<byte> utf8 = stackalloc byte[4];
        for (int i = 0; i < word.Length;)
        {
            int len = char.IsHighSurrogate(word[i]) && i + 1 < word.Length && char.IsLowSurrogate(word[i + 1]) ? 2 : 1;
            if (len == 1 && _charIds[word[i]] is int fast and >= 0) { symbols.Add(fast); lastWasUnk = false; i++; continue; }
            string ch = word.Substring(i, len);
            i += len;
            if (_vocab.TryGetValue(ch, out int known)) { symbols.Add(known); lastWasUnk = false; continue; }
            if (_byteIds != null)
            {
                int n = Encoding.UTF8.GetBytes(ch, utf8);
                bool all = true;
                for (int k = 0; k < n; k++) all &= _byteIds[utf8[k]] >= 0;
                if (all)
                {
                    for (int k = 0; k < n; k++) symbols.Add(_byteIds[utf8[k]]);
                    lastWasUnk = false;
                    continue;
                }
            }
            if (_unkId is not int unk) { lastWasUnk = false; continue; } // Hugging Face drops it too
            if (!(_fuseUnk && lastWasUnk)) symbols.Add(unk);
            lastWasUnk = true;
        }
        int count = symbols.Count;
        if (count < 2 || _merges.Count == 0) return symbols.ToArray();

        var id = symbols.ToArray();
        var prev = new int[count];
        var next = new int[count];
        var alive = new bool[count];
        for (int i = 0; i < count; i++) { prev[i] = i - 1; next[i] = i + 1 < count ? i + 1 : -1; alive[i] = true; }
        // Queue entries: (position of the left symbol, id it would become); priority: rank, then position (leftmost first).
        var queue = new PriorityQueue<(int Pos, int NewId), long>(count);
        static long Priority(int rank, int pos) => ((long)rank << 32) | (uint)pos;
        for (int i = 0; i + 1 < count; i++)
            if (_merges.TryGetValue(Key(id[i], id[i + 1]), out var m)) queue.Enqueue((i, m.NewId), Priority(m.Rank, i));
        while (queue.TryDequeue(out var top, out _))
        {
            int pos = top.Pos;
            if (!alive[pos] || next[pos] < 0) continue;
            int right = next[pos];
            if (!_merges.TryGetValue(Key(id[pos], id[right]), out var m) || m.NewId != top.NewId) continue; // stale
            id[pos] = m.NewId;
            alive[right] = false;
            next[pos] = next[right];
            if (next[pos] >= 0) prev[next[pos]] = pos;
            if (prev[pos] >= 0 && _merges.TryGetValue(Key(id[prev[pos]], id[pos]), out var left)) queue.Enqueue((prev[pos], left.NewId), Priority(left.Rank, prev[pos]));
            if (next[pos] >= 0 && _merges.TryGetValue(Key(id[pos], id[next[pos]]), out var after)) queue.Enqueue((pos, after.NewId), Priority(after.Rank, pos));
        }
        var output = new List<int>();
        for (int i = 0; i >= 0; i = next[i]) output.Add(id[i]);
        return output.ToArray();
    }
}
