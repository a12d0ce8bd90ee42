using Microsoft.ML.Data;

namespace Microsoft.ML.Dpo.Data;

/// <summary>An output column computed from text input columns of the same row (a response, a log-probability, a reward).</summary>
/// <param name="Name">The output column name.</param>
/// <param name="Type">Its type: <see cref="TextDataViewType"/> (string) or <see cref="NumberDataViewType.Single"/> (float).</param>
/// <param name="Inputs">The text columns the value is computed from.</param>
/// <param name="Compute">Computes the value (a string or a float) from the input values, in <paramref name="Inputs"/>' order.</param>
/// <param name="ComputeBatch">Computes the values of several rows at once (null where a row must go through <paramref name="Compute"/>
/// alone); null when the column has no batched form.</param>
/// <param name="BatchSize">How many rows a cursor computes together with <paramref name="ComputeBatch"/>.</param>
internal sealed record ComputedColumn(string Name, DataViewType Type, string[] Inputs, Func<string[], object> Compute,
    Func<IReadOnlyList<string[]>, object?[]>? ComputeBatch = null, int BatchSize = 1);

/// <summary>
/// Adds computed columns to rows, lazily: a value is computed only when its getter is called, once per row.
/// Serves both <see cref="ITransformer.Transform"/> (through <see cref="ComputedColumnsDataView"/>) and
/// <see cref="ITransformer.GetRowToRowMapper"/> (and so ML.NET's PredictionEngine).
/// </summary>
/// <remarks>
/// A column with a batched form is computed a batch at a time by <see cref="ComputedColumnsDataView"/>'s cursors: when the
/// cursor asks for the value of a row that is not computed yet, a second cursor over the same input (reading only that column's
/// inputs) reads that row and the next <see cref="ComputedColumn.BatchSize"/> − 1, and all of them are computed at once; later
/// rows of the batch are then served from memory. Each row's inputs are compared with the main cursor's before a batched value is
/// used, so an input whose cursors disagree on the order falls back to one row at a time. Row mappers (PredictionEngine) and
/// shuffled cursors compute one row at a time.
/// </remarks>
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

    internal Delegate CreateGetter(DataViewRow input, int outputIndex, BatchSource? batches = null)
    {
        if (outputIndex < InputSchema.Count)
            return GetInputGetter(input, InputSchema[outputIndex]);
        int k = outputIndex - InputSchema.Count;
        ComputedColumn column = computed[k];
        var getters = inputIndices[k].Select(i => input.GetGetter<ReadOnlyMemory<char>>(InputSchema[i])).ToArray();
        RowBatches? batched = column.ComputeBatch is not null && column.BatchSize > 1 && batches is not null
            ? batches.For(k, column, inputIndices[k].Select(i => InputSchema[i]).ToArray())
            : null;
        long cachedPosition = -1;
        object? cached = null;
        object Value()
        {
            if (cachedPosition != input.Position || cached is null)
            {
                var values = new string[getters.Length];
                ReadOnlyMemory<char> text = default;
                for (int i = 0; i < getters.Length; i++) { getters[i](ref text); values[i] = text.ToString(); }
                cached = batched?.Get(input.Position, values) ?? column.Compute(values);
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

    /// <summary>
    /// Where a cursor's batched columns read ahead: the input data view, which gives each batched column its own second cursor
    /// (disposed with the main cursor).
    /// </summary>
    internal sealed class BatchSource(IDataView input) : IDisposable
    {
        readonly Dictionary<int, RowBatches> columns = new();

        public RowBatches For(int k, ComputedColumn column, DataViewSchema.Column[] inputs)
        {
            if (!columns.TryGetValue(k, out var batches))
                columns[k] = batches = new RowBatches(input.GetRowCursor(inputs), inputs, column);
            return batches;
        }

        public void Dispose()
        {
            foreach (var batches in columns.Values) batches.Dispose();
            columns.Clear();
        }
    }

    /// <summary>The values of one batched column: the rows of the current batch, computed together.</summary>
    internal sealed class RowBatches(DataViewRowCursor ahead, DataViewSchema.Column[] inputs, ComputedColumn column) : IDisposable
    {
        readonly ValueGetter<ReadOnlyMemory<char>>[] getters = inputs.Select(c => ahead.GetGetter<ReadOnlyMemory<char>>(c)).ToArray();
        readonly Dictionary<long, (string[] Inputs, object? Value)> batch = new();

        /// <summary>Computes the batch starting at <paramref name="position"/> when needed; null when the row must be computed alone.</summary>
        public object? Get(long position, string[] values)
        {
            if (!batch.TryGetValue(position, out var row))
            {
                Fill(position);
                if (!batch.TryGetValue(position, out row)) return null;
            }
            return row.Inputs.SequenceEqual(values) ? row.Value : null;
        }

        void Fill(long position)
        {
            batch.Clear();
            while (ahead.Position < position)
                if (!ahead.MoveNext()) return;
            if (ahead.Position != position) return;
            var positions = new List<long>();
            var rows = new List<string[]>();
            do
            {
                var values = new string[getters.Length];
                ReadOnlyMemory<char> text = default;
                for (int i = 0; i < getters.Length; i++) { getters[i](ref text); values[i] = text.ToString(); }
                positions.Add(ahead.Position);
                rows.Add(values);
            }
            while (rows.Count < column.BatchSize && ahead.MoveNext());
            object?[] results = column.ComputeBatch!(rows);
            for (int i = 0; i < rows.Count; i++) batch[positions[i]] = (rows[i], results[i]);
        }

        public void Dispose() => ahead.Dispose();
    }

    /// <summary>A cursor of the output schema over a cursor of the input; <paramref name="batches"/> serves batched columns.</summary>
    internal sealed class MappedCursor(ComputedColumnsMapper mapper, DataViewRowCursor input, HashSet<int> active, BatchSource? batches = null) : DataViewRowCursor
    {
        readonly Dictionary<int, Delegate> getters = new();
        public override long Position => input.Position;
        public override long Batch => input.Batch;
        public override DataViewSchema Schema => mapper.OutputSchema;
        public override bool MoveNext() => input.MoveNext();
        public override ValueGetter<DataViewRowId> GetIdGetter() => input.GetIdGetter();
        public override bool IsColumnActive(DataViewSchema.Column column) => active.Contains(column.Index);
        public override ValueGetter<TValue> GetGetter<TValue>(DataViewSchema.Column column) => MappedGetters.Get<TValue>(mapper, input, getters, column, batches);
        protected override void Dispose(bool disposing)
        {
            if (disposing) { batches?.Dispose(); input.Dispose(); }
            base.Dispose(disposing);
        }
    }

    static class MappedGetters
    {
        public static ValueGetter<TValue> Get<TValue>(ComputedColumnsMapper mapper, DataViewRow input, Dictionary<int, Delegate> cache, DataViewSchema.Column column,
            BatchSource? batches = null)
        {
            if (!cache.TryGetValue(column.Index, out var getter))
                cache[column.Index] = getter = mapper.CreateGetter(input, column.Index, batches);
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
        // A shuffled cursor's order cannot be repeated by a second cursor: its rows are computed one at a time.
        var batches = rand is null ? new ComputedColumnsMapper.BatchSource(input) : null;
        return new ComputedColumnsMapper.MappedCursor(mapper, inputCursor, new HashSet<int>(active.Select(c => c.Index)), batches);
    }

    public DataViewRowCursor[] GetRowCursorSet(IEnumerable<DataViewSchema.Column> columnsNeeded, int n, Random? rand = null) =>
        [GetRowCursor(columnsNeeded, rand)];
}
