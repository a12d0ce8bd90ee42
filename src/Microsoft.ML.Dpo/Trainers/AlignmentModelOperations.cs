using System.IO.Compression;
using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.ML.Data;
using Microsoft.ML.Dpo.Generation;

namespace Microsoft.ML.Dpo.Trainers;

/// <summary>
/// Saves and loads whole fitted pipelines — stock ML.NET transforms, language-model and reward-model transformers — as one zip file,
/// with the same shape as <c>mlContext.Model.Save</c>/<c>Load</c>.
/// </summary>
/// <remarks>
/// ML.NET keeps what a transformer needs to write itself into its own model zip internal (<c>ModelSaveContext</c>'s
/// writer, <c>LoadableClass</c>), and a CustomMapping stores only a contract name. So this file is a zip of its own: the
/// pipeline is cut into segments; runs of stock transformers are saved by ML.NET itself (each a nested ML.NET model zip,
/// loadable by <c>mlContext.Model.Load</c>), and each language-model transformer as a Hugging Face directory (config,
/// safetensors, tokenizer) plus its output-column settings — a model with LoRA adapters as its base model plus a PEFT adapter
/// directory, so it loads with its adapters; a DPO model's reference model inside the zip too (also when it was known by a path);
/// a reward model as its own saved directory (model plus score head). Loading
/// rebuilds the same chain, with identical outputs.
/// </remarks>
public sealed class AlignmentModelOperations
{
    const string ManifestEntry = "manifest.json", InputSchemaEntry = "input.mlnet.zip", FormatName = "Microsoft.ML.Dpo.Pipeline";
    static readonly JsonSerializerOptions Json = new() { WriteIndented = true, Converters = { new JsonStringEnumConverter() } };
    readonly MLContext context;

    internal AlignmentModelOperations(MLContext context) => this.context = context;

    /// <summary>
    /// The contract name of the stub that <c>mlContext.Model.Load</c> finds in this library's zips: ML.NET reports a
    /// CustomMapping whose contract is not registered by quoting the name, so the name is the instruction.
    /// </summary>
    internal const string StubContractName =
        "this is a Microsoft.ML.Dpo pipeline: load it with mlContext.Alignment().Model.Load(path, out schema), not mlContext.Model.Load";

    sealed class StubInput { public string Text { get; set; } = ""; }
    sealed class StubOutput { public string Text { get; set; } = ""; }

    sealed record Segment(string Kind, string Entry);
    sealed record Manifest(string Format, int Version, List<Segment> Segments);
    sealed record LanguageModelSettings(double Beta, List<LanguageModelOutputColumn> Columns, GenerationOptions Generation, bool HasReference, string? ReferencePath,
        bool HasAdapter = false);

    /// <summary>Saves <paramref name="model"/> (a chain or a single transformer) and its input schema to <paramref name="path"/>, atomically.</summary>
    public void Save(ITransformer model, DataViewSchema inputSchema, string path)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(inputSchema);
        string full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        string temp = full + ".tmp-" + Guid.NewGuid().ToString("N")[..8];
        string work = Directory.CreateTempSubdirectory("mldpo-save-").FullName;
        try
        {
            using (var zip = ZipFile.Open(temp, ZipArchiveMode.Create))
            {
                WriteEntry(zip, InputSchemaEntry, stream => context.Model.Save(new TransformerChain<ITransformer>(), inputSchema, stream));
                WriteMlNetStub(zip);
                var manifest = new Manifest(FormatName, 1, []);
                var schema = inputSchema;
                var pending = new List<ITransformer>();
                void FlushStock()
                {
                    if (pending.Count == 0) return;
                    var chain = new TransformerChain<ITransformer>(pending.ToArray());
                    string entry = $"segments/{manifest.Segments.Count}.mlnet.zip";
                    var segmentSchema = schema;
                    WriteEntry(zip, entry, stream => context.Model.Save(chain, segmentSchema, stream));
                    manifest.Segments.Add(new Segment("mlnet", entry));
                    schema = chain.GetOutputSchema(schema);
                    pending.Clear();
                }
                foreach (var transformer in Flatten(model))
                {
                    if (transformer is not (LanguageModelTransformer or Feedback.RewardModelTransformer)) { pending.Add(transformer); continue; }
                    FlushStock();
                    string entry = $"segments/{manifest.Segments.Count}/";
                    string folder = Path.Combine(work, manifest.Segments.Count.ToString());
                    if (transformer is LanguageModelTransformer lm) WriteLanguageModel(lm, folder);
                    else ((Feedback.RewardModelTransformer)transformer).Save(folder);
                    AddFolder(zip, entry, folder);
                    manifest.Segments.Add(new Segment(transformer is LanguageModelTransformer ? "language-model" : "reward-model", entry));
                    schema = transformer.GetOutputSchema(schema);
                }
                FlushStock();
                WriteEntry(zip, ManifestEntry, stream => JsonSerializer.Serialize(stream, manifest, Json));
            }
            File.Move(temp, full, overwrite: true);
        }
        finally
        {
            if (File.Exists(temp)) File.Delete(temp);
            Directory.Delete(work, recursive: true);
        }
    }

    /// <summary>
    /// Loads a pipeline saved by <see cref="Save"/> — or a stock ML.NET model zip (saved by <c>mlContext.Model.Save</c>), which
    /// it hands to <c>mlContext.Model.Load</c>, so this one call loads either; <paramref name="inputSchema"/> receives the schema
    /// it was saved with. (<c>mlContext.Model.Load</c> cannot read this library's zips; it fails with an inner exception that
    /// says to use this method, see <see cref="WriteMlNetStub"/>.)
    /// </summary>
    public ITransformer Load(string path, out DataViewSchema inputSchema)
    {
        if (!IsAlignmentPipeline(path))
        {
            if (IsIncompleteMlNetSave(path))
                throw new InvalidDataException($"'{path}' holds no model, only ML.NET's TrainingInfo/Version.txt: it is the incomplete file a failed " +
                    "mlContext.Model.Save leaves, e.g. on a pipeline with a Microsoft.ML.Dpo transformer, which it cannot save. Delete it, and save " +
                    "such pipelines with mlContext.Alignment().Model.Save.");
            return context.Model.Load(path, out inputSchema);
        }
        using var zip = ZipFile.OpenRead(path);
        var manifest = ReadEntry(zip, path, ManifestEntry, stream => JsonSerializer.Deserialize<Manifest>(stream, Json))
            ?? throw new InvalidDataException($"'{path}': empty manifest.");
        if (manifest.Format != FormatName || manifest.Version != 1)
            throw new InvalidDataException($"'{path}' is not a Microsoft.ML.Dpo pipeline (format '{manifest.Format}' version {manifest.Version}). Files saved by mlContext.Model.Save load with mlContext.Model.Load.");
        inputSchema = ReadEntry(zip, path, InputSchemaEntry, stream => { context.Model.Load(stream, out var s); return s; });
        var transformers = new List<ITransformer>();
        string work = Directory.CreateTempSubdirectory("mldpo-load-").FullName;
        try
        {
            foreach (var segment in manifest.Segments)
            {
                if (segment.Kind == "mlnet")
                    transformers.AddRange(Flatten(ReadEntry(zip, path, segment.Entry, stream => context.Model.Load(stream, out _))));
                else if (segment.Kind is "language-model" or "reward-model")
                {
                    string folder = Path.Combine(work, transformers.Count.ToString());
                    ExtractFolder(zip, path, segment.Entry, folder);
                    transformers.Add(segment.Kind == "language-model" ? ReadLanguageModel(path, segment.Entry, folder) : Feedback.RewardModelTransformer.Load(folder));
                }
                else
                    throw new InvalidDataException($"'{path}': unknown segment kind '{segment.Kind}'.");
            }
        }
        catch
        {
            foreach (var t in transformers.OfType<IDisposable>()) t.Dispose();
            throw;
        }
        finally
        {
            Directory.Delete(work, recursive: true);
        }
        return transformers.Count == 1 ? transformers[0] : new TransformerChain<ITransformer>(transformers.ToArray());
    }

    /// <summary>
    /// True when <paramref name="path"/> is a zip written by <see cref="Save"/> (it holds this library's manifest), false for any
    /// other file — e.g. a stock ML.NET model, which <c>mlContext.Model.Load</c> reads.
    /// </summary>
    public static bool IsAlignmentPipeline(string path)
    {
        try
        {
            using var zip = ZipFile.OpenRead(path);
            return zip.GetEntry(ManifestEntry) is not null && zip.GetEntry(InputSchemaEntry) is not null;
        }
        catch (InvalidDataException) { return false; }     // not a zip
    }

    /// <summary>A zip whose only entry is the version file ML.NET's repository writer starts with: a save that failed before any model entry.</summary>
    static bool IsIncompleteMlNetSave(string path)
    {
        try
        {
            using var zip = ZipFile.OpenRead(path);
            return zip.Entries.Count == 1 && zip.Entries[0].FullName == "TrainingInfo/Version.txt";
        }
        catch (InvalidDataException) { return false; }
    }

    static IEnumerable<ITransformer> Flatten(ITransformer transformer) =>
        transformer is IEnumerable<ITransformer> chain ? chain.SelectMany(Flatten) : [transformer];

    static void WriteLanguageModel(LanguageModelTransformer lm, string work)
    {
        // A LoRA model is stored as its base model plus a PEFT adapter, so it loads as a LoRA model again (and keeps serving as its own reference).
        if (lm.Model.Lora is { } adapters)
        {
            lm.Model.SaveBase(Path.Combine(work, "policy"));
            adapters.Save(Path.Combine(work, "adapter"));
        }
        else
            lm.Model.Save(Path.Combine(work, "policy"));
        // The reference travels inside the zip, also when the transformer knows it only by a path (loaded here): a path would
        // not resolve where the zip is opened from another folder or machine, and the zip names no file outside itself.
        var reference = lm.Reference;
        reference?.Save(Path.Combine(work, "reference"));
        var settings = new LanguageModelSettings(lm.Beta, lm.OutputColumns.ToList(), lm.Generation, reference is not null, ReferencePath: null, lm.Model.Lora is not null);
        File.WriteAllText(Path.Combine(work, "transformer.json"), JsonSerializer.Serialize(settings, Json));
    }

    /// <summary>Adds every file under <paramref name="folder"/> to the zip below <paramref name="entry"/> (weights uncompressed).</summary>
    static void AddFolder(ZipArchive zip, string entry, string folder)
    {
        foreach (string file in Directory.EnumerateFiles(folder, "*", SearchOption.AllDirectories))
        {
            string name = entry + Path.GetRelativePath(folder, file).Replace(Path.DirectorySeparatorChar, '/');
            zip.CreateEntryFromFile(file, name, file.EndsWith(".safetensors", StringComparison.Ordinal) ? CompressionLevel.NoCompression : CompressionLevel.Optimal);
        }
    }

    /// <summary>Extracts the entries below <paramref name="entry"/> into <paramref name="folder"/>, refusing paths that leave it.</summary>
    static void ExtractFolder(ZipArchive zip, string path, string entry, string folder)
    {
        foreach (var e in zip.Entries.Where(e => e.FullName.StartsWith(entry, StringComparison.Ordinal) && !e.FullName.EndsWith('/')))
        {
            string target = Path.GetFullPath(Path.Combine(folder, e.FullName[entry.Length..]));
            if (!target.StartsWith(Path.GetFullPath(folder) + Path.DirectorySeparatorChar, StringComparison.Ordinal))
                throw new InvalidDataException($"'{path}': entry '{e.FullName}' points outside its folder.");
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            e.ExtractToFile(target);
        }
    }

    static LanguageModelTransformer ReadLanguageModel(string path, string entry, string work)
    {
        string settingsFile = Path.Combine(work, "transformer.json");
        if (!File.Exists(settingsFile)) throw new InvalidDataException($"'{path}': segment '{entry}' lacks transformer.json.");
        var settings = JsonSerializer.Deserialize<LanguageModelSettings>(File.ReadAllText(settingsFile), Json)
            ?? throw new InvalidDataException($"'{path}': segment '{entry}' has an empty transformer.json.");
        // This library's zips carry their reference inside (ReferencePath null). A path in the file may name the reference only
        // relative to the zip and inside its folder: never an absolute path or one that leaves it (a crafted zip naming "/etc").
        string? referencePath = null;
        if (settings.ReferencePath is { } named)
        {
            string zipFolder = Path.GetDirectoryName(Path.GetFullPath(path))!;
            string resolved = Path.GetFullPath(Path.Combine(zipFolder, named));
            if (Path.IsPathRooted(named) || !resolved.StartsWith(zipFolder + Path.DirectorySeparatorChar, StringComparison.Ordinal))
                throw new InvalidDataException($"'{path}': segment '{entry}' names its reference model at '{named}', outside the zip's folder; " +
                    "a pipeline names its reference only relative to itself. Save it again with mlContext.Alignment().Model.Save, which puts the reference inside the zip.");
            referencePath = resolved;
        }
        var policy = LanguageModel.Load(Path.Combine(work, "policy"));
        LanguageModel? reference = null;
        try
        {
            if (settings.HasAdapter) Lora.LoraAdapters.Load(policy, Path.Combine(work, "adapter"));
            if (settings.HasReference) reference = LanguageModel.Load(Path.Combine(work, "reference"));
            return new LanguageModelTransformer(policy, reference, settings.Beta, settings.Columns, settings.Generation,
                ownsModel: true, ownsReference: reference is not null, referencePath: referencePath);
        }
        catch
        {
            policy.Dispose();
            reference?.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Writes, at the zip's root, the entries of a stock ML.NET model (TransformerChain/, Schema, TrainingInfo/) holding one
    /// CustomMapping named <see cref="StubContractName"/> and registered nowhere (this library defines no factory for it), so
    /// <c>mlContext.Model.Load</c> on this file fails with that name in its message — "Unable to locate an extension for the
    /// contract 'this is a Microsoft.ML.Dpo pipeline: load it with mlContext.Alignment().Model.Load…'" (inside ML.NET's
    /// "Error during class instantiation") — instead of "Could not load legacy format model". <see cref="Load"/> ignores them.
    /// </summary>
    void WriteMlNetStub(ZipArchive zip)
    {
        var empty = context.Data.LoadFromEnumerable(Array.Empty<StubInput>());
        var stub = context.Transforms.CustomMapping<StubInput, StubOutput>((_, _) => { }, StubContractName).Fit(empty);
        using var buffer = new MemoryStream();
        context.Model.Save(stub, empty.Schema, buffer);
        buffer.Position = 0;
        using var stock = new ZipArchive(buffer, ZipArchiveMode.Read);
        foreach (var entry in stock.Entries)
        {
            using var from = entry.Open();
            using var to = zip.CreateEntry(entry.FullName, CompressionLevel.Optimal).Open();
            from.CopyTo(to);
        }
    }

    static void WriteEntry(ZipArchive zip, string name, Action<Stream> write)
    {
        using var buffer = new MemoryStream();
        write(buffer);
        var entry = zip.CreateEntry(name, CompressionLevel.NoCompression);
        using var stream = entry.Open();
        buffer.Position = 0;
        buffer.CopyTo(stream);
    }

    static T ReadEntry<T>(ZipArchive zip, string path, string name, Func<Stream, T> read)
    {
        var entry = zip.GetEntry(name) ?? throw new InvalidDataException($"'{path}' lacks '{name}': not a complete Microsoft.ML.Dpo pipeline file.");
        using var stream = entry.Open();
        using var buffer = new MemoryStream();
        stream.CopyTo(buffer);          // ML.NET's loader needs a seekable stream
        buffer.Position = 0;
        return read(buffer);
    }
}
