using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Modeling;

#pragma warning disable IDE1006 // field names are the Hugging Face parameter names (RegisterComponents uses them)

/// <summary>
/// Gemma (<c>gemma</c>): Llama's block with embeddings multiplied by √hidden (in the model's dtype), RMSNorm with a
/// (1 + weight) gain computed in float32, GeGLU (<c>hidden_activation</c> <c>gelu_pytorch_tanh</c>), an explicit
/// <c>head_dim</c> (heads × head_dim may differ from hidden), and the head tied to the embedding by default. Parameter names
/// follow <c>GemmaForCausalLM</c>: <c>model.layers.N.self_attn.{q,k,v,o}_proj</c>, <c>…mlp.{gate,up,down}_proj</c>,
/// <c>…input_layernorm</c>, <c>…post_attention_layernorm</c>, <c>model.norm</c>.
/// </summary>
public sealed class GemmaForCausalLM : RotaryDecoderLM
{
    internal GemmaForCausalLM(CausalLMConfig config) : base(nameof(GemmaForCausalLM), config, i => new GemmaDecoderLayer(config, i)) { }

    /// <summary>x + attn(norm(x)), then x + mlp(norm(x)), with (1 + w) norms.</summary>
    sealed class GemmaDecoderLayer : DecoderLayer
    {
        readonly SelfAttention self_attn;
        readonly GatedMlp mlp;
        readonly GemmaRMSNorm input_layernorm;            // [H]
        readonly GemmaRMSNorm post_attention_layernorm;   // [H]

        public GemmaDecoderLayer(CausalLMConfig c, int index) : base(nameof(GemmaDecoderLayer))
        {
            self_attn = new SelfAttention(c, index);
            mlp = new GatedMlp(c);
            input_layernorm = new GemmaRMSNorm(c.HiddenSize, c.RmsNormEps);
            post_attention_layernorm = new GemmaRMSNorm(c.HiddenSize, c.RmsNormEps);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x, DecoderInputs inputs, KvCache? cache)   // x [B, T, H]
        {
            using var scope = NewDisposeScope();
            x = x + self_attn.forward(input_layernorm.forward(x), inputs.Cos, inputs.Sin, inputs.FullMask, cache);
            x = x + mlp.forward(post_attention_layernorm.forward(x));
            return x.MoveToOuterDisposeScope();
        }
    }
}

/// <summary>
/// Gemma 2 (<c>gemma2</c>) and, as a variant, Gemma 3's text model (<c>gemma3_text</c>). On top of Gemma: four (1 + w) norms
/// per layer (the attention and MLP outputs are normed inside the residual branch: <c>post_attention_layernorm</c>,
/// <c>pre_feedforward_layernorm</c>, <c>post_feedforward_layernorm</c>), scores scaled by <c>query_pre_attn_scalar</c>^-0.5,
/// optional soft-capping of attention scores and final logits (cap · tanh(x / cap)), and layers that alternate between a
/// sliding window and global attention (Gemma 2: even layers slide; Gemma 3: <c>sliding_window_pattern</c> or
/// <c>layer_types</c>). Gemma 3 adds per-head (1 + w) <c>q_norm</c>/<c>k_norm</c> before rotary, and its sliding layers use
/// their own rotary base (<c>rope_local_base_freq</c>, unscaled) while global layers use <c>rope_theta</c> and
/// <c>rope_scaling</c>. Parameter names follow <c>Gemma2ForCausalLM</c> / <c>Gemma3ForCausalLM</c>.
/// </summary>
public sealed class Gemma2ForCausalLM : RotaryDecoderLM
{
    internal Gemma2ForCausalLM(CausalLMConfig config) : base(nameof(Gemma2ForCausalLM), config, i => new Gemma2DecoderLayer(config, i)) { }

    /// <summary>x + post_attn_norm(attn(norm(x))), then x + post_ff_norm(mlp(pre_ff_norm(x))).</summary>
    sealed class Gemma2DecoderLayer : DecoderLayer
    {
        readonly SelfAttention self_attn;
        readonly GatedMlp mlp;
        readonly GemmaRMSNorm input_layernorm;             // [H]
        readonly GemmaRMSNorm post_attention_layernorm;    // [H]
        readonly GemmaRMSNorm pre_feedforward_layernorm;   // [H]
        readonly GemmaRMSNorm post_feedforward_layernorm;  // [H]
        readonly bool _sliding, _localRope;

        public Gemma2DecoderLayer(CausalLMConfig c, int index) : base(nameof(Gemma2DecoderLayer))
        {
            bool gemma3 = c.ModelType == "gemma3_text";
            self_attn = new SelfAttention(c, index, gemma3 ? QkNorm.PerHead : QkNorm.None);
            mlp = new GatedMlp(c);
            input_layernorm = new GemmaRMSNorm(c.HiddenSize, c.RmsNormEps);
            post_attention_layernorm = new GemmaRMSNorm(c.HiddenSize, c.RmsNormEps);
            pre_feedforward_layernorm = new GemmaRMSNorm(c.HiddenSize, c.RmsNormEps);
            post_feedforward_layernorm = new GemmaRMSNorm(c.HiddenSize, c.RmsNormEps);
            _sliding = c.IsSlidingLayer(index);
            _localRope = gemma3 && c.LayerTypes is not null && c.LayerTypes[index] == "sliding_attention";
            RegisterComponents();
        }

        public override Tensor forward(Tensor x, DecoderInputs inputs, KvCache? cache)   // x [B, T, H]
        {
            using var scope = NewDisposeScope();
            var mask = _sliding ? inputs.SlidingMask! : inputs.FullMask;
            var (cos, sin) = _localRope ? (inputs.LocalCos!, inputs.LocalSin!) : (inputs.Cos, inputs.Sin);
            x = x + post_attention_layernorm.forward(self_attn.forward(input_layernorm.forward(x), cos, sin, mask, cache));
            x = x + post_feedforward_layernorm.forward(mlp.forward(pre_feedforward_layernorm.forward(x)));
            return x.MoveToOuterDisposeScope();
        }
    }
}
