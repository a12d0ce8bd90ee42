using System.Reflection;
using System.Text.Json;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Generation;
using Microsoft.ML.Dpo.Trainers;
using MlDpo.Commands;

namespace Microsoft.ML.Dpo.Tests.Cli;

/// <summary>
/// Issue 14, "The C# on-ramp": CLI errors name flags, not C# option names; the data format, the truncation end and the data's
/// column names have flags (and the column names the same options in <see cref="DataFileOptions"/>).
/// </summary>
[TestClass]
public sealed class CliFlagTests
{
    static TempDirectory? shared;

    [ClassInitialize]
    public static void CreateBase(TestContext _)
    {
        shared = new TempDirectory();
        Assert.AreEqual(0, Run("init", "--preset", "tiny", "--tokenizer", "bytes", "--output", shared.Combine("base")).Code);
    }

    [ClassCleanup]
    public static void Cleanup() => shared?.Dispose();

    static (int Code, string Out, string Error) Run(params string[] args) => CliRunner.Run(args);

    static string Base => shared!.Combine("base");

    static void WriteLines(string path, IEnumerable<object> records) =>
        File.WriteAllLines(path, records.Select(r => JsonSerializer.Serialize(r)));

    static readonly string[] Subjects = ["apples", "rivers", "clouds", "tigers"];

    static string[] Train(string verb, string data, string output, params string[] more) =>
        [verb, "--model", Base, "--data", data, "--output", output, "--max-steps", "1", "--batch-size", "4", "--max-length", "32", .. more];

    static void AssertNoCSharpNames(string error)
    {
        foreach (string name in new[] { "SkipMalformedRows", "SkipInvalidRows", "Format in the options", "MaxPromptLength", "MaxLength", "ExistingCheckpoint",
                     "OutputOverwrite", "(Parameter '" })
            Assert.IsFalse(error.Contains(name, StringComparison.Ordinal), $"'{name}' in: {error}");
    }

    // ---- the translation, on the library's own messages ----

    [TestMethod]
    public void LibraryMessages_SayTheFlags()
    {
        using var dir = new TempDirectory();
        string bad = dir.Combine("bad.jsonl");
        File.WriteAllText(bad, "{\"prompt\": \"p\", \"chosen\": 3, \"rejected\": \"r\"}\n");
        var malformed = Assert.ThrowsExactly<InvalidDataException>(() => PreferenceDataFile.ReadPreferencePairs(bad));
        StringAssert.Contains(malformed.Message, "SkipMalformedRows", "the C# message names the C# option");
        string cli = CliMessages.ForCli(malformed.Message);
        StringAssert.Contains(cli, "pass --skip-invalid to skip such records");
        StringAssert.Contains(cli, $"{bad}, line 1: field 'chosen'");

        var format = Assert.ThrowsExactly<ArgumentException>(() => PreferenceDataFile.ReadPreferencePairs(dir.Combine("pairs.txt")));
        StringAssert.Contains(CliMessages.ForCli(format.Message), "pass --data-format json or --data-format parquet");

        var lengths = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new SftTrainer.Options { MaxLength = 64, MaxPromptLength = 64 }.Validate());
        string lengthsCli = CliMessages.ForCli(lengths.Message);
        StringAssert.StartsWith(lengthsCli, "--max-prompt-length must be less than --max-length (64).");
        AssertNoCSharpNames(lengthsCli);

        // Quoted parts (paths, field names, values) and paths are the user's words: never translated.
        Assert.AreEqual("'/data/MaxLength/Beta.jsonl' and /srv/Beta/x: --beta must be positive.",
            CliMessages.ForCli("'/data/MaxLength/Beta.jsonl' and /srv/Beta/x: Beta must be positive."));
        Assert.AreEqual("Beta.jsonl, line 2: --beta must be positive.", CliMessages.ForCli("Beta.jsonl, line 2: Beta must be positive."));
        Assert.AreEqual("Continue it with --resume (it needs the same data and options), discard it with --restart, or choose another.",
            CliMessages.ForCli("Continue it with --resume (it needs the same data and options; C#: ExistingCheckpoint = Resume), discard it with --restart (C#: ExistingCheckpoint = Restart), or choose another."));
        Assert.AreEqual("Use another --checkpoint-dir, or discard it with --restart.",
            CliMessages.ForCli("Use another CheckpointDirectory, or discard it with ExistingCheckpoint = Restart (mldpo: --restart)."));
        Assert.AreEqual("warning: the maximum length 600 (--max-length) exceeds",
            CliMessages.ForCli("warning: the maximum length 600 (MaxLength, --max-length) exceeds"));
        Assert.AreEqual("Not even with --force. Or replace it with --force.",
            CliMessages.ForCli("Not even with --force (OutputOverwrite.Always). Or replace it with --force (C#: OutputOverwrite.Always)."));
    }

    /// <summary>
    /// Every option of the trainers, data loaders and generation is either translated to a flag that exists, or listed here as
    /// C#-only: a new option must choose.
    /// </summary>
    [TestMethod]
    public void EveryOptionHasAFlagThatExists_OrIsListedAsCSharpOnly()
    {
        var flags = new HashSet<string>();
        foreach (System.CommandLine.Command verb in CliApp.Build().Subcommands)
            foreach (System.CommandLine.Option option in verb.Options) flags.Add(option.Name);
        foreach (var (property, flag) in CliMessages.Flags)
            Assert.Contains(flag, flags, $"{property} is translated to {flag}, which no verb has");

        string[] csharpOnly =
        [
            "BaseModel", "ValidationData", "Lora", "Log", "Progress", "CancellationToken", "GradientAccumulationSteps", "WeightDecay", "Schedule",
            "MaxGradNorm", "Seed", "Device", "Precision", "Resume", "ExistingCheckpoint", "Reference", "ReferenceModel", "EvaluationGeneration",
            "Format", "Layout", "RenderConversation", "ChatTemplate", "ReportedRowsPerReason", "ImplicitPromptMarker", "Binarization",
            "PromptColumnName", "ChosenColumnName", "RejectedColumnName", "MessagesColumnName", "CompletionColumnName",
            "CompletionOnlyLoss", "EvaluationJudge", "StopStrings", "StopAtEos", "TruncateLongPrompts", "TransformBatchSize",
        ];
        var undecided = new List<string>();
        foreach (Type type in new[] { typeof(SftTrainer.Options), typeof(DpoTrainer.Options), typeof(PreferenceDataLoadOptions), typeof(CompletionDataLoadOptions), typeof(GenerationOptions) })
            foreach (PropertyInfo property in type.GetProperties(BindingFlags.Public | BindingFlags.Instance).Where(p => p.CanWrite))
                if (!CliMessages.Flags.ContainsKey(property.Name) && !csharpOnly.Contains(property.Name)) undecided.Add($"{type.Name}.{property.Name}");
        Assert.IsEmpty(undecided, "add them to CliMessages.Flags (with their flag) or to the C#-only list of this test: " + string.Join(", ", undecided));
    }

    // ---- the CLI ----

    [TestMethod]
    public void MalformedData_ErrorNamesSkipInvalid_NotTheCSharpOption()
    {
        using var dir = new TempDirectory();
        string data = dir.Combine("pairs.jsonl");
        File.WriteAllText(data, "{\"prompt\": \"p\", \"chosen\": 3, \"rejected\": \"r\"}\n");
        var result = Run(Train("dpo", data, dir.Combine("out")));
        Assert.AreEqual(1, result.Code);
        StringAssert.Contains(result.Error, "pass --skip-invalid to skip such records");
        AssertNoCSharpNames(result.Error);

        string sft = dir.Combine("sft.jsonl");
        WriteLines(sft, Subjects.Select(s => new { prompt = $"Tell me about {s}.\n", completion = "Happy to help!" }));
        var lengths = Run(Train("sft", sft, dir.Combine("out"), "--max-prompt-length", "40"));
        Assert.AreEqual(1, lengths.Code);
        StringAssert.Contains(lengths.Error, "--max-prompt-length must be less than --max-length (32)");
        AssertNoCSharpNames(lengths.Error);
    }

    [TestMethod]
    public void DataFormat_FlagReadsAFileWithAnotherExtension()
    {
        using var dir = new TempDirectory();
        string data = dir.Combine("sft.txt");
        WriteLines(data, Subjects.Select(s => new { prompt = $"Tell me about {s}.\n", completion = "Happy to help!" }));
        var refused = Run(Train("sft", data, dir.Combine("out")));
        Assert.AreEqual(1, refused.Code);
        StringAssert.Contains(refused.Error, "--data-format");
        AssertNoCSharpNames(refused.Error);

        var read = Run(Train("sft", data, dir.Combine("out"), "--data-format", "json"));
        Assert.AreEqual(0, read.Code, read.Error);
        StringAssert.Contains(read.Out, "4 records read, 4 examples");

        var parquet = Run(Train("sft", data, dir.Combine("out2"), "--data-format", "parquet"));
        Assert.AreEqual(1, parquet.Code, "a JSON file read as Parquet is an error, not data");
        StringAssert.Contains(parquet.Error, data);
    }

    [TestMethod]
    public void ColumnFlags_ReadDataWhoseFieldsHaveOtherNames()
    {
        using var dir = new TempDirectory();
        string pairs = dir.Combine("stack.jsonl");
        WriteLines(pairs, Subjects.Select(s => new { question = $"Tell me about {s}.\n", response_j = "Happy to help!", response_k = "No.", prompt = "ignored" }));
        var unmapped = Run(Train("dpo", pairs, dir.Combine("dpo")));
        Assert.AreEqual(1, unmapped.Code, "without the mapping the file has no chosen/rejected");

        string[] mapping = ["--prompt-column", "question", "--chosen-column", "response_j", "--rejected-column", "response_k"];
        var dpo = Run(Train("dpo", pairs, dir.Combine("dpo"), mapping));
        Assert.AreEqual(0, dpo.Code, dpo.Error);
        StringAssert.Contains(dpo.Out, "4 records read, 4 examples");

        // Errors name the file's own field.
        File.AppendAllText(pairs, "{\"question\": \"q\", \"response_j\": \"a\"}\n");
        var missing = Run(Train("dpo", pairs, dir.Combine("dpo2"), mapping));
        Assert.AreEqual(1, missing.Code);
        StringAssert.Contains(missing.Error, $"{pairs}, line 5: field 'response_k': missing");

        string sft = dir.Combine("qa.jsonl");
        WriteLines(sft, Subjects.Select(s => new { question = $"Tell me about {s}.\n", response = "Happy to help!" }));
        var completions = Run(Train("sft", sft, dir.Combine("sft"), "--prompt-column", "question", "--completion-column", "response"));
        Assert.AreEqual(0, completions.Code, completions.Error);

        string chats = dir.Combine("chats.jsonl");
        WriteLines(chats, Subjects.Select(s => new { conversations = new[] { new { role = "user", content = $"Tell me about {s}." }, new { role = "assistant", content = "Happy to help!" } } }));
        var messages = Run(Train("sft", chats, dir.Combine("chat"), "--messages-column", "conversations"));
        Assert.AreEqual(0, messages.Code, messages.Error);
        StringAssert.Contains(messages.Out, "4 records read, 4 examples");

        var evaluate = Run(["evaluate", "--model", Base, "--reference", Base, "--data", dir.Combine("qa.jsonl"), "--prompt-column", "question",
            "--chosen-column", "response", "--rejected-column", "response"]);
        Assert.AreEqual(1, evaluate.Code, "one field cannot be two columns");
        StringAssert.Contains(evaluate.Error, "'response' is named as the column of both");
    }

    [TestMethod]
    public void DataFileOptions_ColumnNames_InCSharp()
    {
        using var dir = new TempDirectory();
        string path = dir.Combine("stack.jsonl");
        WriteLines(path, [new { question = "Q?", response_j = "good", response_k = "bad", prompt = "not this one" }]);
        var pair = PreferenceDataFile.ReadPreferencePairs(path, new PreferenceDataLoadOptions
        {
            PromptColumnName = "question", ChosenColumnName = "response_j", RejectedColumnName = "response_k",
        }).Single();
        Assert.AreEqual(("Q?", "good", "bad", 1L), (pair.Prompt, pair.Chosen, pair.Rejected, pair.Row));

        WriteLines(path, [new { question = "Q?", response = "A." }, new { question = "", response = "A." }]);
        var report = new DataLoadReport();
        var examples = PreferenceDataFile.ReadCompletions(path, new CompletionDataLoadOptions
        {
            PromptColumnName = "question", CompletionColumnName = "response", SkipMalformedRows = true,
        }, report);
        Assert.AreEqual(("Q?", "A."), (examples.Single().Prompt, examples.Single().Completion));
        StringAssert.Contains(report.ToString(), "field 'question': empty", "skip reasons name the file's field");
    }

    [TestMethod]
    public void TruncationMode_KeepsTheChosenEndOfLongPrompts()
    {
        using var dir = new TempDirectory();
        string data = dir.Combine("long.jsonl");
        // 64-byte prompts against --max-prompt-length 8: keep_end trains on "BBBBBBBB", keep_start on "AAAAAAAA".
        WriteLines(data, Enumerable.Range(0, 4).Select(i => new { prompt = new string('A', 32) + new string('B', 32), completion = $"ok {i}" }));
        byte[] Weights(string name, params string[] more)
        {
            var result = Run(Train("sft", data, dir.Combine(name), ["--max-prompt-length", "8", .. more]));
            Assert.AreEqual(0, result.Code, result.Error);
            return File.ReadAllBytes(dir.Combine(name, "model.safetensors"));
        }
        byte[] byDefault = Weights("default");
        byte[] keepEnd = Weights("end", "--truncation-mode", "keep_end");
        byte[] keepStart = Weights("start", "--truncation-mode", "keep_start");
        CollectionAssert.AreEqual(byDefault, keepEnd, "keep_end is the default (as in TRL and the C# options)");
        CollectionAssert.AreNotEqual(keepEnd, keepStart, "keep_start trains on other prompt tokens");
        Assert.AreEqual(1, Run(Train("sft", data, dir.Combine("x"), "--truncation-mode", "middle")).Code);
    }
}
