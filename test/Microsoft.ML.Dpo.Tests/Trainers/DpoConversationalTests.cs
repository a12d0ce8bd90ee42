using System.Text.Json.Nodes;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Tokenization;
using Microsoft.ML.Dpo.Trainers;
using Microsoft.ML.Dpo.Training;

namespace Microsoft.ML.Dpo.Tests.Trainers;

/// <summary>DPO on conversational data with a model's own Llama-3-style chat template (read from its tokenizer_config.json).</summary>
[TestClass]
public sealed class DpoConversationalTests
{
    // meta-llama/Meta-Llama-3-Instruct's template.
    const string Llama3 = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
    const string GenerationPrompt = "<|start_header_id|>assistant<|end_header_id|>\n\n";

    [TestMethod]
    public void OneStepOnConversationsSplitsRightAfterTheGenerationPrompt()
    {
        using var dir = new TempDirectory();
        using (var created = StylePreferenceTask.CreateBaseModel(dir.Combine("created"))) created.Save(dir.Combine("base"));
        string configPath = Path.Combine(dir.Combine("base"), "tokenizer_config.json");
        var config = JsonNode.Parse(File.ReadAllText(configPath))!.AsObject();
        config["chat_template"] = Llama3;
        File.WriteAllText(configPath, config.ToJsonString());

        string data = dir.Combine("pairs.jsonl");
        File.WriteAllLines(data, new[] { "owls", "bats", "moths", "foxes" }.Select(s =>
            $$"""{"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Tell me about {{s}}."}], "chosen": [{"role": "assistant", "content": "Happy to help!"}], "rejected": [{"role": "assistant", "content": "No."}]}"""));

        using var model = LanguageModel.Load(dir.Combine("base"));
        var template = model.RequireTokenizer().ChatTemplate;
        Assert.IsFalse(template.IsBuiltIn, "the model's own template is used");
        var pairs = PreferenceDataFile.ReadPreferencePairs(data, new PreferenceDataLoadOptions { ChatTemplate = template });
        var first = pairs[0];
        Assert.AreEqual("<|endoftext|><|start_header_id|>system<|end_header_id|>\n\nBe kind.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nTell me about owls.<|eot_id|>" + GenerationPrompt, first.Prompt);
        Assert.AreEqual("Happy to help!<|eot_id|>", first.Chosen);
        Assert.AreEqual("No.<|eot_id|>", first.Rejected);

        // The token boundary the trainer uses: prompt ids end exactly with the generation prompt, completions start with the reply.
        var tokenizer = model.RequireTokenizer();
        model.EncodeExample(first.Prompt, [first.Chosen, first.Rejected], 128, 100, TruncationMode.KeepEnd, out var promptIds, out var completionIds);
        Assert.IsTrue(tokenizer.Decode(promptIds, skipSpecialTokens: false).EndsWith("Tell me about owls.<|eot_id|>" + GenerationPrompt, StringComparison.Ordinal));
        CollectionAssert.AreEqual(tokenizer.Encode(GenerationPrompt).ToArray(), promptIds[^tokenizer.Encode(GenerationPrompt).Count..]);
        Assert.AreEqual("Happy to help!<|eot_id|><|endoftext|>", tokenizer.Decode(completionIds[0], skipSpecialTokens: false), "reply, end of turn, EOS (TRL appends EOS too)");

        var ml = new MLContext(seed: 0);
        using var trained = ml.Alignment().Trainers.Dpo(new DpoTrainer.Options
        {
            BaseModel = model, MaxSteps = 1, BatchSize = 4, LearningRate = 1e-3, MaxLength = 128, MaxPromptLength = 100,
        }).Fit(ml.Data.LoadPreferencePairs(data, new PreferenceDataLoadOptions { ChatTemplate = template }));
        Assert.AreEqual(1, trained.TrainingSummary!.Steps);
        Assert.IsTrue(double.IsFinite(trained.TrainingSummary.FinalMetrics["loss"]));
        Assert.AreEqual(4L, trained.DataReport!.Kept);
    }
}
