using Microsoft.ML.Data;

namespace Microsoft.ML.Dpo.Data;

/// <summary>An output column computed from text input columns of the same row (a response, a log-probability, a reward).</summary>
/// <param name="Name">The output column name.</param>
/// <param name="Type">Its type: <see cref="TextDataViewType"/> (string) or <see cref="NumberDataViewType.Single"/> (float).</param>
/// <param name="Inputs">The text columns the value is computed from.</param>
/// <param name="Compute">Computes the value (a string or a float) from the input values, in <paramref name="Inputs"/>' order.</param>
internal sealed record ComputedColumn(string Name, DataViewType Type, string[] Inputs, Func<string[], object> Compute);

/// <summary>
/// Adds computed columns to rows, lazily: a value is computed only when its getter is called, once per row.
/// Serves both <see cref="ITransformer.Transform"/> (through <see cref="ComputedColumnsDataView"/>) and
/// <see cref="ITransformer.GetRowToRowMapper"/> (and so ML.NET's PredictionEngine).
/// </summary>
internal sealed class ComputedColumnsMapper : IRowToRowMapper
{
    readonly ComputedColumn[] computed;
    readonly int[][] inputIndices;

    public ComputedColumnsMapper(DataViewSchema inputSchema, IReadOnlyList<ComputedColumn> columns)
    {
        InputSchema = inputSchema;
        computed = columns.ToArray();
        inputIndices = computed.Select(c => TextColumns.Resolve(inputSchema, c.Inputs.Select(n => ("input", n)).ToArray()).Select(x => x.Index).ToArray()).ToArray();
        var builder = new DataViewSchema.Builder();
        builder.AddColumns(inputSchema);
        foreach (var c in computed) builder.AddColumn(c.Name, c.Type);
        OutputSchema = builder.ToSchema();
    }

    public DataViewSchema InputSchema { get; }
    public DataViewSchema OutputSchema { get; }

    /// <summary>The input columns needed to produce <paramref name="dependingColumns"/> of the output.</summary>
    public IEnumerable<DataViewSchema.Column> GetDependencies(IEnumerable<DataViewSchema.Column> dependingColumns)
    {
        var needed = new HashSet<int>();
        foreach (var column in dependingColumns)
        {
            if (column.Index < InputSchema.Count) needed.Add(column.Index);
            else needed.UnionWith(inputIndices[column.Index - InputSchema.Count]);
        }
        return needed.OrderBy(i => i).Select(i => InputSchema[i]);
    }

    public DataViewRow GetRow(DataViewRow input, IEnumerable<DataViewSchema.Column> activeColumns) =>
        new MappedRow(this, input, new HashSet<int>(activeColumns.Select(c => c.Index)));

    internal Delegate CreateGetter(DataViewRow input, int outputIndex)
    {
        if (outputIndex < InputSchema.Count)
            return GetInputGetter(input, InputSchema[outputIndex]);
        int k = outputIndex - InputSchema.Count;
        ComputedColumn column = computed[k];
        var getters = inputIndices[k].Select(i => input.GetGetter<ReadOnlyMemory<char>>(InputSchema[i])).ToArray();
        long cachedPosition = -1;
        object? cached = null;
        object Value()
        {
            if (cachedPosition != input.Position || cached is null)
            {
                var values = new string[getters.Length];
                ReadOnlyMemory<char> text = default;
                for (int i = 0; i < getters.Length; i++) { getters[i](ref text); values[i] = text.ToString(); }
                cached = column.Compute(values);
                cachedPosition = input.Position;
            }
            return cached;
        }
        if (column.Type is TextDataViewType)
            return new ValueGetter<ReadOnlyMemory<char>>((ref ReadOnlyMemory<char> v) => v = ((string)Value()).AsMemory());
        return new ValueGetter<float>((ref float v) => v = (float)Value());
    }

    static Delegate GetInputGetter(DataViewRow input, DataViewSchema.Column column)
    {
        var method = typeof(DataViewRow).GetMethod(nameof(DataViewRow.GetGetter))!.MakeGenericMethod(column.Type.RawType);
        return (Delegate)method.Invoke(input, new object[] { column })!;
    }

    /// <summary>A row of the output schema over a row of the input.</summary>
    sealed class MappedRow(ComputedColumnsMapper mapper, DataViewRow input, HashSet<int> active) : DataViewRow
    {
        readonly Dictionary<int, Delegate> getters = new();
        public override long Position => input.Position;
        public override long Batch => input.Batch;
        public override DataViewSchema Schema => mapper.OutputSchema;
        public override ValueGetter<DataViewRowId> GetIdGetter() => input.GetIdGetter();
        public override bool IsColumnActive(DataViewSchema.Column column) => active.Contains(column.Index);
        public override ValueGetter<TValue> GetGetter<TValue>(DataViewSchema.Column column) => MappedGetters.Get<TValue>(mapper, input, getters, column);
        protected override void Dispose(bool disposing) { if (disposing) input.Dispose(); base.Dispose(disposing); }
    }

    /// <summary>A cursor of the output schema over a cursor of the input.</summary>
    internal sealed class MappedCursor(ComputedColumnsMapper mapper, DataViewRowCursor input, HashSet<int> active) : DataViewRowCursor
    {
        readonly Dictionary<int, Delegate> getters = new();
        public override long Position => input.Position;
        public override long Batch => input.Batch;
        public override DataViewSchema Schema => mapper.OutputSchema;
        public override bool MoveNext() => input.MoveNext();
        public override ValueGetter<DataViewRowId> GetIdGetter() => input.GetIdGetter();
        public override bool IsColumnActive(DataViewSchema.Column column) => active.Contains(column.Index);
        public override ValueGetter<TValue> GetGetter<TValue>(DataViewSchema.Column column) => MappedGetters.Get<TValue>(mapper, input, getters, column);
        protected override void Dispose(bool disposing) { if (disposing) input.Dispose(); base.Dispose(disposing); }
    }

    static class MappedGetters
    {
        public static ValueGetter<TValue> Get<TValue>(ComputedColumnsMapper mapper, DataViewRow input, Dictionary<int, Delegate> cache, DataViewSchema.Column column)
        {
            if (!cache.TryGetValue(column.Index, out var getter))
                cache[column.Index] = getter = mapper.CreateGetter(input, column.Index);
            return getter as ValueGetter<TValue>
                ?? throw new InvalidOperationException($"Column '{column.Name}' has type {column.Type}; a getter of {typeof(TValue).Name} was requested.");
        }
    }
}

/// <summary>The lazily computed output of a transform built on <see cref="ComputedColumnsMapper"/>.</summary>
internal sealed class ComputedColumnsDataView(IDataView input, ComputedColumnsMapper mapper) : IDataView
{
    public bool CanShuffle => input.CanShuffle;
    public DataViewSchema Schema => mapper.OutputSchema;
    public long? GetRowCount() => input.GetRowCount();

    public DataViewRowCursor GetRowCursor(IEnumerable<DataViewSchema.Column> columnsNeeded, Random? rand = null)
    {
        var active = columnsNeeded.ToList();
        var inputCursor = input.GetRowCursor(mapper.GetDependencies(active), rand);
        return new ComputedColumnsMapper.MappedCursor(mapper, inputCursor, new HashSet<int>(active.Select(c => c.Index)));
    }

    public DataViewRowCursor[] GetRowCursorSet(IEnumerable<DataViewSchema.Column> columnsNeeded, int n, Random? rand = null) =>
        [GetRowCursor(columnsNeeded, rand)];
}
