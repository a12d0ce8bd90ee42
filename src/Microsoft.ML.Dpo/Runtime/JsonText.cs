using System.Text.Json;
using System.Text.Json.Nodes;

namespace Microsoft.ML.Dpo.Runtime;

/// <summary>
/// Forces the lazy parts of System.Text.Json up front: members of a parsed <see cref="JsonObject"/> are materialized on first use
/// (a duplicate key throws <see cref="ArgumentException"/> there), and a string holding an escaped unpaired surrogate
/// (<c>"\ud800"</c>) or a name that is not valid text throws <see cref="InvalidOperationException"/> only when read. Reading every
/// name and string once right after parsing lets a file reader turn those into its own one-line error naming the file.
/// </summary>
internal static class JsonText
{
    /// <summary>Reads every member name and string of <paramref name="node"/>.</summary>
    /// <exception cref="ArgumentException">An object has a key twice.</exception>
    /// <exception cref="InvalidOperationException">A name or string is not valid text.</exception>
    public static void ReadAllStrings(JsonNode? node)
    {
        switch (node)
        {
            case JsonObject o:
                foreach (var (_, value) in o) ReadAllStrings(value);
                break;
            case JsonArray a:
                foreach (var item in a) ReadAllStrings(item);
                break;
            case JsonValue v when v.GetValueKind() == JsonValueKind.String:
                _ = v.GetValue<string>();
                break;
        }
    }

    /// <summary>Reads every member name and string of <paramref name="element"/>.</summary>
    /// <exception cref="InvalidOperationException">A name or string is not valid text.</exception>
    public static void ReadAllStrings(JsonElement element)
    {
        switch (element.ValueKind)
        {
            case JsonValueKind.Object:
                foreach (var p in element.EnumerateObject())
                {
                    _ = p.Name;
                    ReadAllStrings(p.Value);
                }
                break;
            case JsonValueKind.Array:
                foreach (var item in element.EnumerateArray()) ReadAllStrings(item);
                break;
            case JsonValueKind.String:
                _ = element.GetString();
                break;
        }
    }
}
