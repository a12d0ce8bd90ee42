using System.Runtime.InteropServices;
using Microsoft.ML.Dpo.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Checkpoints;

/// <summary>
/// Reads llama2.c checkpoints (the legacy <c>.bin</c> format of Karpathy's llama2.c): a header of 7 int32 — dim, hidden_dim,
/// n_layers, n_heads, n_kv_heads, vocab_size (negative: untied classifier stored at the end), seq_len — then float32 weights.
/// llama2.c rotates interleaved pairs; query and key rows are permuted at load to Hugging Face's half-split layout.
/// </summary>
public static class Llama2cCheckpoint
{
    /// <summary>Loads the llama2.c checkpoint at <paramref name="binPath"/> as a llama <see cref="CausalLM"/>.</summary>
    /// <param name="binPath">The <c>.bin</c> file.</param>
    /// <param name="dtype">Parameter dtype.</param>
    /// <param name="device">Device; CPU when null.</param>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">The header is invalid or its sizes do not match the file length.</exception>
    public static CausalLM Load(string binPath, ScalarType dtype = ScalarType.Float32, Device? device = null)
    {
        if (!File.Exists(binPath))
            throw new FileNotFoundException($"llama2.c checkpoint '{binPath}' does not exist.", binPath);
        var bytes = File.ReadAllBytes(binPath);
        if (bytes.Length < 28)
            throw new InvalidDataException($"llama2.c checkpoint '{binPath}' is {bytes.Length} bytes, shorter than its 28-byte header.");
        var h = MemoryMarshal.Cast<byte, int>(bytes.AsSpan(0, 28)).ToArray();
        int dim = h[0], hidden = h[1], layers = h[2], heads = h[3], kvHeads = h[4], vocabSigned = h[5], seqLen = h[6];
        bool shared = vocabSigned > 0;
        int vocab = vocabSigned == int.MinValue ? 0 : Math.Abs(vocabSigned);
        if (dim <= 0 || hidden <= 0 || layers <= 0 || heads <= 0 || kvHeads <= 0 || vocab == 0 || seqLen <= 0 || dim % heads != 0 || heads % kvHeads != 0)
            throw new InvalidDataException($"llama2.c checkpoint '{binPath}' has an invalid header: dim={dim}, hidden_dim={hidden}, n_layers={layers}, n_heads={heads}, n_kv_heads={kvHeads}, vocab_size={vocabSigned}, seq_len={seqLen}.");
        int headSize = dim / heads, kvDim = kvHeads * headSize;

        long L = layers;
        var layout = new List<(string Name, long[] Shape)>
        {
            ("tok_embeddings", new long[] { vocab, dim }),
            ("rms_att", new[] { L, dim }),
            ("wq", new[] { L, dim, dim }),
            ("wk", new[] { L, kvDim, dim }),
            ("wv", new[] { L, kvDim, dim }),
            ("wo", new[] { L, dim, dim }),
            ("rms_ffn", new[] { L, dim }),
            ("w1", new[] { L, hidden, dim }),
            ("w2", new[] { L, dim, hidden }),
            ("w3", new[] { L, hidden, dim }),
            ("rms_final", new long[] { dim }),
            ("freq_cis_real", new long[] { seqLen, headSize / 2 }),
            ("freq_cis_imag", new long[] { seqLen, headSize / 2 }),
        };
        if (!shared) layout.Add(("wcls", new long[] { vocab, dim }));
        // Header ints multiply to at most 2^93: saturate instead of wrapping, so a corrupt header cannot match the file length.
        long floats = layout.Aggregate(0L, (sum, e) => Saturating(sum, e.Shape.Aggregate(1L, (a, d) => d != 0 && a > long.MaxValue / d ? long.MaxValue : a * d)));
        long expectedBytes = floats > (long.MaxValue - 28) / 4 ? long.MaxValue : 28 + 4 * floats;
        if (bytes.Length != expectedBytes)
            throw new InvalidDataException(
                $"llama2.c checkpoint '{binPath}' is {bytes.Length} bytes but its header (dim={dim}, hidden_dim={hidden}, n_layers={layers}, n_heads={heads}, n_kv_heads={kvHeads}, vocab_size={vocabSigned}, seq_len={seqLen}) implies {expectedBytes}.");

        var config = new CausalLMConfig
        {
            ModelType = "llama",
            VocabSize = vocab,
            HiddenSize = dim,
            IntermediateSize = hidden,
            NumHiddenLayers = layers,
            NumAttentionHeads = heads,
            NumKeyValueHeads = kvHeads,
            HeadDim = headSize,
            MaxPositionEmbeddings = seqLen,
            RmsNormEps = 1e-5,
            RopeTheta = 10000.0,
            TieWordEmbeddings = shared,
            BosTokenId = 1,
            EosTokenIds = new[] { 2 },
        };

        using var scope = torch.NewDisposeScope();
        var raw = new Dictionary<string, Tensor>();
        long offset = 28;
        foreach (var (name, shape) in layout)
        {
            long n = shape.Aggregate(1L, (a, d) => a * d);
            var floatsSpan = MemoryMarshal.Cast<byte, float>(bytes.AsSpan((int)offset, (int)(4 * n)));
            raw[name] = torch.tensor(floatsSpan.ToArray(), shape);
            offset += 4 * n;
        }

        var hf = new Dictionary<string, Tensor> { ["model.embed_tokens.weight"] = raw["tok_embeddings"], ["model.norm.weight"] = raw["rms_final"] };
        if (!shared) hf["lm_head.weight"] = raw["wcls"];
        for (int i = 0; i < layers; i++)
        {
            string p = $"model.layers.{i}.";
            hf[p + "input_layernorm.weight"] = raw["rms_att"][i];
            hf[p + "self_attn.q_proj.weight"] = InterleavedToHalfSplit(raw["wq"][i], heads);
            hf[p + "self_attn.k_proj.weight"] = InterleavedToHalfSplit(raw["wk"][i], kvHeads);
            hf[p + "self_attn.v_proj.weight"] = raw["wv"][i];
            hf[p + "self_attn.o_proj.weight"] = raw["wo"][i];
            hf[p + "post_attention_layernorm.weight"] = raw["rms_ffn"][i];
            hf[p + "mlp.gate_proj.weight"] = raw["w1"][i];
            hf[p + "mlp.down_proj.weight"] = raw["w2"][i];
            hf[p + "mlp.up_proj.weight"] = raw["w3"][i];
        }
        return HuggingFaceCheckpoint.Build(config, hf, dtype, device, binPath);
    }

    static long Saturating(long a, long b) => a > long.MaxValue - b ? long.MaxValue : a + b;

    /// <summary>
    /// Rows of a q or k projection <c>[heads·D, in]</c>, reordered from interleaved rotary pairs (x0,x1),(x2,x3)… to the
    /// half-split layout (x0,x2,… | x1,x3,…) per head — the permutation of Meta-to-Hugging Face conversion.
    /// </summary>
    internal static Tensor InterleavedToHalfSplit(Tensor w, int heads)
    {
        long rows = w.shape[0], cols = w.shape[1];
        return w.view(heads, rows / heads / 2, 2, cols).transpose(1, 2).reshape(rows, cols);
    }
}

/// <summary>Loads a model from a path of either kind: a folder is a Hugging Face checkpoint, a <c>.bin</c> file a llama2.c one.</summary>
public static class CausalLMLoader
{
    /// <summary>Loads <paramref name="path"/>: a Hugging Face directory or a llama2.c <c>.bin</c> file.</summary>
    /// <exception cref="FileNotFoundException">Nothing exists at <paramref name="path"/>.</exception>
    /// <exception cref="ArgumentException">The path is a file of an unknown kind.</exception>
    public static CausalLM Load(string path, ScalarType dtype = ScalarType.Float32, Device? device = null)
    {
        if (Directory.Exists(path)) return HuggingFaceCheckpoint.Load(path, dtype, device);
        if (File.Exists(path))
        {
            if (path.EndsWith(".bin", StringComparison.OrdinalIgnoreCase)) return Llama2cCheckpoint.Load(path, dtype, device);
            throw new ArgumentException($"'{path}' is neither a Hugging Face model directory nor a llama2.c .bin file.", nameof(path));
        }
        throw new FileNotFoundException($"No model at '{path}' (expected a Hugging Face directory or a llama2.c .bin file).", path);
    }
}
