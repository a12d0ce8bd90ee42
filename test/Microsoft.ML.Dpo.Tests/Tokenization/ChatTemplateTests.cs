using Microsoft.ML.Dpo.Tokenization;

namespace Microsoft.ML.Dpo.Tests.Tokenization;

[TestClass]
public sealed class ChatTemplateTests
{
    static readonly ChatTurn[] s_conversation =
    {
        ChatTurn.System("You are kind."),
        ChatTurn.User("Hi"),
        ChatTurn.Assistant("Hello!"),
        ChatTurn.User("Again"),
    };

    // Real templates as they appear in tokenizer_config.json (after JSON unescaping).
    const string Qwen2Instruct = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    const string SmolLMInstruct = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    const string Llama2Chat = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";
    const string ZephyrBeta = "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";
    const string Llama3 = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
    const string Phi3 = "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}";
    const string Mistral = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% endif %}{% endfor %}";

    [TestMethod]
    public void ChatMLRendering()
    {
        Assert.AreEqual(
            "<|im_start|>system\nYou are kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n",
            ChatTemplate.ChatML().Render(s_conversation, addGenerationPrompt: true));
        Assert.AreEqual("<|im_start|>user\nHi<|im_end|>\n", ChatTemplate.ChatML().Render(new[] { ChatTurn.User("Hi") }, false));
        Assert.AreEqual("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n",
            ChatTemplate.ChatML("Be brief.").Render(new[] { ChatTurn.User("Hi") }, false), "default system prompt when none is given");
        Assert.AreEqual("<|im_start|>system\nYou are kind.<|im_end|>\n",
            ChatTemplate.ChatML("Be brief.").Render(new[] { s_conversation[0] }, false), "no default when the conversation has a system message");
    }

    [TestMethod]
    public void Llama2Rendering()
    {
        Assert.AreEqual(
            "<s>[INST] <<SYS>>\nYou are kind.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] Again [/INST]",
            ChatTemplate.Llama2().Render(s_conversation, addGenerationPrompt: true));
        Assert.AreEqual("<s>[INST] Hi [/INST] Hello! </s>",
            ChatTemplate.Llama2().Render(new[] { ChatTurn.User("  Hi "), ChatTurn.Assistant(" Hello! \n") }, false), "contents are stripped");
        var e = Assert.ThrowsExactly<ArgumentException>(() => ChatTemplate.Llama2().Render(new[] { ChatTurn.User("a"), ChatTurn.User("b") }, false));
        StringAssert.Contains(e.Message, "alternate");
    }

    [TestMethod]
    public void ZephyrRendering()
    {
        Assert.AreEqual(
            "<|system|>\nYou are kind.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello!</s>\n<|user|>\nAgain</s>\n<|assistant|>\n",
            ChatTemplate.Zephyr().Render(s_conversation, addGenerationPrompt: true));
        Assert.ThrowsExactly<ArgumentException>(() => ChatTemplate.Zephyr().Render(new[] { new ChatTurn("tool", "x") }, false));
    }

    [TestMethod]
    public void PlainRendering()
    {
        Assert.AreEqual("System: You are kind.\nUser: Hi\nAssistant: Hello!\nUser: Again\nAssistant:",
            ChatTemplate.Plain().Render(s_conversation, addGenerationPrompt: true));
    }

    [TestMethod]
    public void SplitForTrainingGivesPromptAndCompletion()
    {
        ChatTurn[] conversation = { ChatTurn.User("Hi"), ChatTurn.Assistant("Hello!") };
        var expected = new Dictionary<string, (string, string)>
        {
            ["chatml"] = ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "Hello!<|im_end|>\n"),
            ["llama2"] = ("<s>[INST] Hi [/INST]", " Hello! </s>"),
            ["zephyr"] = ("<|user|>\nHi</s>\n<|assistant|>\n", "Hello!</s>\n"),
            ["plain"] = ("User: Hi\nAssistant:", " Hello!\n"),
        };
        foreach (string name in ChatTemplate.Names)
        {
            var template = ChatTemplate.FromName(name);
            var (prompt, completion) = template.SplitForTraining(conversation);
            Assert.AreEqual(expected[name], (prompt, completion), name);
            Assert.AreEqual(template.Render(conversation, false), prompt + completion, name);
        }
        Assert.ThrowsExactly<ArgumentException>(() => ChatTemplate.ChatML().SplitForTraining(new[] { ChatTurn.User("Hi") }));
    }

    [TestMethod]
    public void FromNameIsCaseInsensitiveAndListsNamesOnError()
    {
        Assert.AreEqual("chatml", ChatTemplate.FromName("ChatML").Name);
        Assert.AreEqual("llama2", ChatTemplate.FromName("LLAMA-2").Name);
        Assert.AreEqual("zephyr", ChatTemplate.FromName("zephyr").Name);
        Assert.AreEqual("plain", ChatTemplate.FromName("Plain").Name);
        Assert.AreEqual("<|user|>\nx<|eot|>\n", ChatTemplate.FromName("zephyr", eosToken: "<|eot|>").Render(new[] { ChatTurn.User("x") }, false));
        var e = Assert.ThrowsExactly<ArgumentException>(() => ChatTemplate.FromName("vicuna"));
        StringAssert.Contains(e.Message, "vicuna");
        StringAssert.Contains(e.Message, "chatml, llama2, zephyr, plain");
    }

    [TestMethod]
    public void DetectsRealTemplates()
    {
        var qwen = ChatTemplate.Detect(Qwen2Instruct);
        Assert.AreEqual("chatml", qwen.Name);
        Assert.AreEqual("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
            qwen.Render(new[] { ChatTurn.User("Hi") }, true), "Qwen2's default system prompt is carried over");
        var smol = ChatTemplate.Detect(SmolLMInstruct);
        Assert.AreEqual("chatml", smol.Name);
        Assert.AreEqual("<|im_start|>user\nHi<|im_end|>\n", smol.Render(new[] { ChatTurn.User("Hi") }, false));
        Assert.AreEqual("llama2", ChatTemplate.Detect(Llama2Chat).Name);
        Assert.AreEqual("zephyr", ChatTemplate.Detect(ZephyrBeta).Name);
        Assert.AreEqual("plain", ChatTemplate.Detect(null).Name);
        Assert.AreEqual("plain", ChatTemplate.Detect("  ").Name);
        Assert.AreEqual("<s>[INST] Hi [/INST] Yo <eos>",
            ChatTemplate.Detect(Llama2Chat, "<s>", "<eos>").Render(new[] { ChatTurn.User("Hi"), ChatTurn.Assistant("Yo") }, false), "tokens come from the tokenizer");
    }

    [TestMethod]
    public void DetectRejectsOtherFamiliesAndSaysHowToChoose()
    {
        foreach (string template in new[] { Llama3, Phi3, Mistral, "{{ messages }}" })
        {
            var e = Assert.ThrowsExactly<NotSupportedException>(() => ChatTemplate.Detect(template));
            StringAssert.Contains(e.Message, "ChatTemplateName");
            StringAssert.Contains(e.Message, "chatml, llama2, zephyr, plain");
            Assert.IsFalse(ChatTemplate.TryDetect(template, out _));
        }
    }

    [TestMethod]
    public void BuiltInJinjaIsDetectedBackAsTheSameTemplate()
    {
        var conversation = s_conversation;
        foreach (var template in new[] { ChatTemplate.ChatML(), ChatTemplate.ChatML("You are Qwen, created by Alibaba Cloud."), ChatTemplate.Llama2(), ChatTemplate.Zephyr(), ChatTemplate.Plain() })
        {
            var detected = ChatTemplate.Detect(template.Jinja);
            Assert.AreEqual(template.Name, detected.Name);
            Assert.AreEqual(template.Render(conversation, true), detected.Render(conversation, true), template.Name);
        }
    }

    [TestMethod]
    public void RenderedChatMLEncodesMarkersAsSingleIds()
    {
        using var dir = new TempDirectory();
        TokenizerFixtures.WriteTinyByteLevelBpe(dir.Path);
        File.WriteAllText(dir.Combine("tokenizer_config.json"), "{" + TokenizerFixtures.AddedTokensDecoder + ", \"eos_token\": \"<|im_end|>\"}");
        var tok = TextTokenizer.FromDirectory(dir.Path, chatTemplateName: "chatml");
        var (prompt, completion) = tok.ChatTemplate.SplitForTraining(new[] { ChatTurn.User("hello"), ChatTurn.Assistant("hello world") });
        CollectionAssert.AreEqual(new[] { 266, 117, 115, 101, 114, 10, 259, 267, 10, 266, 97, 115, 115, 105, 115, 116, 97, 110, 116, 10 }, tok.Encode(prompt).ToArray());
        CollectionAssert.AreEqual(new[] { 259, 264, 267, 10 }, tok.Encode(completion).ToArray());
    }
}
