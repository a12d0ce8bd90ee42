using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tokenization;
using Microsoft.ML.Dpo.Tokenization.Pipeline;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Checkpoints;

/// <summary>
/// Writes a model and its tokenizer as a GGUF file for llama.cpp (and the engines built on it: LLamaSharp, Ollama, LM Studio),
/// with the metadata and tensor layout llama.cpp's loader expects for the architecture, and an Ollama <c>Modelfile</c> beside it.
/// What llama.cpp would compute differently is refused with the reason, never written.
/// </summary>
internal static partial class GgufExport
{
    /// <summary>The first metadata key of every file written here; an existing file that starts with it may be replaced.</summary>
    internal const string WriterKey = "mldpo.writer";

    /// <summary>The first line of every Modelfile written here.</summary>
    internal const string ModelfileHeader = "# Written by Microsoft.ML.Dpo";

    // llama.cpp's token attributes (tokenizer.ggml.token_type).
    const int Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, ByteToken = 6;

    const string Llama3Pattern = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    /// <summary>The path of the Modelfile written beside <paramref name="ggufPath"/>: the same name with the extension <c>.Modelfile</c>.</summary>
    internal static string ModelfilePath(string ggufPath) => Path.ChangeExtension(Path.GetFullPath(ggufPath), ".Modelfile");

    /// <summary>Writes <paramref name="path"/> and its Modelfile, each into a temporary sibling renamed into place.</summary>
    public static void Export(LanguageModel model, string path, GgufType type, OutputOverwrite overwrite, IEnumerable<string?> protectedPaths)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        string full = Path.GetFullPath(path), modelfile = ModelfilePath(full);
        CheckReplaceable(full, overwrite, protectedPaths, existing => GgufWriter.ReadFirstStringValue(existing, WriterKey) is not null);
        CheckReplaceable(modelfile, overwrite, protectedPaths, existing => ReadFirstLine(existing)?.StartsWith(ModelfileHeader, StringComparison.Ordinal) == true);
        var tokenizer = model.RequireTokenizer();
        var writer = new GgufWriter();
        string name = model.SourcePath is { } source ? Path.GetFileNameWithoutExtension(Path.TrimEndingDirectorySeparator(source)) : Path.GetFileNameWithoutExtension(full);
        writer.AddString(WriterKey, "Microsoft.ML.Dpo " + (typeof(GgufExport).Assembly.GetName().Version?.ToString() ?? "unknown"));
        var plan = AddModel(writer, model.Network, type, name);
        AddTokenizer(writer, tokenizer, model.Network.Config.VocabSize);
        string modelfileText = Modelfile(Path.GetFileName(full), tokenizer);

        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        using (no_grad())
        {
            WriteFileAtomically(full, stream => writer.Write(stream));
        }
        plan.Dispose();
        WriteFileAtomically(modelfile, stream => stream.Write(Encoding.UTF8.GetBytes(modelfileText)));
    }

    static void CheckReplaceable(string full, OutputOverwrite overwrite, IEnumerable<string?> protectedPaths, Func<string, bool> isOurs)
    {
        if (Directory.Exists(full)) throw new OutputFolderException($"Output '{full}' is a folder; choose a file path for the GGUF file.");
        foreach (var p in protectedPaths)
        {
            if (string.IsNullOrEmpty(p)) continue;
            if (string.Equals(OutputFolder.Resolve(full), OutputFolder.Resolve(p), StringComparison.Ordinal))
                throw new OutputFolderException($"Output '{full}' is an input of this run; it is never replaced, not even with --force (OutputOverwrite.Always).");
        }
        if (File.Exists(full) && overwrite != OutputOverwrite.Always && !isOurs(full))
            throw new OutputFolderException($"Output '{full}' exists and was not written by this library; it was left untouched. Choose another path, or replace it with --force (C#: OutputOverwrite.Always).");
    }

    static string? ReadFirstLine(string path)
    {
        try { using var r = new StreamReader(path); return r.ReadLine(); }
        catch (IOException) { return null; }
    }

    static void WriteFileAtomically(string full, Action<Stream> write)
    {
        string tmp = full + ".tmp-" + Guid.NewGuid().ToString("N");
        try
        {
            using (var f = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20)) write(f);
            File.Move(tmp, full, overwrite: true);
        }
        catch
        {
            try { File.Delete(tmp); } catch (IOException) { }
            throw;
        }
    }

    // ---------------------------------------------------------------- model

    /// <summary>llama.cpp's architecture name for a model type, or an error naming what is not supported.</summary>
    internal static string Architecture(CausalLMConfig c)
    {
        string arch = c.ModelType switch
        {
            "llama" or "mistral" => "llama",      // llama.cpp runs Mistral as llama (convert_hf_to_gguf.py does the same)
            "qwen2" => "qwen2",
            "qwen3" => "qwen3",
            "gemma" => "gemma",
            _ => throw new NotSupportedException(
                $"GGUF export supports model types llama, mistral, qwen2, qwen3 and gemma; '{c.ModelType}' is not supported yet (export a Hugging Face directory and convert it with llama.cpp's convert_hf_to_gguf.py)."),
        };
        if (c.IsMixtureOfExperts) throw new NotSupportedException($"GGUF export of mixture-of-experts models ('{c.ModelType}') is not supported.");
        if (c.RopeScaling is not null)
            throw new NotSupportedException($"GGUF export of a model with rope_scaling ('{c.RopeScaling.RopeType}') is not supported: llama.cpp needs its own scaling metadata, which this exporter does not write.");
        if (arch == "llama" && (c.AttentionBias || c.MlpBias))
            throw new NotSupportedException($"GGUF export of a {c.ModelType} model with attention_bias or mlp_bias is not supported.");
        if (arch == "gemma" && (!c.TieWordEmbeddings || c.AttentionBias || c.HiddenActivation is not ("gelu_pytorch_tanh" or "gelu_new")))
            throw new NotSupportedException($"GGUF export of a gemma model needs tied embeddings, no attention bias and the tanh GELU (llama.cpp's gemma); this one has tie_word_embeddings {c.TieWordEmbeddings}, attention_bias {c.AttentionBias}, hidden_activation {c.HiddenActivation}.");
        if (arch != "llama" && c.MlpBias)
            throw new NotSupportedException($"GGUF export of a {c.ModelType} model with mlp_bias is not supported: llama.cpp's {arch} has no MLP biases.");
        return arch;
    }

    /// <summary>The GGUF name of a Hugging Face parameter of the Llama family, or null when it has none.</summary>
    internal static string? TensorName(string hf)
    {
        switch (hf)
        {
            case "model.embed_tokens.weight": return "token_embd.weight";
            case "model.norm.weight": return "output_norm.weight";
            case "lm_head.weight": return "output.weight";
        }
        var m = LayerParameter().Match(hf);
        if (!m.Success) return null;
        string? part = m.Groups[2].Value switch
        {
            "input_layernorm" => "attn_norm",
            "post_attention_layernorm" => "ffn_norm",
            "self_attn.q_proj" => "attn_q",
            "self_attn.k_proj" => "attn_k",
            "self_attn.v_proj" => "attn_v",
            "self_attn.o_proj" => "attn_output",
            "self_attn.q_norm" => "attn_q_norm",
            "self_attn.k_norm" => "attn_k_norm",
            "mlp.gate_proj" => "ffn_gate",
            "mlp.up_proj" => "ffn_up",
            "mlp.down_proj" => "ffn_down",
            _ => null,
        };
        return part is null ? null : $"blk.{m.Groups[1].Value}.{part}.{m.Groups[3].Value}";
    }

    [GeneratedRegex(@"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")]
    private static partial Regex LayerParameter();

    /// <summary>
    /// Hugging Face's rotary layout (each head's first half rotates with its second half) → llama.cpp's llama layout (adjacent
    /// pairs rotate), for the rows of a q or k projection: each head's rows [a₀…a_{d/2−1}, b₀…b_{d/2−1}] become [a₀, b₀, a₁, b₁, …].
    /// </summary>
    internal static Tensor PermuteForLlamaRope(Tensor weight, int heads)
    {
        long rows = weight.shape[0];
        long[] shape = weight.shape;
        long[] split = [heads, 2, rows / heads / 2, .. shape[1..]];
        return weight.reshape(split).transpose(1, 2).reshape(shape);
    }

    sealed class Plan(List<Tensor> owned) : IDisposable
    {
        public void Dispose() { foreach (var t in owned) t.Dispose(); }
    }

    static Plan AddModel(GgufWriter w, CausalLM network, GgufType type, string name)
    {
        var c = network.Config;
        string arch = Architecture(c);
        w.AddString("general.architecture", arch);
        w.AddString("general.name", name);
        w.AddUInt32("general.file_type", type switch { GgufType.F32 => 0u, GgufType.F16 => 1u, _ => 7u });
        if (type == GgufType.Q8_0) w.AddUInt32("general.quantization_version", 2);
        w.AddUInt32("general.alignment", GgufWriter.Alignment);
        // A sliding window llama.cpp does not apply: the context it was trained for is announced as the window, within which
        // full and sliding attention agree (llama.cpp warns when asked for more).
        int context = c.SlidingWindow is int window ? Math.Min(window, c.MaxPositionEmbeddings) : c.MaxPositionEmbeddings;
        w.AddUInt32($"{arch}.context_length", (uint)context);
        w.AddUInt32($"{arch}.embedding_length", (uint)c.HiddenSize);
        w.AddUInt32($"{arch}.block_count", (uint)c.NumHiddenLayers);
        w.AddUInt32($"{arch}.feed_forward_length", (uint)c.IntermediateSize);
        w.AddUInt32($"{arch}.attention.head_count", (uint)c.NumAttentionHeads);
        w.AddUInt32($"{arch}.attention.head_count_kv", (uint)c.NumKeyValueHeads);
        w.AddUInt32($"{arch}.attention.key_length", (uint)c.HeadDim);
        w.AddUInt32($"{arch}.attention.value_length", (uint)c.HeadDim);
        w.AddUInt32($"{arch}.rope.dimension_count", (uint)c.HeadDim);
        w.AddFloat32($"{arch}.rope.freq_base", (float)c.RopeTheta);
        w.AddFloat32($"{arch}.attention.layer_norm_rms_epsilon", (float)c.RmsNormEps);
        w.AddUInt32($"{arch}.vocab_size", (uint)c.VocabSize);

        var owned = new List<Tensor>();
        var weights = Lora.LoraAdapters.PlainWeights(network, merge: true);
        // llama.cpp's own order: embedding, per-block tensors, output norm and head (any order loads; this one reads well).
        foreach (var (hf, tensor) in weights.OrderBy(kv => Order(kv.Key)).ThenBy(kv => kv.Key, StringComparer.Ordinal))
        {
            string gguf = TensorName(hf) ?? throw new NotSupportedException($"GGUF export: the parameter '{hf}' of this {c.ModelType} model has no llama.cpp tensor name.");
            Tensor t = tensor;
            if (arch == "llama" && (gguf.EndsWith(".attn_q.weight", StringComparison.Ordinal) || gguf.EndsWith(".attn_k.weight", StringComparison.Ordinal)))
            {
                t = PermuteForLlamaRope(tensor, gguf.EndsWith(".attn_q.weight", StringComparison.Ordinal) ? c.NumAttentionHeads : c.NumKeyValueHeads);
                owned.Add(t);
            }
            if (arch == "gemma" && gguf.Contains("norm", StringComparison.Ordinal))
            {
                t = tensor + 1;                  // Gemma's RMSNorm scales by (1 + w); llama.cpp's gemma by w
                owned.Add(t);
            }
            var captured = t;
            var ggml = t.dim() < 2 || type == GgufType.F32 ? GgufWriter.GgmlType.F32
                : type == GgufType.Q8_0 && t.shape[^1] % GgufWriter.Q8BlockSize == 0 ? GgufWriter.GgmlType.Q8_0 : GgufWriter.GgmlType.F16;
            w.AddTensor(gguf, t.shape, ggml, () =>
            {
                using var scope = NewDisposeScope();
                return captured.detach().to(ScalarType.Float32).cpu().contiguous().data<float>().ToArray();
            });
        }
        return new Plan(owned);

        static int Order(string name) => name == "model.embed_tokens.weight" ? 0 : name.StartsWith("model.layers.", StringComparison.Ordinal) ? 1 : 2;
    }

    // ---------------------------------------------------------------- tokenizer

    /// <summary>
    /// llama.cpp's tokenizer for ours: <c>gpt2</c> (byte-level BPE, with the pre-tokenizer named by <c>tokenizer.ggml.pre</c>)
    /// or <c>llama</c> (SentencePiece-style BPE with byte fallback, merges ranked by score); an error for anything else.
    /// </summary>
    internal static (string Model, string? Pre) TokenizerKind(TextTokenizer tokenizer)
    {
        var bpe = tokenizer.Pipeline.Model;
        if (bpe.ByteFallback) return ("llama", null);
        if (tokenizer.IsGpt2Data) return ("gpt2", "gpt-2");
        string? dir = tokenizer.SourceDirectory;
        string where = dir is null ? "the tokenizer" : Path.Combine(dir, tokenizer.Format == "tokenizer.json" ? HfTokenizerFiles.TokenizerJson : "vocab.json");
        if (tokenizer.Format != "tokenizer.json")
        {
            string? cls = (string?)tokenizer.SourceConfig?["tokenizer_class"];
            if (cls?.StartsWith("Qwen2", StringComparison.Ordinal) == true) return ("gpt2", "qwen2");
            if (tokenizer.SourceConfig?["add_prefix_space"]?.GetValue<bool>() == true)
                throw new NotSupportedException($"GGUF export: {where}: add_prefix_space has no llama.cpp equivalent.");
            return ("gpt2", "gpt-2");
        }
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir!, HfTokenizerFiles.TokenizerJson)))!.AsObject();
        var pre = json["pre_tokenizer"];
        var normalizer = json["normalizer"];
        string? normalizerType = (string?)normalizer?["type"];
        string Describe() => $"pre_tokenizer {pre?.ToJsonString() ?? "null"}, normalizer {normalizer?.ToJsonString() ?? "null"}";
        static bool IsByteLevel(JsonNode? n, bool useRegex) =>
            (string?)n?["type"] == "ByteLevel" && n?["add_prefix_space"]?.GetValue<bool>() != true && (n?["use_regex"]?.GetValue<bool>() ?? true) == useRegex;
        if (IsByteLevel(pre, useRegex: true) && normalizer is null) return ("gpt2", "gpt-2");
        if ((string?)pre?["type"] == "Sequence" && pre["pretokenizers"] is JsonArray steps && steps.Count == 2 && IsByteLevel(steps[1], useRegex: false)
            && (string?)steps[0]?["type"] == "Split" && (string?)steps[0]?["behavior"] == "Isolated" && steps[0]?["invert"]?.GetValue<bool>() != true
            && (string?)steps[0]?["pattern"]?["Regex"] is string regex)
        {
            if (regex == Llama3Pattern && normalizer is null && bpe.IgnoreMerges) return ("gpt2", "llama-bpe");
            if (regex == ByteLevelBpe.Qwen2Pattern && (normalizer is null || normalizerType == "NFC") && !bpe.IgnoreMerges) return ("gpt2", "qwen2");
        }
        throw new NotSupportedException($"GGUF export: {where}: no llama.cpp pre-tokenizer is known to match this tokenizer ({Describe()}); supported: GPT-2's, Llama 3's and Qwen2's.");
    }

    static void AddTokenizer(GgufWriter w, TextTokenizer tokenizer, int modelVocabSize)
    {
        var (kind, pre) = TokenizerKind(tokenizer);
        var pipeline = tokenizer.Pipeline;
        var bpe = pipeline.Model;
        if (tokenizer.VocabularySize > modelVocabSize)
            throw new InvalidDataException($"GGUF export: the tokenizer has {tokenizer.VocabularySize} ids but the model's vocab_size is {modelVocabSize}.");
        var tokens = new string[modelVocabSize];
        var types = new int[modelVocabSize];
        for (int id = 0; id < modelVocabSize; id++)
        {
            if (pipeline.AddedTokens.TryGetValue(id, out var added))
            {
                tokens[id] = added.Content;
                types[id] = id == bpe.UnknownId ? Unknown : added.Special ? Control : UserDefined;
            }
            else if (bpe.IdToToken(id) is string token)
            {
                tokens[id] = token;
                types[id] = id == bpe.UnknownId ? Unknown : kind == "llama" && ByteTokenPattern().IsMatch(token) ? ByteToken : Normal;
            }
            else
            {
                tokens[id] = $"[PAD{id}]";
                types[id] = Unused;
            }
        }
        var duplicate = tokens.Select((t, i) => (t, i)).GroupBy(x => x.t, StringComparer.Ordinal).FirstOrDefault(g => g.Count() > 1);
        if (duplicate is not null)
            throw new InvalidDataException($"GGUF export: the token \"{duplicate.Key}\" has two ids ({string.Join(", ", duplicate.Select(x => x.i).Take(2))}); llama.cpp's vocabulary needs one token per text.");
        w.AddString("tokenizer.ggml.model", kind);
        if (pre is not null) w.AddString("tokenizer.ggml.pre", pre);
        w.AddStrings("tokenizer.ggml.tokens", tokens);
        w.AddInt32s("tokenizer.ggml.token_type", types);
        if (kind == "gpt2")
        {
            w.AddStrings("tokenizer.ggml.merges", MergeStrings(tokenizer));
        }
        else
        {
            // llama.cpp's SentencePiece tokenizer merges the adjacent pair whose concatenation scores highest: a token made by
            // the merge of rank r scores −r; tokens no merge makes score below every merge.
            var scores = Enumerable.Repeat(float.NaN, modelVocabSize).ToArray();
            int maxRank = 0;
            foreach (var (_, (rank, newId)) in bpe.Merges)
            {
                maxRank = Math.Max(maxRank, rank);
                if (newId < modelVocabSize && !(scores[newId] >= -rank)) scores[newId] = -rank;
            }
            for (int i = 0; i < scores.Length; i++) if (float.IsNaN(scores[i])) scores[i] = -(maxRank + 1);
            w.AddFloat32s("tokenizer.ggml.scores", scores);
            w.AddBool("tokenizer.ggml.add_space_prefix", CheckSentencePieceSpaces(tokenizer));
        }
        if (tokenizer.BosTokenId is int bos) w.AddUInt32("tokenizer.ggml.bos_token_id", (uint)bos);
        if (tokenizer.EosTokenId is int eos) w.AddUInt32("tokenizer.ggml.eos_token_id", (uint)eos);
        if (bpe.UnknownId is int unk) w.AddUInt32("tokenizer.ggml.unknown_token_id", (uint)unk);
        if (tokenizer.HasPadToken) w.AddUInt32("tokenizer.ggml.padding_token_id", (uint)tokenizer.PadTokenId);
        var (addBos, addEos) = SpecialTokenRule(tokenizer);
        w.AddBool("tokenizer.ggml.add_bos_token", addBos);
        w.AddBool("tokenizer.ggml.add_eos_token", addEos);
        if (ChatTemplateText(tokenizer) is string template) w.AddString("tokenizer.chat_template", template);
    }

    [GeneratedRegex("^<0x[0-9A-F]{2}>$")]
    private static partial Regex ByteTokenPattern();

    static List<string> MergeStrings(TextTokenizer tokenizer)
    {
        if (tokenizer.IsGpt2Data)
        {
            // tiktoken's ranks have no merge list: GPT-2's merges.txt, as the library writes it for Hugging Face.
            string tmp = Directory.CreateTempSubdirectory("mldpo-gguf-").FullName;
            try
            {
                ByteLevelBpe.WriteGpt2Files(tmp, tokenizer.SpecialTokens);
                return File.ReadLines(Path.Combine(tmp, "merges.txt")).Where((l, i) => l.Length > 0 && !(i == 0 && l.StartsWith("#version", StringComparison.Ordinal))).ToList();
            }
            finally { Directory.Delete(tmp, recursive: true); }
        }
        var bpe = tokenizer.Pipeline.Model;
        return bpe.Merges.OrderBy(kv => kv.Value.Rank).ThenBy(kv => kv.Key)
            .Select(kv => $"{bpe.IdToToken((int)(kv.Key >> 32))} {bpe.IdToToken((int)(uint)kv.Key)}").ToList();
    }

    /// <summary>
    /// What <c>Encode(text, addSpecialTokens: true)</c> adds, as llama.cpp's two flags: BOS in front, EOS at the end. A
    /// post-processor that adds anything else has no llama.cpp equivalent and is refused.
    /// </summary>
    static (bool Bos, bool Eos) SpecialTokenRule(TextTokenizer tokenizer)
    {
        const string probe = "Hello world";
        var plain = tokenizer.Encode(probe, addSpecialTokens: false);
        var special = tokenizer.Encode(probe, addSpecialTokens: true);
        bool bos = special.Count > plain.Count && tokenizer.BosTokenId is int b && special[0] == b;
        bool eos = special.Count > plain.Count + (bos ? 1 : 0) && tokenizer.EosTokenId is int e && special[^1] == e;
        if (special.Count != plain.Count + (bos ? 1 : 0) + (eos ? 1 : 0) || !special.Skip(bos ? 1 : 0).Take(plain.Count).SequenceEqual(plain))
            throw new NotSupportedException("GGUF export: the tokenizer's post-processor adds tokens other than BOS in front and EOS at the end; llama.cpp cannot reproduce it.");
        return (bos, eos);
    }

    /// <summary>
    /// llama.cpp's SentencePiece tokenizer with <c>add_space_prefix</c> puts "▁" before the text and after every special token
    /// (Hugging Face's <c>legacy</c> behaviour); without it, nowhere. Returns the flag, or refuses a tokenizer that does neither.
    /// </summary>
    static bool CheckSentencePieceSpaces(TextTokenizer tokenizer)
    {
        var bpe = tokenizer.Pipeline.Model;
        bool prefix = tokenizer.Encode("Hello", addSpecialTokens: false) is [var first, ..] && bpe.IdToToken(first)?.StartsWith('▁') == true;
        if (tokenizer.BosToken is string bosText && tokenizer.BosTokenId is int bos)
        {
            var ids = tokenizer.Encode(bosText + "Hello", addSpecialTokens: false);
            bool afterSpecial = ids is [var b, var next, ..] && b == bos && bpe.IdToToken(next)?.StartsWith('▁') == true;
            if (afterSpecial != prefix)
                throw new NotSupportedException(
                    $"GGUF export: this SentencePiece-style tokenizer {(prefix ? "prepends \"▁\" to the text but not after special tokens (legacy: false)" : "prepends \"▁\" only after special tokens")}; llama.cpp's does both or neither.");
        }
        return prefix;
    }

    static string? ChatTemplateText(TextTokenizer tokenizer)
    {
        if (tokenizer.ChatTemplateSource is string source) return source;
        try { return tokenizer.ChatTemplate.Jinja; }
        catch (NotSupportedException) { return null; }
    }

    // ---------------------------------------------------------------- Ollama

    /// <summary>A Modelfile string: double quotes, with backslash, quote and control characters escaped.</summary>
    static string Quote(string s)
    {
        var sb = new StringBuilder("\"");
        foreach (char ch in s)
            sb.Append(ch switch { '\\' => "\\\\", '"' => "\\\"", '\n' => "\\n", '\r' => "\\r", '\t' => "\\t", _ => ch.ToString() });
        return sb.Append('"').ToString();
    }

    /// <summary>
    /// An Ollama Modelfile: <c>FROM</c> the GGUF file, the stop tokens (the model's end-of-sequence tokens, and the chat
    /// template's end-of-turn token), and for the library's built-in templates (chatml, zephyr, plain) the same template in
    /// Ollama's Go syntax; for other templates Ollama uses the GGUF's <c>tokenizer.chat_template</c>.
    /// </summary>
    internal static string Modelfile(string ggufFileName, TextTokenizer tokenizer)
    {
        var sb = new StringBuilder();
        string stem = Path.GetFileNameWithoutExtension(ggufFileName);
        sb.Append(ModelfileHeader).Append(" for ").Append(ggufFileName).Append(". Import it with: ollama create ").Append(stem)
          .Append(" -f ").Append(stem).Append(".Modelfile\n");
        sb.Append("FROM ./").Append(ggufFileName).Append('\n');
        ChatTemplate? template = null;
        try { template = tokenizer.ChatTemplate; } catch (NotSupportedException) { }
        string? eos = tokenizer.EosToken;
        string? go = template?.IsBuiltIn == true ? template.Name switch
        {
            "chatml" => "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
            "zephyr" when eos is not null => "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}" + eos + "\n{{ end }}<|assistant|>\n",
            "plain" => "{{- range .Messages }}{{ if eq .Role \"system\" }}System{{ else if eq .Role \"user\" }}User{{ else if eq .Role \"assistant\" }}Assistant{{ else }}{{ .Role }}{{ end }}: {{ .Content }}\n{{ end }}Assistant:",
            _ => null,
        } : null;
        if (go is not null) sb.Append("TEMPLATE \"\"\"").Append(go).Append("\"\"\"\n");
        else sb.Append("# TEMPLATE: Ollama reads the chat template from the GGUF file (tokenizer.chat_template).\n");
        var stops = new List<string>();
        foreach (int id in tokenizer.EosTokenIds)
            if (tokenizer.Pipeline.AddedTokens.TryGetValue(id, out var t)) stops.Add(t.Content);
        if (template?.Name == "chatml") stops.Add("<|im_end|>");
        if (template?.Name == "plain") stops.Add("\nUser:");
        foreach (string stop in stops.Distinct(StringComparer.Ordinal))
            sb.Append("PARAMETER stop ").Append(Quote(stop)).Append('\n');
        return sb.ToString();
    }
}
