using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Modeling;

#pragma warning disable IDE1006 // field names are the Hugging Face parameter names (RegisterComponents uses them)

/// <summary>
/// Phi-3 (<c>phi3</c>: Phi-3, Phi-3.5, Phi-4-mini without partial rotary): Llama's block with a fused <c>qkv_proj</c>
/// ([(H + 2·Hkv)·D, hidden]: q rows, then k, then v) and a fused <c>gate_up_proj</c> ([2·I, hidden]: gate rows, then up),
/// no biases, an optional sliding window on every layer, and <c>rope_scaling</c> of type <c>longrope</c>: each forward pass
/// uses <c>short_factor</c> while max(position) + 1 over the batch is within <c>original_max_position_embeddings</c> and
/// <c>long_factor</c> beyond it, cos/sin × √(1 + ln(max_position_embeddings / original) / ln(original)). When cached
/// decoding crosses that length, every cached key is recomputed with the long factors (as transformers' <c>generate()</c>
/// drops its cache), so cached generation equals the full forward pass. Parameter names follow <c>Phi3ForCausalLM</c>.
/// </summary>
public sealed class Phi3ForCausalLM : RotaryDecoderLM
{
    readonly bool _longRope;

    internal Phi3ForCausalLM(CausalLMConfig config) : base(nameof(Phi3ForCausalLM), config, i => new Phi3DecoderLayer(config, i))
        => _longRope = config.RopeScaling?.RopeType == "longrope";

    /// <inheritdoc/>
    public override Tensor HiddenStates(Tensor inputIds, Tensor? attentionMask = null, KvCache? cache = null)
    {
        if (!_longRope || cache is null) return base.HiddenStates(inputIds, attentionMask, cache);
        using var scope = torch.NewDisposeScope();
        long past = cache.Length, t = inputIds.shape[1];
        // max(position) + 1 over the batch: the longest row's count of real tokens so far.
        long span = attentionMask is null ? past + t : attentionMask.ne(0).sum(1).max().item<long>();
        bool useLong = _model.UsesLongFactors(torch.tensor(new[] { Math.Max(span - 1, 0) }).view(1, 1));
        var history = cache.ModelState as LongRopeHistory;
        Tensor hidden;
        if (history is not null && past > 0 && history.Long != useLong)
        {
            // The factors switched: recompute the whole cache from the ids seen so far plus this call's.
            var all = torch.cat(new[] { history.Ids!, inputIds }, 1);                  // [B, past + T]
            cache.Clear();
            hidden = base.HiddenStates(all, attentionMask, cache).narrow(1, past, t);   // [B, T, H]
        }
        else
            hidden = base.HiddenStates(inputIds, attentionMask, cache);
        history ??= new LongRopeHistory();
        history.Append(inputIds);
        history.Long = useLong;
        cache.ModelState = history;
        return hidden.MoveToOuterDisposeScope();
    }

    /// <summary>The token ids a longrope cache has seen [B, S] and the factors its keys were rotated with.</summary>
    sealed class LongRopeHistory : IDisposable, IRepeatableCacheState
    {
        public Tensor? Ids;
        public bool Long;

        public void Append(Tensor ids)
        {
            using var noGrad = torch.no_grad();
            var next = (Ids is null ? ids.clone() : torch.cat(new[] { Ids, ids }, 1)).DetachFromDisposeScope();
            Ids?.Dispose();
            Ids = next;
        }

        public void RepeatInterleave(int copies)
        {
            if (Ids is null) return;
            using var noGrad = torch.no_grad();
            var repeated = Ids.repeat_interleave(copies, 0).DetachFromDisposeScope();
            Ids.Dispose();
            Ids = repeated;
        }

        public void Dispose() => Ids?.Dispose();
    }

    /// <summary>x + attn(norm(x)), then x + mlp(norm(x)), with fused projections.</summary>
    sealed class Phi3DecoderLayer : DecoderLayer
    {
        readonly SelfAttention self_attn;
        readonly GatedMlp mlp;
        readonly RMSNorm input_layernorm;            // [H]
        readonly RMSNorm post_attention_layernorm;   // [H]
        readonly bool _sliding;

        public Phi3DecoderLayer(CausalLMConfig c, int index) : base(nameof(Phi3DecoderLayer))
        {
            self_attn = new SelfAttention(c, index, fusedQkv: true);
            mlp = new GatedMlp(c, fusedGateUp: true);
            input_layernorm = new RMSNorm(c.HiddenSize, c.RmsNormEps);
            post_attention_layernorm = new RMSNorm(c.HiddenSize, c.RmsNormEps);
            _sliding = c.IsSlidingLayer(index);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x, DecoderInputs inputs, KvCache? cache)   // x [B, T, H]
        {
            using var scope = NewDisposeScope();
            var mask = _sliding ? inputs.SlidingMask! : inputs.FullMask;
            x = x + self_attn.forward(input_layernorm.forward(x), inputs.Cos, inputs.Sin, mask, cache);
            x = x + mlp.forward(post_attention_layernorm.forward(x));
            return x.MoveToOuterDisposeScope();
        }
    }
}
