using System.Text.Json.Nodes;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Tokenization;

namespace Microsoft.ML.Dpo.Tests.Tokenization;

/// <summary>
/// A model's own chat template as data: read from tokenizer_config.json (string or named list) or chat_template.jinja,
/// rendered by the Jinja interpreter as transformers renders it, saved back with the tokenizer, and used to split
/// conversational data into prompt and completion as TRL does.
/// </summary>
[TestClass]
public sealed class ModelChatTemplateTests
{
    // meta-llama/Meta-Llama-3-Instruct's template (the kit's llama3 folder).
    const string Llama3 = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

    static readonly ChatTurn[] s_conversation = { ChatTurn.System("Be brief."), ChatTurn.User("Hi! 🦉"), ChatTurn.Assistant("Hello.") };

    [TestMethod]
    [DataRow("llama3"), DataRow("qwen3"), DataRow("gemma3"), DataRow("mistral"), DataRow("gpt2")]
    public void KitRenderingsAreByteIdentical(string folder)
    {
        string referencePath = SharedFiles.Require("reference/tokenizers/reference.json");
        var reference = JsonNode.Parse(File.ReadAllText(referencePath))!;
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(SharedFiles.SharedRoot, "reference", "tokenizers", folder, "tokenizer_config.json")))!.AsObject();
        var entries = reference["tokenizers"]![folder]!["chat"]!.AsArray();
        if (entries.All(e => e!["error"] != null))
        {
            Assert.IsFalse(config.ContainsKey("chat_template"), "transformers refuses: the folder has no template");
            return;
        }
        var tokens = new Dictionary<string, string>();
        foreach (string key in new[] { "bos_token", "eos_token", "unk_token", "pad_token" })
            if (config[key] is JsonNode t && (t is JsonValue ? (string?)t : (string?)t["content"]) is string value) tokens[key] = value;
        var template = ChatTemplate.FromJinja((string)config["chat_template"]!, tokens, folder);
        Assert.AreEqual(8, entries.Count);
        foreach (var entry in entries)
        {
            var messages = reference["conversations"]![(int)entry!["conversation"]!]!.AsArray()
                .Select(m => new ChatTurn((string)m!["role"]!, (string)m["content"]!)).ToArray();
            bool generationPrompt = (bool)entry["add_generation_prompt"]!;
            Assert.AreEqual((string)entry["text"]!, template.Render(messages, generationPrompt), $"{folder}, conversation {entry["conversation"]}, add_generation_prompt={generationPrompt}");
        }
    }

    [TestMethod]
    public void TokenizerRendersTheModelsOwnTemplateWithItsSpecialTokens()
    {
        using var dir = new TempDirectory();
        TokenizerFixtures.WriteTinyByteLevelBpe(dir.Path);
        WriteConfig(dir.Path, new JsonObject { ["chat_template"] = Llama3, ["bos_token"] = "<|im_start|>", ["eos_token"] = "<|im_end|>" });
        var tok = TextTokenizer.FromDirectory(dir.Path);
        Assert.IsFalse(tok.ChatTemplate.IsBuiltIn);
        Assert.AreEqual("<|im_start|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi! 🦉<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            tok.ChatTemplate.Render(s_conversation[..2], addGenerationPrompt: true));
        StringAssert.Contains(tok.ChatTemplate.ToString(), "tokenizer_config.json");
    }

    [TestMethod]
    public void NamedTemplateListTakesTheDefault()
    {
        using var dir = new TempDirectory();
        TokenizerFixtures.WriteTinyByteLevelBpe(dir.Path);
        WriteConfig(dir.Path, new JsonObject
        {
            ["chat_template"] = new JsonArray(
                new JsonObject { ["name"] = "tool_use", ["template"] = "TOOLS" },
                new JsonObject { ["name"] = "default", ["template"] = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}" }),
        });
        Assert.AreEqual("[user]Hi! 🦉", TextTokenizer.FromDirectory(dir.Path).ChatTemplate.Render(s_conversation[1..2], false));
    }

    [TestMethod]
    public void ChatTemplateJinjaFileWinsAndIsSavedBack()
    {
        using var dir = new TempDirectory();
        TokenizerFixtures.WriteTinyByteLevelBpe(dir.Path);
        WriteConfig(dir.Path, new JsonObject { ["chat_template"] = "CONFIG", ["eos_token"] = "<|im_end|>" });
        File.WriteAllText(Path.Combine(dir.Path, "chat_template.jinja"), "{% for m in messages %}{{ m.role }}: {{ m.content }}{{ eos_token }}\n{% endfor %}");
        var tok = TextTokenizer.FromDirectory(dir.Path);
        Assert.AreEqual("user: Hi! 🦉<|im_end|>\n", tok.ChatTemplate.Render(s_conversation[1..2], false), "transformers prefers chat_template.jinja");

        using var saved = new TempDirectory();
        tok.Save(saved.Path);
        Assert.AreEqual(File.ReadAllText(Path.Combine(dir.Path, "chat_template.jinja")), File.ReadAllText(Path.Combine(saved.Path, "chat_template.jinja")));
        Assert.AreEqual("CONFIG", (string?)JsonNode.Parse(File.ReadAllText(Path.Combine(saved.Path, "tokenizer_config.json")))!["chat_template"]);
        Assert.AreEqual(tok.ChatTemplate.Render(s_conversation, false), TextTokenizer.FromDirectory(saved.Path).ChatTemplate.Render(s_conversation, false));

        using var overridden = new TempDirectory();
        tok.WithChatTemplate(ChatTemplate.ChatML()).Save(overridden.Path);
        Assert.AreEqual(ChatTemplate.ChatML().Render(s_conversation, true), TextTokenizer.FromDirectory(overridden.Path).ChatTemplate.Render(s_conversation, true),
            "a chosen template replaces chat_template.jinja too, or the old file would win on reload");
    }

    [TestMethod]
    public void SplitsAsTrlDoes()
    {
        var template = ChatTemplate.FromJinja(Llama3, new Dictionary<string, string> { ["bos_token"] = "<|begin_of_text|>" });
        var (prompt, completions) = template.SplitForTraining(s_conversation[..2], new[] { new[] { ChatTurn.Assistant(" Hello. ") }, new[] { ChatTurn.Assistant("Go away.") } });
        Assert.IsTrue(prompt.EndsWith("Hi! 🦉<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", StringComparison.Ordinal), prompt);
        CollectionAssert.AreEqual(new[] { "Hello.<|eot_id|>", "Go away.<|eot_id|>" }, completions.ToArray(), "the template trims the reply and closes the turn");

        // DeepSeek-R1-style: the generation prompt opens "<think>\n", which the full rendering lacks: the prompt is cut back to the common prefix.
        var r1 = ChatTemplate.FromJinja("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant><think>\n{% endif %}");
        var (p, c) = r1.SplitForTraining(new[] { ChatTurn.User("q"), ChatTurn.Assistant("a") });
        Assert.AreEqual("<user>q<assistant>", p);
        Assert.AreEqual("a", c);

        // A prompt that ends with an assistant message is continued (continue_final_message), as TRL does.
        var (p2, c2) = template.SplitForTraining(new[] { ChatTurn.User("q"), ChatTurn.Assistant("The answer is") }, new[] { new[] { ChatTurn.Assistant(" 42.") } });
        Assert.IsTrue(p2.EndsWith("<|start_header_id|>assistant<|end_header_id|>\n\nThe answer is", StringComparison.Ordinal), p2);
        Assert.IsTrue(c2[0].StartsWith("<|eot_id|>", StringComparison.Ordinal), c2[0]);
    }

    [TestMethod]
    public void AssistantMaskComesFromGenerationBlocks()
    {
        var template = ChatTemplate.FromJinja("{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' %}{% generation %}{{ m.content }}<end>{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}");
        var rendering = template.RenderWithAssistantMask(s_conversation);
        Assert.IsTrue(rendering.HasGenerationBlocks);
        Assert.AreEqual("Hello.<end>", new string(rendering.Text.Where((_, i) => rendering.AssistantMask[i]).ToArray()));
        Assert.IsFalse(ChatTemplate.ChatML().RenderWithAssistantMask(s_conversation).HasGenerationBlocks);
    }

    [TestMethod]
    public void ToolCallsReachTheTemplate()
    {
        var qwenLike = ChatTemplate.FromJinja("{% for m in messages %}{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}{% else %}{{ m.content }}{% endif %}{% endfor %}{% if tools %}|{{ tools | length }} tools{% endif %}");
        var call = new ChatTurn("assistant", "", new Dictionary<string, object?> { ["tool_calls"] = JsonNode.Parse("""[{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}]""") });
        Assert.AreEqual("""q<tool_call>{"name": "get_weather", "arguments": {"city": "Zürich"}}</tool_call>|1 tools""",
            qwenLike.Render(new[] { ChatTurn.User("q"), call }, false, new ChatRenderOptions { Tools = JsonNode.Parse("""[{"type": "function"}]""") }));
    }

    [TestMethod]
    public void ConversationalPairsSplitWithTheModelsTemplate()
    {
        using var dir = new TempDirectory();
        string file = Path.Combine(dir.Path, "pairs.jsonl");
        File.WriteAllText(file,
            """{"prompt": [{"role": "user", "content": "Tell me about owls."}], "chosen": [{"role": "assistant", "content": "They hunt at night."}], "rejected": [{"role": "assistant", "content": "No."}]}""" + "\n" +
            """{"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}]}""" + "\n");
        var template = ChatTemplate.FromJinja(Llama3, new Dictionary<string, string> { ["bos_token"] = "<|begin_of_text|>" });
        var pairs = PreferenceDataFile.ReadPreferencePairs(file, new PreferenceDataLoadOptions { ChatTemplate = template });
        Assert.AreEqual("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nTell me about owls.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", pairs[0].Prompt);
        Assert.AreEqual("They hunt at night.<|eot_id|>", pairs[0].Chosen);
        Assert.AreEqual("No.<|eot_id|>", pairs[0].Rejected);
        Assert.AreEqual("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", pairs[1].Prompt);
        Assert.AreEqual("Go away.<|eot_id|>", pairs[1].Rejected);

        File.WriteAllText(file, """{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}""" + "\n");
        var sft = PreferenceDataFile.ReadCompletions(file, new CompletionDataLoadOptions { ChatTemplate = template });
        Assert.IsTrue(sft[0].Prompt.EndsWith("Hi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", StringComparison.Ordinal));
        Assert.AreEqual("Hello!<|eot_id|>", sft[0].Completion);

        // A template's raise_exception names the record.
        var alternating = ChatTemplate.FromJinja("{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{{ m.content }}{% endfor %}");
        var e = Assert.ThrowsExactly<InvalidDataException>(() => PreferenceDataFile.ReadCompletions(file, new CompletionDataLoadOptions { ChatTemplate = alternating }));
        StringAssert.Contains(e.Message, "line 1");
        StringAssert.Contains(e.Message, "System role not supported");
    }

    static void WriteConfig(string directory, JsonObject extra)
    {
        string path = Path.Combine(directory, "tokenizer_config.json");
        var config = JsonNode.Parse("{" + TokenizerFixtures.AddedTokensDecoder + "}")!.AsObject();
        foreach (var (k, v) in extra) config[k] = v?.DeepClone();
        File.WriteAllText(path, config.ToJsonString());
    }
}
