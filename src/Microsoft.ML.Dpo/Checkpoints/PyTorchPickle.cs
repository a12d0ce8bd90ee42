using System.Collections;
using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Checkpoints;

/// <summary>
/// Reads PyTorch pickle checkpoints — <c>pytorch_model.bin</c>, or shards listed by <c>pytorch_model.bin.index.json</c> —
/// through TorchSharp.PyBridge's unpickler (the zip format <c>torch.save</c> writes since PyTorch 1.6). Read only: the
/// library writes safetensors. Used when a Hugging Face directory has no safetensors weights.
/// </summary>
internal static class PyTorchPickle
{
    public const string SingleFileName = "pytorch_model.bin";
    public const string IndexFileName = "pytorch_model.bin.index.json";

    /// <summary>How to turn a pickle checkpoint into safetensors, for error messages.</summary>
    internal const string ConvertHint =
        "Convert it to safetensors with Python, e.g. AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, safe_serialization=True), " +
        "or safetensors.torch.save_file(torch.load(path), 'model.safetensors').";

    /// <summary>Whether <paramref name="directory"/> holds pickle weights.</summary>
    public static bool IsPresent(string directory) =>
        File.Exists(Path.Combine(directory, SingleFileName)) || File.Exists(Path.Combine(directory, IndexFileName));

    /// <summary>Every tensor of the pickle checkpoint in <paramref name="directory"/> (float types kept as stored; the caller owns them).</summary>
    /// <exception cref="FileNotFoundException">A shard listed by the index is missing.</exception>
    /// <exception cref="InvalidDataException">A file is not a readable state dict, an entry is not a tensor, or a tensor appears twice.</exception>
    public static Dictionary<string, Tensor> LoadDirectory(string directory)
    {
        string single = Path.Combine(directory, SingleFileName);
        string index = Path.Combine(directory, IndexFileName);
        List<string> files;
        if (File.Exists(single)) files = [single];
        else
        {
            try
            {
                var weightMap = (JsonNode.Parse(File.ReadAllText(index))?["weight_map"] as JsonObject)
                    ?? throw new InvalidDataException($"PyTorch checkpoint index '{index}' has no \"weight_map\" object.");
                files = weightMap.Select(kv => Safetensors.ShardPath(directory, index, kv.Value!.GetValue<string>())).Distinct().ToList();
            }
            catch (Exception e) when (e is JsonException or InvalidOperationException)
            {
                throw new InvalidDataException($"PyTorch checkpoint index '{index}' is malformed: {e.Message}", e);
            }
        }

        var all = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            foreach (string file in files)
            {
                if (!File.Exists(file))
                    throw new FileNotFoundException($"Shard '{file}' listed in '{index}' does not exist.", file);
                foreach (var (name, t) in Load(file))
                    if (!all.TryAdd(name, t))
                    {
                        t.Dispose();
                        throw new InvalidDataException($"Tensor '{name}' appears in more than one shard of '{directory}' (again in '{file}').");
                    }
            }
            return all;
        }
        catch
        {
            foreach (var t in all.Values) t.Dispose();
            throw;
        }
    }

    static List<(string Name, Tensor Tensor)> Load(string path)
    {
        using var scope = torch.NewDisposeScope();
        Hashtable table;
        try
        {
            using var stream = File.OpenRead(path);
            table = PyTorchUnpickler.UnpickleStateDict(stream);
        }
        catch (Exception e) when (e is not (OutOfMemoryException or IOException))
        {
            throw new InvalidDataException($"PyTorch checkpoint '{path}' could not be read as a state dict ({e.GetType().Name}: {e.Message}). {ConvertHint}", e);
        }
        var result = new List<(string, Tensor)>();
        foreach (DictionaryEntry entry in table)
        {
            string name = entry.Key as string ?? throw new InvalidDataException($"PyTorch checkpoint '{path}' has a non-string key '{entry.Key}'.");
            if (entry.Value is not Tensor t)
                throw new InvalidDataException($"PyTorch checkpoint '{path}': entry '{name}' is a {entry.Value?.GetType().Name ?? "null"}, not a tensor. {ConvertHint}");
            result.Add((name, t.contiguous()));
        }
        foreach (var (_, t) in result) t.DetachFromDisposeScope();
        return result.OrderBy(r => r.Item1, StringComparer.Ordinal).ToList();
    }
}
