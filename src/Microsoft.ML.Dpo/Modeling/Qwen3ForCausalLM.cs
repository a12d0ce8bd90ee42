using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Modeling;

#pragma warning disable IDE1006 // field names are the Hugging Face parameter names (RegisterComponents uses them)

/// <summary>
/// Qwen3 (<c>qwen3</c>): Llama's block with a per-head RMSNorm on queries and keys (<c>q_norm</c>, <c>k_norm</c>, weights [D])
/// applied after the projections and before rotary; no q/k/v bias by default; a sliding window in the mask whenever
/// <c>sliding_window</c> is set (as transformers 4.51 does). Parameter names follow <c>Qwen3ForCausalLM</c>:
/// <c>model.layers.N.self_attn.{q,k,v,o}_proj</c>, <c>…self_attn.{q,k}_norm</c>, <c>…mlp.{gate,up,down}_proj</c>,
/// <c>…input_layernorm</c>, <c>…post_attention_layernorm</c>.
/// </summary>
public sealed class Qwen3ForCausalLM : RotaryDecoderLM
{
    internal Qwen3ForCausalLM(CausalLMConfig config) : base(nameof(Qwen3ForCausalLM), config, i => new Qwen3DecoderLayer(config, i)) { }

    /// <summary>x + attn(norm(x)), then x + mlp(norm(x)); the attention is <see cref="SelfAttention"/> with per-head q/k norms.</summary>
    internal sealed class Qwen3DecoderLayer : DecoderLayer
    {
        readonly SelfAttention self_attn;
        readonly GatedMlp mlp;
        readonly RMSNorm input_layernorm;            // [H]
        readonly RMSNorm post_attention_layernorm;   // [H]
        readonly bool _sliding;

        public Qwen3DecoderLayer(CausalLMConfig c, int index) : base(nameof(Qwen3DecoderLayer))
        {
            self_attn = new SelfAttention(c, index, QkNorm.PerHead);
            mlp = new GatedMlp(c);
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
