using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Modeling;

/// <summary>
/// Per-layer key/value tensors of the tokens a <see cref="CausalLM"/> has already seen, so that incremental decoding
/// computes only the new tokens. Keys and values are kept as <c>[B, Hkv, S, D]</c> (before the grouped-query repeat),
/// detached from autograd and from every dispose scope; the cache owns them and frees them on <see cref="Dispose"/>.
/// </summary>
public sealed class KvCache : IDisposable
{
    readonly Tensor?[] _keys;
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

    /// <summary>Appends this step's keys and values <c>[B, Hkv, T, D]</c> of <paramref name="layer"/> and returns all of them <c>[B, Hkv, S+T, D]</c> (in the caller's dispose scope).</summary>
    internal (Tensor Keys, Tensor Values) Append(int layer, Tensor keys, Tensor values)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var allK = Concat(_keys[layer], keys);
        var allV = Concat(_values[layer], values);
        Keep(ref _keys[layer], allK);
        Keep(ref _values[layer], allV);
        return (allK, allV);
    }

    static Tensor Concat(Tensor? past, Tensor now) => past is null ? now : torch.cat(new[] { past, now }, 2);

    static void Keep(ref Tensor? slot, Tensor all)
    {
        var kept = all.detach().DetachFromDisposeScope();   // shares storage with `all`; survives the forward's scope
        slot?.Dispose();
        slot = kept;
    }

    /// <summary>Called by the model once every layer has appended <paramref name="newTokens"/> positions.</summary>
    internal void Advance(int newTokens) => Length += newTokens;

    /// <summary>Frees every held tensor; the cache is empty and unusable afterwards.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        for (int i = 0; i < _keys.Length; i++)
        {
            _keys[i]?.Dispose(); _keys[i] = null;
            _values[i]?.Dispose(); _values[i] = null;
        }
        Length = 0;
    }
}
