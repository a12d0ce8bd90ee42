using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Modeling;

#pragma warning disable IDE1006 // field names are the Hugging Face parameter names (RegisterComponents uses them)

/// <summary>
/// OLMo 2 (<c>olmo2</c>): no pre-norms; the attention output and the MLP output are RMS-normed inside the residual branch
/// (x + norm(attn(x)), x + norm(mlp(x))), and queries and keys get an RMSNorm over the whole projection (all heads together,
/// weights [H·D] and [Hkv·D]) before rotary. Parameter names follow <c>Olmo2ForCausalLM</c>:
/// <c>model.layers.N.self_attn.{q,k,v,o}_proj</c>, <c>…self_attn.{q,k}_norm</c>, <c>…mlp.{gate,up,down}_proj</c>,
/// <c>…post_attention_layernorm</c>, <c>…post_feedforward_layernorm</c>.
/// </summary>
public sealed class Olmo2ForCausalLM : RotaryDecoderLM
{
    internal Olmo2ForCausalLM(CausalLMConfig config) : base(nameof(Olmo2ForCausalLM), config, i => new Olmo2DecoderLayer(config, i)) { }

    sealed class Olmo2DecoderLayer : DecoderLayer
    {
        readonly SelfAttention self_attn;
        readonly GatedMlp mlp;
        readonly RMSNorm post_attention_layernorm;     // [H]
        readonly RMSNorm post_feedforward_layernorm;   // [H]

        public Olmo2DecoderLayer(CausalLMConfig c, int index) : base(nameof(Olmo2DecoderLayer))
        {
            self_attn = new SelfAttention(c, index, QkNorm.WholeProjection);
            mlp = new GatedMlp(c);
            post_attention_layernorm = new RMSNorm(c.HiddenSize, c.RmsNormEps);
            post_feedforward_layernorm = new RMSNorm(c.HiddenSize, c.RmsNormEps);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x, DecoderInputs inputs, KvCache? cache)   // x [B, T, H]
        {
            using var scope = NewDisposeScope();
            x = x + post_attention_layernorm.forward(self_attn.forward(x, inputs.Cos, inputs.Sin, inputs.FullMask, cache));
            x = x + post_feedforward_layernorm.forward(mlp.forward(x));
            return x.MoveToOuterDisposeScope();
        }
    }
}
