using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.ML.Dpo.Checkpoints;
using MlDpo.Commands;

namespace Microsoft.ML.Dpo.Tests.Cli;

/// <summary>
/// The CLI never loses a user's files (issue 14): what <c>--output</c> may replace, existing checkpoints, and the
/// silently-wrong cases (lengths beyond the context, unrecognised chat templates). Runs in process through <see cref="CliApp.Run"/>.
/// </summary>
[TestClass]
public sealed class CliFileSafetyTests
{
    static TempDirectory? shared;

    /// <summary>One tiny base model (llama tiny over bytes: context 256) and data, created once; tests copy what they modify.</summary>
    [ClassInitialize]
    public static void CreateBase(TestContext _)
    {
        shared = new TempDirectory();
        Assert.AreEqual(0, Run("init", "--preset", "tiny", "--tokenizer", "bytes", "--output", shared.Combine("base")).Code);
    }

    [ClassCleanup]
    public static void Cleanup() => shared?.Dispose();

    static (int Code, string Out, string Error) Run(params string[] args) => CliRunner.Run(args);

    static (int Code, string Out, string Error) RunIn(string directory, params string[] args)
    {
        string before = Environment.CurrentDirectory;
        Environment.CurrentDirectory = directory;
        try { return Run(args); }
        finally { Environment.CurrentDirectory = before; }
    }

    /// <summary>A work folder holding a copy of the base model, SFT data and a user's notes: what a user's project looks like.</summary>
    static TempDirectory Project()
    {
        var dir = new TempDirectory();
        CopyFolder(shared!.Combine("base"), dir.Combine("base"));
        File.WriteAllLines(dir.Combine("sft.jsonl"), new[] { "apples", "rivers", "clouds", "tigers" }
            .Select(s => JsonSerializer.Serialize(new { prompt = $"Tell me about {s}.\n", completion = "Happy to help!" })));
        File.WriteAllText(dir.Combine("notes.txt"), "my notes");
        return dir;
    }

    static void CopyFolder(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (string file in Directory.GetFiles(from)) File.Copy(file, Path.Combine(to, Path.GetFileName(file)));
        foreach (string sub in Directory.GetDirectories(from)) CopyFolder(sub, Path.Combine(to, Path.GetFileName(sub)));
    }

    static void AssertProjectIntact(TempDirectory dir)
    {
        Assert.AreEqual("my notes", File.ReadAllText(dir.Combine("notes.txt")));
        Assert.IsTrue(File.Exists(dir.Combine("sft.jsonl")));
        Assert.IsTrue(File.Exists(dir.Combine("base", "model.safetensors")));
        Assert.IsTrue(File.Exists(dir.Combine("base", "config.json")));
    }

    static string[] Sft(string model, string data, string output, params string[] more) =>
        ["sft", "--model", model, "--data", data, "--output", output, "--max-steps", "1", "--batch-size", "4", "--max-length", "32", .. more];

    [TestMethod]
    public void SftOutputDotAndDotDot_AreRefusedEvenWithForce()
    {
        using var dir = Project();
        foreach (string output in new[] { ".", ".." })
            foreach (string[] force in new[] { Array.Empty<string>(), ["--force"] })
            {
                var result = RunIn(dir.Path, Sft("base", "sft.jsonl", output, force));
                Assert.AreEqual(1, result.Code, $"--output {output} {string.Join(' ', force)}");
                StringAssert.Contains(result.Error, "current directory");
                StringAssert.Contains(result.Error, "never replaced");
                AssertProjectIntact(dir);
            }
        Assert.IsFalse(Directory.Exists(dir.Path + ".checkpoints"), "refused before anything was written");
    }

    [TestMethod]
    public void SftOutputEqualToModelOrData_IsRefusedEvenWithForce()
    {
        using var dir = Project();
        var same = RunIn(dir.Path, Sft("base", "sft.jsonl", "base", "--force"));
        Assert.AreEqual(1, same.Code);
        StringAssert.Contains(same.Error, "'base' is an input of this run");
        var viaPath = RunIn(dir.Path, Sft("base", "sft.jsonl", "./base/", "--force"));
        Assert.AreEqual(1, viaPath.Code, "the same folder spelled otherwise");
        Directory.CreateDirectory(dir.Combine("data"));
        File.Move(dir.Combine("sft.jsonl"), dir.Combine("data", "sft.jsonl"));
        var data = RunIn(dir.Path, Sft("base", "data/sft.jsonl", "data", "--force"));
        Assert.AreEqual(1, data.Code);
        StringAssert.Contains(data.Error, "contains an input of this run");
        File.Move(dir.Combine("data", "sft.jsonl"), dir.Combine("sft.jsonl"));

        // The checkpoint folder and a DPO reference are inputs too.
        var checkpointInside = RunIn(dir.Path, Sft("base", "sft.jsonl", "out", "--checkpoint-dir", "out/ckpt", "--force"));
        Assert.AreEqual(1, checkpointInside.Code);
        StringAssert.Contains(checkpointInside.Error, "contains an input of this run");
        CopyFolder(dir.Combine("base"), dir.Combine("ref"));
        var overReference = RunIn(dir.Path, "dpo", "--model", "base", "--reference", "ref", "--data", "sft.jsonl", "--output", "ref", "--force");
        Assert.AreEqual(1, overReference.Code);
        StringAssert.Contains(overReference.Error, "'ref' is an input of this run");
        Assert.IsTrue(File.Exists(dir.Combine("ref", "model.safetensors")));
        AssertProjectIntact(dir);
        Assert.IsFalse(Directory.Exists(dir.Combine(".base.old")));
    }

    [TestMethod]
    public void SftIntoAFolderOfUserFiles_NeedsForce_AndItsOwnOutputIsReplacedWithoutIt()
    {
        using var dir = Project();
        Directory.CreateDirectory(dir.Combine("results"));
        File.WriteAllText(dir.Combine("results", "paper.tex"), "two years of work");

        var refused = RunIn(dir.Path, Sft("base", "sft.jsonl", "results"));
        Assert.AreEqual(1, refused.Code);
        StringAssert.Contains(refused.Error, "paper.tex");
        StringAssert.Contains(refused.Error, "--force");
        Assert.AreEqual("two years of work", File.ReadAllText(dir.Combine("results", "paper.tex")));
        Assert.IsFalse(Directory.Exists(dir.Combine("results.checkpoints")), "refused before training");

        var forced = RunIn(dir.Path, Sft("base", "sft.jsonl", "results", "--force"));
        Assert.AreEqual(0, forced.Code, forced.Error);
        Assert.IsFalse(File.Exists(dir.Combine("results", "paper.tex")));
        Assert.IsTrue(File.Exists(dir.Combine("results", OutputFolder.MarkerFileName)));
        Assert.IsTrue(File.Exists(dir.Combine("results", "metrics.jsonl")), "metrics.jsonl is part of the output");

        // Our own output is replaced without --force (the earlier checkpoint needs --restart).
        var again = RunIn(dir.Path, Sft("base", "sft.jsonl", "results", "--restart"));
        Assert.AreEqual(0, again.Code, again.Error);
        AssertProjectIntact(dir);
    }

    [TestMethod]
    public void MergeOutputDot_IsRefused_AndBaseAdapterAndNotesSurvive()
    {
        using var dir = Project();
        // A real adapter: a LoRA SFT run writes one into its output.
        Assert.AreEqual(0, RunIn(dir.Path, Sft("base", "sft.jsonl", "lora", "--lora-rank", "2")).Code);
        CopyFolder(dir.Combine("lora", "adapter"), dir.Combine("adapter"));

        foreach (string[] force in new[] { Array.Empty<string>(), ["--force"] })
        {
            var result = RunIn(dir.Path, ["merge", "--model", "base", "--adapter", "adapter", "--output", ".", .. force]);
            Assert.AreEqual(1, result.Code);
            StringAssert.Contains(result.Error, "current directory");
            AssertProjectIntact(dir);
            Assert.IsTrue(File.Exists(dir.Combine("adapter", "adapter_model.safetensors")));
        }
        var intoAdapter = RunIn(dir.Path, "merge", "--model", "base", "--adapter", "adapter", "--output", "adapter", "--force");
        Assert.AreEqual(1, intoAdapter.Code);
        Assert.IsTrue(File.Exists(dir.Combine("adapter", "adapter_model.safetensors")));

        var ok = RunIn(dir.Path, "merge", "--model", "base", "--adapter", "adapter", "--output", "merged");
        Assert.AreEqual(0, ok.Code, ok.Error);
        Assert.IsTrue(File.Exists(dir.Combine("merged", "model.safetensors")));
    }

    [TestMethod]
    public void InitUsesTheSameRule()
    {
        using var dir = Project();
        Assert.AreEqual(0, RunIn(dir.Path, "init", "--tokenizer", "bytes", "--output", "fresh").Code);
        Assert.AreEqual(0, RunIn(dir.Path, "init", "--tokenizer", "bytes", "--output", "fresh", "--seed", "2").Code, "its own output is replaced");
        var dot = RunIn(dir.Path, "init", "--tokenizer", "bytes", "--output", ".", "--force");
        Assert.AreEqual(1, dot.Code);
        StringAssert.Contains(dot.Error, "current directory");
        File.WriteAllText(dir.Combine("fresh", "mine.txt"), "x");
        Assert.AreEqual(1, RunIn(dir.Path, "init", "--tokenizer", "bytes", "--output", "fresh").Code);
        Assert.AreEqual(0, RunIn(dir.Path, "init", "--tokenizer", "bytes", "--output", "fresh", "--force").Code);
        AssertProjectIntact(dir);
    }

    [TestMethod]
    public void RerunWithAnExistingCheckpoint_NeedsResumeOrRestart()
    {
        using var dir = Project();
        Assert.AreEqual(0, RunIn(dir.Path, Sft("base", "sft.jsonl", "out")).Code);
        string state = dir.Combine("out.checkpoints", "checkpoint", "trainer_state.json");
        string before = File.ReadAllText(state);

        var refused = RunIn(dir.Path, Sft("base", "sft.jsonl", "out"));
        Assert.AreEqual(1, refused.Code);
        StringAssert.Contains(refused.Error, "--resume");
        StringAssert.Contains(refused.Error, "--restart");
        StringAssert.Contains(refused.Error, "step 1 of 1");
        Assert.AreEqual(before, File.ReadAllText(state), "the checkpoint is kept");

        var both = RunIn(dir.Path, Sft("base", "sft.jsonl", "out", "--resume", "--restart"));
        Assert.AreEqual(1, both.Code);
        StringAssert.Contains(both.Error, "not both");

        Assert.AreEqual(0, RunIn(dir.Path, Sft("base", "sft.jsonl", "out", "--resume")).Code);
        var restarted = RunIn(dir.Path, Sft("base", "sft.jsonl", "out", "--restart"));
        Assert.AreEqual(0, restarted.Code, restarted.Error);
    }

    [TestMethod]
    public void MaxLengthBeyondTheContext_IsCappedWithAWarning()
    {
        using var dir = Project();
        string longText = string.Concat(Enumerable.Repeat("owls hoot at night. ", 20));   // 400 bytes against a 256-token context
        File.WriteAllLines(dir.Combine("long.jsonl"), Enumerable.Range(0, 4).Select(_ => JsonSerializer.Serialize(new { prompt = longText, completion = longText })));

        var result = RunIn(dir.Path, "sft", "--model", "base", "--data", "long.jsonl", "--output", "out", "--max-steps", "1", "--max-length", "5000");
        Assert.AreEqual(0, result.Code, result.Error);
        StringAssert.Contains(result.Out, "warning: the maximum length 5000");
        StringAssert.Contains(result.Out, "context of 256 positions");
        StringAssert.Contains(result.Out, "capped at 256 tokens");
    }

    [TestMethod]
    public void GenerateBeyondTheContext_SaysHowManyTokensFit()
    {
        var result = Run("generate", "--model", shared!.Combine("base"), "--prompt-ids", "256,84,101", "--max-new-tokens", "2000", "--ignore-eos", "--format", "ids");
        Assert.AreEqual(0, result.Code, result.Error);
        StringAssert.Contains(result.Error, "warning: --max-new-tokens 2000");
        StringAssert.Contains(result.Error, "at most 253 new tokens");
        Assert.AreEqual(253, result.Out.Trim().Split(',').Length);

        var fits = Run("generate", "--model", shared.Combine("base"), "--prompt-ids", "256", "--max-new-tokens", "3", "--format", "ids");
        Assert.AreEqual("", fits.Error, "no warning when it fits");
    }

    [TestMethod]
    public void ConversationalData_WithATemplateThatCannotBeRendered_IsRefusedUnlessChatTemplateChoosesOne()
    {
        using var dir = Project();
        string config = dir.Combine("base", "tokenizer_config.json");
        var json = JsonNode.Parse(File.ReadAllText(config))!.AsObject();
        json["chat_template"] = "{% include 'turns.jinja' %}";      // Jinja outside what chat templates use: refused, never rendered otherwise
        File.WriteAllText(config, json.ToJsonString());
        File.WriteAllLines(dir.Combine("chat.jsonl"), new[] { "apples", "rivers", "clouds", "tigers" }.Select(s => JsonSerializer.Serialize(new
        {
            chosen = new[] { new { role = "user", content = $"Tell me about {s}." }, new { role = "assistant", content = "Happy to help!" } },
            rejected = new[] { new { role = "user", content = $"Tell me about {s}." }, new { role = "assistant", content = "No." } },
        })));
        File.WriteAllLines(dir.Combine("messages.jsonl"), new[] { "apples", "rivers" }.Select(s => JsonSerializer.Serialize(new
        {
            messages = new[] { new { role = "user", content = $"Tell me about {s}." }, new { role = "assistant", content = "Happy to help!" } },
        })));

        var dpo = RunIn(dir.Path, "dpo", "--model", "base", "--data", "chat.jsonl", "--output", "dpo", "--max-steps", "1", "--max-length", "64");
        Assert.AreEqual(1, dpo.Code);
        StringAssert.Contains(dpo.Error, "cannot be rendered");
        StringAssert.Contains(dpo.Error, "--chat-template");
        var sft = RunIn(dir.Path, "sft", "--model", "base", "--data", "messages.jsonl", "--output", "sft", "--max-steps", "1", "--max-length", "64");
        Assert.AreEqual(1, sft.Code);
        StringAssert.Contains(sft.Error, "--chat-template");

        var chosen = RunIn(dir.Path, "dpo", "--model", "base", "--data", "chat.jsonl", "--output", "dpo", "--max-steps", "1", "--max-length", "64", "--chat-template", "zephyr");
        Assert.AreEqual(0, chosen.Code, chosen.Error);
        var unknown = RunIn(dir.Path, "dpo", "--model", "base", "--data", "chat.jsonl", "--output", "dpo2", "--chat-template", "nope");
        Assert.AreEqual(1, unknown.Code, "only built-in names are accepted");
    }
}
