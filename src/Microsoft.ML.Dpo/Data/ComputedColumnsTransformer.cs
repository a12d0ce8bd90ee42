using Microsoft.ML.Data;

namespace Microsoft.ML.Dpo.Data;

/// <summary>
/// The ML.NET plumbing shared by this library's transformers: output columns computed lazily per row from text input
/// columns (<see cref="Transform"/>, <see cref="GetRowToRowMapper"/> and so ML.NET's PredictionEngine), and a clear error
/// from ML.NET's own model saving, which cannot hold them.
/// </summary>
public abstract class ComputedColumnsTransformer : ITransformer
{
    private protected ComputedColumnsTransformer() { }

    /// <summary>The columns this transformer adds.</summary>
    private protected abstract IReadOnlyList<ComputedColumn> ComputedColumns { get; }

    /// <summary>How to save this transformer instead of <c>mlContext.Model.Save</c>.</summary>
    private protected abstract string SaveInstructions { get; }

    ComputedColumnsMapper Mapper(DataViewSchema inputSchema) => new(inputSchema, ComputedColumns);

    /// <inheritdoc />
    public bool IsRowToRowMapper => true;

    /// <inheritdoc />
    public DataViewSchema GetOutputSchema(DataViewSchema inputSchema) => Mapper(inputSchema).OutputSchema;

    /// <inheritdoc />
    public IRowToRowMapper GetRowToRowMapper(DataViewSchema inputSchema) => Mapper(inputSchema);

    /// <inheritdoc />
    public IDataView Transform(IDataView input) => new ComputedColumnsDataView(input, Mapper(input.Schema));

    /// <summary>
    /// ML.NET keeps the members a transformer needs to write itself into <c>mlContext.Model.Save</c>'s zip internal, so this
    /// throws with the way to save it instead.
    /// </summary>
    /// <remarks>
    /// <c>mlContext.Model.Save(model, schema, path)</c> runs <c>File.Create(path)</c> before it calls this method, and
    /// <c>ModelSaveContext</c> has no public member but <c>Dispose</c>: the transformer can reach neither the stream nor the path,
    /// so it cannot stop the file being created (or an existing one at that path being emptied) nor remove it. The message says so.
    /// </remarks>
    void ICanSaveModel.Save(ModelSaveContext ctx) => throw new NotSupportedException(SaveInstructions + " " + IncompleteFileNote);

    /// <summary>What <c>mlContext.Model.Save</c> has done to its file by the time this transformer refuses.</summary>
    internal const string IncompleteFileNote =
        "mlContext.Model.Save created (or emptied) its file before asking this transformer and leaves an incomplete zip there that nothing loads: delete it.";
}
