namespace Microsoft.ML.Dpo.Tokenization.Pipeline;

/// <summary>
/// Hugging Face's tokenizer pipeline, one stage per class: added tokens split out of the raw text (those with
/// <c>normalized: false</c>), each remaining piece normalized, split again on the normalized added tokens,
/// pre-tokenized into words, each word byte-pair encoded; the post-processor adds the special tokens when asked.
/// Decoding maps ids to tokens (skipping special added tokens when asked) and runs the decoder.
/// </summary>
internal sealed class HfTokenizer
{
    readonly Normalizer? _normalizer;
    readonly PreTokenizer? _preTokenizer;
    readonly PostProcessor? _postProcessor;
    readonly Decoder? _decoder;
    readonly AddedTokenMatcher _rawMatcher, _normalizedMatcher;
    readonly Dictionary<int, AddedToken> _addedById = new();
    readonly HashSet<string> _addedContents = new(StringComparer.Ordinal);
    readonly Dictionary<int, string> _decodedAs = new();

    public HfTokenizer(BpeModel model, Normalizer? normalizer, PreTokenizer? preTokenizer, PostProcessor? postProcessor, Decoder? decoder, IEnumerable<AddedToken> addedTokens)
    {
        Model = model;
        _normalizer = normalizer;
        _preTokenizer = preTokenizer;
        _postProcessor = postProcessor;
        _decoder = decoder;
        var raw = new List<AddedToken>();
        var normalized = new List<AddedToken>();
        foreach (var t in addedTokens)
        {
            _addedById[t.Id] = t;
            // A normalized added token is matched, and decoded, in its normalized form (as Hugging Face's Rust tokenizers do).
            var matched = t.Normalized && normalizer != null ? t with { Content = normalizer.Normalize(t.Content) } : t;
            _decodedAs[t.Id] = matched.Content;
            _addedContents.Add(matched.Content);
            (t.Normalized && normalizer != null ? normalized : raw).Add(matched);
        }
        _rawMatcher = new AddedTokenMatcher(raw);
        _normalizedMatcher = new AddedTokenMatcher(normalized);
    }

    /// <summary>The model.</summary>
    public BpeModel Model { get; }

    /// <summary>The post-processor (null: none).</summary>
    public PostProcessor? PostProcessor => _postProcessor;

    /// <summary>The added tokens by id.</summary>
    public IReadOnlyDictionary<int, AddedToken> AddedTokens => _addedById;

    /// <summary>A copy with another post-processor (Python's Llama/Gemma classes rebuild it from add_bos_token/add_eos_token) and added tokens.</summary>
    public HfTokenizer With(PostProcessor? postProcessor, IEnumerable<AddedToken> addedTokens) =>
        new(Model, _normalizer, _preTokenizer, postProcessor, _decoder, addedTokens);

    /// <summary>Encodes <paramref name="text"/>; <paramref name="addSpecialTokens"/> runs the post-processor.</summary>
    public List<int> Encode(string text, bool addSpecialTokens)
    {
        var ids = new List<int>();
        foreach (var (start, piece, token) in _rawMatcher.Split(text))
        {
            if (token != null) { ids.Add(token.Id); continue; }
            string normalized = _normalizer?.Normalize(piece) ?? piece;
            foreach (var (start2, part, token2) in _normalizedMatcher.Split(normalized))
            {
                if (token2 != null) { ids.Add(token2.Id); continue; }
                var words = new List<Piece> { new(part, start == 0 && start2 == 0) };
                if (_preTokenizer != null) words = _preTokenizer.PreTokenize(words);
                foreach (var word in words) Model.Encode(word.Text, ids);
            }
        }
        return addSpecialTokens && _postProcessor != null ? _postProcessor.AddSpecialTokens(ids) : ids;
    }

    /// <summary>Decodes ids; ids that are neither in the vocabulary nor added tokens are left out, as Hugging Face does.</summary>
    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens)
    {
        var tokens = new List<string>();
        foreach (int id in ids)
        {
            if (_addedById.TryGetValue(id, out var added))
            {
                if (!(skipSpecialTokens && added.Special)) tokens.Add(_decodedAs[id]);
                continue;
            }
            if (Model.IdToToken(id) is string t) tokens.Add(t);
        }
        if (_decoder == null) return string.Join(" ", tokens);
        return string.Concat(_decoder.DecodeChain(tokens, _addedContents.Contains));
    }

    /// <summary>Python transformers' <c>clean_up_tokenization</c> (decode with <c>clean_up_tokenization_spaces</c>).</summary>
    public static string CleanUpTokenization(string text) => text
        .Replace(" .", ".", StringComparison.Ordinal).Replace(" ?", "?", StringComparison.Ordinal).Replace(" !", "!", StringComparison.Ordinal)
        .Replace(" ,", ",", StringComparison.Ordinal).Replace(" ' ", "'", StringComparison.Ordinal).Replace(" n't", "n't", StringComparison.Ordinal)
        .Replace(" 'm", "'m", StringComparison.Ordinal).Replace(" 's", "'s", StringComparison.Ordinal).Replace(" 've", "'ve", StringComparison.Ordinal)
        .Replace(" 're", "'re", StringComparison.Ordinal);
}
