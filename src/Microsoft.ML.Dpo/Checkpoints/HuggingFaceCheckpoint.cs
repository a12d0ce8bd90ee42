using System.Text.Json.Nodes;
using Microsoft.ML.Dpo.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Checkpoints;

/// <summary>Reads and writes Hugging Face model directories: <c>config.json</c> plus safetensors weights.</summary>
public static class HuggingFaceCheckpoint
{
    /// <summary>
    /// Loads the model in <paramref name="directory"/> (<c>config.json</c>, and <c>model.safetensors</c> or a sharded
    /// <c>model.safetensors.index.json</c>; without those, PyTorch pickle weights: <c>pytorch_model.bin</c> or
    /// <c>pytorch_model.bin.index.json</c> with its shards, read through TorchSharp.PyBridge). Every parameter must be present with its exact shape; unexpected tensors are an
    /// error too, except known ignorable ones (rotary <c>inv_freq</c>, gpt2 <c>attn.bias</c>/<c>attn.masked_bias</c>, a
    /// tied model's duplicate <c>lm_head.weight</c>). The model is fully built before it is returned.
    /// </summary>
    /// <param name="directory">The checkpoint folder.</param>
    /// <param name="dtype">Parameter dtype (stored weights are converted).</param>
    /// <param name="device">Device; CPU when null.</param>
    /// <exception cref="DirectoryNotFoundException">The folder does not exist.</exception>
    /// <exception cref="FileNotFoundException"><c>config.json</c> or the weights are missing.</exception>
    /// <exception cref="InvalidDataException">The config or weights are malformed, a tensor is missing, mis-shaped or unexpected.</exception>
    public static CausalLM Load(string directory, ScalarType dtype = ScalarType.Float32, Device? device = null)
    {
        if (!Directory.Exists(directory))
            throw new DirectoryNotFoundException($"Model directory '{directory}' does not exist.");
        string configPath = Path.Combine(directory, "config.json");
        if (!File.Exists(configPath))
            throw new FileNotFoundException($"Model directory '{directory}' has no config.json ('{configPath}' is missing).", configPath);
        var config = CausalLMConfig.Load(configPath);
        if (HasOnlyPyTorchPickles(directory))
            return LoadPyTorchPickles(config, directory, dtype, device);
        var tensors = Safetensors.LoadDirectory(directory);
        try
        {
            return Build(config, tensors, dtype, device, directory);
        }
        finally
        {
            foreach (var t in tensors.Values) t.Dispose();
        }
    }

    /// <summary>Whether <paramref name="directory"/> has PyTorch pickle weights and no safetensors (which win when both exist).</summary>
    static bool HasOnlyPyTorchPickles(string directory) =>
        !File.Exists(Path.Combine(directory, Safetensors.SingleFileName)) && !File.Exists(Path.Combine(directory, Safetensors.IndexFileName))
        && PyTorchPickle.IsPresent(directory);

    /// <summary>A model from <c>pytorch_model.bin</c> (or its shards), read whole through TorchSharp.PyBridge, then built and checked as any other.</summary>
    static CausalLM LoadPyTorchPickles(CausalLMConfig config, string directory, ScalarType dtype, Device? device)
    {
        var tensors = PyTorchPickle.LoadDirectory(directory);
        try
        {
            return Build(config, tensors, dtype, device, directory);
        }
        finally
        {
            foreach (var t in tensors.Values) t.Dispose();
        }
    }

    /// <summary>Builds a model of <paramref name="config"/> from named tensors (Hugging Face names); the tensors stay the caller's.</summary>
    internal static CausalLM Build(CausalLMConfig config, IReadOnlyDictionary<string, Tensor> tensors, ScalarType dtype, Device? device, string sourceForErrors)
    {
        var model = CausalLM.CreateCore(config, dtype, device, initialize: false);
        try
        {
            var used = new HashSet<string>(StringComparer.Ordinal);
            using (torch.no_grad())
            {
                foreach (var (name, p) in model.named_parameters())
                {
                    string? key = tensors.ContainsKey(name) ? name
                        : config.IsGpt2 && name.StartsWith("transformer.", StringComparison.Ordinal) && tensors.ContainsKey(name["transformer.".Length..])
                            ? name["transformer.".Length..]      // original OpenAI gpt2 checkpoints omit the prefix
                            : null;
                    if (key is null)
                        throw new InvalidDataException($"Checkpoint '{sourceForErrors}' lacks tensor '{name}' (expected shape [{string.Join(", ", p.shape)}]).");
                    var src = tensors[key];
                    if (!src.shape.SequenceEqual(p.shape))
                        throw new InvalidDataException($"Checkpoint '{sourceForErrors}': tensor '{name}' has shape [{string.Join(", ", src.shape)}] but the model expects [{string.Join(", ", p.shape)}].");
                    p.copy_(src);
                    used.Add(key);
                }
            }
            var unexpected = tensors.Keys.Where(k => !used.Contains(k) && !IsIgnorable(k, config)).OrderBy(k => k, StringComparer.Ordinal).ToList();
            if (unexpected.Count > 0)
                throw new InvalidDataException($"Checkpoint '{sourceForErrors}' has {unexpected.Count} tensor(s) this {config.ModelType} model does not use: {string.Join(", ", unexpected.Take(10))}{(unexpected.Count > 10 ? ", …" : "")}.");
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    static bool IsIgnorable(string name, CausalLMConfig config) =>
        name.EndsWith("rotary_emb.inv_freq", StringComparison.Ordinal)
        || (config.IsGpt2 && (name.EndsWith(".attn.bias", StringComparison.Ordinal) || name.EndsWith(".attn.masked_bias", StringComparison.Ordinal)))
        || (config.TieWordEmbeddings && name == "lm_head.weight");

    /// <summary>
    /// Saves <paramref name="model"/> as a Hugging Face directory: <c>config.json</c>, <c>generation_config.json</c> and
    /// <c>model.safetensors</c> (in the model's dtype; Hugging Face names and shapes; LoRA adapters merged into the weights). Atomic: everything is written into a
    /// temporary sibling folder which then replaces <paramref name="directory"/> (an existing folder is replaced as a whole).
    /// </summary>
    public static void Save(CausalLM model, string directory) => Save(model, directory, writeExtraFiles: null);

    /// <summary>
    /// As <see cref="Save(CausalLM, string)"/>; <paramref name="writeExtraFiles"/> is called with the temporary folder before
    /// it is renamed into place, so the caller can add files (tokenizer, chat template) to the same atomic write.
    /// </summary>
    public static void Save(CausalLM model, string directory, Action<string>? writeExtraFiles) => Save(model, directory, writeExtraFiles, mergeAdapters: true);

    /// <summary>
    /// As <see cref="Save(CausalLM, string, Action{string}?)"/>. A model with LoRA adapters is written under plain Hugging Face
    /// names, with the adapters merged into the weights (<paramref name="mergeAdapters"/>) or left out (the base model).
    /// </summary>
    internal static void Save(CausalLM model, string directory, Action<string>? writeExtraFiles, bool mergeAdapters)
    {
        ArgumentNullException.ThrowIfNull(model);
        AtomicDirectory.Write(directory, tmp =>
        {
            var dtype = model.DType;
            if (dtype is not (ScalarType.Float32 or ScalarType.Float16 or ScalarType.BFloat16)) dtype = ScalarType.Float32;
            File.WriteAllText(Path.Combine(tmp, "config.json"), model.Config.ToJson(TorchDtypeName(dtype)));
            File.WriteAllText(Path.Combine(tmp, "generation_config.json"), GenerationConfigJson(model.Config));
            using (var scope = torch.NewDisposeScope())
            {
                var weights = Lora.LoraAdapters.PlainWeights(model, mergeAdapters).Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value.to(dtype)));
                Safetensors.Save(Path.Combine(tmp, Safetensors.SingleFileName), weights.ToList());
            }
            writeExtraFiles?.Invoke(tmp);
        });
    }

    static string TorchDtypeName(ScalarType t) => t switch
    {
        ScalarType.BFloat16 => "bfloat16",
        ScalarType.Float16 => "float16",
        _ => "float32",
    };

    static string GenerationConfigJson(CausalLMConfig c)
    {
        var o = new JsonObject
        {
            ["bos_token_id"] = c.BosTokenId,
            ["eos_token_id"] = c.EosTokenIds.Count == 1 ? JsonValue.Create(c.EosTokenIds[0]) : new JsonArray(c.EosTokenIds.Select(e => (JsonNode?)JsonValue.Create(e)).ToArray()),
        };
        if (c.PadTokenId is int pad) o["pad_token_id"] = pad;
        return o.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true });
    }
}
