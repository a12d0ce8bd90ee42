using Microsoft.ML.Dpo.Tokenization;

namespace Microsoft.ML.Dpo.Tests.Tokenization;

[TestClass]
public sealed class DirectoryTokenizerTests
{
    const string QwenTemplate = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    static TempDirectory QwenLikeDirectory()
    {
        var dir = new TempDirectory();
        TokenizerFixtures.WriteTinyByteLevelBpe(dir.Path);
        File.WriteAllText(dir.Combine("tokenizer_config.json"), $$"""
            {
              "add_prefix_space": false,
              {{TokenizerFixtures.AddedTokensDecoder}},
              "bos_token": null,
              "chat_template": {{System.Text.Json.JsonSerializer.Serialize(QwenTemplate)}},
              "eos_token": "<|im_end|>",
              "pad_token": {"content": "<|endoftext|>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false},
              "tokenizer_class": "Qwen2Tokenizer"
            }
            """);
        File.WriteAllText(dir.Combine("generation_config.json"), """{"bos_token_id": 265, "eos_token_id": [267, 265], "pad_token_id": 265}""");
        File.WriteAllText(dir.Combine("config.json"), """{"bos_token_id": 265, "eos_token_id": 265, "vocab_size": 300}""");
        return dir;
    }

    [TestMethod]
    public void Qwen2TokenizersNormalizeToNfcOthersDoNot()
    {
        const string composed = "caf\u00e9", decomposed = "cafe\u0301";
        using var qwen = QwenLikeDirectory();
        var qwenTokenizer = TextTokenizer.FromDirectory(qwen.Path);
        CollectionAssert.AreEqual(qwenTokenizer.Encode(composed).ToArray(), qwenTokenizer.Encode(decomposed).ToArray());

        using var plain = new TempDirectory();
        TokenizerFixtures.WriteTinyByteLevelBpe(plain.Path);   // no tokenizer_class: GPT-2 style, no normalizer
        var plainTokenizer = TextTokenizer.FromDirectory(plain.Path);
        CollectionAssert.AreNotEqual(plainTokenizer.Encode(composed).ToArray(), plainTokenizer.Encode(decomposed).ToArray());

        // A tokenizer.json comes first, as in Hugging Face; one without a model is an error naming the file.
        File.WriteAllText(plain.Combine("tokenizer.json"), """{"normalizer": {"type": "Sequence", "normalizers": [{"type": "NFC"}]}, "pre_tokenizer": {"type": "ByteLevel"}}""");
        var e = Assert.ThrowsExactly<InvalidDataException>(() => TextTokenizer.FromDirectory(plain.Path));
        StringAssert.Contains(e.Message, "tokenizer.json: no \"model\"");
    }

    [TestMethod]
    public void ByteLevelBpeWithAddedTokensAndQwenConfig()
    {
        using var dir = QwenLikeDirectory();
        var tok = TextTokenizer.FromDirectory(dir.Path);

        Assert.AreEqual("vocab.json + merges.txt", tok.Format);
        CollectionAssert.AreEqual(new[] { 259, 264 }, tok.Encode("hello world").ToArray());
        CollectionAssert.AreEqual(new[] { 266, 117, 115, 101, 114, 10, 104, 105, 267 }, tok.Encode("<|im_start|>user\nhi<|im_end|>").ToArray(),
            "added tokens in text are single ids; the rest is bytes");
        Assert.AreEqual("user\nhi", tok.Decode(new[] { 266, 117, 115, 101, 114, 10, 104, 105, 267 }));
        Assert.AreEqual("<|im_start|>user\nhi<|im_end|>", tok.Decode(new[] { 266, 117, 115, 101, 114, 10, 104, 105, 267 }, skipSpecialTokens: false));
        Assert.AreEqual("héllo 🤗", tok.Decode(tok.Encode("héllo 🤗")));

        Assert.IsNull(tok.BosTokenId, "bos_token: null in tokenizer_config.json wins over config.json's bos_token_id (as in Qwen2)");
        Assert.IsNull(tok.BosToken);
        CollectionAssert.AreEqual(tok.Encode("hi").ToArray(), tok.Encode("hi", addSpecialTokens: true).ToArray(), "no BOS: special tokens add nothing");
        Assert.AreEqual(267, tok.EosTokenId);
        Assert.AreEqual("<|im_end|>", tok.EosToken);
        CollectionAssert.AreEqual(new[] { 267, 265 }, tok.EosTokenIds.ToArray());
        Assert.IsTrue(tok.HasPadToken);
        Assert.AreEqual(265, tok.PadTokenId);
        Assert.AreEqual("<|endoftext|>", tok.PadToken);
        Assert.AreEqual(268, tok.VocabularySize, "largest id (267) + 1; the model's vocab_size may be larger");
        Assert.IsFalse(tok.AddBosByDefault);

        Assert.AreEqual("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
            tok.ChatTemplate.Render(new[] { ChatTurn.User("hi") }, addGenerationPrompt: true));
    }

    [TestMethod]
    public void SavedDirectoryLoadsBackTheSame()
    {
        using var dir = QwenLikeDirectory();
        var tok = TextTokenizer.FromDirectory(dir.Path);
        using var saved = new TempDirectory();
        tok.Save(saved.Path);
        CollectionAssert.AreEqual(File.ReadAllBytes(dir.Combine("vocab.json")), File.ReadAllBytes(saved.Combine("vocab.json")));
        Assert.IsFalse(File.Exists(saved.Combine("config.json")), "config.json belongs to the model, not the tokenizer");
        var back = TextTokenizer.FromDirectory(saved.Path);
        string text = "<|im_start|>user\nhello world<|im_end|>";
        CollectionAssert.AreEqual(tok.Encode(text).ToArray(), back.Encode(text).ToArray());
        Assert.AreEqual(tok.EosTokenId, back.EosTokenId);
        Assert.AreEqual(tok.PadTokenId, back.PadTokenId);
        Assert.AreEqual(tok.ChatTemplate.Render(new[] { ChatTurn.User("x") }, true), back.ChatTemplate.Render(new[] { ChatTurn.User("x") }, true));

        using var overridden = new TempDirectory();
        tok.WithChatTemplate(ChatTemplate.Zephyr("<|im_end|>")).Save(overridden.Path);
        var reloaded = TextTokenizer.FromDirectory(overridden.Path).ChatTemplate;
        Assert.AreEqual(ChatTemplate.Zephyr("<|im_end|>").Jinja, reloaded.Jinja, "an overridden template is written as Jinja and read back");
        var turns = new[] { ChatTurn.System("s"), ChatTurn.User("u"), ChatTurn.Assistant("a") };
        Assert.AreEqual(ChatTemplate.Zephyr("<|im_end|>").Render(turns, true), reloaded.Render(turns, true), "and renders as the built-in did");
    }

    [TestMethod]
    public void SpecialTokensAsStringObjectOrIdList()
    {
        using var dir = new TempDirectory();
        TokenizerFixtures.WriteTinyByteLevelBpe(dir.Path);

        // Only config.json: ids, as a list.
        File.WriteAllText(dir.Combine("config.json"), """{"bos_token_id": 104, "eos_token_id": [257, 258]}""");
        var fromIds = TextTokenizer.FromDirectory(dir.Path);
        Assert.AreEqual(104, fromIds.BosTokenId);
        Assert.AreEqual("h", fromIds.BosToken);
        Assert.AreEqual(257, fromIds.EosTokenId);
        CollectionAssert.AreEqual(new[] { 257, 258 }, fromIds.EosTokenIds.ToArray());
        Assert.IsFalse(fromIds.HasPadToken);
        Assert.AreEqual(257, fromIds.PadTokenId, "no pad: falls back to EOS");

        // special_tokens_map.json as strings, then tokenizer_config.json as objects taking precedence.
        File.WriteAllText(dir.Combine("special_tokens_map.json"), """{"bos_token": "he", "eos_token": "hello"}""");
        var fromMap = TextTokenizer.FromDirectory(dir.Path);
        Assert.AreEqual(256, fromMap.BosTokenId);
        Assert.AreEqual(259, fromMap.EosTokenId);
        CollectionAssert.AreEqual(new[] { 259, 257, 258 }, fromMap.EosTokenIds.ToArray());

        File.WriteAllText(dir.Combine("tokenizer_config.json"), """{"eos_token": {"content": "Ġworld", "special": true}, "pad_token": "ll"}""");
        var fromConfig = TextTokenizer.FromDirectory(dir.Path);
        Assert.AreEqual(264, fromConfig.EosTokenId);
        Assert.AreEqual(256, fromConfig.BosTokenId, "bos still from special_tokens_map.json");
        Assert.AreEqual(257, fromConfig.PadTokenId);
    }

    [TestMethod]
    public void SentencePieceModel()
    {
        using var dir = new TempDirectory();
        TokenizerFixtures.WriteTinySentencePiece(dir.Combine("tokenizer.model"));
        File.WriteAllText(dir.Combine("tokenizer_config.json"), """
            {
              "add_bos_token": true, "add_eos_token": false,
              "added_tokens_decoder": {
                "0": {"content": "<unk>", "special": true}, "1": {"content": "<s>", "special": true}, "2": {"content": "</s>", "special": true}
              },
              "bos_token": {"content": "<s>"}, "eos_token": {"content": "</s>"}, "pad_token": null, "unk_token": "<unk>",
              "chat_template": "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
            }
            """);
        var tok = TextTokenizer.FromDirectory(dir.Path);

        Assert.AreEqual("tokenizer.model", tok.Format);
        CollectionAssert.AreEqual(new[] { 271, 276 }, tok.Encode("hello world").ToArray(), "dummy prefix: '▁hello', '▁world'");
        CollectionAssert.AreEqual(new[] { 1, 271, 276 }, tok.Encode("hello world", addSpecialTokens: true).ToArray());
        CollectionAssert.AreEqual(new[] { 271, 259, 3 + 0xC3, 3 + 0xA9 }, tok.Encode("hello é").ToArray(), "byte fallback for 'é'");
        Assert.AreEqual("hello é", tok.Decode(tok.Encode("hello é")));
        Assert.AreEqual("hello world", tok.Decode(new[] { 1, 271, 276, 2 }));
        var withEos = tok.Encode("hello</s>");
        Assert.AreEqual(2, withEos[^1], "'</s>' in text is the EOS id");
        Assert.AreEqual(1, withEos.Count(id => id == 2));

        Assert.AreEqual(1, tok.BosTokenId);
        Assert.AreEqual(2, tok.EosTokenId);
        Assert.IsFalse(tok.HasPadToken);
        Assert.AreEqual(2, tok.PadTokenId);
        Assert.IsTrue(tok.AddBosByDefault);
        Assert.AreEqual(277, tok.VocabularySize);
        var zephyrTurns = new[] { ChatTurn.System("s"), ChatTurn.User("u"), ChatTurn.Assistant("a") };
        Assert.AreEqual(ChatTemplate.Zephyr("</s>").Render(zephyrTurns, true), tok.ChatTemplate.Render(zephyrTurns, true), "TinyLlama-Chat uses Zephyr's template");

        using var saved = new TempDirectory();
        tok.Save(saved.Path);
        CollectionAssert.AreEqual(File.ReadAllBytes(dir.Combine("tokenizer.model")), File.ReadAllBytes(saved.Combine("tokenizer.model")));
        CollectionAssert.AreEqual(tok.Encode("hello é world").ToArray(), TextTokenizer.FromDirectory(saved.Path).Encode("hello é world").ToArray());
    }

    [TestMethod]
    public void UnsupportedChatTemplateFailsOnlyWhenUsedAndCanBeChosenByName()
    {
        using var dir = new TempDirectory();
        TokenizerFixtures.WriteTinyByteLevelBpe(dir.Path);
        File.WriteAllText(dir.Combine("tokenizer_config.json"), """{"chat_template": "{% for m in messages %}\n{% include 'turn.jinja' %}{% endfor %}"}""");
        var tok = TextTokenizer.FromDirectory(dir.Path);
        CollectionAssert.AreEqual(new[] { 259 }, tok.Encode("hello").ToArray(), "tokenization works without a usable template");
        var e = Assert.ThrowsExactly<NotSupportedException>(() => tok.ChatTemplate);
        StringAssert.Contains(e.Message, "tokenizer_config.json");
        StringAssert.Contains(e.Message, "unsupported tag 'include'");
        StringAssert.Contains(e.Message, "line 2, column 4");
        StringAssert.Contains(e.Message, "ChatTemplateName");
        StringAssert.Contains(e.Message, "chatml");
        Assert.AreEqual("chatml", TextTokenizer.FromDirectory(dir.Path, chatTemplateName: "ChatML").ChatTemplate.Name);
        Assert.AreEqual("llama2", tok.WithChatTemplate(ChatTemplate.Llama2()).ChatTemplate.Name);
    }

    [TestMethod]
    public void EmptyDirectoryListsWhatWasLookedFor()
    {
        using var dir = new TempDirectory();
        var e = Assert.ThrowsExactly<FileNotFoundException>(() => TextTokenizer.FromDirectory(dir.Path));
        foreach (string name in new[] { "tokenizer.model", "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "config.json", dir.Path })
            StringAssert.Contains(e.Message, name);

        File.WriteAllText(dir.Combine("vocab.json"), "{}");
        File.WriteAllText(dir.Combine("config.json"), "{}");
        var e2 = Assert.ThrowsExactly<FileNotFoundException>(() => TextTokenizer.FromDirectory(dir.Path));
        StringAssert.Contains(e2.Message, "vocab.json without merges.txt");

        Assert.ThrowsExactly<DirectoryNotFoundException>(() => TextTokenizer.FromDirectory(dir.Combine("missing")));
    }

    [TestMethod]
    public void MalformedFilesAreNamed()
    {
        using var dir = new TempDirectory();
        TokenizerFixtures.WriteTinyByteLevelBpe(dir.Path);

        File.WriteAllText(dir.Combine("config.json"), """{"eos_token_id": "two"}""");
        var e = Assert.ThrowsExactly<InvalidDataException>(() => TextTokenizer.FromDirectory(dir.Path));
        StringAssert.Contains(e.Message, Path.Combine(dir.Path, "config.json"));
        StringAssert.Contains(e.Message, "eos_token_id");
        File.Delete(dir.Combine("config.json"));

        File.WriteAllText(dir.Combine("tokenizer_config.json"), """{"eos_token": "</s>"}""");
        e = Assert.ThrowsExactly<InvalidDataException>(() => TextTokenizer.FromDirectory(dir.Path));
        StringAssert.Contains(e.Message, "tokenizer_config.json");
        StringAssert.Contains(e.Message, "'</s>' is not in the vocabulary");

        File.WriteAllText(dir.Combine("tokenizer_config.json"), """{"eos_token": 5}""");
        e = Assert.ThrowsExactly<InvalidDataException>(() => TextTokenizer.FromDirectory(dir.Path));
        StringAssert.Contains(e.Message, "eos_token");

        File.WriteAllText(dir.Combine("tokenizer_config.json"), "{ not json");
        e = Assert.ThrowsExactly<InvalidDataException>(() => TextTokenizer.FromDirectory(dir.Path));
        StringAssert.Contains(e.Message, Path.Combine(dir.Path, "tokenizer_config.json"));
        File.Delete(dir.Combine("tokenizer_config.json"));

        File.AppendAllText(dir.Combine("merges.txt"), "a b c\n");
        e = Assert.ThrowsExactly<InvalidDataException>(() => TextTokenizer.FromDirectory(dir.Path));
        StringAssert.Contains(e.Message, "merges.txt");
        StringAssert.Contains(e.Message, "line 11");

        using var sp = new TempDirectory();
        File.WriteAllBytes(sp.Combine("tokenizer.model"), new byte[] { 1, 2, 3, 4, 5 });
        e = Assert.ThrowsExactly<InvalidDataException>(() => TextTokenizer.FromDirectory(sp.Path));
        StringAssert.Contains(e.Message, "tokenizer.model");
    }
}
