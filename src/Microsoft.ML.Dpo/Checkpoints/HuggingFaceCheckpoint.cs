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
        // Names and shapes from the safetensors headers only: the configuration is checked against them before anything is
        // allocated (a config.json that does not belong to the weights fails here, in milliseconds), then every parameter of the
        // built model against its header entry, and only then is tensor data read.
        var header = Safetensors.ReadDirectoryHeaders(directory);
        CausalLMConfigLimits.CheckAgainstWeights(config, header.Select(kv => (kv.Key, kv.Value.Entry.Shape)), configPath, directory);
        var model = CausalLM.CreateCore(config, dtype, device, initialize: false);
        try
        {
            var files = header.Values.Select(h => h.File).Distinct().ToList();
            string weightsSource = files.Count == 1 ? files[0] : directory;
            var sources = MatchTensors(model, header.ToDictionary(kv => kv.Key, kv => kv.Value.Entry.Shape, StringComparer.Ordinal), weightsSource, configPath);
            // Streamed: each tensor's bytes go from the file straight into its parameter (through a small bounded buffer when the
            // dtype or device differs), shard by shard in file order, so the peak is the model plus one buffer, not twice the model.
            var parameters = model.named_parameters().ToDictionary(np => np.name, np => (Tensor)np.parameter, StringComparer.Ordinal);
            foreach (var shard in sources.GroupBy(kv => header[kv.Value].File))
                Safetensors.ReadInto(shard.Key, shard.Select(kv => (header[kv.Value].Entry, parameters[kv.Key])).ToList());
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
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
        config.Validate(sourceForErrors);
        CausalLMConfigLimits.CheckAgainstWeights(config, tensors.Select(kv => (kv.Key, kv.Value.shape)), sourceForErrors, sourceForErrors);
        var model = CausalLM.CreateCore(config, dtype, device, initialize: false);
        try
        {
            var sources = MatchTensors(model, tensors.ToDictionary(kv => kv.Key, kv => kv.Value.shape, StringComparer.Ordinal), sourceForErrors, sourceForErrors);
            Copy(model, sources, tensors);
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The checkpoint tensor that fills each parameter of <paramref name="model"/>, matched by name and shape only (no data is needed):
    /// every parameter must be present with its exact shape, and every other tensor must be a known ignorable one.
    /// </summary>
    /// <exception cref="InvalidDataException">A tensor is missing, mis-shaped (both shapes named) or unexpected.</exception>
    static Dictionary<string, string> MatchTensors(CausalLM model, IReadOnlyDictionary<string, long[]> shapes, string sourceForErrors, string configSource)
    {
        string by = configSource == sourceForErrors ? "" : $" (by '{configSource}')";
        var config = model.Config;
        var sources = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (name, p) in model.named_parameters())
        {
            string? key = shapes.ContainsKey(name) ? name
                : config.IsGpt2 && name.StartsWith("transformer.", StringComparison.Ordinal) && shapes.ContainsKey(name["transformer.".Length..])
                    ? name["transformer.".Length..]      // original OpenAI gpt2 checkpoints omit the prefix
                    : null;
            if (key is null)
                throw new InvalidDataException($"Checkpoint '{sourceForErrors}' lacks tensor '{name}' (expected shape [{string.Join(", ", p.shape)}]{by}).");
            if (!shapes[key].SequenceEqual(p.shape))
                throw new InvalidDataException($"Checkpoint '{sourceForErrors}': tensor '{name}' has shape [{string.Join(", ", shapes[key])}] but the model expects [{string.Join(", ", p.shape)}]{by}.");
            sources[name] = key;
        }
        var used = sources.Values.ToHashSet(StringComparer.Ordinal);
        var unexpected = shapes.Keys.Where(k => !used.Contains(k) && !IsIgnorable(k, config)).OrderBy(k => k, StringComparer.Ordinal).ToList();
        if (unexpected.Count > 0)
            throw new InvalidDataException($"Checkpoint '{sourceForErrors}' has {unexpected.Count} tensor(s) this {config.ModelType} model{by} does not use: {string.Join(", ", unexpected.Take(10))}{(unexpected.Count > 10 ? ", …" : "")}.");
        return sources;
    }

    static void Copy(CausalLM model, Dictionary<string, string> sources, IReadOnlyDictionary<string, Tensor> tensors)
    {
        using var noGrad = torch.no_grad();
        foreach (var (name, p) in model.named_parameters())
            p.copy_(tensors[sources[name]]);
    }

    static bool IsIgnorable(string name, CausalLMConfig config) =>
        name.EndsWith("rotary_emb.inv_freq", StringComparison.Ordinal)
        || (config.IsGpt2 && (name.EndsWith(".attn.bias", StringComparison.Ordinal) || name.EndsWith(".attn.masked_bias", StringComparison.Ordinal)))
        || (config.TieWordEmbeddings && name == "lm_head.weight");

    /// <summary>
    /// Saves <paramref name="model"/> as a Hugging Face directory: <c>config.json</c>, <c>generation_config.json</c> and
    /// <c>model.safetensors</c> (in the model's dtype; Hugging Face names and shapes; LoRA adapters merged into the weights). Atomic: everything is written into a
    /// temporary sibling folder which then replaces <paramref name="directory"/> as a whole. An existing folder is replaced only
    /// when it is empty or was written by this library (see <see cref="OutputFolder"/>), never when it is or contains the current directory.
    /// </summary>
    public static void Save(CausalLM model, string directory) => Save(model, directory, writeExtraFiles: null);

    /// <summary>
    /// As <see cref="Save(CausalLM, string)"/>; <paramref name="writeExtraFiles"/> is called with the temporary folder before
    /// it is renamed into place, so the caller can add files (tokenizer, chat template) to the same atomic write.
    /// <paramref name="overwrite"/> says whether an existing folder holding files this library did not write may be replaced.
    /// </summary>
    /// <exception cref="OutputFolderException">The folder may not be replaced; nothing was written.</exception>
    public static void Save(CausalLM model, string directory, Action<string>? writeExtraFiles, OutputOverwrite overwrite = OutputOverwrite.OwnOutputOnly) =>
        Save(model, directory, writeExtraFiles, mergeAdapters: true, overwrite, protectedPaths: null);

    /// <summary>
    /// As <see cref="Save(CausalLM, string, Action{string}?, OutputOverwrite)"/>. A model with LoRA adapters is written under plain Hugging Face
    /// names, with the adapters merged into the weights (<paramref name="mergeAdapters"/>) or left out (the base model).
    /// </summary>
    internal static void Save(CausalLM model, string directory, Action<string>? writeExtraFiles, bool mergeAdapters,
        OutputOverwrite overwrite = OutputOverwrite.OwnOutputOnly, IEnumerable<string?>? protectedPaths = null)
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
        }, overwrite, protectedPaths);
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
