using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Microsoft.ML.Dpo.Checkpoints;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Lora;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tests.Modeling;
using Microsoft.ML.Dpo.Tokenization;
using Microsoft.ML.Dpo.Training;
using TorchSharp;

namespace Microsoft.ML.Dpo.Tests.Checkpoints;

/// <summary>
/// Issue 14's fuzz test: 500 seeded, deterministic mutations of safetensors headers, model configs (config.json,
/// generation_config.json, trainer_state.json), adapter configs and JSON Lines data, each fed to its loader. Every load must
/// succeed or throw <see cref="InvalidDataException"/> with a one-line message naming one of the case's files — no other
/// exception type, no crash — and must not grow the process's peak memory by more than twice the files' size plus a fixed bound.
/// </summary>
[TestClass]
public sealed class LoaderFuzzTests
{
    // 500 cases with seed 14 in CI; MLDPO_FUZZ_CASES / MLDPO_FUZZ_SEED explore further by hand.
    static readonly int Cases = int.TryParse(Environment.GetEnvironmentVariable("MLDPO_FUZZ_CASES"), out int n) ? n : 500;
    static readonly int Seed = int.TryParse(Environment.GetEnvironmentVariable("MLDPO_FUZZ_SEED"), out int s) ? s : 14;
    /// <summary>The fixed part of the memory bound: what a load of a tiny model may touch (libtorch, the model, JSON buffers).</summary>
    const long FixedMemoryBound = 64L << 20;

    enum Kind { Safetensors, ModelConfig, AdapterConfig, JsonLines, StateOrGenerationConfig }

    [TestMethod]
    public void MutatedFilesGiveSuccessOrOneLineInvalidDataException()
    {
        using var dir = new TempDirectory();
        var templates = Templates(dir.Combine("templates"));
        string caseDir = dir.Combine("case");
        var rng = new Random(Seed);
        var outcomes = new Dictionary<string, int>(StringComparer.Ordinal);
        var failures = new List<string>();
        var memory = new PeakMemory();
        long worstGrowth = 0;
        string worstCase = "";

        // Warm-up: the first load of each kind initializes libtorch and the JSON machinery, which is not the files' doing.
        for (int k = 0; k < 5; k++) RunCase((Kind)k, templates, caseDir, new Random(k), mutate: false);

        var watch = Stopwatch.StartNew();
        for (int i = 0; i < Cases; i++)
        {
            var kind = (Kind)(i % 5);
            var caseRng = new Random(rng.Next());
            long before = memory.Reset();
            long managedBefore = GC.GetAllocatedBytesForCurrentThread();
            var (outcome, files, size) = RunCase(kind, templates, caseDir, caseRng, mutate: true);
            long managed = GC.GetAllocatedBytesForCurrentThread() - managedBefore;
            long growth = Math.Max(memory.Peak() - before, 0);
            long bound = 2 * size + FixedMemoryBound;
            if (growth > worstGrowth) (worstGrowth, worstCase) = (growth, $"case {i}, {kind}, {outcome.Exception?.GetType().Name ?? "loaded"}");
            outcomes[$"{kind}: {(outcome.Exception is null ? "ok" : outcome.Exception.GetType().Name)}"] =
                outcomes.GetValueOrDefault($"{kind}: {(outcome.Exception is null ? "ok" : outcome.Exception.GetType().Name)}") + 1;

            string? problem = outcome.Exception switch
            {
                null => null,
                InvalidDataException e when e.Message.Contains('\n') || e.Message.Contains('\r') => $"message on several lines: {e.Message}",
                InvalidDataException e when !files.Any(f => e.Message.Contains(f, StringComparison.Ordinal)) => $"message names no file: {e.Message}",
                InvalidDataException => null,
                var e => $"{e.GetType().FullName}: {e.Message}\n{e.StackTrace}",
            };
            if (growth > bound) problem = $"peak memory grew {growth:N0} bytes, over the bound {bound:N0} (files {size:N0} bytes)";
            if (managed > bound) problem = $"allocated {managed:N0} managed bytes, over the bound {bound:N0} (files {size:N0} bytes)";
            if (problem is not null) failures.Add($"case {i} ({kind}): {problem}\n  file: {outcome.Mutated}");
        }
        watch.Stop();

        Console.WriteLine($"{Cases} cases in {watch.Elapsed.TotalSeconds:F1} s; peak-memory source: {memory.Source}; largest peak growth {worstGrowth:N0} bytes ({worstCase})");
        foreach (var (key, count) in outcomes.OrderBy(kv => kv.Key, StringComparer.Ordinal)) Console.WriteLine($"  {key}: {count}");
        Assert.IsEmpty(failures, string.Join("\n", failures.Take(10)));
        foreach (var kind in Enum.GetValues<Kind>())
        {
            Assert.IsTrue(outcomes.ContainsKey($"{kind}: InvalidDataException"), $"the {kind} mutations produced no error at all: the fuzzing is too weak");
        }
    }

    sealed record Outcome(Exception? Exception, string Mutated);

    sealed record TemplateFiles(string Model, string Gpt2Model, string Adapter, string Pairs, string Completions, string State, string Generation);

    /// <summary>The valid files the mutations start from: two tiny models (llama with an adapter, gpt2), data, a trainer state, a generation config.</summary>
    static TemplateFiles Templates(string root)
    {
        torch.manual_seed(3);
        string model = Path.Combine(root, "llama"), gpt2 = Path.Combine(root, "gpt2"), adapter = Path.Combine(root, "adapter");
        using (var m = CausalLM.Create(TinyModels.Llama(tied: false))) HuggingFaceCheckpoint.Save(m, model);
        using (var g = CausalLM.Create(TinyModels.Gpt2())) HuggingFaceCheckpoint.Save(g, gpt2);
        using (var withAdapter = new LanguageModel(CausalLM.Create(TinyModels.Llama(tied: false)), null))
            LoraAdapters.Apply(withAdapter, new LoraOptions { Rank = 2, TargetModules = ["q", "v", "down"] }).Save(adapter);
        Directory.CreateDirectory(Path.Combine(root, "data"));
        string pairs = Path.Combine(root, "data", "pairs.jsonl"), completions = Path.Combine(root, "data", "sft.jsonl");
        File.WriteAllLines(pairs, Enumerable.Range(0, 5).Select(i =>
            new JsonObject { ["prompt"] = $"Tell me about owls {i}.", ["chosen"] = "Happy to help! Owls are birds.", ["rejected"] = "No." }.ToJsonString()));
        File.WriteAllLines(completions, Enumerable.Range(0, 5).Select(i =>
            new JsonObject { ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = $"Hi {i}" }, new JsonObject { ["role"] = "assistant", ["content"] = "Hello." }) }.ToJsonString()));
        string state = Path.Combine(root, "data", "trainer_state.json");
        File.WriteAllText(state, "{\"Step\":20,\"Epoch\":1,\"NextBatchInEpoch\":4,\"TotalSteps\":40,\"Fingerprint\":\"0123456789abcdef\"}");
        return new TemplateFiles(model, gpt2, adapter, pairs, completions, state, Path.Combine(model, "generation_config.json"));
    }

    static (Outcome Outcome, string[] Files, long Size) RunCase(Kind kind, TemplateFiles t, string caseDir, Random rng, bool mutate)
    {
        if (Directory.Exists(caseDir)) Directory.Delete(caseDir, recursive: true);
        Directory.CreateDirectory(caseDir);
        switch (kind)
        {
            case Kind.Safetensors:
            case Kind.ModelConfig:
            {
                string source = rng.Next(3) == 0 ? t.Gpt2Model : t.Model;
                string model = Copy(source, Path.Combine(caseDir, "model"));
                string target = Path.Combine(model, kind == Kind.Safetensors ? Safetensors.SingleFileName : "config.json");
                if (mutate) Mutate(target, rng, safetensors: kind == Kind.Safetensors);
                bool direct = kind == Kind.Safetensors && rng.Next(4) == 0;
                var outcome = Try(target, () =>
                {
                    if (direct) { foreach (var tensor in Safetensors.Load(target).Values) tensor.Dispose(); }
                    else HuggingFaceCheckpoint.Load(model).Dispose();
                });
                return (outcome, [target, Path.Combine(model, "config.json"), Path.Combine(model, Safetensors.SingleFileName)], DirectorySize(model));
            }
            case Kind.AdapterConfig:
            {
                string adapter = Copy(t.Adapter, Path.Combine(caseDir, "adapter"));
                bool weights = rng.Next(4) == 0;
                string target = Path.Combine(adapter, weights ? LoraAdapters.WeightsFileName : LoraAdapters.ConfigFileName);
                if (mutate) Mutate(target, rng, safetensors: weights);
                var outcome = Try(target, () =>
                {
                    torch.manual_seed(3);
                    using var model = new LanguageModel(CausalLM.Create(TinyModels.Llama(tied: false)), null);
                    LoraAdapters.Load(model, adapter);
                });
                return (outcome, [target, Path.Combine(adapter, LoraAdapters.ConfigFileName), Path.Combine(adapter, LoraAdapters.WeightsFileName)], DirectorySize(adapter));
            }
            case Kind.JsonLines:
            {
                bool pairs = rng.Next(2) == 0;
                string target = Path.Combine(caseDir, pairs ? "pairs.jsonl" : "sft.jsonl");
                File.Copy(pairs ? t.Pairs : t.Completions, target);
                if (mutate) Mutate(target, rng, safetensors: false);
                bool skip = rng.Next(4) == 0;
                var outcome = Try(target, () =>
                {
                    if (pairs) PreferenceDataFile.ReadPreferencePairs(target, new() { SkipMalformedRows = skip });
                    else PreferenceDataFile.ReadCompletions(target, new() { SkipMalformedRows = skip });
                });
                return (outcome, [target], new FileInfo(target).Length);
            }
            default:
            {
                bool state = rng.Next(2) == 0;
                string target = Path.Combine(caseDir, state ? "trainer_state.json" : "generation_config.json");
                File.Copy(state ? t.State : t.Generation, target);
                if (mutate) Mutate(target, rng, safetensors: false);
                var outcome = Try(target, () =>
                {
                    if (state) TrainingCheckpoint.ReadState(target);
                    else
                    {
                        var files = HfTokenizerFiles.Read(caseDir);
                        _ = files.TokenIds("bos_token_id");
                        _ = files.AllEosIds().ToList();
                    }
                });
                return (outcome, [target], new FileInfo(target).Length);
            }
        }
    }

    static Outcome Try(string target, Action load)
    {
        try
        {
            using var scope = torch.NewDisposeScope();
            load();
            return new Outcome(null, Describe(target));
        }
        catch (Exception e)
        {
            return new Outcome(e, Describe(target));
        }
    }

    static string Describe(string file)
    {
        var bytes = File.ReadAllBytes(file);
        int headerEnd = file.EndsWith(".safetensors", StringComparison.Ordinal) ? Math.Min(bytes.Length, 8 + 600) : Math.Min(bytes.Length, 600);
        return $"{Path.GetFileName(file)} ({bytes.Length} bytes): {Encoding.UTF8.GetString(bytes, 0, headerEnd).ReplaceLineEndings("⏎")}";
    }

    static string Copy(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (string f in Directory.GetFiles(from)) File.Copy(f, Path.Combine(to, Path.GetFileName(f)));
        return to;
    }

    static long DirectorySize(string dir) => Directory.GetFiles(dir).Sum(f => new FileInfo(f).Length);

    // ---- mutations ----

    static readonly string[] Numbers =
    [
        "0", "-1", "1", "2", "3", "-2147483648", "2147483647", "2147483648", "4294967296", "4294967297", "9223372036854775807",
        "9223372036854775808", "18446744073709551616", "-9223372036854775808", "1e300", "-1e9", "2e9", "1.5", "1e-300", "NaN", "65536", "100000",
    ];

    static readonly string[] Strings =
    [
        "", "F64", "I8", "BF16", "F16", "F32", "llama", "gpt2", "mistral", "qwen2", "falcon", "LORA", "PREFIX_TUNING", "../../etc/passwd",
        "/dev/zero", "all-linear", "q_proj", "(", "[a-", ".*", "nope", "\\u0000", "\\ud800", "user", "assistant", "llama3", "linear",
    ];

    static readonly string[] Tokens = ["{", "}", "[", "]", "\"", ",", ":", "null", "true", "[]", "{}", "\\", "\n", "\r\n", " ", "-", "e", "\u00ff", "\u20ac"];

    static readonly byte[][] RawBytes = [[0xFF], [0xC0, 0xAF], [0xED, 0xA0, 0x80], [0x80], [0xE2, 0x82], [0x00], [0xF4, 0x90, 0x80, 0x80]];

    static readonly Regex NumberPattern = new(@"-?\d+(\.\d+)?([eE][+-]?\d+)?", RegexOptions.CultureInvariant);
    static readonly Regex StringPattern = new("\"(?:[^\"\\\\]|\\\\.)*\"", RegexOptions.CultureInvariant);
    static readonly Regex MemberPattern = new("\"(?:[^\"\\\\]|\\\\.)*\"\\s*:\\s*(?:\"(?:[^\"\\\\]|\\\\.)*\"|-?[\\d.eE+-]+|true|false|null|\\[[^\\[\\]]*\\])", RegexOptions.CultureInvariant);

    /// <summary>Applies 1–3 random mutations to <paramref name="file"/>; for safetensors, to the header JSON (length prefix kept or not) or the framing.</summary>
    static void Mutate(string file, Random rng, bool safetensors)
    {
        var bytes = File.ReadAllBytes(file);
        if (!safetensors)
        {
            File.WriteAllBytes(file, MutateText(bytes, rng));
            return;
        }
        ulong headerLength = BitConverter.ToUInt64(bytes, 0);
        var header = bytes.AsSpan(8, (int)headerLength).ToArray();
        var data = bytes.AsSpan(8 + (int)headerLength).ToArray();
        switch (rng.Next(10))
        {
            case 0:     // a random header length
                ulong[] lengths = [0, 1, headerLength - 1, headerLength + 1, (ulong)bytes.Length, ulong.MaxValue, 1UL << 40, (ulong)rng.Next(1, bytes.Length)];
                BitConverter.GetBytes(lengths[rng.Next(lengths.Length)]).CopyTo(bytes, 0);
                File.WriteAllBytes(file, bytes);
                return;
            case 1:     // truncated data
                File.WriteAllBytes(file, bytes[..rng.Next(0, bytes.Length)]);
                return;
            default:    // a mutated header, the length prefix updated (or, sometimes, left stale)
                var mutated = MutateText(header, rng);
                ulong prefix = rng.Next(5) == 0 ? headerLength : (ulong)mutated.Length;
                File.WriteAllBytes(file, [.. BitConverter.GetBytes(prefix), .. mutated, .. data]);
                return;
        }
    }

    static byte[] MutateText(byte[] original, Random rng)
    {
        string text = Encoding.UTF8.GetString(original);
        int count = 1 + rng.Next(3);
        byte[]? raw = null;
        for (int m = 0; m < count; m++)
        {
            switch (rng.Next(9))
            {
                case 0: text = ReplaceRandom(text, NumberPattern, rng, _ => Numbers[rng.Next(Numbers.Length)]); break;
                case 1: text = ReplaceRandom(text, NumberPattern, rng, _ => Numbers[rng.Next(Numbers.Length)]); break;
                case 2: text = ReplaceRandom(text, StringPattern, rng, _ => "\"" + Strings[rng.Next(Strings.Length)] + "\""); break;
                case 3: text = ReplaceRandom(text, StringPattern, rng, _ => rng.Next(2) == 0 ? Numbers[rng.Next(Numbers.Length)] : Tokens[rng.Next(7, 11)]); break;
                case 4:     // duplicate or drop a member
                {
                    var members = MemberPattern.Matches(text);
                    if (members.Count == 0) break;
                    var member = members[rng.Next(members.Count)];
                    text = rng.Next(2) == 0
                        ? text.Insert(member.Index, member.Value + ", ")
                        : text.Remove(member.Index, member.Length);
                    break;
                }
                case 5:     // truncate
                    text = text[..rng.Next(0, text.Length + 1)];
                    break;
                case 6:     // delete a span
                {
                    if (text.Length == 0) break;
                    int at = rng.Next(text.Length);
                    text = text.Remove(at, Math.Min(text.Length - at, 1 + rng.Next(12)));
                    break;
                }
                case 7:     // insert a token
                    text = text.Insert(rng.Next(text.Length + 1), Tokens[rng.Next(Tokens.Length)]);
                    break;
                default:    // raw bytes that are not UTF-8, inserted after the text mutations
                    raw = RawBytes[rng.Next(RawBytes.Length)];
                    break;
            }
        }
        var result = Encoding.UTF8.GetBytes(text);
        if (raw is null) return result;
        int position = rng.Next(result.Length + 1);
        return [.. result.AsSpan(0, position), .. raw, .. result.AsSpan(position)];
    }

    static string ReplaceRandom(string text, Regex pattern, Random rng, Func<Match, string> replacement)
    {
        var matches = pattern.Matches(text);
        if (matches.Count == 0) return text;
        var match = matches[rng.Next(matches.Count)];
        return text.Remove(match.Index, match.Length).Insert(match.Index, replacement(match));
    }

    /// <summary>
    /// The process's peak resident memory since the last <see cref="Reset"/>: Linux's VmHWM, reset through <c>/proc/self/clear_refs</c>
    /// (value 5). Where that is unavailable, the resident size right after the load (VmRSS, or the working set) stands in.
    /// </summary>
    internal sealed class PeakMemory
    {
        readonly bool resettable = TryReset();

        public string Source => resettable ? "VmHWM reset per load (/proc/self/clear_refs)" : "resident size after the load (no peak reset available)";

        public long Reset()
        {
            if (resettable) TryReset();
            return Current("VmRSS");
        }

        public long Peak() => resettable ? Current("VmHWM") : Current("VmRSS");

        static bool TryReset()
        {
            try
            {
                File.WriteAllText("/proc/self/clear_refs", "5");
                return Current("VmHWM") > 0;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                return false;
            }
        }

        static long Current(string field)
        {
            try
            {
                foreach (string line in File.ReadLines("/proc/self/status"))
                    if (line.StartsWith(field + ":", StringComparison.Ordinal))
                        return long.Parse(line[(field.Length + 1)..].Trim().Split(' ')[0], CultureInfo.InvariantCulture) * 1024;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
            return Environment.WorkingSet;
        }
    }
}
