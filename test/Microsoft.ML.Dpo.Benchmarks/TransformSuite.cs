using System.Text.Json.Nodes;
using Microsoft.ML.Data;
using Microsoft.ML.Dpo.Generation;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tokenization;
using Microsoft.ML.Dpo.Trainers;

namespace Microsoft.ML.Dpo.Benchmarks;

/// <summary>
/// Batch prediction: rows per second of <c>LanguageModelTransformer.Transform</c> (greedy responses) with its cursor generating
/// a batch of rows at a time (<see cref="GenerationOptions.TransformBatchSize"/>) against one row at a time, and whether the
/// texts are the same. The model is the `small` Llama preset over a byte-level tokenizer (random weights).
/// </summary>
internal sealed class TransformSuite : IBenchmarkSuite
{
    public string Name => "transform";
    public string Description => "LanguageModelTransformer.Transform: rows/s with batched generation vs one row at a time, same text";

    sealed class Row { public string prompt { get; set; } = ""; }

    static readonly string[] Subjects = ["owls", "rivers", "clouds", "tigers", "pianos", "castles", "rockets", "forests"];
    static readonly string[] Phrasings = ["Tell me about {0}.", "What do you know about {0}?", "Write one sentence on {0}."];

    public JsonObject Run(BenchmarkOptions options)
    {
        int rows = options.Quick ? 16 : 24, newTokens = options.Quick ? 16 : 32;
        int[] batchSizes = options.Quick ? [8] : [8, 24];
        string tokenizerDir = Directory.CreateTempSubdirectory("mldpo-bench-tok-").FullName;
        try
        {
            using var model = ModelPresets.CreateModel("llama", "small", TextTokenizer.CreateByteLevel(tokenizerDir), seed: 7);
            using var transformer = new LanguageModelTransformer(model.Clone(), reference: null, beta: 0, "prompt");
            var ml = new MLContext(seed: 0);
            var prompts = Enumerable.Range(0, rows).Select(i => string.Format(Phrasings[i % Phrasings.Length], Subjects[i % Subjects.Length])).ToArray();
            var data = ml.Data.LoadFromEnumerable(prompts.Select(p => new Row { prompt = p }));
            long parameters = model.Network.parameters().Sum(p => p.numel());
            Console.WriteLine($"-- llama small over bytes: {parameters:N0} parameters; {rows} rows, {newTokens} new tokens each (greedy, no EOS stop)");

            string[] Responses(int batchSize) => transformer
                .WithGenerationOptions(new GenerationOptions { MaxNewTokens = newTokens, StopAtEos = false, TransformBatchSize = batchSize })
                .Transform(data).GetColumn<string>("response").ToArray();

            var results = new JsonObject { ["parameters"] = parameters, ["rows"] = rows, ["newTokens"] = newTokens };
            string[] single = Responses(1);                                   // warm-up, and the reference texts
            var batches = new JsonObject();
            foreach (int batchSize in batchSizes)
            {
                string[] batched = Responses(batchSize);                      // warm-up
                bool same = batched.SequenceEqual(single);
                // A shared machine: the two sides are measured alternately, and the ratio is the median of the per-pair ratios.
                var one = new List<double>();
                var many = new List<double>();
                for (int r = 0; r < options.Repeats; r++)
                {
                    one.Add(Measure.Seconds(() => Responses(1), 1, warmup: 0)[0]);
                    many.Add(Measure.Seconds(() => batched = Responses(batchSize), 1, warmup: 0)[0]);
                }
                double ratio = Measure.Median(one.Zip(many, (o, m) => o / m).ToArray());
                double oneRate = rows / Measure.Median(one), manyRate = rows / Measure.Median(many);
                Console.WriteLine($"   batch {batchSize}: {manyRate:F2} rows/s vs {oneRate:F2} rows/s one at a time: {ratio:F2}x; same text: {same}");
                batches[batchSize.ToString()] = new JsonObject
                {
                    ["rowsPerSecondBatched"] = Math.Round(manyRate, 3),
                    ["rowsPerSecondOneAtATime"] = Math.Round(oneRate, 3),
                    ["ratio"] = Math.Round(ratio, 3),
                    ["sameText"] = same,
                    ["secondsBatched"] = Measure.ToJson(many),
                    ["secondsOneAtATime"] = Measure.ToJson(one),
                };
            }
            results["batchSizes"] = batches;
            return results;
        }
        finally
        {
            Directory.Delete(tokenizerDir, recursive: true);
        }
    }
}
