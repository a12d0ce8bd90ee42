using System.Text.Json.Nodes;
using Microsoft.ML.Dpo.Tokenization.Jinja;

namespace Microsoft.ML.Dpo.Tests.Tokenization;

/// <summary>
/// Real chat templates of 20 model families rendered over conversations with system messages, several turns, an assistant
/// message last, tool calls, unicode and significant white space, with and without the generation prompt (and Qwen3's and
/// SmolLM3's <c>enable_thinking</c> both ways): byte-identical to Hugging Face (ChatTemplateFixtures/chat_templates.json,
/// made by make_fixtures.mjs with @huggingface/jinja and checked by verify_python.py with jinja2 as transformers runs it;
/// where the two disagree — 14 renderings, transformers.js bugs — the file holds Python's result).
/// </summary>
[TestClass]
public sealed class JinjaFixtureTests
{
    static readonly Lazy<JsonObject> s_fixtures = new(() => (JsonObject)JsonNode.Parse(File.ReadAllText(
        Path.Combine(SharedFiles.RepositoryRoot, "test", "Microsoft.ML.Dpo.Tests", "Tokenization", "ChatTemplateFixtures", "chat_templates.json")))!);

    internal static JsonObject Fixtures => s_fixtures.Value;

    /// <summary>The fixed clock the fixtures were rendered at (SmolLM3 prints today's date).</summary>
    internal static DateTime Clock => DateTime.Parse((string)Fixtures["clock"]!, System.Globalization.CultureInfo.InvariantCulture);

    [TestMethod]
    public void FixturesCoverTheFamilies()
    {
        var names = Fixtures["templates"]!.AsObject().Select(kv => kv.Key).ToList();
        foreach (string family in new[] { "llama2", "llama3", "llama3.1", "llama3.2", "mistral-v0.1", "mistral-v0.3", "mixtral", "qwen2.5", "qwen3",
                     "gemma2", "gemma3", "phi3.5", "phi4-mini", "deepseek-v3", "deepseek-r1", "zephyr", "smollm3", "granite3.0" })
            CollectionAssert.Contains(names, family);
        int tools = Fixtures["templates"]!.AsObject().Count(kv => kv.Value!["cases"]!.AsArray().Any(c => (string)c!["conversation"]! == "tools" && c["text"] != null));
        Assert.IsTrue(tools >= 8, $"only {tools} templates render the tool-calling conversation");
    }

    [TestMethod]
    [DataRow("llama2"), DataRow("llama3"), DataRow("llama3.1"), DataRow("llama3.2"), DataRow("mistral-v0.1"), DataRow("mistral-v0.3"), DataRow("mixtral"),
     DataRow("mistral-nemo"), DataRow("qwen2.5"), DataRow("qwen3"), DataRow("gemma2"), DataRow("gemma3"), DataRow("phi3.5"), DataRow("phi4-mini"),
     DataRow("deepseek-v3"), DataRow("deepseek-r1"), DataRow("zephyr"), DataRow("zephyr-gemma"), DataRow("smollm3"), DataRow("granite3.0")]
    public void RendersLikeHuggingFace(string family)
    {
        var fixture = Fixtures["templates"]![family]!.AsObject();
        var template = JinjaTemplate.Parse((string)fixture["template"]!);
        var failures = new List<string>();
        int checkedCases = 0;
        foreach (var c in fixture["cases"]!.AsArray())
        {
            var conversation = Fixtures["conversations"]![(string)c!["conversation"]!]!;
            var variables = new Dictionary<string, object?>
            {
                ["messages"] = conversation["messages"],
                ["tools"] = conversation["tools"],
                ["documents"] = null,
                ["add_generation_prompt"] = (bool)c["add_generation_prompt"]!,
            };
            foreach (var (k, v) in fixture["special_tokens"]!.AsObject()) variables[k] = (string?)v;
            foreach (var (k, v) in c["kwargs"]!.AsObject()) variables[k] = v;
            string label = $"{c["conversation"]} add_generation_prompt={c["add_generation_prompt"]} {c["kwargs"]!.ToJsonString()}";
            checkedCases++;
            try
            {
                string text = template.Render(variables, () => Clock);
                if (c["text"] is null) failures.Add($"{label}: expected the error \"{c["error"]}\", rendered {Show(text)}");
                else if (text != (string)c["text"]!) failures.Add($"{label}:\n  expected {Show((string)c["text"]!)}\n  rendered {Show(text)}");
            }
            catch (JinjaException e)
            {
                if (c["error"] is null) failures.Add($"{label}: {e.Message}");
                else if (e.RaisedByTemplate && !((string)c["error"]!).Contains(e.Reason, StringComparison.Ordinal))
                    failures.Add($"{label}: raised \"{e.Reason}\", expected \"{c["error"]}\"");
            }
        }
        Assert.IsTrue(checkedCases >= 8, $"{family}: only {checkedCases} cases");
        Assert.AreEqual(0, failures.Count, $"{family}: {failures.Count} of {checkedCases} renderings differ:\n" + string.Join("\n", failures));
    }

    static string Show(string s) => System.Text.Json.JsonSerializer.Serialize(s);
}
