using Microsoft.ML.Dpo.Checkpoints;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Generation;
using Microsoft.ML.Dpo.Lora;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Runtime;
using Microsoft.ML.Dpo.Tokenization;
using Microsoft.ML.Dpo.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo;

/// <summary>
/// A causal language model with its tokenizer: what the trainers start from and what they produce.
/// Loads a Hugging Face directory (config.json, model.safetensors, tokenizer files) or an llama2.c <c>.bin</c> file
/// (which has no tokenizer: use token ids), and saves a Hugging Face directory.
/// </summary>
public sealed class LanguageModel : IDisposable
{
    /// <summary>Wraps an existing network and tokenizer (the tokenizer may be null for id-only models).</summary>
    public LanguageModel(CausalLM network, TextTokenizer? tokenizer)
    {
        Network = network ?? throw new ArgumentNullException(nameof(network));
        Tokenizer = tokenizer;
    }

    /// <summary>The TorchSharp network.</summary>
    public CausalLM Network { get; }

    /// <summary>The tokenizer, or null for a model loaded without tokenizer files.</summary>
    public TextTokenizer? Tokenizer { get; }

    /// <summary>The tokenizer, or an error that explains that this model only takes token ids.</summary>
    public TextTokenizer RequireTokenizer() => Tokenizer
        ?? throw new InvalidOperationException("This model has no tokenizer (an llama2.c file, or a directory without tokenizer files): text input needs one.");

    /// <summary>
    /// Loads a model from a Hugging Face directory (with its tokenizer when tokenizer files are present) or an
    /// llama2.c checkpoint file.
    /// </summary>
    /// <param name="path">The directory or <c>.bin</c> file.</param>
    /// <param name="precision">Weight precision.</param>
    /// <param name="device">"auto", "cpu", "cuda" or "cuda:N".</param>
    public static LanguageModel Load(string path, ModelPrecision precision = ModelPrecision.Float32, string device = "auto")
    {
        CausalLM network = CausalLMLoader.Load(path, ToScalarType(precision), DpoRuntime.ResolveDevice(device));
        try
        {
            TextTokenizer? tokenizer = Directory.Exists(path) && HasTokenizerFiles(path) ? TextTokenizer.FromDirectory(path) : null;
            return new LanguageModel(network, tokenizer) { SourcePath = Path.GetFullPath(path) };
        }
        catch
        {
            network.Dispose();
            throw;
        }
    }

    /// <summary>The LoRA adapters applied to <see cref="Network"/> (<see cref="LoraAdapters.Apply(LanguageModel, LoraOptions)"/>), or null.</summary>
    public LoraAdapters? Lora { get; internal set; }

    /// <summary>The directory or file this model was loaded from (null for a model built in memory); a save never replaces it.</summary>
    internal string? SourcePath { get; private init; }

    /// <summary>
    /// Saves a Hugging Face directory (config, weights, generation config and tokenizer files, and the
    /// <see cref="OutputFolder.MarkerFileName"/> marker), atomically. LoRA adapters are merged into the saved weights, so the
    /// directory is a plain model (save the adapters alone with <see cref="LoraAdapters.Save"/>). An existing folder is
    /// replaced only when it is empty or this library wrote it, unless <paramref name="overwrite"/> is
    /// <see cref="OutputOverwrite.Always"/>; a folder that is or contains the current directory or the folder this model was
    /// loaded from is never replaced.
    /// </summary>
    /// <exception cref="OutputFolderException">The folder may not be replaced; nothing was written.</exception>
    public void Save(string directory, OutputOverwrite overwrite = OutputOverwrite.OwnOutputOnly) => SaveWith(directory, overwrite, null, null);

    /// <summary>As <see cref="Save(string, OutputOverwrite)"/>, adding files to the same atomic write and protecting more paths.</summary>
    internal void SaveWith(string directory, OutputOverwrite overwrite, Action<string>? writeExtraFiles, IEnumerable<string?>? protectedPaths) =>
        HuggingFaceCheckpoint.Save(Network, directory, temp => { Tokenizer?.Save(temp); writeExtraFiles?.Invoke(temp); },
            mergeAdapters: true, overwrite, ProtectedPaths.Concat(protectedPaths ?? []));

    /// <summary>
    /// Exports the model and its tokenizer as one GGUF file for llama.cpp and the engines built on it (LLamaSharp, Ollama,
    /// LM Studio), and an Ollama <c>Modelfile</c> beside it (the same name with the extension <c>.Modelfile</c>). Written:
    /// llama.cpp's metadata for the architecture (llama, mistral as llama, qwen2, qwen3, gemma), its tensor names and rotary layout,
    /// the tokenizer (tokens, merges or scores, token types, special ids, BOS/EOS rule, chat template). LoRA adapters are merged.
    /// Each file is written to a temporary sibling and renamed into place; an existing file is replaced only when this library
    /// wrote it, unless <paramref name="overwrite"/> is <see cref="OutputOverwrite.Always"/>. What llama.cpp would compute
    /// differently (rope scaling, mixtures of experts, a pre-tokenizer it does not know) is refused with the reason.
    /// </summary>
    /// <param name="path">The <c>.gguf</c> file to write.</param>
    /// <param name="type">The encoding of the matrices (vectors always stay F32).</param>
    /// <param name="overwrite">Whether an existing file this library did not write may be replaced.</param>
    /// <exception cref="NotSupportedException">The architecture, a feature of it or the tokenizer has no llama.cpp equivalent.</exception>
    /// <exception cref="OutputFolderException">The file may not be replaced; nothing was written.</exception>
    public void ExportGguf(string path, GgufType type = GgufType.F16, OutputOverwrite overwrite = OutputOverwrite.OwnOutputOnly) =>
        GgufExport.Export(this, path, type, overwrite, ProtectedPaths);

    /// <summary>Saves the base model without its LoRA adapters (they are left out, not merged).</summary>
    internal void SaveBase(string directory) =>
        HuggingFaceCheckpoint.Save(Network, directory, temp => Tokenizer?.Save(temp), mergeAdapters: false, OutputOverwrite.OwnOutputOnly, ProtectedPaths);

    /// <summary>What a save of this model must never replace: where it (its tokenizer, its LoRA base) was loaded from.</summary>
    internal IEnumerable<string?> ProtectedPaths => [SourcePath, Tokenizer?.SourceDirectory, Lora?.BaseModelNameOrPath is { } b && Path.IsPathRooted(b) ? b : null];

    /// <summary>
    /// A deep copy of the weights (sharing the immutable tokenizer), e.g. a frozen reference model. A model with LoRA adapters
    /// is copied as a plain model with the adapters merged into its weights.
    /// </summary>
    public LanguageModel Clone()
    {
        var copy = CausalLM.CreateCore(Network.Config, Network.DType, Network.Device, initialize: false);   // every weight is overwritten below
        using (no_grad())
        using (NewDisposeScope())
        {
            var source = LoraAdapters.PlainWeights(Network, merge: true).ToDictionary(kv => kv.Key, kv => kv.Value, StringComparer.Ordinal);
            foreach (var (name, tensor) in copy.named_parameters()) tensor.copy_(source[name]);
        }
        return new LanguageModel(copy, Tokenizer);
    }

    /// <summary>
    /// A second model over the same weight storage as this one (sharing the tokenizer): nothing is copied, so it costs no
    /// memory. For a LoRA run on a model given in memory, whose base weights are frozen and never written: the adapters go on
    /// the new network, the caller's network keeps its own modules. Only for a model without adapters (whose weights would
    /// have to be merged, i.e. copied). The new network's parameters are created without initialisation and never touched
    /// (no memory is committed for them) before they are pointed at this model's storage.
    /// </summary>
    /// <exception cref="InvalidOperationException">This model has LoRA adapters.</exception>
    internal LanguageModel ShareWeights()
    {
        if (Lora is not null) throw new InvalidOperationException("A model with LoRA adapters cannot share its weights; clone it (the adapters are merged).");
        var device = Network.Device;
        var network = CausalLM.CreateCore(Network.Config, Network.DType, device: null, initialize: false);   // on the CPU: not moved, never committed
        try
        {
            using (no_grad())
            {
                var source = Network.named_parameters().ToDictionary(p => p.name, p => p.parameter, StringComparer.Ordinal);
                foreach (var (name, p) in network.named_parameters())
                    p.set_(source[name]);
            }
            if (device.type != DeviceType.CPU) network.to(device);   // the buffers (rotary tables); the parameters already live there
            return new LanguageModel(network, Tokenizer);
        }
        catch
        {
            network.Dispose();
            throw;
        }
    }

    /// <summary>A text generator over this model.</summary>
    public TextGenerator CreateGenerator() => new(Network, Tokenizer);

    /// <summary>Tokenizes a prompt as the whole library does (<see cref="TextTokenizer.EncodePrompt"/>).</summary>
    internal int[] EncodePrompt(string prompt)
    {
        var tokenizer = RequireTokenizer();
        return tokenizer.EncodePrompt(prompt).ToArray();
    }

    /// <summary>Tokenizes a completion the way the trainers do: EOS appended so the model learns to stop.</summary>
    internal int[] EncodeCompletion(string completion)
    {
        var tokenizer = RequireTokenizer();
        var ids = tokenizer.Encode(completion, addSpecialTokens: false).ToList();
        if (tokenizer.EosTokenId is int eos) ids.Add(eos);
        return ids.ToArray();
    }

    /// <summary>
    /// Tokenizes a prompt and its completions as the whole library does — separately, so every completion shares the prompt's
    /// ids — and fits them to the length limits (<see cref="SequenceTruncation.Fit"/>), which are first capped at the model's
    /// context (<see cref="SequenceTruncation.WithinContext"/>). Returns whether anything was cut.
    /// </summary>
    internal bool EncodeExample(string prompt, IReadOnlyList<string> completions, int maxLength, int maxPromptLength, TruncationMode mode,
        out int[] promptIds, out int[][] completionIds)
    {
        promptIds = EncodePrompt(prompt);
        completionIds = completions.Select(EncodeCompletion).ToArray();
        (maxLength, maxPromptLength) = SequenceTruncation.WithinContext(maxLength, maxPromptLength, Network.Config.MaxPositionEmbeddings);
        return SequenceTruncation.Fit(ref promptIds, completionIds, maxLength, maxPromptLength, mode);
    }

    /// <summary>The id used to pad batches.</summary>
    internal int PadTokenId => Tokenizer?.PadTokenId ?? Network.Config.PadTokenId ?? Network.Config.EosTokenIds.FirstOrDefault();

    /// <summary>Frees the network's tensors.</summary>
    public void Dispose() => Network.Dispose();

    internal static ScalarType ToScalarType(ModelPrecision precision) => precision switch
    {
        ModelPrecision.BFloat16 => ScalarType.BFloat16,
        ModelPrecision.Float16 => ScalarType.Float16,
        _ => ScalarType.Float32,
    };

    static bool HasTokenizerFiles(string directory) =>
        new[] { "tokenizer.model", "vocab.json", "tokenizer.json", "tokenizer_config.json" }.Any(f => File.Exists(Path.Combine(directory, f)));
}
