using System.Text.Json;
using Microsoft.ML.Dpo.Generation;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Modeling;

/// <summary>
/// The sparse-MoE cases of <c>shared/reference/hf-parity</c> (<c>mixtral</c>, <c>qwen3-moe</c>) under the kit's README rule,
/// through the public API: logits of the right- and left-padded batches within 1e-4 of transformers' at every real token,
/// completion log-prob sums within 1e-3, and greedy continuations (both prompts as one left-padded batch, KV cache, EOS off)
/// equal up to the first step whose top-2 margin is below 1e-3.
/// </summary>
[TestClass]
public sealed class MoeParityTests
{
    [TestMethod]
    [DataRow("mixtral")]
    [DataRow("qwen3-moe")]
    public void MatchesTransformers(string caseName)
    {
        string dir = SharedFiles.Require(Path.Combine("reference", "hf-parity", caseName));
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "reference.json")));
        var r = doc.RootElement;
        using var model = LanguageModel.Load(dir, device: "cpu");
        Assert.AreEqual(r.GetProperty("model_type").GetString(), model.Network.Config.ModelType);
        var sequences = r.GetProperty("sequences").EnumerateArray().Select(s => s.EnumerateArray().Select(v => v.GetInt64()).ToArray()).ToArray();
        int[] promptLengths = r.GetProperty("prompt_lengths").EnumerateArray().Select(v => v.GetInt32()).ToArray();
        double[] expectedLogProbs = r.GetProperty("completion_logprob_sum").GetProperty("unpadded").EnumerateArray().Select(v => v.GetDouble()).ToArray();

        using var noGrad = no_grad();
        double worst = 0;
        foreach (string layout in new[] { "right_padded", "left_padded" })
        {
            using var scope = NewDisposeScope();
            var batch = r.GetProperty(layout);
            var ids = Matrix(batch.GetProperty("input_ids"));
            var mask = Matrix(batch.GetProperty("attention_mask"));
            var logits = model.Network.Forward(ids, mask);                          // [2, T, V]
            long t = ids.shape[1];
            var expectedRows = batch.GetProperty("logits").EnumerateArray().ToArray();
            for (int row = 0; row < sequences.Length; row++)
            {
                long length = sequences[row].Length, first = layout == "right_padded" ? 0 : t - length;
                var mine = logits[row].narrow(0, first, length);                    // [len, V]
                var theirs = torch.tensor(expectedRows[row].EnumerateArray().SelectMany(p => p.EnumerateArray().Select(v => v.GetSingle())).ToArray())
                    .view(length, -1);
                double diff = mine.sub(theirs).abs().max().item<float>();
                worst = Math.Max(worst, diff);
                Assert.IsTrue(diff <= 1e-4, $"{caseName} {layout} row {row}: max |Δlogit| = {diff:E2} > 1e-4");

                var logps = mine.to(float64).log_softmax(-1);
                double sum = 0;
                for (int i = promptLengths[row]; i < length; i++)
                    sum += logps[i - 1, sequences[row][i]].item<double>();
                Assert.AreEqual(expectedLogProbs[row], sum, 1e-3, $"{caseName} {layout} row {row}: completion log-prob");
            }
        }
        Console.WriteLine($"{caseName}: max |Δlogit| = {worst:E2} over both padded batches");

        var greedy = r.GetProperty("greedy");
        var prompts = greedy.GetProperty("prompts").EnumerateArray().Select(p => p.EnumerateArray().Select(v => v.GetInt32()).ToArray()).ToList();
        var expectedTokens = greedy.GetProperty("tokens").EnumerateArray().Select(p => p.EnumerateArray().Select(v => v.GetInt32()).ToArray()).ToArray();
        var margins = greedy.GetProperty("top2_margin").EnumerateArray().Select(p => p.EnumerateArray().Select(v => v.GetDouble()).ToArray()).ToArray();
        var generated = new TextGenerator(model.Network).Generate(prompts,
            new GenerationOptions { MaxNewTokens = greedy.GetProperty("max_new_tokens").GetInt32(), StopAtEos = false });
        for (int row = 0; row < prompts.Count; row++)
        {
            int counted = Array.FindIndex(margins[row], m => m < 1e-3) is int cut and >= 0 ? cut : margins[row].Length;
            CollectionAssert.AreEqual(expectedTokens[row][..counted], generated[row][..counted], $"{caseName} greedy row {row}");
        }
    }

    static Tensor Matrix(JsonElement rows)
    {
        var values = rows.EnumerateArray().Select(r => r.EnumerateArray().Select(v => v.GetInt64()).ToArray()).ToArray();
        return torch.tensor(values.SelectMany(v => v).ToArray(), values.Length, values[0].Length);
    }
}
