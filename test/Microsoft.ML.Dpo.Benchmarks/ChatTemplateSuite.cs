using System.Diagnostics;
using System.Text.Json.Nodes;
using Microsoft.ML.Dpo.Tokenization;

namespace Microsoft.ML.Dpo.Benchmarks;

/// <summary>
/// Chat-template rendering with the Jinja interpreter: real templates from the test fixtures (Llama 3.1 with its tool-calling
/// branches, Qwen3, Gemma 3) over a four-message conversation and a tool-calling one; microseconds per parse and per render,
/// with the built-in ChatML renderer for scale.
/// </summary>
internal sealed class ChatTemplateSuite : IBenchmarkSuite
{
    public string Name => "chat-template";
    public string Description => "Jinja chat-template parse and render times (Llama 3.1, Qwen3, Gemma 3), microseconds";

    public JsonObject Run(BenchmarkOptions options)
    {
        string fixtures = FindFixtures();
        var data = JsonNode.Parse(File.ReadAllText(fixtures))!;
        var result = new JsonObject { ["fixtures"] = fixtures };
        int renders = options.Quick ? 500 : 5000;
        foreach (var (family, conversation) in new[] { ("llama3.1", "multi-turn"), ("llama3.1", "tools"), ("qwen3", "multi-turn"), ("gemma3", "multi-turn") })
        {
            var fixture = data["templates"]![family]!;
            string source = (string)fixture["template"]!;
            var tokens = fixture["special_tokens"]!.AsObject().ToDictionary(kv => kv.Key, kv => (string)kv.Value!);
            var conv = data["conversations"]![conversation]!;
            var turns = conv["messages"]!.AsArray().Select(m => new ChatTurn((string)m!["role"]!, (string)m["content"]!,
                m.AsObject().Where(kv => kv.Key is not ("role" or "content")).ToDictionary(kv => kv.Key, kv => (object?)kv.Value?.DeepClone()))).ToArray();
            var renderOptions = new ChatRenderOptions { Tools = conv["tools"]?.DeepClone() };
            var template = ChatTemplate.FromJinja(source, tokens);
            int length = template.Render(turns, true, renderOptions).Length;
            double parse = PerCall(() => ChatTemplate.FromJinja(source, tokens), Math.Max(50, renders / 10), options.Repeats);
            double render = PerCall(() => template.Render(turns, true, renderOptions), renders, options.Repeats);
            Console.WriteLine($"{family} ({source.Length} chars), {conversation} ({turns.Length} messages, {length} chars rendered): parse {parse:F1} µs, render {render:F1} µs");
            result[$"{family}/{conversation}"] = new JsonObject
            {
                ["template_chars"] = source.Length, ["messages"] = turns.Length, ["rendered_chars"] = length,
                ["parse_us"] = Math.Round(parse, 2), ["render_us"] = Math.Round(render, 2),
            };
        }
        var chatml = ChatTemplate.ChatML();
        var plainTurns = new[] { ChatTurn.User("Tell me about owls."), ChatTurn.Assistant("Owls are nocturnal birds of prey."), ChatTurn.User("And their eyes?") };
        double builtIn = PerCall(() => chatml.Render(plainTurns, true), renders, options.Repeats);
        Console.WriteLine($"built-in chatml renderer (3 messages): {builtIn:F2} µs");
        result["builtin_chatml_render_us"] = Math.Round(builtIn, 3);
        return result;
    }

    /// <summary>Median over <paramref name="repeats"/> runs of the mean time of <paramref name="calls"/> calls, in microseconds.</summary>
    static double PerCall(Action action, int calls, int repeats)
    {
        for (int i = 0; i < Math.Min(calls, 200); i++) action();   // warm-up (JIT)
        var times = new List<double>();
        for (int r = 0; r < repeats; r++)
        {
            var watch = Stopwatch.StartNew();
            for (int i = 0; i < calls; i++) action();
            times.Add(watch.Elapsed.TotalMilliseconds * 1000 / calls);
        }
        return Measure.Median(times);
    }

    static string FindFixtures()
    {
        const string relative = "test/Microsoft.ML.Dpo.Tests/Tokenization/ChatTemplateFixtures/chat_templates.json";
        foreach (var start in new[] { AppContext.BaseDirectory, Directory.GetCurrentDirectory() })
            for (var dir = new DirectoryInfo(start); dir != null; dir = dir.Parent)
                if (File.Exists(Path.Combine(dir.FullName, "Dpo.sln")))
                    return Path.Combine(dir.FullName, relative);
        throw new FileNotFoundException($"{relative} not found above {AppContext.BaseDirectory}.");
    }
}
