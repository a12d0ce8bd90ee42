using Microsoft.ML.Data;

namespace Microsoft.ML.Dpo.Data;

/// <summary>Finds and reads the text columns a trainer or transform consumes, with errors that name the column.</summary>
internal static class TextColumns
{
    /// <summary>
    /// Returns the schema columns for <paramref name="names"/>; a missing column is an error that names it (and its role)
    /// and lists the columns present; a column that is not text is an error naming its type.
    /// </summary>
    public static DataViewSchema.Column[] Resolve(DataViewSchema schema, params (string Role, string Name)[] names)
    {
        var columns = new DataViewSchema.Column[names.Length];
        for (int i = 0; i < names.Length; i++)
        {
            var (role, name) = names[i];
            var column = schema.GetColumnOrNull(name)
                ?? throw new ArgumentOutOfRangeException(role, $"The {role} column '{name}' was not found in the input data. Columns present: {Describe(schema)}.");
            if (column.Type is not TextDataViewType)
                throw new ArgumentOutOfRangeException(role, $"The {role} column '{name}' has type {column.Type}; a text (string) column is required.");
            columns[i] = column;
        }
        return columns;
    }

    /// <summary>The same checks against an estimator's <see cref="SchemaShape"/>.</summary>
    public static void Check(SchemaShape shape, params (string Role, string Name)[] names)
    {
        foreach (var (role, name) in names)
        {
            var column = shape.LastOrDefault(c => c.Name == name);
            if (column.Name is null)
                throw new ArgumentOutOfRangeException(role, $"The {role} column '{name}' was not found in the input data. Columns present: {string.Join(", ", shape.Select(c => $"'{c.Name}'"))}.");
            if (column.ItemType is not TextDataViewType || column.Kind != SchemaShape.Column.VectorKind.Scalar)
                throw new ArgumentOutOfRangeException(role, $"The {role} column '{name}' has type {column.ItemType} ({column.Kind}); a scalar text (string) column is required.");
        }
    }

    /// <summary>Reads the given text columns row by row; yields the 1-based row number and the values (null for missing values).</summary>
    public static IEnumerable<(long Row, string[] Values)> Read(IDataView data, DataViewSchema.Column[] columns, CancellationToken cancellation = default)
    {
        using var cursor = data.GetRowCursor(columns);
        var getters = columns.Select(c => cursor.GetGetter<ReadOnlyMemory<char>>(c)).ToArray();
        ReadOnlyMemory<char> value = default;
        long row = 1;
        while (cursor.MoveNext())
        {
            cancellation.ThrowIfCancellationRequested();
            var values = new string[columns.Length];
            for (int i = 0; i < getters.Length; i++)
            {
                getters[i](ref value);
                values[i] = value.ToString();
            }
            yield return (row++, values);
        }
    }

    static string Describe(DataViewSchema schema) =>
        schema.Count == 0 ? "(none)" : string.Join(", ", schema.Where(c => !c.IsHidden).Select(c => $"'{c.Name}' ({c.Type})"));
}
