using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Modeling;

/// <summary>
/// Per-layer key/value tensors of the tokens a <see cref="CausalLM"/> has already seen, so that incremental decoding
/// computes only the new tokens. Keys and values are kept as <c>[B, Hkv, S, D]</c> (before the grouped-query repeat) in
/// preallocated buffers that grow by doubling, so appending a token copies only that token (not the whole past);
/// they are detached from autograd and from every dispose scope; the cache owns them and frees them on <see cref="Dispose"/>.
/// </summary>
public sealed class KvCache : IDisposable
{
    const long MinimumCapacity = 64;
    readonly Tensor?[] _keys;      // [B, Hkv, capacity, D]
    readonly Tensor?[] _values;
    bool _disposed;

    internal KvCache(int numLayers)
    {
        _keys = new Tensor?[numLayers];
        _values = new Tensor?[numLayers];
    }

    /// <summary>The number of positions held (the past length <c>S</c>, padding included).</summary>
    public int Length { get; private set; }

    /// <summary>The number of layers.</summary>
    public int NumLayers => _keys.Length;

    /// <summary>The batch size of the held tensors, or null while empty.</summary>
    public long? BatchSize => _keys[0]?.shape[0];

    /// <summary>
    /// Appends this step's keys and values <c>[B, Hkv, T, D]</c> of <paramref name="layer"/> and returns all of them
    /// <c>[B, Hkv, S+T, D]</c> (views of the buffers, in the caller's dispose scope). When autograd tracks the new keys or
    /// values, the result is a concatenation instead, so gradients reach them.
    /// </summary>
    internal (Tensor Keys, Tensor Values) Append(int layer, Tensor keys, Tensor values)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        long past = Length, t = keys.shape[2];
        if (_keys[layer] is { } held && (held.shape[0] != keys.shape[0] || held.shape[1] != keys.shape[1] || held.shape[3] != keys.shape[3]))
            throw new ArgumentException(
                $"The cache holds [{string.Join(", ", held.shape)}] keys but this call brings [{string.Join(", ", keys.shape)}]: a cache serves one batch of one model.");
        Store(ref _keys[layer], keys, past);
        Store(ref _values[layer], values, past);
        bool tracked = torch.is_grad_enabled() && (keys.requires_grad || values.requires_grad);
        if (tracked && past > 0)
            return (torch.cat(new[] { _keys[layer]!.narrow(2, 0, past), keys }, 2), torch.cat(new[] { _values[layer]!.narrow(2, 0, past), values }, 2));
        if (tracked) return (keys, values);
        return (_keys[layer]!.narrow(2, 0, past + t), _values[layer]!.narrow(2, 0, past + t));
    }

    /// <summary>Copies <paramref name="now"/> <c>[B, H, T, D]</c> into <paramref name="buffer"/> at <paramref name="past"/>, growing it when full.</summary>
    static void Store(ref Tensor? buffer, Tensor now, long past)
    {
        long t = now.shape[2], needed = past + t;
        using var noGrad = torch.no_grad();
        if (buffer is null || buffer.shape[2] < needed)
        {
            long capacity = Math.Max(needed, Math.Max(MinimumCapacity, 2 * (buffer?.shape[2] ?? 0)));
            var grown = torch.empty(new[] { now.shape[0], now.shape[1], capacity, now.shape[3] }, now.dtype, now.device).DetachFromDisposeScope();
            if (buffer is not null && past > 0)
                using (var oldPart = buffer.narrow(2, 0, past)) using (var newPart = grown.narrow(2, 0, past)) newPart.copy_(oldPart);
            buffer?.Dispose();
            buffer = grown;
        }
        using var slot = buffer.narrow(2, past, t);
        using var detached = now.detach();
        slot.copy_(detached);
    }

    /// <summary>Called by the model once every layer has appended <paramref name="newTokens"/> positions.</summary>
    internal void Advance(int newTokens) => Length += newTokens;

    /// <summary>
    /// State a model keeps beside its keys and values (Phi-3 longrope: the token ids seen, to recompute every key when the
    /// rotary factors switch). Disposed with the cache when disposable.
    /// </summary>
    internal object? ModelState { get; set; }

    /// <summary>
    /// Repeats every held row <paramref name="copies"/> times in place (row i becomes rows i·copies … i·copies + copies − 1), so
    /// that several continuations of one prompt share the prompt's prefill: the prompt is run once, then decoded K ways.
    /// </summary>
    internal void RepeatInterleave(int copies)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (copies < 1) throw new ArgumentOutOfRangeException(nameof(copies), copies, "copies must be at least 1.");
        if (copies == 1) return;
        using var noGrad = torch.no_grad();
        for (int i = 0; i < _keys.Length; i++)
        {
            Repeat(ref _keys[i], copies);
            Repeat(ref _values[i], copies);
        }
        (ModelState as IRepeatableCacheState)?.RepeatInterleave(copies);

        static void Repeat(ref Tensor? buffer, int copies)
        {
            if (buffer is null) return;
            var repeated = buffer.repeat_interleave(copies, 0).DetachFromDisposeScope();
            buffer.Dispose();
            buffer = repeated;
        }
    }

    /// <summary>Empties the cache (frees the tensors) so the model can refill it from position 0; it stays usable.</summary>
    internal void Clear()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        for (int i = 0; i < _keys.Length; i++)
        {
            _keys[i]?.Dispose(); _keys[i] = null;
            _values[i]?.Dispose(); _values[i] = null;
        }
        Length = 0;
    }

    /// <summary>Frees every held tensor; the cache is empty and unusable afterwards.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        (ModelState as IDisposable)?.Dispose();
        ModelState = null;
        for (int i = 0; i < _keys.Length; i++)
        {
            _keys[i]?.Dispose(); _keys[i] = null;
            _values[i]?.Dispose(); _values[i] = null;
        }
        Length = 0;
    }
}

/// <summary>Model state kept in a <see cref="KvCache"/> that has one row per batch row and must follow <see cref="KvCache.RepeatInterleave"/>.</summary>
internal interface IRepeatableCacheState
{
    /// <summary>Repeats every row <paramref name="copies"/> times, as the cache's keys and values are.</summary>
    void RepeatInterleave(int copies);
}
