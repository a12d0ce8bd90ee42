using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Modeling;

#pragma warning disable IDE1006 // field names are the Hugging Face parameter names (RegisterComponents uses them)

/// <summary>
/// The Llama architecture (also Mistral and Qwen2, which differ only in configuration): token embedding, N blocks of
/// [RMSNorm → grouped-query attention with rotary positions (half-split layout) → residual, RMSNorm → SwiGLU MLP → residual],
/// final RMSNorm, output head (tied to the embedding or separate). Parameter names follow <c>LlamaForCausalLM</c>.
/// Mixtral is Mistral with the MLP replaced by a sparse mixture of experts (<see cref="SparseMoeBlock"/>, registered as
/// <c>block_sparse_moe</c>).
/// </summary>
public sealed class LlamaForCausalLM : CausalLM
{
    readonly LlamaModel model;
    readonly Linear? lm_head;      // [V, H]; null when tied to model.embed_tokens
    readonly RouterLogitsSink? _routerSink;   // MoE models: where the routers' logits go while recorded

    internal LlamaForCausalLM(CausalLMConfig config) : base(nameof(LlamaForCausalLM), config)
    {
        _routerSink = config.IsMixtureOfExperts ? new RouterLogitsSink() : null;
        model = new LlamaModel(config, _routerSink);
        lm_head = config.TieWordEmbeddings ? null : nn.Linear(config.HiddenSize, config.VocabSize, hasBias: false);
        RegisterComponents();
    }

    /// <inheritdoc/>
    public override Tensor HiddenStates(Tensor inputIds, Tensor? attentionMask = null, KvCache? cache = null)
        => model.forward(inputIds, attentionMask, cache);

    private protected override RouterLogitsSink? RouterSink => _routerSink;

    /// <inheritdoc/>
    public override Tensor LogitsFromHidden(Tensor hidden)
        => lm_head is null ? ComputePrecision.Linear(hidden, model.embed_tokens.weight!) : ComputePrecision.Project(lm_head, hidden);   // [B, T, V]

    internal override Training.OutputHead? FusedHead => new((lm_head?.weight ?? model.embed_tokens.weight)!);

    sealed class LlamaModel : nn.Module
    {
        internal readonly Embedding embed_tokens;              // [V, H]
        readonly ModuleList<LlamaDecoderLayer> layers;
        readonly RMSNorm norm;
        readonly RotaryEmbedding _rope;                         // no tensors: nothing registered
        readonly int? _slidingWindow;
        readonly RouterLogitsSink? _routerSink;

        public LlamaModel(CausalLMConfig c, RouterLogitsSink? routerSink) : base(nameof(LlamaModel))
        {
            _routerSink = routerSink;
            embed_tokens = nn.Embedding(c.VocabSize, c.HiddenSize);
            layers = new ModuleList<LlamaDecoderLayer>(Enumerable.Range(0, c.NumHiddenLayers).Select(i => new LlamaDecoderLayer(c, i, routerSink)).ToArray());
            norm = new RMSNorm(c.HiddenSize, c.RmsNormEps);
            _rope = new RotaryEmbedding(c);
            _slidingWindow = c.SlidingWindow;
            RegisterComponents();
        }

        public Tensor forward(Tensor inputIds, Tensor? attentionMask, KvCache? cache)
        {
            using var scope = torch.NewDisposeScope();
            long past = cache?.Length ?? 0;
            var (positions, mask) = PrepareInputs(inputIds, attentionMask, past, _slidingWindow);   // [B, T], [B, 1, T, S]
            _routerSink?.BeginForward(attentionMask, past, inputIds.shape[0], inputIds.shape[1]);
            var x = embed_tokens.forward(inputIds);                                   // [B, T, H]
            var (cos, sin) = _rope.CosSin(positions, x.dtype);                        // [B, 1, T, D] each
            foreach (var layer in layers)
                x = Checkpointing.Applies(cache)
                    ? Checkpointing.Run(layer, x, [cos, sin, mask], (h, c) => layer.forward(h, c[0]!, c[1]!, c[2]!, null))
                    : layer.forward(x, cos, sin, mask, cache);
            x = norm.forward(x);                                                      // [B, T, H]
            cache?.Advance((int)inputIds.shape[1]);
            return x.MoveToOuterDisposeScope();
        }
    }

    sealed class LlamaDecoderLayer : nn.Module
    {
        readonly LlamaAttention self_attn;
        readonly LlamaMlp? mlp;                              // the SwiGLU MLP
        readonly SparseMoeBlock? block_sparse_moe;           // mixtral's sparse MoE block (then mlp is null)
        readonly RMSNorm input_layernorm;
        readonly RMSNorm post_attention_layernorm;

        public LlamaDecoderLayer(CausalLMConfig c, int index, RouterLogitsSink? routerSink) : base(nameof(LlamaDecoderLayer))
        {
            self_attn = new LlamaAttention(c, index);
            if (c.IsSparseLayer(index)) block_sparse_moe = new SparseMoeBlock(c, routerSink!);
            else mlp = new LlamaMlp(c);
            input_layernorm = new RMSNorm(c.HiddenSize, c.RmsNormEps);
            post_attention_layernorm = new RMSNorm(c.HiddenSize, c.RmsNormEps);
            RegisterComponents();
        }

        public Tensor forward(Tensor x, Tensor cos, Tensor sin, Tensor mask, KvCache? cache)
        {
            using var scope = torch.NewDisposeScope();
            x = x + self_attn.forward(input_layernorm.forward(x), cos, sin, mask, cache);   // [B, T, H]
            var h = post_attention_layernorm.forward(x);
            x = x + (block_sparse_moe is not null ? block_sparse_moe.forward(h) : mlp!.forward(h));
            return x.MoveToOuterDisposeScope();
        }
    }

    sealed class LlamaAttention : nn.Module, IProjectionOwner
    {
        nn.Module<Tensor, Tensor> q_proj;   // [H·D, hidden]
        nn.Module<Tensor, Tensor> k_proj;   // [Hkv·D, hidden]
        nn.Module<Tensor, Tensor> v_proj;   // [Hkv·D, hidden]
        nn.Module<Tensor, Tensor> o_proj;   // [hidden, H·D]
        readonly int _layer, _heads, _kvHeads, _headDim;

        public LlamaAttention(CausalLMConfig c, int layer) : base(nameof(LlamaAttention))
        {
            (_layer, _heads, _kvHeads, _headDim) = (layer, c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim);
            q_proj = nn.Linear(c.HiddenSize, _heads * _headDim, hasBias: c.AttentionBias);
            k_proj = nn.Linear(c.HiddenSize, _kvHeads * _headDim, hasBias: c.AttentionBias);
            v_proj = nn.Linear(c.HiddenSize, _kvHeads * _headDim, hasBias: c.AttentionBias);
            o_proj = nn.Linear(_heads * _headDim, c.HiddenSize, hasBias: c.OutputProjectionBias);
            RegisterComponents();
        }

        public Tensor forward(Tensor x, Tensor cos, Tensor sin, Tensor mask, KvCache? cache)
        {
            using var scope = torch.NewDisposeScope();
            long b = x.shape[0], t = x.shape[1];
            var q = ComputePrecision.Project(q_proj, x).view(b, t, _heads, _headDim).transpose(1, 2);      // [B, H, T, D]
            var k = ComputePrecision.Project(k_proj, x).view(b, t, _kvHeads, _headDim).transpose(1, 2);    // [B, Hkv, T, D]
            var v = ComputePrecision.Project(v_proj, x).view(b, t, _kvHeads, _headDim).transpose(1, 2);    // [B, Hkv, T, D]
            q = RotaryEmbedding.Apply(q, cos, sin);
            k = RotaryEmbedding.Apply(k, cos, sin);
            if (cache is not null)
                (k, v) = cache.Append(_layer, k, v);                                       // [B, Hkv, S, D]
            var y = Attend(q, k, v, mask);                                                 // [B, H, T, D]
            y = y.transpose(1, 2).reshape(b, t, _heads * _headDim);                        // [B, T, H·D]
            return ComputePrecision.Project(o_proj, y).MoveToOuterDisposeScope();                            // [B, T, hidden]
        }

        public IReadOnlyList<string> ProjectionSlots { get; } = new[] { "q_proj", "k_proj", "v_proj", "o_proj" };

        public nn.Module<Tensor, Tensor> GetProjection(string slot) => slot switch
        {
            "q_proj" => q_proj, "k_proj" => k_proj, "v_proj" => v_proj, "o_proj" => o_proj,
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
                default: o_proj = replacement; break;
            }
            Reregister(this, slot, replacement);
            return old;
        }
    }

    sealed class LlamaMlp : nn.Module, IProjectionOwner
    {
        nn.Module<Tensor, Tensor> gate_proj;   // [I, H]
        nn.Module<Tensor, Tensor> up_proj;     // [I, H]
        nn.Module<Tensor, Tensor> down_proj;   // [H, I]

        public LlamaMlp(CausalLMConfig c) : base(nameof(LlamaMlp))
        {
            gate_proj = nn.Linear(c.HiddenSize, c.IntermediateSize, hasBias: c.MlpBias);
            up_proj = nn.Linear(c.HiddenSize, c.IntermediateSize, hasBias: c.MlpBias);
            down_proj = nn.Linear(c.IntermediateSize, c.HiddenSize, hasBias: c.MlpBias);
            RegisterComponents();
        }

        // SwiGLU: down(silu(gate(x)) · up(x))
        public Tensor forward(Tensor x)
        {
            using var scope = torch.NewDisposeScope();
            var h = nn.functional.silu(ComputePrecision.Project(gate_proj, x)) * ComputePrecision.Project(up_proj, x);      // [B, T, I]
            return ComputePrecision.Project(down_proj, h).MoveToOuterDisposeScope();                     // [B, T, H]
        }

        public IReadOnlyList<string> ProjectionSlots { get; } = new[] { "gate_proj", "up_proj", "down_proj" };

        public nn.Module<Tensor, Tensor> GetProjection(string slot) => slot switch
        {
            "gate_proj" => gate_proj, "up_proj" => up_proj, "down_proj" => down_proj,
            _ => throw new ArgumentException(slot),
        };

        public nn.Module<Tensor, Tensor> SetProjection(string slot, nn.Module<Tensor, Tensor> replacement)
        {
            var old = GetProjection(slot);
            switch (slot)
            {
                case "gate_proj": gate_proj = replacement; break;
                case "up_proj": up_proj = replacement; break;
                default: down_proj = replacement; break;
            }
            Reregister(this, slot, replacement);
            return old;
        }
    }

    internal static void Reregister(nn.Module owner, string slot, nn.Module replacement)
    {
        owner.register_module(slot, null!);          // removes the old registration
        owner.register_module(slot, replacement);
    }
}
