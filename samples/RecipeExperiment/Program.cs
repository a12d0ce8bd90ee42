using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.ML.Dpo;
using Microsoft.ML.Dpo.Generation;
using Microsoft.ML.Dpo.Samples;
using MlDpo.Commands;

// The recipe experiment behind the CLI's defaults: for one style task, preset and seed it runs, through the CLI in process,
//   mldpo init --preset P --tokenizer T --seed S
//   mldpo sft --model base --data sft.jsonl --output sft --epochs E --seed S [SFT flags]
//   mldpo dpo --model sft --data pairs.jsonl --output dpo --epochs E --seed S [DPO flags]      (once per --dpo recipe)
// and scores the SFT and DPO models' greedy answers to the held-out prompts: the share in the preferred style and the
// number of degenerate answers. One JSON line per DPO recipe goes to --results.
//
// dotnet run -c Release --project samples/RecipeExperiment -- --task polite --preset tiny --seed 1 --sft-epochs 10 --dpo-epochs 3 \
//     [--tokenizer bytes] [--sft "--learning-rate 1e-3"] --dpo "defaults=" --dpo "rpo=--rpo-alpha 1" [--work DIR] [--results FILE]
var settings = new Dictionary<string, string>
{
    ["--task"] = "polite", ["--preset"] = "tiny", ["--tokenizer"] = "bytes", ["--seed"] = "1", ["--sft-epochs"] = "10", ["--dpo-epochs"] = "3",
    ["--sft"] = "", ["--work"] = "recipe-work", ["--results"] = "recipe-results.jsonl", ["--sft-name"] = "defaults",
};
var dpoRecipes = new List<(string Name, string Flags)>();
for (int i = 0; i < args.Length; i++)
{
    string key = args[i], value = i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{key} needs a value.");
    if (key == "--dpo")
    {
        int eq = value.IndexOf('=');
        dpoRecipes.Add(eq < 0 ? (value, "") : (value[..eq], value[(eq + 1)..]));
    }
    else if (settings.ContainsKey(key)) settings[key] = value;
    else throw new ArgumentException($"Unknown argument '{key}'.");
}
if (dpoRecipes.Count == 0) dpoRecipes.Add(("defaults", ""));

var task = StyleTask.Named(settings["--task"]);
string seed = settings["--seed"], preset = settings["--preset"], tokenizer = settings["--tokenizer"];
string run = Path.GetFullPath(Path.Combine(settings["--work"], $"{task.Name}-{preset}-{tokenizer}-s{seed}-e{settings["--sft-epochs"]}-{settings["--sft-name"]}"));
Directory.CreateDirectory(run);
string P(string name) => Path.Combine(run, name);

int RunCli(string label, params string[] cliArgs)
{
    var output = new StringWriter();
    var clock = Stopwatch.StartNew();
    int code = CliApp.Run(cliArgs, output, output);
    File.WriteAllText(P(label + ".log"), $"mldpo {string.Join(' ', cliArgs)}\n{output}");
    Console.Error.WriteLine($"  {label}: exit {code}, {clock.Elapsed.TotalSeconds:F0} s");
    if (code != 0) Console.Error.WriteLine(output.ToString());
    return code;
}

string[] Split(string flags) => flags.Split(' ', StringSplitOptions.RemoveEmptyEntries);

(double Preferred, double Dispreferred, int Degenerate, List<string> Answers) Evaluate(string model)
{
    using var lm = LanguageModel.Load(model);
    var prompts = task.HeldOutPrompts();
    var answers = lm.CreateGenerator().Generate(prompts, new GenerationOptions { MaxNewTokens = tokenizer == "bytes" ? 160 : 48 }).ToList();
    var (preferred, dispreferred, degenerate) = task.Score(answers);
    return (preferred, dispreferred, degenerate, answers);
}

JsonNode? LastMetric(string model, string name)
{
    string metrics = Path.Combine(model, "metrics.jsonl");
    if (!File.Exists(metrics)) return null;
    var last = File.ReadLines(metrics).Where(l => l.Contains($"\"{name}\"")).LastOrDefault();
    return last is null ? null : JsonNode.Parse(last)?[name]?.DeepClone();
}

var total = Stopwatch.StartNew();
task.WriteSftData(P("sft.jsonl"));
task.WritePairs(P("pairs.jsonl"));
if (!File.Exists(P("base/config.json")) && RunCli("init", "init", "--preset", preset, "--tokenizer", tokenizer, "--seed", seed, "--output", P("base"), "--force") != 0) return 1;
if (!File.Exists(P("sft/config.json")) &&
    RunCli("sft", ["sft", "--model", P("base"), "--data", P("sft.jsonl"), "--output", P("sft"), "--epochs", settings["--sft-epochs"], "--seed", seed, "--restart", .. Split(settings["--sft"])]) != 0)
    return 1;
var sft = Evaluate(P("sft"));
Console.Error.WriteLine($"  SFT: preferred {sft.Preferred:P0}, dispreferred {sft.Dispreferred:P0}, degenerate {sft.Degenerate}; e.g. {JsonSerializer.Serialize(sft.Answers[0])}");

foreach (var (name, flags) in dpoRecipes)
{
    string output = P($"dpo-{name}-e{settings["--dpo-epochs"]}");
    var clock = Stopwatch.StartNew();
    if (Directory.Exists(output)) Directory.Delete(output, recursive: true);
    int code = RunCli($"dpo-{name}-e{settings["--dpo-epochs"]}", ["dpo", "--model", P("sft"), "--data", P("pairs.jsonl"), "--output", output, "--epochs", settings["--dpo-epochs"],
        "--seed", seed, "--restart", .. Split(flags)]);
    var row = new JsonObject
    {
        ["task"] = task.Name, ["preset"] = preset, ["tokenizer"] = tokenizer, ["seed"] = int.Parse(seed, CultureInfo.InvariantCulture),
        ["sft_epochs"] = int.Parse(settings["--sft-epochs"], CultureInfo.InvariantCulture), ["sft_recipe"] = settings["--sft-name"], ["sft_flags"] = settings["--sft"],
        ["dpo_epochs"] = int.Parse(settings["--dpo-epochs"], CultureInfo.InvariantCulture), ["dpo_recipe"] = name, ["dpo_flags"] = flags,
        ["sft_preferred"] = sft.Preferred, ["sft_dispreferred"] = sft.Dispreferred, ["sft_degenerate"] = sft.Degenerate, ["exit"] = code,
    };
    if (code == 0)
    {
        var dpo = Evaluate(output);
        row["preferred"] = dpo.Preferred;
        row["dispreferred"] = dpo.Dispreferred;
        row["degenerate"] = dpo.Degenerate;
        row["rewards_chosen"] = LastMetric(output, "rewards/chosen");
        row["learning_rate_line"] = File.ReadLines(P($"dpo-{name}-e{settings["--dpo-epochs"]}.log")).FirstOrDefault(l => l.Contains("learning rate", StringComparison.OrdinalIgnoreCase));
        row["samples"] = new JsonArray(dpo.Answers.Take(4).Select(a => (JsonNode)JsonValue.Create(a)!).ToArray());
        row["misses"] = new JsonArray(dpo.Answers.Where(a => task.Classify(a) != StyleVerdict.Preferred).Take(12).Select(a => (JsonNode)JsonValue.Create(a)!).ToArray());
        Console.Error.WriteLine($"  DPO {name}: preferred {dpo.Preferred:P0}, dispreferred {dpo.Dispreferred:P0}, degenerate {dpo.Degenerate}; e.g. {JsonSerializer.Serialize(dpo.Answers[0])} | {JsonSerializer.Serialize(dpo.Answers[1])}");
    }
    row["seconds"] = Math.Round(clock.Elapsed.TotalSeconds);
    File.AppendAllText(settings["--results"], row.ToJsonString() + "\n");
    Directory.Delete(output, recursive: true);
    foreach (var dir in Directory.GetDirectories(run, "*.checkpoints")) if (!dir.EndsWith("sft.checkpoints", StringComparison.Ordinal)) Directory.Delete(dir, recursive: true);
}
Console.Error.WriteLine($"  done in {total.Elapsed.TotalSeconds:F0} s");
return 0;
