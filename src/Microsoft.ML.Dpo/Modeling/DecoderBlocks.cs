using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Modeling;

#pragma warning disable IDE1006 // field names are the Hugging Face parameter names (RegisterComponents uses them)

// The pieces the rotary decoders after Llama share (Qwen3, Gemma 1/2/3, Phi-3, OLMo 2): one attention module with the
// variants they need, one gated MLP, and the `model.` stack (embedding → layers → final norm). Each architecture's file
// defines its decoder layer (where the norms and residuals go) and picks the variants; parameter names are Hugging Face's.

/// <summary>Where the attention applies its q/k RMSNorm.</summary>
internal enum QkNorm
{
    /// <summary>No q/k norm (Llama, Gemma 1/2, Phi-3).</summary>
    None,

    /// <summary>Per head, over head_dim, before rotary (Qwen3, Gemma 3): <c>q_norm</c>/<c>k_norm</c> weights [D].</summary>
    PerHead,

    /// <summary>Over the whole projection (all heads together), before rotary (OLMo 2): weights [H·D] and [Hkv·D].</summary>
    WholeProjection,
}

/// <summary>What one layer's attention sees: rotary tables and masks for the whole stack, picked per layer.</summary>
internal sealed record DecoderInputs(Tensor Cos, Tensor Sin, Tensor? LocalCos, Tensor? LocalSin, Tensor FullMask, Tensor? SlidingMask);

/// <summary>A decoder layer of <see cref="DecoderModel"/>: [B, T, hidden] → [B, T, hidden].</summary>
internal abstract class DecoderLayer(string name) : nn.Module(name)
{
    public abstract Tensor forward(Tensor x, DecoderInputs inputs, KvCache? cache);
}

/// <summary>
/// Grouped-query self-attention with rotary positions: q/k/v projections (separate, or Phi-3's fused <c>qkv_proj</c> with q
/// rows, then k, then v), optional q/k RMSNorm (<see cref="QkNorm"/>; Gemma's (1 + w) form in the Gemma family), scores
/// scaled by head_dim^-0.5 or query_pre_attn_scalar^-0.5, optional tanh soft-capping of the scores (Gemma 2/3), softmax in float32.
/// </summary>
internal sealed class SelfAttention : nn.Module, IProjectionOwner
{
    nn.Module<Tensor, Tensor>? q_proj;     // [H·D, hidden]
    nn.Module<Tensor, Tensor>? k_proj;     // [Hkv·D, hidden]
    nn.Module<Tensor, Tensor>? v_proj;     // [Hkv·D, hidden]
    nn.Module<Tensor, Tensor>? qkv_proj;   // [(H + 2·Hkv)·D, hidden] (Phi-3)
    nn.Module<Tensor, Tensor> o_proj;      // [hidden, H·D]
    readonly nn.Module<Tensor, Tensor>? q_norm;   // [D] per head, or [H·D] whole
    readonly nn.Module<Tensor, Tensor>? k_norm;   // [D] per head, or [Hkv·D] whole
    readonly int _layer, _heads, _kvHeads, _headDim;
    readonly QkNorm _qkNorm;
    readonly double _scale;
    readonly double? _softcap;
    readonly bool _defaultScale;

    public SelfAttention(CausalLMConfig c, int layer, QkNorm qkNorm = QkNorm.None, bool fusedQkv = false) : base(nameof(SelfAttention))
    {
        (_layer, _heads, _kvHeads, _headDim, _qkNorm) = (layer, c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim, qkNorm);
        if (fusedQkv)
            qkv_proj = nn.Linear(c.HiddenSize, (_heads + 2 * _kvHeads) * _headDim, hasBias: c.AttentionBias);
        else
        {
            q_proj = nn.Linear(c.HiddenSize, _heads * _headDim, hasBias: c.AttentionBias);
            k_proj = nn.Linear(c.HiddenSize, _kvHeads * _headDim, hasBias: c.AttentionBias);
            v_proj = nn.Linear(c.HiddenSize, _kvHeads * _headDim, hasBias: c.AttentionBias);
        }
        o_proj = nn.Linear(_heads * _headDim, c.HiddenSize, hasBias: c.OutputProjectionBias);
        if (qkNorm != QkNorm.None)
        {
            long qSize = qkNorm == QkNorm.PerHead ? _headDim : _heads * _headDim;
            long kSize = qkNorm == QkNorm.PerHead ? _headDim : _kvHeads * _headDim;
            q_norm = c.IsGemmaFamily ? new GemmaRMSNorm(qSize, c.RmsNormEps) : new RMSNorm(qSize, c.RmsNormEps);
            k_norm = c.IsGemmaFamily ? new GemmaRMSNorm(kSize, c.RmsNormEps) : new RMSNorm(kSize, c.RmsNormEps);
        }
        _scale = Math.Pow(c.QueryPreAttnScalar ?? c.HeadDim, -0.5);
        _defaultScale = c.QueryPreAttnScalar is null || c.QueryPreAttnScalar == c.HeadDim;
        // transformers' Gemma 3 reads attn_logit_softcapping but never passes it to its attention: it has no effect there.
        _softcap = c.ModelType == "gemma3_text" ? null : c.AttnLogitSoftcapping;
        RegisterComponents();
    }

    /// <param name="x">[B, T, hidden]</param>
    /// <param name="cos">[B, 1, T, D] rotary cos table</param>
    /// <param name="sin">[B, 1, T, D] rotary sin table</param>
    /// <param name="mask">[B, 1, T, S] boolean, true = attend</param>
    /// <param name="cache">keys/values of the past, extended by this call</param>
    public Tensor forward(Tensor x, Tensor cos, Tensor sin, Tensor mask, KvCache? cache)
    {
        using var scope = torch.NewDisposeScope();
        long b = x.shape[0], t = x.shape[1], qWidth = _heads * _headDim, kvWidth = _kvHeads * _headDim;
        Tensor q, k, v;                                                                 // [B, T, H·D], [B, T, Hkv·D] ×2
        if (qkv_proj is not null)
        {
            var qkv = ComputePrecision.Project(qkv_proj, x);                                           // [B, T, (H + 2Hkv)·D]
            (q, k, v) = (qkv.narrow(2, 0, qWidth), qkv.narrow(2, qWidth, kvWidth), qkv.narrow(2, qWidth + kvWidth, kvWidth));
        }
        else
            (q, k, v) = (ComputePrecision.Project(q_proj!, x), ComputePrecision.Project(k_proj!, x), ComputePrecision.Project(v_proj!, x));
        if (_qkNorm == QkNorm.WholeProjection)
            (q, k) = (q_norm!.forward(q), k_norm!.forward(k));
        q = q.view(b, t, _heads, _headDim);                                             // [B, T, H, D]
        k = k.view(b, t, _kvHeads, _headDim);                                           // [B, T, Hkv, D]
        if (_qkNorm == QkNorm.PerHead)
            (q, k) = (q_norm!.forward(q), k_norm!.forward(k));
        q = RotaryEmbedding.Apply(q.transpose(1, 2), cos, sin);                         // [B, H, T, D]
        k = RotaryEmbedding.Apply(k.transpose(1, 2), cos, sin);                         // [B, Hkv, T, D]
        v = v.view(b, t, _kvHeads, _headDim).transpose(1, 2);                           // [B, Hkv, T, D]
        if (cache is not null)
            (k, v) = cache.Append(_layer, k, v);                                        // [B, Hkv, S, D]
        var y = _softcap is null && _defaultScale ? CausalLM.Attend(q, k, v, mask) : EagerAttend(q, k, v, mask);   // [B, H, T, D]
        y = y.transpose(1, 2).reshape(b, t, qWidth);                                    // [B, T, H·D]
        return ComputePrecision.Project(o_proj, y).MoveToOuterDisposeScope();             // [B, T, hidden]
    }

    // Hugging Face's eager path: scores = q·kᵀ · scale in the model's dtype, soft-capped, masked, softmaxed in float32.
    Tensor EagerAttend(Tensor q, Tensor k, Tensor v, Tensor mask)
    {
        if (k.shape[1] != q.shape[1])
        {
            k = k.repeat_interleave(_heads / _kvHeads, dim: 1);                          // [B, H, S, D]
            v = v.repeat_interleave(_heads / _kvHeads, dim: 1);
        }
        if (PackedSequences.Of(mask) is { } packed)   // a packed batch: each sequence on its own, with its causal mask
            return packed.AttendEach(q, k, v, (qs, ks, vs, m) => EagerAttend(qs, ks, vs, m ?? PackedSequences.Causal(qs.shape[2], qs.device)));
        var scores = q.matmul(k.transpose(2, 3)).mul(_scale);                           // [B, H, T, S]
        if (_softcap is double cap)
            scores = scores.div(cap).tanh().mul(cap);
        scores = scores.masked_fill(mask.logical_not(), double.NegativeInfinity);
        var weights = scores.softmax(-1, Precision.Wide(q.dtype)).to(q.dtype);
        return weights.matmul(v.to(weights.dtype));                                                     // [B, H, T, D]
    }

    public IReadOnlyList<string> ProjectionSlots => qkv_proj is null ? ["q_proj", "k_proj", "v_proj", "o_proj"] : ["qkv_proj", "o_proj"];

    public nn.Module<Tensor, Tensor> GetProjection(string slot) => slot switch
    {
        "q_proj" when q_proj is not null => q_proj,
        "k_proj" when k_proj is not null => k_proj,
        "v_proj" when v_proj is not null => v_proj,
        "qkv_proj" when qkv_proj is not null => qkv_proj,
        "o_proj" => o_proj,
        _ => throw new ArgumentException(slot),
    };

    public nn.Module<Tensor, Tensor> SetProjection(string slot, nn.Module<Tensor, Tensor> replacement)
    {
        var old = GetProjection(slot);
        switch (slot)
        {
            case "q_proj": q_proj = replacement; break;
            case "k_proj": k_proj = replacement; break;
            case "v_proj": v_proj = replacement; break;
            case "qkv_proj": qkv_proj = replacement; break;
            default: o_proj = replacement; break;
        }
        LlamaForCausalLM.Reregister(this, slot, replacement);
        return old;
    }
}

/// <summary>
/// The gated MLP: down(act(gate(x)) · up(x)) with SiLU (SwiGLU) or tanh-GELU (Gemma's GeGLU); Phi-3 fuses gate and up
/// into one <c>gate_up_proj</c> (gate rows, then up rows).
/// </summary>
internal sealed class GatedMlp : nn.Module, IProjectionOwner
{
    nn.Module<Tensor, Tensor>? gate_proj;      // [I, H]
    nn.Module<Tensor, Tensor>? up_proj;        // [I, H]
    nn.Module<Tensor, Tensor>? gate_up_proj;   // [2I, H] (Phi-3)
    nn.Module<Tensor, Tensor> down_proj;       // [H, I]
    readonly string _activation;
    readonly long _intermediate;

    public GatedMlp(CausalLMConfig c, bool fusedGateUp = false) : base(nameof(GatedMlp))
    {
        _intermediate = c.IntermediateSize;
        if (fusedGateUp)
            gate_up_proj = nn.Linear(c.HiddenSize, 2 * c.IntermediateSize, hasBias: c.MlpBias);
        else
        {
            gate_proj = nn.Linear(c.HiddenSize, c.IntermediateSize, hasBias: c.MlpBias);
            up_proj = nn.Linear(c.HiddenSize, c.IntermediateSize, hasBias: c.MlpBias);
        }
        down_proj = nn.Linear(c.IntermediateSize, c.HiddenSize, hasBias: c.MlpBias);
        _activation = c.HiddenActivation;
        RegisterComponents();
    }

    public Tensor forward(Tensor x)   // [B, T, H]
    {
        using var scope = torch.NewDisposeScope();
        Tensor gate, up;                                                                // [B, T, I] each
        if (gate_up_proj is not null)
        {
            var both = ComputePrecision.Project(gate_up_proj, x);                                       // [B, T, 2I]
            (gate, up) = (both.narrow(-1, 0, _intermediate), both.narrow(-1, _intermediate, _intermediate));
        }
        else
            (gate, up) = (ComputePrecision.Project(gate_proj!, x), ComputePrecision.Project(up_proj!, x));
        var h = Activate(gate) * up;                                                    // [B, T, I]
        return ComputePrecision.Project(down_proj, h).MoveToOuterDisposeScope();          // [B, T, H]
    }

    Tensor Activate(Tensor x) => _activation switch
    {
        "silu" => nn.functional.silu(x),
        "gelu" => nn.functional.gelu(x),
        _ => nn.functional.gelu(x, GELU.Approximate.tanh),                             // gelu_pytorch_tanh, gelu_new
    };

    public IReadOnlyList<string> ProjectionSlots => gate_up_proj is null ? ["gate_proj", "up_proj", "down_proj"] : ["gate_up_proj", "down_proj"];

    public nn.Module<Tensor, Tensor> GetProjection(string slot) => slot switch
    {
        "gate_proj" when gate_proj is not null => gate_proj,
        "up_proj" when up_proj is not null => up_proj,
        "gate_up_proj" when gate_up_proj is not null => gate_up_proj,
        "down_proj" => down_proj,
        _ => throw new ArgumentException(slot),
    };

    public nn.Module<Tensor, Tensor> SetProjection(string slot, nn.Module<Tensor, Tensor> replacement)
    {
        var old = GetProjection(slot);
        switch (slot)
        {
            case "gate_proj": gate_proj = replacement; break;
            case "up_proj": up_proj = replacement; break;
            case "gate_up_proj": gate_up_proj = replacement; break;
            default: down_proj = replacement; break;
        }
        LlamaForCausalLM.Reregister(this, slot, replacement);
        return old;
    }
}

/// <summary>
/// The <c>model.</c> stack of the rotary decoders: <c>embed_tokens</c> (× √hidden in the Gemma family, in the model's
/// dtype), the layers, the final <c>norm</c>. It derives positions and masks once (a full causal mask, and a sliding one
/// when some layer slides) and the rotary tables (global, and Gemma 3's local ones).
/// </summary>
internal sealed class DecoderModel : nn.Module
{
    internal readonly Embedding embed_tokens;            // [V, H]
    readonly ModuleList<DecoderLayer> layers;
    readonly nn.Module<Tensor, Tensor> norm;             // [H]
    readonly RotaryEmbedding _rope;                      // no tensors: nothing registered
    readonly RotaryEmbedding? _localRope;                // Gemma 3 sliding layers
    readonly int? _window;
    readonly bool _anySliding, _allSliding;
    readonly double? _embedScale;
    readonly bool _embedScaleViaFloat32;

    public DecoderModel(CausalLMConfig c, Func<int, DecoderLayer> layer) : base(nameof(DecoderModel))
    {
        embed_tokens = nn.Embedding(c.VocabSize, c.HiddenSize);
        layers = new ModuleList<DecoderLayer>(Enumerable.Range(0, c.NumHiddenLayers).Select(layer).ToArray());
        norm = c.IsGemmaFamily ? new GemmaRMSNorm(c.HiddenSize, c.RmsNormEps) : new RMSNorm(c.HiddenSize, c.RmsNormEps);
        _rope = new RotaryEmbedding(c);
        if (c.RopeLocalBaseFreq is double local)
            _localRope = new RotaryEmbedding(c.HeadDim, local, null, c.MaxPositionEmbeddings);
        _window = c.SlidingWindow;
        _anySliding = Enumerable.Range(0, c.NumHiddenLayers).Any(c.IsSlidingLayer);
        _allSliding = Enumerable.Range(0, c.NumHiddenLayers).All(c.IsSlidingLayer);
        if (c.IsGemmaFamily) _embedScale = Math.Sqrt(c.HiddenSize);
        _embedScaleViaFloat32 = c.ModelType == "gemma3_text";   // Gemma 3 keeps the scale as a float32 buffer, then casts
        RegisterComponents();
    }

    /// <summary>Whether positions <c>[B, T]</c> put a longrope model on its long factors.</summary>
    internal bool UsesLongFactors(Tensor positions) => _rope.UsesLongFactors(positions);

    /// <summary>Hidden states [B, T, H] after the final norm.</summary>
    public Tensor forward(Tensor inputIds, Tensor? attentionMask, KvCache? cache)
    {
        using var scope = torch.NewDisposeScope();
        long past = cache?.Length ?? 0;
        var (positions, fullMask) = CausalLM.PrepareInputs(inputIds, attentionMask, past, _allSliding ? _window : null);   // [B, T], [B, 1, T, S]
        Tensor? slidingMask = _allSliding ? fullMask
            : _anySliding ? CausalLM.PrepareInputs(inputIds, attentionMask, past, _window).Mask : null;
        var x = embed_tokens.forward(inputIds);                                         // [B, T, H]
        if (_embedScale is double scale)
            x = x * (_embedScaleViaFloat32 ? torch.tensor((float)scale).to(x.dtype) : torch.tensor(scale, x.dtype));
        var (cos, sin) = _rope.CosSin(positions, x.dtype);                              // [B, 1, T, D] each
        Tensor? localCos = null, localSin = null;
        if (_localRope is not null) (localCos, localSin) = _localRope.CosSin(positions, x.dtype);
        var inputs = new DecoderInputs(cos, sin, localCos, localSin, fullMask, slidingMask);
        foreach (var layer in layers)
            x = Checkpointing.Applies(cache)
                ? Checkpointing.Run(layer, x, [cos, sin, localCos, localSin, fullMask, slidingMask],
                    (h, c) => layer.forward(h, new DecoderInputs(c[0]!, c[1]!, c[2], c[3], c[4]!, c[5]), null))
                : layer.forward(x, inputs, cache);
        x = norm.forward(x);                                                            // [B, T, H]
        cache?.Advance((int)inputIds.shape[1]);
        return x.MoveToOuterDisposeScope();
    }
}

/// <summary>
/// The common shell of the rotary decoders after Llama: <c>model</c> (<see cref="DecoderModel"/>) and the output head
/// <c>lm_head</c> [V, H] (or the embedding when tied), with Gemma 2/3's final logit soft-capping cap · tanh(logits / cap).
/// Each architecture supplies its decoder layer.
/// </summary>
public abstract class RotaryDecoderLM : CausalLM
{
    private protected readonly DecoderModel _model;
    readonly Linear? _lmHead;                            // [V, H]; null when tied to model.embed_tokens
    readonly double? _finalSoftcap;

    private protected RotaryDecoderLM(string name, CausalLMConfig config, Func<int, DecoderLayer> layer) : base(name, config)
    {
        _model = new DecoderModel(config, layer);
        register_module("model", _model);
        if (!config.TieWordEmbeddings)
        {
            _lmHead = nn.Linear(config.HiddenSize, config.VocabSize, hasBias: false);
            register_module("lm_head", _lmHead);
        }
        _finalSoftcap = config.FinalLogitSoftcapping;
    }

    /// <inheritdoc/>
    public override Tensor HiddenStates(Tensor inputIds, Tensor? attentionMask = null, KvCache? cache = null)
        => _model.forward(inputIds, attentionMask, cache);

    /// <inheritdoc/>
    public override Tensor LogitsFromHidden(Tensor hidden)
    {
        using var scope = torch.NewDisposeScope();
        var logits = _lmHead is null ? ComputePrecision.Linear(hidden, _model.embed_tokens.weight!) : ComputePrecision.Project(_lmHead, hidden);   // [B, T, V]
        if (_finalSoftcap is double cap)
            logits = logits.div(cap).tanh().mul(cap);
        return logits.MoveToOuterDisposeScope();
    }

    internal override Training.OutputHead? FusedHead => new((_lmHead?.weight ?? _model.embed_tokens.weight)!, Softcap: _finalSoftcap);
}
