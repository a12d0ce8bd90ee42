using System.Text.Json;
using MlDpo.Commands;

namespace Microsoft.ML.Dpo.Tests.Cli;

/// <summary><c>mldpo shift</c>: the JSON summary on stdout, the three report files, and bad prompt files on one line.</summary>
[TestClass]
public sealed class ShiftCliTests
{
    static (int Code, string Out, string Error) Run(params string[] args) => CliRunner.Run(args);

    [TestMethod]
    public void Shift_SameModel_AllUnshifted_WritesReportFiles()
    {
        using var tmp = new TempDirectory();
        string model = tmp.Combine("base"), data = tmp.Combine("prompts.jsonl"), report = tmp.Combine("out", "shift.json");
        Assert.AreEqual(0, Run("init", "--preset", "tiny", "--tokenizer", "bytes", "--output", model).Code);
        File.WriteAllLines(data, ["{\"prompt\": \"Tell me about owls.\", \"chosen\": \"x\"}", "", "{\"prompt\": \"Why is the sky blue?\"}"]);
        var (code, stdout, _) = Run("shift", "--base", model, "--aligned", model, "--data", data, "--max-new-tokens", "12", "--output", report);
        Assert.AreEqual(0, code);
        using var json = JsonDocument.Parse(stdout.Trim());
        Assert.AreEqual(1.0, json.RootElement.GetProperty("unshifted").GetDouble());
        Assert.AreEqual(0.0, json.RootElement.GetProperty("marginal").GetDouble());
        Assert.AreEqual(0.0, json.RootElement.GetProperty("shifted").GetDouble());
        Assert.AreEqual(2, json.RootElement.GetProperty("answers").GetInt32());
        using var full = JsonDocument.Parse(File.ReadAllText(report));
        Assert.AreEqual(2, full.RootElement.GetProperty("answers").GetArrayLength());
        Assert.IsTrue(File.Exists(Path.ChangeExtension(report, ".html")));
        var png = File.ReadAllBytes(Path.ChangeExtension(report, ".png"));
        CollectionAssert.AreEqual(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, png.Take(4).ToArray());
    }

    [TestMethod]
    public void Shift_PromptMissing_OneLineErrorWithLineNumber()
    {
        using var tmp = new TempDirectory();
        string data = tmp.Combine("prompts.jsonl");
        File.WriteAllLines(data, ["{\"prompt\": \"ok\"}", "{\"question\": \"no prompt\"}"]);
        var (code, _, error) = Run("shift", "--base", tmp.Path, "--aligned", tmp.Path, "--data", data);
        Assert.AreEqual(1, code);
        StringAssert.Contains(error, "line 2: field \"prompt\"");
        Assert.AreEqual(1, error.Trim().Split('\n').Length);
    }
}
