using System.Text.Json;
using Microsoft.ML.Dpo.Checkpoints;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tokenization;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests;

/// <summary>
/// GGUF export checked by llama.cpp itself (LLamaSharp's CPU backend): tiny models with random weights and real tokenizers
/// (the tokenizer kit in ../shared) are exported and loaded by llama.cpp, whose greedy continuation must equal ours token for
/// token (F32; F16 against ours over the same half-precision weights, where only F16 ties may differ; Q8_0 must agree on at least 90 % of teacher-forced positions), and whose tokenization of the
/// kit's 216 texts must equal ours, with and without special tokens.
/// </summary>
[TestClass]
public sealed class GgufExportTests
{
    const int NewTokens = 24;
    const string Prompt = "Tell me about owls. They hunt at night, don't they?";

    /// <summary>A tiny model of <paramref name="modelType"/> over <paramref name="tokenizer"/>, weights drawn so that logits are well separated.</summary>
    internal static LanguageModel TinyModel(string modelType, TextTokenizer tokenizer, bool tied = true, int seed = 7)
    {
        int eos = tokenizer.EosTokenId!.Value;
        var config = ModelPresets.Create("llama", "tiny", tokenizer.VocabularySize, tokenizer.BosTokenId ?? eos, eos);
        config.ModelType = modelType;
        config.TieWordEmbeddings = tied;
        config.IntermediateSize = 96;
        if (modelType == "qwen2") (config.AttentionBias, config.RopeTheta) = (true, 1e6);
        if (modelType == "mistral") config.SlidingWindow = 128;
        if (modelType == "gemma") config.HiddenActivation = "gelu_pytorch_tanh";
        manual_seed(seed);
        var network = CausalLM.Create(config);
        using (no_grad())
        {
            foreach (var (name, p) in network.named_parameters())
            {
                if (name.Contains("norm", StringComparison.Ordinal)) p.copy_(1 + 0.2 * randn_like(p));
                else if (name.EndsWith(".bias", StringComparison.Ordinal)) p.copy_(0.5 * randn_like(p));
                else if (name == "model.embed_tokens.weight") p.copy_(randn_like(p) * (tied ? 0.25 : 1));
                else
                {
                    // With tied embeddings the input embedding would dominate the logits (the model would repeat its last token):
                    // the blocks' outputs are made larger there.
                    double gain = name == "lm_head.weight" ? 4 : tied && (name.EndsWith("o_proj.weight", StringComparison.Ordinal) || name.EndsWith("down_proj.weight", StringComparison.Ordinal)) ? 4 : 1;
                    p.copy_(randn_like(p) / Math.Sqrt(p.shape[1]) * gain);
                }
            }
        }
        return new LanguageModel(network, tokenizer);
    }

    /// <summary>Our greedy continuation (argmax, lowest id on ties, end-of-sequence included), recomputed over the whole sequence each step.</summary>
    internal static int[] OurGreedy(LanguageModel model, IReadOnlyList<int> prompt, int count)
    {
        var ids = prompt.ToList();
        using var _ = no_grad();
        for (int i = 0; i < count; i++)
        {
            using var scope = NewDisposeScope();
            var logits = model.Network.Forward(tensor(ids.Select(x => (long)x).ToArray()).unsqueeze(0));
            ids.Add((int)logits[0, -1].argmax().item<long>());
        }
        return ids.Skip(prompt.Count).ToArray();
    }

    /// <summary>Our logits after each token of <paramref name="sequence"/>, from one forward pass.</summary>
    static float[][] OurLogitsAfterEach(LanguageModel model, IReadOnlyList<int> sequence)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var logits = model.Network.Forward(tensor(sequence.Select(x => (long)x).ToArray()).unsqueeze(0))[0].contiguous();
        return Enumerable.Range(0, sequence.Count).Select(i => logits[i].data<float>().ToArray()).ToArray();
    }

    static int ArgMax(float[] row)
    {
        int best = 0;
        for (int v = 1; v < row.Length; v++) if (row[v] > row[best]) best = v;
        return best;
    }

    static string[] KitTexts()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(SharedFiles.Require("reference/tokenizers/reference.json")));
        return doc.RootElement.GetProperty("texts").EnumerateArray().Select(e => e.GetString()!).ToArray();
    }

    static void Check(string modelType, TextTokenizer tokenizer, bool tied, bool nfcByCaller = false, bool tokenization = true)
    {
        using var tmp = new TempDirectory();
        using var model = TinyModel(modelType, tokenizer, tied);
        var prompt = tokenizer.EncodePrompt(Prompt);
        int[] ours = OurGreedy(model, prompt, NewTokens);
        Assert.IsTrue(ours.Distinct().Count() >= NewTokens / 2, $"{modelType}: the test model's continuation is too repetitive to test anything: [{string.Join(", ", ours)}]");
        // The F16 file holds the weights rounded to half precision, and llama.cpp multiplies them with activations rounded to
        // half precision too: its choices are compared with ours over the rounded weights, teacher-forced along our continuation,
        // and a position may differ only where our two best logits are closer than 0.1 % of the largest logit (a tie at F16).
        float[][] halfLogits;
        using (var half = model.Clone())
        {
            using (no_grad()) foreach (var p in half.Network.parameters()) p.copy_(p.to(ScalarType.Float16).to(ScalarType.Float32));
            halfLogits = OurLogitsAfterEach(half, [.. prompt, .. ours]);
        }
        string[] texts = KitTexts();
        foreach (var type in new[] { GgufType.F32, GgufType.F16, GgufType.Q8_0 })
        {
            string path = tmp.Combine($"{modelType}-{type}.gguf");
            model.ExportGguf(path, type);
            using var llama = new LlamaCpp(path);
            if (type == GgufType.Q8_0)
            {
                int[] forced = llama.ArgmaxAfterEach([.. prompt, .. ours]);
                int agree = Enumerable.Range(0, NewTokens).Count(i => forced[prompt.Count - 1 + i] == ours[i]);
                Console.WriteLine($"{modelType} Q8_0: {agree}/{NewTokens} teacher-forced greedy tokens agree with ours");
                Assert.IsTrue(agree >= 0.9 * NewTokens, $"{modelType} Q8_0: only {agree}/{NewTokens} greedy tokens agree with ours");
                continue;
            }
            if (type == GgufType.F16)
            {
                int[] forced = llama.ArgmaxAfterEach([.. prompt, .. ours]);
                int ties = 0;
                for (int i = prompt.Count - 1; i < prompt.Count - 1 + NewTokens; i++)
                {
                    float[] row = halfLogits[i];
                    int best = ArgMax(row);
                    if (forced[i] == best) continue;
                    float margin = row[best] - row[forced[i]], tolerance = 1e-3f * row.Max(Math.Abs);
                    Assert.IsTrue(margin < tolerance, $"{modelType} F16 position {i}: llama.cpp chose {forced[i]}, we chose {best} by a margin of {margin} (tolerance {tolerance})");
                    ties++;
                }
                Console.WriteLine($"{modelType} F16: {NewTokens - ties}/{NewTokens} teacher-forced greedy tokens equal ours over the same F16 weights; {ties} differ at F16 ties");
                continue;
            }
            var (theirs, _) = llama.Greedy(prompt, NewTokens);
            Console.WriteLine($"{modelType} {type}: ours   [{string.Join(", ", ours)}]\n{modelType} {type}: llama.cpp [{string.Join(", ", theirs)}]");
            CollectionAssert.AreEqual(ours, theirs, $"{modelType} {type}: llama.cpp's greedy continuation differs from ours");
            if (type != GgufType.F32 || !tokenization) continue;
            var failures = new List<string>();
            // llama.cpp turns every token spelled "</s>" into an end-of-generation control token, whatever the vocabulary says
            // (llama-vocab.cpp's list of end-of-turn spellings); where "</s>" is plain text (Qwen), texts that contain it differ.
            bool eosLookalike = tokenizer.TokenToId("</s>") is int lookalike && !tokenizer.IsSpecialToken(lookalike);
            int skipped = 0;
            for (int i = 0; i < texts.Length; i++)
            {
                if (eosLookalike && texts[i].Contains("</s>", StringComparison.Ordinal)) { skipped++; continue; }
                foreach (bool special in new[] { false, true })
                {
                    var want = tokenizer.Encode(texts[i], addSpecialTokens: special);
                    // llama.cpp does not run a tokenizer.json normalizer: for Qwen's NFC it tokenizes the NFC form as we do
                    // (ExportGguf's documentation says so); every other text must match as it is.
                    string text = nfcByCaller ? texts[i].Normalize(System.Text.NormalizationForm.FormC) : texts[i];
                    var got = llama.Tokenize(text, special);
                    if (!want.SequenceEqual(got))
                        failures.Add($"text {i} {JsonSerializer.Serialize(texts[i])} (special {special}): ours [{string.Join(",", want)}], llama.cpp [{string.Join(",", got)}]");
                }
            }
            Console.WriteLine($"{modelType}: llama.cpp tokenizes {(texts.Length - skipped) * 2 - failures.Count}/{(texts.Length - skipped) * 2} (text, special) cases as we do ({skipped} texts with a plain \"</s>\" left out)");
            Assert.AreEqual(0, failures.Count, $"{failures.Count} tokenizations differ:\n" + string.Join("\n", failures.Take(8)));
        }
    }

    [TestMethod]
    public void Llama_WithLlama3Tokenizer_RunsInLlamaCpp() =>
        Check("llama", TextTokenizer.FromDirectory(SharedFiles.Require("reference/tokenizers/llama3")), tied: false);

    [TestMethod]
    public void Qwen2_WithQwen3Tokenizer_RunsInLlamaCpp() =>
        Check("qwen2", TextTokenizer.FromDirectory(SharedFiles.Require("reference/tokenizers/qwen3")), tied: true, nfcByCaller: true);

    [TestMethod]
    public void Qwen3_RunsInLlamaCpp() =>   // q_norm and k_norm; the tokenizer is the one checked by the qwen2 test
        Check("qwen3", TextTokenizer.FromDirectory(SharedFiles.Require("reference/tokenizers/qwen3")), tied: false, tokenization: false);

    [TestMethod]
    public void Gemma_WithGemma3Tokenizer_RunsInLlamaCpp() =>   // (1 + w) norms, embeddings × √hidden, GeGLU; SentencePiece-style BPE without a space prefix
        Check("gemma", TextTokenizer.FromDirectory(SharedFiles.Require("reference/tokenizers/gemma3")), tied: true);

    [TestMethod]
    public void LlamaCpp_DoesNotNormalize_QwenNfdTextsDiffer()
    {
        // The limitation documented for Qwen tokenizers, shown: the NFD kit texts tokenize differently unless NFC'd first.
        var tokenizer = TextTokenizer.FromDirectory(SharedFiles.Require("reference/tokenizers/qwen3"));
        using var tmp = new TempDirectory();
        using var model = TinyModel("qwen2", tokenizer);
        model.ExportGguf(tmp.Combine("q.gguf"), GgufType.F16);
        using var llama = new LlamaCpp(tmp.Combine("q.gguf"));
        var nfd = KitTexts().Where(t => !t.IsNormalized(System.Text.NormalizationForm.FormC)).ToList();
        Assert.IsTrue(nfd.Count > 0, "the kit has NFD texts");
        int differ = nfd.Count(t => !tokenizer.Encode(t).SequenceEqual(llama.Tokenize(t, addSpecial: false)));
        Console.WriteLine($"{differ}/{nfd.Count} NFD kit texts tokenize differently in llama.cpp");
        Assert.AreEqual(nfd.Count, differ);
    }

    [TestMethod]
    public void Mistral_WithSentencePieceTokenizer_RunsInLlamaCpp()
    {
        // Only tokenizer.model (and the config): the SentencePiece path, whose merges become llama.cpp's scores.
        string kit = SharedFiles.Require("reference/tokenizers/mistral-sp");
        using var dir = new TempDirectory();
        foreach (string f in new[] { "tokenizer.model", "tokenizer_config.json" }) File.Copy(Path.Combine(kit, f), dir.Combine(f));
        var tokenizer = TextTokenizer.FromDirectory(dir.Path);
        Assert.AreEqual("tokenizer.model", tokenizer.Format);
        Check("mistral", tokenizer, tied: false);
    }
}
