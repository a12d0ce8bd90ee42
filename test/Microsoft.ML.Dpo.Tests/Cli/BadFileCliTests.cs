using System.Text;
using System.Text.Json.Nodes;
using Microsoft.ML.Dpo.Checkpoints;
using Microsoft.ML.Dpo.Lora;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tests.Modeling;
using MlDpo.Commands;
using TorchSharp;

namespace Microsoft.ML.Dpo.Tests.Cli;

/// <summary>Issue 14 from the command line: small bad files give exit code 1 and one <c>mldpo VERB: error: …</c> line, no stack trace.</summary>
[TestClass]
public sealed class BadFileCliTests
{
    static (int Code, string Out, string Error) Run(params string[] args) => CliRunner.Run(args);

    static void AssertOneErrorLine((int Code, string Out, string Error) result, string verb, params string[] parts)
    {
        Assert.AreEqual(1, result.Code, result.Error);
        string[] lines = result.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.HasCount(1, lines, result.Error);
        StringAssert.StartsWith(lines[0], $"mldpo {verb}: error: ");
        Assert.IsFalse(result.Error.Contains("   at "), "no stack trace");
        foreach (string part in parts) StringAssert.Contains(lines[0], part);
    }

    [TestMethod]
    public void GenerateAndMergeWithAbsurdSizes_OneErrorLine()
    {
        using var dir = new TempDirectory();
        torch.manual_seed(2);
        string modelDir = dir.Combine("model");
        using (var model = CausalLM.Create(TinyModels.Llama()))
        {
            HuggingFaceCheckpoint.Save(model, modelDir);
            using var withAdapter = new LanguageModel(CausalLM.Create(TinyModels.Llama()), null);
            LoraAdapters.Apply(withAdapter, new LoraOptions { Rank = 2 }).Save(dir.Combine("adapter"));
        }
        string config = Path.Combine(modelDir, "config.json");
        string original = File.ReadAllText(config);
        var o = JsonNode.Parse(original)!.AsObject();
        o["hidden_size"] = 2e9;
        File.WriteAllText(config, o.ToJsonString());
        AssertOneErrorLine(Run("generate", "--model", modelDir, "--prompt-ids", "1", "--max-new-tokens", "2", "--format", "ids"), "generate", config, "hidden_size");

        File.WriteAllText(config, original);
        string adapterConfig = dir.Combine("adapter", LoraAdapters.ConfigFileName);
        File.WriteAllText(adapterConfig, File.ReadAllText(adapterConfig).Replace("\"r\": 2", "\"r\": 2147483647"));
        AssertOneErrorLine(Run("merge", "--model", modelDir, "--adapter", dir.Combine("adapter"), "--output", dir.Combine("merged")), "merge", adapterConfig, "r = 2147483647");
        Assert.IsFalse(Directory.Exists(dir.Combine("merged")));
    }

    [TestMethod]
    public void BinarizeNonUtf8Data_OneErrorLine_OrSkippedWithSkipInvalid()
    {
        using var dir = new TempDirectory();
        string data = dir.Combine("scored.jsonl");
        string good = "{\"prompt\": \"p\", \"completions\": [{\"response\": \"a\", \"overall_score\": 9}, {\"response\": \"b\", \"overall_score\": 2}]}\n";
        var bad = Encoding.UTF8.GetBytes("{\"prompt\": \"q\xe9\", \"completions\": []}\n");
        bad[13] = 0xE9;      // a Latin-1 é where UTF-8 needs two bytes
        File.WriteAllBytes(data, [.. Encoding.UTF8.GetBytes(good), .. bad, .. Encoding.UTF8.GetBytes(good)]);
        long offset = Encoding.UTF8.GetByteCount(good) + 13;
        AssertOneErrorLine(Run("binarize", "--data", data, "--output", dir.Combine("pairs.jsonl")), "binarize", $"{data}, line 2", "invalid UTF-8", $"byte offset {offset}");

        var skipped = Run("binarize", "--data", data, "--output", dir.Combine("pairs.jsonl"), "--skip-invalid");
        Assert.AreEqual(0, skipped.Code, skipped.Error);
        Assert.HasCount(2, File.ReadAllLines(dir.Combine("pairs.jsonl")));
    }
}
