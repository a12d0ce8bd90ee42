using System.Text.Json;
using System.Text.Json.Nodes;
using MlDpo.Commands;

namespace Microsoft.ML.Dpo.Tests.Cli;

/// <summary><c>mldpo sft</c> and <c>mldpo dpo</c> on conversational files render them with the model's own Jinja template and say so.</summary>
[TestClass]
public sealed class CliChatTemplateTests
{
    const string Llama3 = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

    static (int Code, string Out, string Error) Run(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = CliApp.Run(args, output, error);
        return (code, output.ToString(), error.ToString());
    }

    [TestMethod]
    public void SftAndDpoUseAndPrintTheModelsOwnTemplate()
    {
        using var dir = new TempDirectory();
        var init = Run("init", "--arch", "llama", "--preset", "tiny", "--tokenizer", "bytes", "--seed", "3", "--output", dir.Combine("base"));
        Assert.AreEqual(0, init.Code, init.Error);
        string configPath = dir.Combine("base", "tokenizer_config.json");
        var config = JsonNode.Parse(File.ReadAllText(configPath))!.AsObject();
        config["chat_template"] = Llama3;
        File.WriteAllText(configPath, config.ToJsonString());

        string pairs = dir.Combine("pairs.jsonl"), sft = dir.Combine("sft.jsonl");
        string[] subjects = ["owls", "bats", "moths", "foxes"];
        File.WriteAllLines(pairs, subjects.Select(s => JsonSerializer.Serialize(new
        {
            prompt = new[] { new { role = "user", content = $"Tell me about {s}." } },
            chosen = new[] { new { role = "assistant", content = "Happy to help!" } },
            rejected = new[] { new { role = "assistant", content = "No." } },
        })));
        File.WriteAllLines(sft, subjects.Select(s => JsonSerializer.Serialize(new
        {
            messages = new[] { new { role = "user", content = $"Tell me about {s}." }, new { role = "assistant", content = "Happy to help!" } },
        })));

        var sftRun = Run("sft", "--model", dir.Combine("base"), "--data", sft, "--output", dir.Combine("sft"), "--max-steps", "1", "--max-length", "96");
        Assert.AreEqual(0, sftRun.Code, sftRun.Error);
        StringAssert.Contains(sftRun.Out, "Chat template: the model's own Jinja template (");
        StringAssert.Contains(sftRun.Out, "tokenizer_config.json");
        Assert.AreEqual(Llama3, (string?)JsonNode.Parse(File.ReadAllText(dir.Combine("sft", "tokenizer_config.json")))!["chat_template"], "saved back with the model");

        var dpoRun = Run("dpo", "--model", dir.Combine("sft"), "--data", pairs, "--output", dir.Combine("dpo"), "--max-steps", "1", "--max-length", "96");
        Assert.AreEqual(0, dpoRun.Code, dpoRun.Error);
        StringAssert.Contains(dpoRun.Out, "Chat template: the model's own Jinja template (");

        // A template the interpreter cannot render is one clear error line, naming the file, line and column.
        config["chat_template"] = "{% for m in messages %}{% include 'x' %}{% endfor %}";
        File.WriteAllText(configPath, config.ToJsonString());
        var bad = Run("dpo", "--model", dir.Combine("base"), "--data", pairs, "--output", dir.Combine("bad"), "--max-steps", "1");
        Assert.AreEqual(1, bad.Code);
        StringAssert.Contains(bad.Error, "unsupported tag 'include'");
        StringAssert.Contains(bad.Error, "line 1, column 27");
    }
}
