using System.Runtime.CompilerServices;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Modeling;

/// <summary>
/// The host-side description of a packed (padding-free) batch: each row of <c>[R, T]</c> holds several whole sequences
/// one after another (then, optionally, padding to T). It is attached to the batch's segment-id attention mask
/// (<see cref="Register"/>), so <see cref="CausalLM.PrepareInputs"/> derives the positions from it without reading the
/// mask back from the device and every attention runs sequence by sequence (<see cref="AttendEach"/>): the cost is
/// Σ L² per layer instead of T², and no [T, T] mask is ever built. A mask without this description (the same segment ids
/// from elsewhere) gives the same results through the dense block-diagonal mask.
/// </summary>
internal sealed class PackedSequences
{
    static readonly ConditionalWeakTable<Tensor, PackedSequences> Attached = new();

    /// <summary>The sequence lengths of each row, in order; a row's tokens after its last sequence are padding.</summary>
    public IReadOnlyList<int[]> Lengths { get; }

    /// <summary>The row length T.</summary>
    public long RowLength { get; }

    /// <summary>The sliding window the attention masks of the prepared marker apply (null: none).</summary>
    public int? Window { get; private init; }

    /// <summary>A packed layout of rows of <paramref name="rowLength"/> tokens holding sequences of <paramref name="lengths"/>.</summary>
    public PackedSequences(IReadOnlyList<int[]> lengths, long rowLength)
    {
        foreach (var row in lengths)
            if (row.Any(l => l <= 0) || row.Sum(l => (long)l) > rowLength)
                throw new ArgumentException($"Packed sequence lengths must be positive and fit a row of {rowLength} tokens.", nameof(lengths));
        (Lengths, RowLength) = (lengths, rowLength);
    }

    /// <summary>Attaches <paramref name="layout"/> to <paramref name="mask"/> (the batch's segment-id attention mask).</summary>
    public static void Register(Tensor mask, PackedSequences layout) => Attached.AddOrUpdate(mask, layout);

    /// <summary>The layout attached to <paramref name="mask"/>, or null (a padded batch).</summary>
    public static PackedSequences? Of(Tensor? mask) => mask is not null && Attached.TryGetValue(mask, out var layout) ? layout : null;

    /// <summary>
    /// Positions <c>[R, T]</c> restarting at 0 for each sequence (padding after the last sequence continues its count, as the
    /// padded path's cumulative sum does) and an empty marker mask <c>[R, 1, T, 0]</c> carrying this layout and the window.
    /// The marker has no elements on purpose: an attention that ignored the layout would fail on its shape rather than
    /// attend across sequences.
    /// </summary>
    public (Tensor Positions, Tensor Mask) Prepare(Device device, int? slidingWindow)
    {
        var positions = new long[Lengths.Count * RowLength];
        for (int r = 0; r < Lengths.Count; r++)
        {
            long o = r * RowLength, p = 0;
            foreach (int length in Lengths[r])
                for (int j = 0; j < length; j++) positions[o + p++] = j;
            for (long last = p > 0 ? positions[o + p - 1] : 0; p < RowLength; p++) positions[o + p] = last;
        }
        var marker = empty(new long[] { Lengths.Count, 1, RowLength, 0 }, ScalarType.Bool, device);
        Register(marker, new PackedSequences(Lengths, RowLength) { Window = slidingWindow });
        return (tensor(positions, new long[] { Lengths.Count, RowLength }, device: device), marker);
    }

    /// <summary>
    /// Attention sequence by sequence: q <c>[R, H, T, D]</c>, k and v <c>[R, H, T, D]</c> (kv heads already repeated) are cut
    /// into each sequence's <c>[1, H, L, D]</c>; <paramref name="attend"/> gets those and the sequence's causal (and
    /// windowed) mask <c>[L, L]</c>, or null when a plain causal mask is meant and <paramref name="attend"/> may use its
    /// own causal kernel. Padding positions get zeros.
    /// </summary>
    public Tensor AttendEach(Tensor q, Tensor k, Tensor v, Func<Tensor, Tensor, Tensor, Tensor?, Tensor> attend)
    {
        if (q.shape[0] != Lengths.Count || q.shape[2] != RowLength || k.shape[2] != RowLength)
            throw new InvalidOperationException("A packed batch cannot be used with a key/value cache.");
        using var scope = NewDisposeScope();
        var rows = new Tensor[Lengths.Count];
        for (int r = 0; r < Lengths.Count; r++)
        {
            var parts = new List<Tensor>();
            long start = 0;
            foreach (int length in Lengths[r])
            {
                Tensor Cut(Tensor x) => x.narrow(0, r, 1).narrow(2, start, length);
                Tensor? mask = null;
                if (Window is int window && length > window)
                {
                    var position = arange(length, ScalarType.Int64, q.device);
                    var distance = position.view(length, 1) - position.view(1, length);   // query − key
                    mask = distance.ge(0).logical_and(distance.lt(window));
                }
                parts.Add(attend(Cut(q), Cut(k), Cut(v), mask));
                start += length;
            }
            if (start < RowLength)
                parts.Add(zeros(new long[] { 1, q.shape[1], RowLength - start, v.shape[3] }, q.dtype, q.device));
            rows[r] = parts.Count == 1 ? parts[0] : cat(parts, 2);
        }
        return (rows.Length == 1 ? rows[0] : cat(rows, 0)).MoveToOuterDisposeScope();
    }

    /// <summary>A causal mask <c>[L, L]</c> (true = attend) for an <see cref="AttendEach"/> callback given null.</summary>
    public static Tensor Causal(long length, Device device)
    {
        var position = arange(length, ScalarType.Int64, device);
        return position.view(1, length).le(position.view(length, 1));
    }
}
