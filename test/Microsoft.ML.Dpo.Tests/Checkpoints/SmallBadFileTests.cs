using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using Microsoft.ML.Dpo.Checkpoints;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Lora;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tests.Modeling;
using Microsoft.ML.Dpo.Tokenization;
using Microsoft.ML.Dpo.Training;
using TorchSharp;
using static Microsoft.ML.Dpo.Tests.Data.DataFileTestFiles;

namespace Microsoft.ML.Dpo.Tests.Checkpoints;

/// <summary>
/// Issue 14, "crashes and memory blow-ups from small bad files" and non-UTF-8 data: each small bad file the issue names gives one
/// typed error, on one line, naming the file (and tensor, field or line) — fast, before anything large is allocated.
/// </summary>
[TestClass]
public sealed class SmallBadFileTests
{
    internal static void AssertOneLine(Exception e, params string[] parts)
    {
        Assert.IsFalse(e.Message.Contains('\n') || e.Message.Contains('\r'), $"one line: {e.Message}");
        foreach (string part in parts) StringAssert.Contains(e.Message, part);
    }

    internal static string WriteSafetensors(string file, string headerJson, int dataBytes = 0)
    {
        var h = Encoding.UTF8.GetBytes(headerJson);
        File.WriteAllBytes(file, BitConverter.GetBytes((ulong)h.Length).Concat(h).Concat(new byte[dataBytes]).ToArray());
        return file;
    }

    static string SaveTiny(TempDirectory dir, string name = "m")
    {
        torch.manual_seed(1);
        using var model = CausalLM.Create(TinyModels.Llama(tied: false));
        string path = dir.Combine(name);
        HuggingFaceCheckpoint.Save(model, path);
        return path;
    }

    static void EditConfig(string modelDir, Action<JsonObject> edit)
    {
        string file = Path.Combine(modelDir, "config.json");
        var o = JsonNode.Parse(File.ReadAllText(file))!.AsObject();
        edit(o);
        File.WriteAllText(file, o.ToJsonString());
    }

    [TestMethod]
    public void HugeOrNegativeShapesAndDuplicateNamesNameTheFileAndTensor()
    {
        using var dir = new TempDirectory();
        string file = dir.Combine("model.safetensors");
        // [2^32, 2^32] F32: 2^66 bytes, which wraps to 0 in unchecked 64-bit arithmetic and matched the empty range.
        WriteSafetensors(file, "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}");
        AssertOneLine(Assert.ThrowsExactly<InvalidDataException>(() => Safetensors.Load(file)), file, "tensor 'w'", "overflows");
        WriteSafetensors(file, "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1,4],\"data_offsets\":[0,16]}}", 16);
        AssertOneLine(Assert.ThrowsExactly<InvalidDataException>(() => Safetensors.ReadHeader(file)), file, "tensor 'w'", "non-negative");
        WriteSafetensors(file, "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16);
        AssertOneLine(Assert.ThrowsExactly<InvalidDataException>(() => Safetensors.Load(file)), file, "tensor 'w'", "twice");
        WriteSafetensors(file, "{\"w\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 8);
        AssertOneLine(Assert.ThrowsExactly<InvalidDataException>(() => Safetensors.Load(file)), file, "tensor 'w'");
        WriteSafetensors(file, "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8);
        AssertOneLine(Assert.ThrowsExactly<InvalidDataException>(() => Safetensors.Load(file)), file, "tensor 'w'", "data_offsets");
    }

    [TestMethod]
    public void AbsurdConfigSizesAreRefusedWithTheFieldNamed()
    {
        using var dir = new TempDirectory();
        string path = SaveTiny(dir);
        string config = Path.Combine(path, "config.json");
        string original = File.ReadAllText(config);
        foreach (var (field, value) in new (string, double)[] { ("hidden_size", 2e9), ("vocab_size", -5), ("num_hidden_layers", 2e9), ("intermediate_size", 0), ("head_dim", 2e9), ("max_position_embeddings", 2e9) })
        {
            EditConfig(path, o => o[field] = value);
            var e = Assert.ThrowsExactly<InvalidDataException>(() => HuggingFaceCheckpoint.Load(path), field);
            AssertOneLine(e, config, field, value > 0 ? "out of range" : "must be positive");
            File.WriteAllText(config, original);
        }
        using (var ok = HuggingFaceCheckpoint.Load(path)) Assert.AreEqual(32, ok.Config.HiddenSize);
        File.WriteAllText(config, "{\"model_type\": \"llama\", \"vocab_size\": 101, \"hidd");     // truncated
        AssertOneLine(Assert.ThrowsExactly<InvalidDataException>(() => HuggingFaceCheckpoint.Load(path)), config);
        File.WriteAllText(config, "{\"model_type\": \"llama\", \"model_type\": \"llama\"}");       // duplicate key
        AssertOneLine(Assert.ThrowsExactly<InvalidDataException>(() => HuggingFaceCheckpoint.Load(path)), config, "twice");
    }

    [TestMethod]
    public void ConfigThatDoesNotMatchTheWeightsFailsBeforeTheModelIsBuilt()
    {
        // The 440 KB folder: config says hidden 4096 / intermediate 100000 (a ~10 GB model); it reached 10.3 GB RSS.
        using var dir = new TempDirectory();
        string path = SaveTiny(dir);
        EditConfig(path, o => { o["hidden_size"] = 4096; o["intermediate_size"] = 100000; o["head_dim"] = 1024; });
        var memory = new LoaderFuzzTests.PeakMemory();
        long before = memory.Reset();
        var watch = Stopwatch.StartNew();
        var e = Assert.ThrowsExactly<InvalidDataException>(() => HuggingFaceCheckpoint.Load(path));
        watch.Stop();
        long growth = memory.Peak() - before;
        Console.WriteLine($"refused in {watch.ElapsedMilliseconds} ms, peak memory growth {growth:N0} bytes ({memory.Source})");
        Assert.IsLessThan(64L << 20, growth, "nothing model-sized was allocated");
        // Only the size check before CausalLM.CreateCore says "does not match the weights": the model was never built.
        AssertOneLine(e, Path.Combine(path, "config.json"), "does not match the weights", "'model.embed_tokens.weight' is [101, 32]", "[101, 4096]");
        Assert.IsLessThan(5000L, watch.ElapsedMilliseconds, $"took {watch.ElapsedMilliseconds} ms");

        // A config only slightly off is caught by the exact per-tensor comparison, still before any tensor data is read.
        EditConfig(path, o => { o["hidden_size"] = 32; o["intermediate_size"] = 40; o["head_dim"] = 8; });
        AssertOneLine(Assert.ThrowsExactly<InvalidDataException>(() => HuggingFaceCheckpoint.Load(path)), "'model.layers.0.mlp.gate_proj.weight'", "[48, 32]", "[40, 32]");
    }

    [TestMethod]
    public void TruncatedTrainerStateAndGenerationConfigNameTheFile()
    {
        using var dir = new TempDirectory();
        string state = dir.Combine("trainer_state.json");
        File.WriteAllText(state, "{\"Step\":3,\"Epoch\":0,\"NextBatch");
        AssertOneLine(Assert.ThrowsExactly<InvalidDataException>(() => TrainingCheckpoint.ReadState(state)), state, "truncated");
        File.WriteAllText(state, "{\"Step\":-3,\"Epoch\":0,\"NextBatchInEpoch\":0,\"TotalSteps\":5,\"Fingerprint\":\"x\"}");
        AssertOneLine(Assert.ThrowsExactly<InvalidDataException>(() => TrainingCheckpoint.ReadState(state)), state, "step -3");
        File.WriteAllText(state, "{\"Step\":3,\"Epoch\":0,\"NextBatchInEpoch\":0,\"TotalSteps\":5,\"Fingerprint\":\"x\"}");
        Assert.AreEqual(3, TrainingCheckpoint.ReadState(state).Step);

        string generation = dir.Combine("generation_config.json");
        File.WriteAllText(generation, "{\"eos_token_id\": [1, 2");
        AssertOneLine(Assert.ThrowsExactly<InvalidDataException>(() => HfTokenizerFiles.Read(dir.Path)), generation);
    }

    [TestMethod]
    public void AdapterRankIsCheckedAgainstTheFileBeforeAllocating()
    {
        using var dir = new TempDirectory();
        torch.manual_seed(5);
        string adapterDir = dir.Combine("adapter");
        using (var trained = new LanguageModel(CausalLM.Create(TinyModels.Llama()), null))
        {
            LoraAdapters.Apply(trained, new LoraOptions { Rank = 4 });
            trained.Lora!.Save(adapterDir);
        }
        string config = Path.Combine(adapterDir, LoraAdapters.ConfigFileName);
        string original = File.ReadAllText(config);
        using var model = new LanguageModel(CausalLM.Create(TinyModels.Llama()), null);

        // Rank 2,000,000 reached 3.6 GB; 2147483647 segfaulted. Both are now refused while reading the config.
        foreach (long rank in new long[] { 2_000_000, 2147483647, 0, -3 })
        {
            File.WriteAllText(config, original.Replace("\"r\": 4", $"\"r\": {rank}"));
            var memory = new LoaderFuzzTests.PeakMemory();
            long before = memory.Reset();
            var watch = Stopwatch.StartNew();
            AssertOneLine(Assert.ThrowsExactly<InvalidDataException>(() => LoraAdapters.Load(model, adapterDir)), config, $"r = {rank}");
            Assert.IsLessThan(2000L, watch.ElapsedMilliseconds);
            Assert.IsLessThan(64L << 20, memory.Peak() - before, $"rank {rank}: nothing rank-sized was allocated");
        }
        // A plausible rank that disagrees with the file: the header's shapes are compared before the adapters are created.
        File.WriteAllText(config, original.Replace("\"r\": 4", "\"r\": 16"));
        AssertOneLine(Assert.ThrowsExactly<InvalidDataException>(() => LoraAdapters.Load(model, adapterDir)),
            Path.Combine(adapterDir, LoraAdapters.WeightsFileName), "lora_A.weight'", "[4, 32]", "[16, 32]", "rank 16");
        Assert.IsNull(model.Lora, "nothing was applied");
        Assert.IsFalse(model.Network.modules().Any(m => m is LoraLinear));
        File.WriteAllText(config, "{\"r\": 4, \"target_modules\": [null]}");
        AssertOneLine(Assert.ThrowsExactly<InvalidDataException>(() => LoraAdapters.Load(model, adapterDir)), config, "target_modules");
        File.WriteAllText(config, original);
        var adapters = LoraAdapters.Load(model, adapterDir);
        Assert.AreEqual(4, adapters.Options.Rank);

        // The C# path: a rank above every dimension of a target is refused before anything is allocated.
        using var other = new LanguageModel(CausalLM.Create(TinyModels.Llama()), null);
        var applyMemory = new LoaderFuzzTests.PeakMemory();
        long applyBefore = applyMemory.Reset();
        var e = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => LoraAdapters.Apply(other, new LoraOptions { Rank = 2_000_000 }));
        StringAssert.Contains(e.Message, "'model.layers.0.self_attn.q_proj' ([32, 32])");
        LoraAdapters.Apply(other, new LoraOptions { Rank = 32 });     // max(in, out) itself is allowed
        Assert.IsLessThan(64L << 20, applyMemory.Peak() - applyBefore);
    }

    [TestMethod]
    public void ShardsOutsideTheModelFolderAreRefused()
    {
        using var dir = new TempDirectory();
        string path = SaveTiny(dir);
        File.Delete(Path.Combine(path, Safetensors.SingleFileName));
        string index = Path.Combine(path, Safetensors.IndexFileName);
        foreach (string shard in new[] { "../../etc/passwd", "/etc/hostname", "/dev/zero", "sub/../../m2/model.safetensors", "" })
        {
            File.WriteAllText(index, new JsonObject { ["weight_map"] = new JsonObject { ["model.embed_tokens.weight"] = shard } }.ToJsonString());
            var e = Assert.ThrowsExactly<InvalidDataException>(() => HuggingFaceCheckpoint.Load(path), shard);
            AssertOneLine(e, index, $"'{shard}'", "inside the model folder");
        }
        File.WriteAllText(index, "{\"weight_map\": {\"a\": 5}}");
        AssertOneLine(Assert.ThrowsExactly<InvalidDataException>(() => HuggingFaceCheckpoint.Load(path)), index, "'a'");
        File.WriteAllText(index, "{\"weight_map\": {\"a\": ");
        AssertOneLine(Assert.ThrowsExactly<InvalidDataException>(() => HuggingFaceCheckpoint.Load(path)), index);
    }

    [TestMethod]
    public void NonParquetAndTruncatedParquetNameTheFile()
    {
        using var dir = new TempDirectory();
        string notParquet = dir.Combine("pairs.parquet");
        File.WriteAllText(notParquet, "{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n");
        AssertOneLine(Assert.ThrowsExactly<InvalidDataException>(() => PreferenceDataFile.ReadPreferencePairs(notParquet)), notParquet, "Parquet");

        string good = WriteParquet(dir.Combine("good.parquet"), Enumerable.Range(0, 6).Select(i => new StandardRow { prompt = $"p{i}", chosen = "a", rejected = "b" }));
        Assert.HasCount(6, PreferenceDataFile.ReadPreferencePairs(good));
        var bytes = File.ReadAllBytes(good);
        foreach (int keep in new[] { bytes.Length - 9, bytes.Length / 2, 10 })
        {
            string truncated = dir.Combine($"cut{keep}.parquet");
            File.WriteAllBytes(truncated, bytes[..keep]);
            AssertOneLine(Assert.ThrowsExactly<InvalidDataException>(() => PreferenceDataFile.ReadPreferencePairs(truncated)), truncated);
        }
        // A corrupted middle (footer intact): the row group's pages fail to decode, still as one error naming the file.
        var corrupt = bytes.ToArray();
        for (int i = 4; i < corrupt.Length / 2; i++) corrupt[i] ^= 0x5A;
        string corrupted = dir.Combine("corrupt.parquet");
        File.WriteAllBytes(corrupted, corrupt);
        AssertOneLine(Assert.ThrowsExactly<InvalidDataException>(() => PreferenceDataFile.ReadPreferencePairs(corrupted)), corrupted);
    }

    [TestMethod]
    public void EmptyValuesNameTheFileAndTheOneBasedLine()
    {
        using var dir = new TempDirectory();
        string path = WriteJsonLines(dir.Combine("pairs.jsonl"), new { prompt = "p", chosen = "a", rejected = "b" }, new { prompt = "p", chosen = "", rejected = "b" });
        AssertOneLine(Assert.ThrowsExactly<InvalidDataException>(() => PreferenceDataFile.ReadPreferencePairs(path)), $"{path}, line 2", "field 'chosen': empty");
        var report = new DataLoadReport();
        Assert.HasCount(1, PreferenceDataFile.ReadPreferencePairs(path, new() { SkipMalformedRows = true }, report));
        Assert.AreEqual(1L, report.RowsSkipped);

        string sft = WriteJsonLines(dir.Combine("sft.jsonl"), new { prompt = "p", completion = "c" }, "", new { prompt = "", completion = "c" });
        AssertOneLine(Assert.ThrowsExactly<InvalidDataException>(() => PreferenceDataFile.ReadCompletions(sft)), $"{sft}, line 3", "field 'prompt': empty");
    }

    [TestMethod]
    public void NonUtf8BytesNameTheFileLineAndByteOffset()
    {
        using var dir = new TempDirectory();
        string path = dir.Combine("pairs.jsonl");
        var line1 = Encoding.UTF8.GetBytes("{\"prompt\": \"caf\u00e9\", \"chosen\": \"a\", \"rejected\": \"b\"}\r\n");
        var line2 = Encoding.UTF8.GetBytes("{\"prompt\": \"p\", \"chosen\": \"x");
        var line2End = Encoding.UTF8.GetBytes("\", \"rejected\": \"b\"}\n");
        var line3 = Encoding.UTF8.GetBytes("{\"prompt\": \"q\", \"chosen\": \"a\", \"rejected\": \"b\"}");
        File.WriteAllBytes(path, [0xEF, 0xBB, 0xBF, .. line1, .. line2, 0xFF, 0xFE, .. line2End, .. line3]);
        long offset = 3 + line1.Length + line2.Length;
        var e = Assert.ThrowsExactly<InvalidDataException>(() => PreferenceDataFile.ReadPreferencePairs(path));
        AssertOneLine(e, $"{path}, line 2", "invalid UTF-8", $"byte offset {offset}", "0xFF");

        var report = new DataLoadReport();
        var pairs = PreferenceDataFile.ReadPreferencePairs(path, new() { SkipMalformedRows = true }, report);
        CollectionAssert.AreEqual(new[] { "caf\u00e9", "q" }, pairs.Select(p => p.Prompt).ToArray(), "the BOM, the CR and valid multi-byte text are kept apart from the bad line");
        CollectionAssert.AreEqual(new[] { 1L, 3L }, pairs.Select(p => p.Row).ToArray());
        Assert.AreEqual(2L, report.Skipped.Single().FirstRows.Single());
        StringAssert.Contains(report.Skipped.Single().Reason, "invalid UTF-8");

        // An overlong encoding and a lone continuation byte are invalid too (U+FFFD is never produced silently).
        File.WriteAllBytes(path, [.. Encoding.UTF8.GetBytes("{\"prompt\": \""), 0xC0, 0xAF, .. Encoding.UTF8.GetBytes("\", \"completion\": \"c\"}\n")]);
        AssertOneLine(Assert.ThrowsExactly<InvalidDataException>(() => PreferenceDataFile.ReadCompletions(path)), "line 1", "byte offset 12", "0xC0");
    }
}
