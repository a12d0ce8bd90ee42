using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Modeling;

#pragma warning disable IDE1006 // field names are the Hugging Face parameter names (RegisterComponents uses them)

/// <summary>
/// Qwen3-MoE (<c>qwen3_moe</c>): Qwen3's block — attention with a per-head RMSNorm on queries and keys before rotary
/// (<see cref="SelfAttention"/> with <see cref="QkNorm.PerHead"/>) — whose MLP is, in the sparse layers, a mixture of experts
/// (<see cref="SparseMoeBlock"/>: softmax over all experts, top-k, renormalised when <c>norm_topk_prob</c>). A layer is sparse
/// unless it is in <c>mlp_only_layers</c> or (layer + 1) is not a multiple of <c>decoder_sparse_step</c>; dense layers use the
/// SwiGLU MLP of width <c>intermediate_size</c>. Parameter names follow <c>Qwen3MoeForCausalLM</c>:
/// <c>model.layers.N.self_attn.{q,k,v,o}_proj</c>, <c>…self_attn.{q,k}_norm</c>, <c>…mlp.gate</c> (the router),
/// <c>…mlp.experts.E.{gate,up,down}_proj</c> (or <c>…mlp.{gate,up,down}_proj</c> in dense layers), <c>…input_layernorm</c>,
/// <c>…post_attention_layernorm</c>.
/// </summary>
public sealed class Qwen3MoeForCausalLM : RotaryDecoderLM
{
    readonly RouterLogitsSink _routerSink;

    internal Qwen3MoeForCausalLM(CausalLMConfig config) : this(config, new RouterLogitsSink()) { }

    Qwen3MoeForCausalLM(CausalLMConfig config, RouterLogitsSink sink)
        : base(nameof(Qwen3MoeForCausalLM), config, i => new Qwen3MoeDecoderLayer(config, i, sink)) => _routerSink = sink;

    private protected override RouterLogitsSink? RouterSink => _routerSink;

    /// <inheritdoc/>
    public override Tensor HiddenStates(Tensor inputIds, Tensor? attentionMask = null, KvCache? cache = null)
    {
        _routerSink.BeginForward(attentionMask, cache?.Length ?? 0, inputIds.shape[0], inputIds.shape[1]);
        return base.HiddenStates(inputIds, attentionMask, cache);
    }

    /// <summary>x + attn(norm(x)), then x + moe(norm(x)) (or the dense MLP in dense layers).</summary>
    internal sealed class Qwen3MoeDecoderLayer : DecoderLayer
    {
        readonly SelfAttention self_attn;
        readonly nn.Module mlp;                      // SparseMoeBlock in sparse layers, GatedMlp in dense ones
        readonly RMSNorm input_layernorm;            // [H]
        readonly RMSNorm post_attention_layernorm;   // [H]

        public Qwen3MoeDecoderLayer(CausalLMConfig c, int index, RouterLogitsSink sink) : base(nameof(Qwen3MoeDecoderLayer))
        {
            self_attn = new SelfAttention(c, index, QkNorm.PerHead);
            mlp = c.IsSparseLayer(index) ? new SparseMoeBlock(c, sink) : new GatedMlp(c);
            input_layernorm = new RMSNorm(c.HiddenSize, c.RmsNormEps);
            post_attention_layernorm = new RMSNorm(c.HiddenSize, c.RmsNormEps);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x, DecoderInputs inputs, KvCache? cache)   // x [B, T, H]
        {
            using var scope = NewDisposeScope();
            x = x + self_attn.forward(input_layernorm.forward(x), inputs.Cos, inputs.Sin, inputs.FullMask, cache);
            var h = post_attention_layernorm.forward(x);
            x = x + (mlp is SparseMoeBlock sparse ? sparse.forward(h) : ((GatedMlp)mlp).forward(h));
            return x.MoveToOuterDisposeScope();
        }
    }
}
