using MlDpo.Commands;

namespace Microsoft.ML.Dpo.Tests.Cli;

/// <summary><c>mldpo export --format gguf</c>: the file runs in llama.cpp, a Modelfile lies beside it, and foreign files survive.</summary>
[TestClass]
public sealed class ExportCliTests
{
    static (int Code, string Out, string Error) Run(params string[] args) => CliRunner.Run(args);

    [TestMethod]
    public void Export_ByteTokenizerModel_RunsInLlamaCppAndWritesModelfile()
    {
        using var tmp = new TempDirectory();
        string model = tmp.Combine("base"), gguf = tmp.Combine("out", "base.gguf");
        Assert.AreEqual(0, Run("init", "--preset", "tiny", "--tokenizer", "bytes", "--output", model).Code);
        var (code, stdout, _) = Run("export", "--model", model, "--format", "gguf", "--output", gguf, "--type", "f32");
        Assert.AreEqual(0, code);
        StringAssert.Contains(stdout, "ollama create base");

        using var ours = LanguageModel.Load(model);
        var prompt = ours.RequireTokenizer().EncodePrompt("Tell me about owls.");
        using (var llama = new LlamaCpp(gguf))
        {
            // The quick start's tokenizer: bytes, no merges, "<|endoftext|>" prepended as BOS.
            foreach (string text in new[] { "Tell me about owls.", "Grüße, 世界! <|endoftext|> done", "  spaces\n\ttabs" })
                CollectionAssert.AreEqual(ours.RequireTokenizer().Encode(text, addSpecialTokens: true).ToArray(), llama.Tokenize(text, addSpecial: true), text);
            CollectionAssert.AreEqual(GgufExportTests.OurGreedy(ours, prompt, 16), llama.Greedy(prompt, 16).Tokens);
        }
        string modelfile = File.ReadAllText(Path.ChangeExtension(gguf, ".Modelfile"));
        StringAssert.StartsWith(modelfile, "# Written by Microsoft.ML.Dpo");
        StringAssert.Contains(modelfile, "FROM ./base.gguf\n");
        StringAssert.Contains(modelfile, "PARAMETER stop \"<|endoftext|>\"\n");
        StringAssert.Contains(modelfile, "TEMPLATE \"\"\"");      // the byte tokenizer's plain template, in Ollama's syntax

        // Our own file is replaced; a foreign one only with --force; a folder never.
        Assert.AreEqual(0, Run("export", "--model", model, "--output", gguf).Code);
        string foreign = tmp.Combine("foreign.gguf");
        File.WriteAllText(foreign, "not ours");
        var refused = Run("export", "--model", model, "--output", foreign);
        Assert.AreEqual(1, refused.Code);
        StringAssert.Contains(refused.Error, "was not written by this library");
        Assert.AreEqual(1, refused.Error.Trim().Split('\n').Length, "one line");
        Assert.AreEqual("not ours", File.ReadAllText(foreign));
        Assert.IsFalse(File.Exists(tmp.Combine("foreign.Modelfile")));
        Assert.AreEqual(0, Run("export", "--model", model, "--output", foreign, "--force").Code);
        Assert.AreNotEqual("not ours", File.ReadAllText(foreign));
        Assert.AreEqual(1, Run("export", "--model", model, "--output", tmp.Path).Code);
        Assert.AreEqual(0, Directory.GetFiles(tmp.Combine("out")).Count(f => f.Contains(".tmp-", StringComparison.Ordinal)), "no temporary files left");
    }

    [TestMethod]
    public void Export_UnsupportedArchitecture_OneLineError()
    {
        using var tmp = new TempDirectory();
        string model = tmp.Combine("gpt2");
        Assert.AreEqual(0, Run("init", "--arch", "gpt2", "--preset", "tiny", "--tokenizer", "bytes", "--output", model).Code);
        var (code, _, error) = Run("export", "--model", model, "--output", tmp.Combine("m.gguf"));
        Assert.AreEqual(1, code);
        StringAssert.Contains(error, "'gpt2' is not supported");
        Assert.AreEqual(1, error.Trim().Split('\n').Length);
        Assert.IsFalse(File.Exists(tmp.Combine("m.gguf")));
    }
}
