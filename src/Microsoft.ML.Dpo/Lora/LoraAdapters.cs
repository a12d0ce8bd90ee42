using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Microsoft.ML.Dpo.Checkpoints;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Lora;

/// <summary>
/// The LoRA adapters applied to a <see cref="CausalLM"/>: which projections carry one, their parameters, a switch to turn
/// them off (the base model is then computed exactly), merging, and PEFT-format save/load
/// (<c>adapter_config.json</c> + <c>adapter_model.safetensors</c>, tensors named
/// <c>base_model.model.{module}.lora_A.weight</c> <c>[r, in]</c> and <c>….lora_B.weight</c> <c>[out, r]</c>).
/// </summary>
/// <remarks>
/// Applying adapters replaces each targeted projection by a <see cref="LoraLinear"/> (via <see cref="CausalLM.ReplaceProjection"/>)
/// and freezes every other parameter of the network (<c>requires_grad</c> false). A model with adapters still saves as a plain
/// Hugging Face directory (<see cref="LanguageModel.Save"/>, <see cref="Checkpoints.HuggingFaceCheckpoint.Save(CausalLM, string)"/>):
/// the adapters are merged into the saved weights.
/// </remarks>
public sealed class LoraAdapters
{
    /// <summary>The adapter config file of a PEFT adapter directory.</summary>
    public const string ConfigFileName = "adapter_config.json";

    /// <summary>The weights file of a PEFT adapter directory.</summary>
    public const string WeightsFileName = "adapter_model.safetensors";

    const string PeftPrefix = "base_model.model.";

    readonly Dictionary<string, LoraLinear> modules;
    readonly List<Parameter> previouslyTrainable;

    LoraAdapters(CausalLM network, LoraOptions options, Dictionary<string, LoraLinear> modules, List<Parameter> previouslyTrainable)
    {
        Network = network;
        Options = options;
        this.modules = modules;
        this.previouslyTrainable = previouslyTrainable;
    }

    /// <summary>The adapted network.</summary>
    public CausalLM Network { get; }

    /// <summary>The options the adapters were created with (a copy).</summary>
    public LoraOptions Options { get; }

    /// <summary>The base model's name or path, written to <c>adapter_config.json</c> as <c>base_model_name_or_path</c>.</summary>
    public string? BaseModelNameOrPath { get; set; }

    /// <summary>The qualified names of the adapted projections, e.g. <c>model.layers.0.self_attn.q_proj</c>.</summary>
    public IReadOnlyList<string> ModuleNames => modules.Keys.ToList();

    /// <summary>The adapter module of each adapted projection, by qualified name.</summary>
    public IReadOnlyDictionary<string, LoraLinear> Modules => modules;

    /// <summary>The trainable adapter parameters (A and B of every adapted projection).</summary>
    public IReadOnlyList<Parameter> Parameters => modules.Values.SelectMany(m => new[] { m.A, m.B }).ToList();

    /// <summary>The adapter tensors under their PEFT names (without the <c>base_model.model.</c> prefix), e.g. <c>model.layers.0.self_attn.q_proj.lora_A.weight</c>.</summary>
    public IReadOnlyList<KeyValuePair<string, Parameter>> NamedParameters =>
        modules.SelectMany(kv => new[] { KeyValuePair.Create(kv.Key + ".lora_A.weight", kv.Value.A), KeyValuePair.Create(kv.Key + ".lora_B.weight", kv.Value.B) }).ToList();

    /// <summary>The number of adapter parameters.</summary>
    public long ParameterCount => modules.Values.Sum(m => m.A.numel() + m.B.numel());

    /// <summary>Whether the adapters contribute (setting it switches all of them).</summary>
    public bool Enabled
    {
        get => modules.Values.All(m => m.Enabled);
        set { foreach (var m in modules.Values) m.Enabled = value; }
    }

    /// <summary>
    /// Turns the adapters off until the returned scope is disposed (then restores each one's previous state, also when an
    /// exception is thrown): <c>using (adapters.Disable()) { … base model … }</c>.
    /// </summary>
    public IDisposable Disable()
    {
        var previous = modules.Values.Select(m => (m, m.Enabled)).ToList();
        foreach (var m in modules.Values) m.Enabled = false;
        return new Restore(previous);
    }

    sealed class Restore(List<(LoraLinear Module, bool Enabled)> previous) : IDisposable
    {
        bool done;
        public void Dispose()
        {
            if (done) return;
            done = true;
            foreach (var (m, e) in previous) m.Enabled = e;
        }
    }

    /// <summary>
    /// Adds adapters to <paramref name="model"/>'s network and records them as <see cref="LanguageModel.Lora"/>.
    /// </summary>
    /// <exception cref="InvalidOperationException">The model already has adapters.</exception>
    /// <exception cref="ArgumentException">A target name matches no projection (the message lists the available names).</exception>
    public static LoraAdapters Apply(LanguageModel model, LoraOptions options)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (model.Lora is not null) throw new InvalidOperationException("This model already has LoRA adapters.");
        var adapters = Apply(model.Network, options);
        model.Lora = adapters;
        return adapters;
    }

    /// <summary>
    /// Replaces the projections of <paramref name="network"/> that <see cref="LoraOptions.TargetModules"/> names by
    /// <see cref="LoraLinear"/>s (A seeded by <see cref="LoraOptions.Seed"/>, B = 0) and freezes all other parameters.
    /// </summary>
    /// <exception cref="InvalidOperationException">The network already has adapters.</exception>
    /// <exception cref="ArgumentException">A target name matches no projection (the message lists the available names).</exception>
    public static LoraAdapters Apply(CausalLM network, LoraOptions options)
    {
        ArgumentNullException.ThrowIfNull(network);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        if (network.modules().Any(m => m is LoraLinear))
            throw new InvalidOperationException("This network already has LoRA adapters.");
        var targets = ResolveTargets(network, options.TargetModules);
        CheckAdapterSize(network, targets, options.Rank);
        var previouslyTrainable = network.parameters().Where(p => p.requires_grad).ToList();
        var modules = new Dictionary<string, LoraLinear>(StringComparer.Ordinal);
        var generator = new Generator((ulong)(uint)options.Seed);
        // Parameters made inside a caller's dispose scope would be freed with it: build in a scope of our own and detach.
        using var scope = torch.NewDisposeScope();
        try
        {
            foreach (string name in targets)
            {
                var lora = new LoraLinear(network.GetProjection(name), options.Rank, options.Scaling, options.Dropout, generator);
                network.ReplaceProjection(name, lora);
                modules.Add(name, lora);
            }
            scope.Detach(scope.DisposablesView.ToArray());
        }
        catch
        {
            foreach (var (name, lora) in modules) network.ReplaceProjection(name, lora.BaseLayer);
            throw;
        }
        var adapterParameters = new HashSet<IntPtr>(modules.Values.SelectMany(m => new[] { m.A.Handle, m.B.Handle }));
        foreach (var p in network.parameters())
            p.requires_grad = adapterParameters.Contains(p.Handle);
        if (!network.training) network.eval();
        return new LoraAdapters(network, options.Clone(), modules, previouslyTrainable);
    }

    /// <summary>
    /// The qualified projection names that <paramref name="targets"/> select: short names (<c>q</c>, <c>v</c>, …), Hugging
    /// Face names, dotted suffixes of qualified names, or <c>all-linear</c>; null means the architecture's default.
    /// </summary>
    /// <exception cref="ArgumentException">A name matches nothing; the message lists the available names.</exception>
    public static IReadOnlyList<string> ResolveTargets(CausalLM network, IReadOnlyList<string>? targets)
    {
        ArgumentNullException.ThrowIfNull(network);
        var projections = network.ProjectionNames;
        var routers = network.RouterNames;      // MoE routers: adapted only when named ("router", or their own names)
        targets ??= network.Config.ModelType switch { "gpt2" => ["c_attn"], "phi3" => ["qkv_proj"], _ => ["q_proj", "v_proj"] };
        var selected = new HashSet<string>(StringComparer.Ordinal);
        foreach (string raw in targets)
        {
            string target = raw.Trim();
            if (target is "all-linear" or "all")
            {
                selected.UnionWith(projections.Except(routers));
                continue;
            }
            if (target == "router" && routers.Count > 0)
            {
                selected.UnionWith(routers);
                continue;
            }
            string full = ExpandShortName(target, network.Config.IsGpt2);
            var matches = projections.Where(p => p == full || p.EndsWith("." + full, StringComparison.Ordinal)).ToList();
            if (matches.Count == 0)
            {
                var slots = projections.Select(p => p[(p.LastIndexOf('.') + 1)..]).Distinct().ToList();
                string available = string.Join(", ", slots.Select(s => !network.Config.IsGpt2 && ShortName(s) is { } shortName ? $"{shortName} ({s})" : s));
                throw new ArgumentException(
                    $"LoRA target module '{raw}' matches no projection of this {network.Config.ModelType} model. Available: {available}, " +
                    $"or a dotted suffix of a qualified name such as '{projections.FirstOrDefault()}', or 'all-linear'.", nameof(targets));
            }
            selected.UnionWith(matches);
        }
        return projections.Where(selected.Contains).ToList();   // in model order
    }

    static string ExpandShortName(string name, bool gpt2) =>
        !gpt2 && name is "q" or "k" or "v" or "o" or "gate" or "up" or "down" or "qkv" or "gate_up" ? name + "_proj" : name;

    static string? ShortName(string slot) => slot.EndsWith("_proj", StringComparison.Ordinal) ? slot[..^"_proj".Length] : null;

    /// <summary>The (in, out) features of the projection <paramref name="name"/>, from its weight's shape (GPT-2 Conv1D: <c>[in, out]</c>).</summary>
    static (long In, long Out) Features(CausalLM network, string name)
    {
        var projection = network.GetProjection(name);
        var weight = projection.named_parameters().FirstOrDefault(p => p.name == "weight").parameter
            ?? throw new ArgumentException($"The projection '{name}' has no 'weight' parameter.");
        return projection is Conv1D ? (weight.shape[0], weight.shape[1]) : (weight.shape[1], weight.shape[0]);
    }

    /// <summary>
    /// Refuses, before anything is allocated, a rank above a target's larger dimension (max(in, out)): the update B·A can have
    /// rank at most min(in, out), so such a rank only costs memory — r × (in + out) per projection, gigabytes for a corrupt
    /// <c>r</c>. Ranks up to max(in, out) keep each adapter within a small multiple of its projection's size.
    /// </summary>
    static void CheckAdapterSize(CausalLM network, IReadOnlyList<string> targets, int rank)
    {
        foreach (string name in targets)
        {
            var (inFeatures, outFeatures) = Features(network, name);
            if (rank > Math.Max(inFeatures, outFeatures))
                throw new ArgumentOutOfRangeException(nameof(rank), rank,
                    $"LoRA rank {rank} is larger than both dimensions of '{name}' ([{outFeatures}, {inFeatures}]); a rank above max(in, out) only costs memory.");
        }
    }

    /// <summary>
    /// Checks the names and shapes in the adapter file's header against the adapters <paramref name="targets"/> at rank
    /// <paramref name="rank"/> would have — without reading tensor data or allocating the adapters.
    /// </summary>
    static void CheckAdapterHeader(CausalLM network, IReadOnlyList<string> targets, int rank, string file, string configPath)
    {
        var header = new Dictionary<string, long[]>(StringComparer.Ordinal);
        foreach (var e in Safetensors.ReadHeader(file)) header[NormalizeName(e.Name)] = e.Shape;
        var expected = new Dictionary<string, long[]>(StringComparer.Ordinal);
        foreach (string name in targets)
        {
            var (inFeatures, outFeatures) = Features(network, name);
            expected[name + ".lora_A.weight"] = [rank, inFeatures];
            expected[name + ".lora_B.weight"] = [outFeatures, rank];
        }
        var unexpected = header.Keys.Except(expected.Keys).OrderBy(k => k, StringComparer.Ordinal).ToList();
        if (unexpected.Count > 0)
            throw new InvalidDataException(
                $"Adapter '{file}' has {unexpected.Count} tensor(s) that match no adapted projection of this model: {string.Join(", ", unexpected.Take(5).Select(u => PeftPrefix + u))}{(unexpected.Count > 5 ? ", …" : "")}.");
        foreach (var (name, shape) in expected)
        {
            if (!header.TryGetValue(name, out var stored))
                throw new InvalidDataException($"Adapter '{file}' lacks tensor '{PeftPrefix + name}' (expected shape [{string.Join(", ", shape)}]).");
            if (!stored.SequenceEqual(shape))
                throw new InvalidDataException(
                    $"Adapter '{file}': tensor '{PeftPrefix + name}' has shape [{string.Join(", ", stored)}] but rank {rank} (r in '{configPath}') on this base model needs " +
                    $"[{string.Join(", ", shape)}]; the adapter was made for another base model or rank.");
        }
    }

    static string NormalizeName(string key)
    {
        string name = key.StartsWith(PeftPrefix, StringComparison.Ordinal) ? key[PeftPrefix.Length..] : key;
        return name.Replace(".lora_A.default.weight", ".lora_A.weight", StringComparison.Ordinal)
                   .Replace(".lora_B.default.weight", ".lora_B.weight", StringComparison.Ordinal);
    }

    /// <summary>The <c>target_modules</c> written to <c>adapter_config.json</c>: slot names when they select exactly the adapted set, else qualified names.</summary>
    IReadOnlyList<string> PeftTargetModules()
    {
        var slots = modules.Keys.Select(k => k[(k.LastIndexOf('.') + 1)..]).Distinct().OrderBy(s => s, StringComparer.Ordinal).ToList();
        var bySlots = Network.ProjectionNames.Where(p => slots.Any(s => p.EndsWith("." + s, StringComparison.Ordinal)));
        return bySlots.SequenceEqual(modules.Keys) ? slots : modules.Keys.ToList();
    }

    /// <summary>
    /// Writes a PEFT adapter directory (<c>adapter_config.json</c>, <c>adapter_model.safetensors</c>), atomically: a
    /// temporary sibling folder replaces <paramref name="directory"/> as a whole. An existing folder is replaced only as
    /// <see cref="OutputFolder"/> allows (empty or written by this library, unless <paramref name="overwrite"/> is <see cref="OutputOverwrite.Always"/>).
    /// </summary>
    /// <param name="directory">The folder to write.</param>
    /// <param name="overwrite">Whether an existing folder holding files this library did not write may be replaced.</param>
    /// <exception cref="OutputFolderException">The folder may not be replaced; nothing was written.</exception>
    public void Save(string directory, OutputOverwrite overwrite = OutputOverwrite.OwnOutputOnly)
    {
        var config = new JsonObject
        {
            ["peft_type"] = "LORA",
            ["task_type"] = "CAUSAL_LM",
            ["base_model_name_or_path"] = BaseModelNameOrPath,
            ["r"] = Options.Rank,
            ["lora_alpha"] = Options.Alpha,
            ["lora_dropout"] = Options.Dropout,
            ["target_modules"] = new JsonArray(PeftTargetModules().Select(t => (JsonNode?)JsonValue.Create(t)).ToArray()),
            ["bias"] = "none",
            ["fan_in_fan_out"] = Network.Config.IsGpt2,
            ["inference_mode"] = true,
            ["init_lora_weights"] = true,
            ["use_rslora"] = false,
            ["use_dora"] = false,
            ["modules_to_save"] = null,
            ["rank_pattern"] = new JsonObject(),
            ["alpha_pattern"] = new JsonObject(),
        };
        AtomicDirectory.Write(directory, temp =>
        {
            File.WriteAllText(Path.Combine(temp, ConfigFileName), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            using var scope = torch.NewDisposeScope();
            Safetensors.Save(Path.Combine(temp, WeightsFileName),
                NamedParameters.Select(kv => KeyValuePair.Create(PeftPrefix + kv.Key, kv.Value.detach())).ToList());
        }, overwrite, [BaseModelNameOrPath is { } b && Path.IsPathRooted(b) ? b : null]);
    }

    /// <summary>
    /// Copies the adapter weights of a PEFT adapter directory into these adapters (which must have the same targets and rank).
    /// </summary>
    /// <exception cref="InvalidDataException">A tensor is missing, unexpected, or has another shape than the adapter's (the message names the tensor and both shapes).</exception>
    public void LoadWeights(string directory)
    {
        string file = Path.Combine(directory, WeightsFileName);
        if (!File.Exists(file)) throw new FileNotFoundException($"Adapter directory '{directory}' has no {WeightsFileName}.", file);
        var tensors = Safetensors.Load(file);
        try
        {
            var byName = new Dictionary<string, Tensor>(StringComparer.Ordinal);
            foreach (var (key, t) in tensors) byName[NormalizeName(key)] = t;
            var expected = NamedParameters;
            var unexpected = byName.Keys.Except(expected.Select(kv => kv.Key)).OrderBy(k => k, StringComparer.Ordinal).ToList();
            if (unexpected.Count > 0)
                throw new InvalidDataException(
                    $"Adapter '{file}' has {unexpected.Count} tensor(s) that match no adapted projection of this model: {string.Join(", ", unexpected.Take(5).Select(u => PeftPrefix + u))}{(unexpected.Count > 5 ? ", …" : "")}.");
            using var _ = torch.no_grad();
            foreach (var (name, p) in expected)
            {
                if (!byName.TryGetValue(name, out var src))
                    throw new InvalidDataException($"Adapter '{file}' lacks tensor '{PeftPrefix + name}' (expected shape [{string.Join(", ", p.shape)}]).");
                if (!src.shape.SequenceEqual(p.shape))
                    throw new InvalidDataException(
                        $"Adapter '{file}': tensor '{PeftPrefix + name}' has shape [{string.Join(", ", src.shape)}] but the model expects [{string.Join(", ", p.shape)}] " +
                        $"(rank {Options.Rank}); the adapter was made for another base model or rank.");
                p.copy_(src);
            }
        }
        finally
        {
            foreach (var t in tensors.Values) t.Dispose();
        }
    }

    /// <summary>
    /// Reads a PEFT adapter directory's <c>adapter_config.json</c> as <see cref="LoraOptions"/> (target modules as written,
    /// e.g. <c>q_proj</c>) and its <c>base_model_name_or_path</c>.
    /// </summary>
    /// <exception cref="InvalidDataException">Not a LoRA adapter, or it uses PEFT features not supported here (rsLoRA, DoRA, per-module ranks, trained biases).</exception>
    public static (LoraOptions Options, string? BaseModelNameOrPath) ReadConfig(string directory)
    {
        string path = Path.Combine(directory, ConfigFileName);
        if (!Directory.Exists(directory)) throw new DirectoryNotFoundException($"Adapter directory '{directory}' does not exist.");
        if (!File.Exists(path)) throw new FileNotFoundException($"Adapter directory '{directory}' has no {ConfigFileName}.", path);
        JsonObject config;
        try
        {
            config = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new InvalidDataException($"'{path}' is not a JSON object.");
            Runtime.JsonText.ReadAllStrings(config);   // a duplicate key or an invalid string throws here, not later
        }
        catch (Exception e) when (e is JsonException or ArgumentException or InvalidOperationException)
        {
            string why = e switch { JsonException => e.Message.ReplaceLineEndings(" "), ArgumentException => "a key appears twice", _ => "a name or string is not valid text" };
            throw new InvalidDataException($"'{path}' is malformed: {why}", e);
        }
        string? peftType = StringField(config, "peft_type", path);
        if (peftType is not null && !string.Equals(peftType, "LORA", StringComparison.OrdinalIgnoreCase))
            throw new InvalidDataException($"'{path}': peft_type is '{peftType}'; only LORA adapters are supported.");
        void Unsupported(string key, string what)
        {
            var v = config[key];
            bool set = v switch { null => false, JsonObject o => o.Count > 0, JsonValue j when j.TryGetValue<bool>(out bool b) => b, _ => true };
            if (set) throw new InvalidDataException($"'{path}' uses {what} ({key}), which is not supported.");
        }
        Unsupported("use_rslora", "rank-stabilised LoRA");
        Unsupported("use_dora", "DoRA");
        Unsupported("rank_pattern", "per-module ranks");
        Unsupported("alpha_pattern", "per-module alphas");
        Unsupported("modules_to_save", "fully trained extra modules");
        string bias = StringField(config, "bias", path) ?? "none";
        if (bias != "none") throw new InvalidDataException($"'{path}': bias '{bias}' is not supported (only \"none\").");
        try
        {
            int rank = config["r"]?.GetValue<int>() ?? 8;
            double alpha = config["lora_alpha"]?.GetValue<double>() ?? 8;
            double dropout = config["lora_dropout"]?.GetValue<double>() ?? 0;
            List<string>? targets = config["target_modules"] switch
            {
                null => null,
                JsonArray a => a.Select(n => n is JsonValue jv && jv.GetValueKind() == JsonValueKind.String ? jv.GetValue<string>()
                    : throw new InvalidDataException($"'{path}': target_modules must hold names (strings), found {n?.ToJsonString() ?? "null"}.")).ToList(),
                JsonValue v => [v.GetValue<string>()],
                _ => throw new InvalidDataException($"'{path}': target_modules must be a list or a string."),
            };
            if (rank < 1 || rank > MaxRank)
                throw new InvalidDataException($"'{path}': r = {rank} is out of range (1 to {MaxRank:N0}).");
            if (!(alpha > 0) || double.IsInfinity(alpha))
                throw new InvalidDataException($"'{path}': lora_alpha must be a positive number, got {alpha}.");
            if (!(dropout >= 0 && dropout < 1))
                throw new InvalidDataException($"'{path}': lora_dropout must be in [0, 1), got {dropout}.");
            if (targets is not null && (targets.Count == 0 || targets.Any(string.IsNullOrWhiteSpace)))
                throw new InvalidDataException($"'{path}': target_modules must be a non-empty list of names.");
            var options = new LoraOptions { Rank = rank, Alpha = alpha, Dropout = dropout, TargetModules = targets };
            return (options, StringField(config, "base_model_name_or_path", path));
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException or OverflowException)
        {
            throw new InvalidDataException($"'{path}' has a value of the wrong type: {e.Message.ReplaceLineEndings(" ")}", e);
        }
    }

    /// <summary>The largest rank read from an adapter config (far above any published adapter; the header check bounds it further).</summary>
    const int MaxRank = 1 << 16;

    static string? StringField(JsonObject config, string key, string path) => config[key] switch
    {
        null => null,
        JsonValue v when v.GetValueKind() == JsonValueKind.String => v.GetValue<string>(),
        var other => throw new InvalidDataException($"'{path}': \"{key}\" must be a string, got {other.ToJsonString()}."),
    };

    /// <summary>
    /// Applies the PEFT adapter in <paramref name="adapterDirectory"/> to <paramref name="baseModel"/> (modifying it in place)
    /// and returns the adapters, which are also <c>baseModel.Lora</c>. <c>baseModel.Save(dir)</c> then writes the merged model.
    /// </summary>
    /// <exception cref="InvalidDataException">The adapter does not fit the base model: a tensor is missing, unexpected or mis-shaped (named, with both shapes).</exception>
    public static LoraAdapters Load(LanguageModel baseModel, string adapterDirectory)
    {
        ArgumentNullException.ThrowIfNull(baseModel);
        var (options, baseName) = ReadConfig(adapterDirectory);
        IReadOnlyList<string>? targets = options.TargetModules;
        if (targets is { Count: 1 } && IsRegex(targets[0]))
        {
            // PEFT: a string target_modules is a regular expression matched against full module names.
            try
            {
                var regex = new Regex("^(?:" + targets[0] + ")$", RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1));
                targets = baseModel.Network.ProjectionNames.Where(n => regex.IsMatch(n)).ToList();
            }
            catch (Exception e) when (e is ArgumentException or RegexMatchTimeoutException)
            {
                throw new InvalidDataException($"Adapter '{Path.Combine(adapterDirectory, ConfigFileName)}': target_modules '{targets[0]}' is not a usable regular expression: {e.Message.ReplaceLineEndings(" ")}", e);
            }
            if (targets.Count == 0) throw new InvalidDataException($"Adapter '{Path.Combine(adapterDirectory, ConfigFileName)}': target_modules '{options.TargetModules![0]}' matches no projection of the base model.");
            options.TargetModules = targets;
        }
        string weightsFile = Path.Combine(adapterDirectory, WeightsFileName);
        if (!File.Exists(weightsFile)) throw new FileNotFoundException($"Adapter directory '{adapterDirectory}' has no {WeightsFileName}.", weightsFile);
        LoraAdapters adapters;
        try
        {
            if (baseModel.Lora is null && !baseModel.Network.modules().Any(m => m is LoraLinear))
                CheckAdapterHeader(baseModel.Network, ResolveTargets(baseModel.Network, targets), options.Rank, weightsFile, Path.Combine(adapterDirectory, ConfigFileName));
            adapters = Apply(baseModel, options);
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"Adapter '{Path.Combine(adapterDirectory, ConfigFileName)}' does not fit this base model: {e.Message.ReplaceLineEndings(" ")}", e);
        }
        try
        {
            adapters.BaseModelNameOrPath = baseName;
            adapters.LoadWeights(adapterDirectory);
            return adapters;
        }
        catch
        {
            adapters.Unload(merge: false);
            baseModel.Lora = null;
            throw;
        }
    }

    static bool IsRegex(string s) => s.IndexOfAny(['*', '(', '[', '|', '^', '$', '\\', '+', '?']) >= 0;

    /// <summary>
    /// Folds the adapters into the base weights (<c>W += (α/r)·B·A</c>, transposed for GPT-2's <c>[in, out]</c> Conv1D) and puts
    /// the plain projections back: the network becomes an ordinary model computing the adapted function. The parameters
    /// that were trainable before the adapters were applied become trainable again. Clears <see cref="LanguageModel.Lora"/>
    /// of <paramref name="model"/> when given. Each merged weight is new storage (<c>W + ΔW</c>), never written in place, so a
    /// model whose base weights are shared with another (a LoRA fit of a model given in memory) leaves that other model as it was.
    /// </summary>
    public void MergeAndUnload(LanguageModel? model = null)
    {
        Unload(merge: true);
        if (model is not null && ReferenceEquals(model.Lora, this)) model.Lora = null;
    }

    void Unload(bool merge)
    {
        using (torch.no_grad())
            foreach (var (name, lora) in modules)
            {
                if (merge)
                {
                    // Into new storage, not in place: the base weights may be shared with the caller's model (a LoRA run on a model
                    // given in memory, FineTuningRun.LoadPolicy), which must stay as it was.
                    using var delta = lora.Delta();
                    using var merged = lora.BaseWeight.add(delta);
                    lora.BaseWeight.set_(merged);
                }
                Network.ReplaceProjection(name, lora.BaseLayer);
                lora.A.Dispose();
                lora.B.Dispose();
            }
        modules.Clear();
        foreach (var p in previouslyTrainable) p.requires_grad = true;
    }

    /// <summary>
    /// Loads the base model at <paramref name="baseModelPath"/>, applies the adapter in <paramref name="adapterDirectory"/> and
    /// writes the merged model (weights, config, tokenizer) as a plain Hugging Face directory at <paramref name="outputDirectory"/>.
    /// The output may not be or contain the base model, the adapter or the current directory; an existing folder is replaced
    /// only as <see cref="OutputFolder"/> allows (checked before anything is loaded).
    /// </summary>
    /// <exception cref="OutputFolderException">The output folder may not be replaced; nothing was written.</exception>
    public static void Merge(string baseModelPath, string adapterDirectory, string outputDirectory, ModelPrecision precision = ModelPrecision.Float32,
        OutputOverwrite overwrite = OutputOverwrite.OwnOutputOnly)
    {
        OutputFolder.EnsureReplaceable(outputDirectory, overwrite, baseModelPath, adapterDirectory);
        using var model = LanguageModel.Load(baseModelPath, precision, "cpu");
        Load(model, adapterDirectory);
        model.SaveWith(outputDirectory, overwrite, null, [adapterDirectory]);
    }

    /// <summary>
    /// The network's weights under Hugging Face names (<c>….base_layer.weight</c> → <c>….weight</c>, adapter tensors left out),
    /// with the adapter updates added when <paramref name="merge"/>. Tensors are made in the caller's dispose scope.
    /// </summary>
    internal static List<KeyValuePair<string, Tensor>> PlainWeights(CausalLM network, bool merge)
    {
        var loras = network.named_modules().Where(m => m.module is LoraLinear).ToDictionary(m => m.name, m => (LoraLinear)m.module, StringComparer.Ordinal);
        var result = new List<KeyValuePair<string, Tensor>>();
        using var _ = torch.no_grad();
        foreach (var (name, p) in network.named_parameters())
        {
            if (loras.Count == 0) { result.Add(KeyValuePair.Create(name, p.detach())); continue; }
            if (name.EndsWith(".lora_A.weight", StringComparison.Ordinal) || name.EndsWith(".lora_B.weight", StringComparison.Ordinal))
            {
                if (loras.ContainsKey(name[..name.LastIndexOf(".lora_", StringComparison.Ordinal)])) continue;
            }
            int at = name.LastIndexOf(".base_layer.", StringComparison.Ordinal);
            if (at > 0 && loras.TryGetValue(name[..at], out var lora))
            {
                string plain = name[..at] + name[(at + ".base_layer".Length)..];
                Tensor value = merge && p.Handle == lora.BaseWeight.Handle ? p.detach().add(lora.Delta()) : p.detach();
                result.Add(KeyValuePair.Create(plain, value));
                continue;
            }
            result.Add(KeyValuePair.Create(name, p.detach()));
        }
        return result;
    }
}
