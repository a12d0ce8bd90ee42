using System.Text.Json;
using Microsoft.ML.Dpo.Data;
using Parquet;
using Parquet.Serialization;

namespace Microsoft.ML.Dpo.Tests.Data;

/// <summary>Writes small data files of each layout; the Parquet row classes mirror the Hugging Face datasets' columns.</summary>
internal static class DataFileTestFiles
{
    public static string WriteJsonLines(string path, params object?[] records)
    {
        File.WriteAllLines(path, records.Select(r => r as string ?? JsonSerializer.Serialize(r)));
        return path;
    }

    /// <summary>Writes Parquet with two rows per row group, so reading crosses row groups.</summary>
    public static string WriteParquet<T>(string path, IEnumerable<T> rows)
    {
        ParquetSerializer.SerializeAsync(rows, path, new ParquetOptions { RowGroupSize = 2 }).GetAwaiter().GetResult();
        return path;
    }

    public static (string Prompt, string Chosen, string Rejected)[] Triples(IEnumerable<PreferencePair> pairs) =>
        pairs.Select(p => (p.Prompt, p.Chosen, p.Rejected)).ToArray();

    public static (string Prompt, string Chosen, string Rejected)[] Triples(IDataView view) =>
        Triples(ExampleReader.ReadPreferencePairs(view, StandardColumns.Prompt, StandardColumns.Chosen, StandardColumns.Rejected, false, new DataPreparationReport()));

    public static Message[] Msgs(params string[] roleContent) =>
        roleContent.Select(s => s.Split(':', 2)).Select(p => new Message { role = p[0], content = p[1] }).ToArray();

#pragma warning disable IDE1006 // lower-case names are the file's column names
    public sealed class StandardRow { public string? prompt { get; set; } public string? chosen { get; set; } public string? rejected { get; set; } }
    public sealed class ImplicitRow { public string? chosen { get; set; } public string? rejected { get; set; } }
    public sealed class Message { public string role { get; set; } = ""; public string content { get; set; } = ""; }
    public sealed class ConversationRow { public List<Message> prompt { get; set; } = []; public List<Message> chosen { get; set; } = []; public List<Message> rejected { get; set; } = []; }
    public sealed class ConversationNoPromptRow { public List<Message> chosen { get; set; } = []; public List<Message> rejected { get; set; } = []; }
    public sealed class AspectRating { public string Rating { get; set; } = ""; public string Rationale { get; set; } = ""; }
    public sealed class Annotations { public AspectRating helpfulness { get; set; } = new(); public AspectRating honesty { get; set; } = new(); }
    public sealed class ScoredCompletionRow { public string model { get; set; } = "m"; public string response { get; set; } = ""; public double overall_score { get; set; } public Annotations annotations { get; set; } = new(); }
    public sealed class ScoredRow { public string source { get; set; } = "s"; public string instruction { get; set; } = ""; public List<ScoredCompletionRow> completions { get; set; } = []; }
    public sealed class PromptCompletionRow { public string? prompt { get; set; } public string? completion { get; set; } }
    public sealed class MessagesRow { public List<Message> messages { get; set; } = []; }
#pragma warning restore IDE1006
}
