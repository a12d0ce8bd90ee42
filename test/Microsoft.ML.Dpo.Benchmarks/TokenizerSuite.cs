using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using Microsoft.ML.Dpo.Tokenization;

namespace Microsoft.ML.Dpo.Benchmarks;

/// <summary>
/// Tokenizer encode throughput (MB of UTF-8 per second) on a 10 MB text — the 216 development texts of
/// ../shared/reference/tokenizers repeated — for Llama 3 and Mistral, ours against transformers.js on the same text in
/// the same run (set MLDPO_TRANSFORMERS_JS to an npm folder where <c>npm install @huggingface/transformers@4.3.2</c> ran;
/// without it the comparison is skipped), and the time to encode a 2,000,000-character line without spaces.
/// </summary>
internal sealed class TokenizerSuite : IBenchmarkSuite
{
    public string Name => "tokenizer";
    public string Description => "encode MB/s on 10 MB (llama3, mistral), ours vs transformers.js; a 2M-character line without spaces";

    public JsonObject Run(BenchmarkOptions options)
    {
        var result = new JsonObject();
        string kit = Path.GetFullPath(Path.Combine(RepositoryRoot(), "..", "shared", "reference", "tokenizers"));
        if (!File.Exists(Path.Combine(kit, "reference.json")))
        {
            Console.WriteLine($"  skipped: {kit} is absent");
            result["skipped"] = $"{kit} is absent";
            return result;
        }
        var texts = JsonNode.Parse(File.ReadAllText(Path.Combine(kit, "reference.json")))!["texts"]!.AsArray().Select(t => (string)t!).ToArray();
        int targetBytes = options.Quick ? 1_000_000 : 10_000_000;
        var sb = new StringBuilder();
        for (int i = 0, bytes = 0; ; i++)
        {
            int next = Encoding.UTF8.GetByteCount(texts[i % texts.Length]) + 1;
            if (bytes + next > targetBytes) break;
            sb.Append(texts[i % texts.Length]).Append('\n');
            bytes += next;
        }
        string text = sb.ToString();
        double megabytes = Encoding.UTF8.GetByteCount(text) / 1e6;
        string textFile = Path.Combine(Path.GetTempPath(), $"mldpo-tokenizer-bench-{Environment.ProcessId}.txt");
        File.WriteAllText(textFile, text, new UTF8Encoding(false));
        result["text_megabytes"] = Math.Round(megabytes, 3);
        string? npm = Environment.GetEnvironmentVariable("MLDPO_TRANSFORMERS_JS");
        try
        {
            foreach (string name in new[] { "llama3", "mistral" })
            {
                string folder = Path.Combine(kit, name);
                var tok = TextTokenizer.FromDirectory(folder);
                IReadOnlyList<int> ids = [];
                var seconds = Measure.Seconds(() => ids = tok.Encode(text), options.Repeats);
                double ours = megabytes / Measure.Median(seconds);
                var entry = new JsonObject
                {
                    ["ours_mb_per_s"] = Math.Round(ours, 3), ["ours_seconds"] = Measure.ToJson(seconds), ["ids"] = ids.Count,
                };
                string hash = Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(string.Join(",", ids)))).ToLowerInvariant();
                string line = $"  {name}: ours {ours:F2} MB/s ({ids.Count} ids)";
                if (npm is { Length: > 0 } && Directory.Exists(Path.Combine(npm, "node_modules", "@huggingface", "transformers")))
                {
                    var js = RunNode(npm, folder, textFile, options.Repeats);
                    double theirs = megabytes / Measure.Median(js["seconds"]!.AsArray().Select(v => (double)v!).ToArray());
                    entry["transformers_js_mb_per_s"] = Math.Round(theirs, 3);
                    entry["transformers_js_seconds"] = js["seconds"]!.DeepClone();
                    entry["same_ids"] = (string?)js["sha256"] == hash;
                    line += $", transformers.js {theirs:F2} MB/s, same ids: {(string?)js["sha256"] == hash}";
                }
                else entry["transformers_js"] = "skipped: set MLDPO_TRANSFORMERS_JS to an npm folder with @huggingface/transformers installed";
                Console.WriteLine(line);
                result[name] = entry;
            }
            // A 2,000,000-character line without spaces: one pre-token (quadratic BPE took minutes here).
            var letters = new StringBuilder(2_000_000);
            uint x = 1;
            for (int i = 0; i < 2_000_000; i++) { x = x * 1103515245 + 12345; letters.Append((char)('a' + (int)((x >> 16) % 26))); }
            string longLine = letters.ToString();
            foreach (var (name, tok) in new[] { ("gpt2", TextTokenizer.Gpt2()), ("llama3", TextTokenizer.FromDirectory(Path.Combine(kit, "llama3"))) })
            {
                var sw = Stopwatch.StartNew();
                int count = tok.Encode(longLine).Count;
                result[$"long_line_{name}_seconds"] = Math.Round(sw.Elapsed.TotalSeconds, 3);
                Console.WriteLine($"  2M-character line, {name}: {sw.Elapsed.TotalSeconds:F2} s ({count} ids)");
            }
        }
        finally
        {
            File.Delete(textFile);
        }
        return result;
    }

    static JsonNode RunNode(string npm, string folder, string textFile, int repeats)
    {
        string script = Path.Combine(RepositoryRoot(), "test", "Microsoft.ML.Dpo.Benchmarks", "tokenizer_throughput.mjs");
        var start = new ProcessStartInfo("node") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in new[] { script, npm, folder, textFile, repeats.ToString(System.Globalization.CultureInfo.InvariantCulture) }) start.ArgumentList.Add(a);
        using var process = Process.Start(start) ?? throw new InvalidOperationException("node did not start");
        string stdout = process.StandardOutput.ReadToEnd(), stderr = process.StandardError.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0) throw new InvalidOperationException($"node {script} failed ({process.ExitCode}): {stderr}");
        return JsonNode.Parse(stdout.Trim().Split('\n')[^1])!;
    }

    static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Dpo.sln"))) return dir.FullName;
        throw new InvalidOperationException("Dpo.sln not found above " + AppContext.BaseDirectory);
    }
}
