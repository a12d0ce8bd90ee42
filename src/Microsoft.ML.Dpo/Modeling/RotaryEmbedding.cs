using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Modeling;

/// <summary>
/// Rotary position embedding in Hugging Face's half-split layout: a head vector [x1 | x2] is rotated as
/// x·cos + rotate_half(x)·sin with rotate_half = [−x2 | x1], frequencies θ^(−2i/D), optionally scaled:
/// <c>llama3</c> (Llama 3.1 wavelength blend), <c>linear</c> (frequencies ÷ factor), or <c>longrope</c> (Phi-3: per-frequency
/// short or long factors, chosen per batch by max(position) + 1 against <c>original_max_position_embeddings</c>, and
/// cos/sin × the attention factor). Inverse frequencies are kept as managed numbers, so the class registers no tensors.
/// </summary>
internal sealed class RotaryEmbedding
{
    readonly float[] _invFreq;        // [D/2] (longrope: the short-factor frequencies)
    readonly float[]? _invFreqLong;   // [D/2] longrope only
    readonly int _original;           // longrope: original_max_position_embeddings
    readonly double _attentionScale;  // multiplies cos and sin (1 unless longrope)

    /// <summary>The rotary embedding of <paramref name="c"/> (its head_dim, rope_theta and rope_scaling).</summary>
    public RotaryEmbedding(CausalLMConfig c) : this(c.HeadDim, c.RopeTheta, c.RopeScaling, c.MaxPositionEmbeddings) { }

    /// <summary>A rotary embedding of width <paramref name="headDim"/>, base <paramref name="theta"/> and optional scaling.</summary>
    public RotaryEmbedding(int headDim, double theta, RopeScaling? scaling, int maxPositionEmbeddings)
    {
        int half = headDim / 2;
        var inv = new double[half];
        for (int i = 0; i < half; i++)
            inv[i] = 1.0 / Math.Pow(theta, 2.0 * i / headDim);
        _attentionScale = 1.0;
        switch (scaling?.RopeType)
        {
            case null:
                break;
            case "llama3":
                inv = Llama3Scale(inv, scaling);
                break;
            case "linear":
                inv = inv.Select(f => f / scaling.Factor).ToArray();
                break;
            case "longrope":
                _original = scaling.OriginalMaxPositionEmbeddings;
                _invFreqLong = inv.Select((f, i) => (float)(f / scaling.LongFactor![i])).ToArray();
                inv = inv.Select((f, i) => f / scaling.ShortFactor![i]).ToArray();
                double factor = (double)maxPositionEmbeddings / _original;
                _attentionScale = scaling.AttentionFactor
                    ?? (factor <= 1.0 ? 1.0 : Math.Sqrt(1 + Math.Log(factor) / Math.Log(_original)));
                break;
            default:
                throw new NotSupportedException($"rope_scaling type \"{scaling.RopeType}\" is not supported.");
        }
        _invFreq = inv.Select(d => (float)d).ToArray();
    }

    /// <summary>Longrope only: whether positions <c>[B, T]</c> use the long factors (max(position) + 1 &gt; original). Always false otherwise.</summary>
    public bool UsesLongFactors(Tensor positions) =>
        _invFreqLong is not null && positions.numel() > 0 && positions.max().item<long>() + 1 > _original;

    // Llama 3.1: long wavelengths divided by `factor`, short ones kept, a smooth blend in between.
    static double[] Llama3Scale(double[] inv, RopeScaling s)
    {
        double lowWavelen = s.OriginalMaxPositionEmbeddings / s.LowFreqFactor;
        double highWavelen = s.OriginalMaxPositionEmbeddings / s.HighFreqFactor;
        return inv.Select(f =>
        {
            double wavelen = 2 * Math.PI / f;
            if (wavelen < highWavelen) return f;
            if (wavelen > lowWavelen) return f / s.Factor;
            double smooth = (s.OriginalMaxPositionEmbeddings / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
            return (1 - smooth) * f / s.Factor + smooth * f;
        }).ToArray();
    }

    /// <summary>cos and sin tables <c>[B, 1, T, D]</c> for positions <c>[B, T]</c>, computed in float32 then cast.</summary>
    public (Tensor Cos, Tensor Sin) CosSin(Tensor positions, ScalarType dtype)
    {
        var table = UsesLongFactors(positions) ? _invFreqLong! : _invFreq;
        var inv = torch.tensor(table, device: positions.device);                             // [D/2]
        var freqs = positions.to(ScalarType.Float32).unsqueeze(-1) * inv;                    // [B, T, D/2]
        var emb = torch.cat(new[] { freqs, freqs }, -1).unsqueeze(1);                        // [B, 1, T, D]
        Tensor cos = emb.cos(), sin = emb.sin();
        if (_attentionScale != 1.0)
        {
            cos = cos * _attentionScale;
            sin = sin * _attentionScale;
        }
        return (cos.to(dtype), sin.to(dtype));
    }

    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)   // x [B, h, T, D]
    {
        long half = x.shape[3] / 2;
        var x1 = x.narrow(3, 0, half);
        var x2 = x.narrow(3, half, half);
        var rotated = torch.cat(new[] { x2.neg(), x1 }, 3);
        return x * cos + rotated * sin;
    }
}
