using Microsoft.ML.Data;

namespace Microsoft.ML.Dpo.Data;

/// <summary>
/// Builds estimator output shapes. <see cref="SchemaShape.Column"/>'s constructor is internal to ML.NET, so a new column's
/// shape is taken from the output shape of a public estimator that declares exactly that column: a CustomMapping whose
/// output schema definition names it. Nothing is fitted or run; only <c>GetOutputSchema</c> is called.
/// </summary>
internal static class SchemaShapes
{
    sealed class NoInput { }
    sealed class TextOutput { public string Value { get; set; } = ""; }
    sealed class SingleOutput { public float Value { get; set; } }

    /// <summary>Returns <paramref name="input"/> with added scalar columns of type text or Single.</summary>
    public static SchemaShape WithColumns(SchemaShape input, IEnumerable<(string Name, DataViewType Type)> columns)
    {
        var ml = new MLContext();
        var shape = input;
        foreach (var (name, type) in columns)
        {
            if (type is TextDataViewType) shape = Add<TextOutput>(ml, shape, name);
            else if (type == NumberDataViewType.Single) shape = Add<SingleOutput>(ml, shape, name);
            else throw new ArgumentException($"Column '{name}': only text and Single output columns are supported, not {type}.");
        }
        return shape;
    }

    static SchemaShape Add<TOutput>(MLContext ml, SchemaShape shape, string name) where TOutput : class, new()
    {
        var definition = SchemaDefinition.Create(typeof(TOutput));
        definition[0].ColumnName = name;
        return ml.Transforms.CustomMapping<NoInput, TOutput>((_, _) => { }, contractName: null, outputSchemaDefinition: definition)
            .GetOutputSchema(shape);
    }
}
