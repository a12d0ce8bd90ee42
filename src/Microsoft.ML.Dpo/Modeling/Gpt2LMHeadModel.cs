using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Modeling;

#pragma warning disable IDE1006 // field names are the Hugging Face parameter names (RegisterComponents uses them)

/// <summary>
/// GPT-2: token embedding <c>wte</c> plus learned positions <c>wpe</c>, N blocks of [LayerNorm → multi-head attention
/// (fused <c>c_attn</c>) → residual, LayerNorm → MLP with tanh-GELU → residual], final LayerNorm, output head tied to
/// <c>wte</c>. Linear weights are GPT-2 "Conv1D" parameters stored <c>[in, out]</c>, exactly as in Hugging Face checkpoints.
/// </summary>
public sealed class Gpt2LMHeadModel : CausalLM
{
    readonly Gpt2Model transformer;

    internal Gpt2LMHeadModel(CausalLMConfig config) : base(nameof(Gpt2LMHeadModel), config)
    {
        transformer = new Gpt2Model(config);
        RegisterComponents();
    }

    /// <inheritdoc/>
    public override Tensor HiddenStates(Tensor inputIds, Tensor? attentionMask = null, KvCache? cache = null)
        => transformer.forward(inputIds, attentionMask, cache);

    /// <inheritdoc/>
    public override Tensor LogitsFromHidden(Tensor hidden) => ComputePrecision.Linear(hidden, transformer.wte.weight!);   // [B, T, V]

    internal override Training.OutputHead? FusedHead => new(transformer.wte.weight!);

    sealed class Gpt2Model : nn.Module
    {
        internal readonly Embedding wte;    // [V, H]
        readonly Embedding wpe;             // [P, H]
        readonly ModuleList<Gpt2Block> h;
        readonly LayerNorm ln_f;
        readonly int _maxPositions;

        public Gpt2Model(CausalLMConfig c) : base(nameof(Gpt2Model))
        {
            wte = nn.Embedding(c.VocabSize, c.HiddenSize);
            wpe = nn.Embedding(c.MaxPositionEmbeddings, c.HiddenSize);
            h = new ModuleList<Gpt2Block>(Enumerable.Range(0, c.NumHiddenLayers).Select(i => new Gpt2Block(c, i)).ToArray());
            ln_f = new LayerNorm(c.HiddenSize, c.LayerNormEpsilon);
            _maxPositions = c.MaxPositionEmbeddings;
            RegisterComponents();
        }

        public Tensor forward(Tensor inputIds, Tensor? attentionMask, KvCache? cache)
        {
            using var scope = torch.NewDisposeScope();
            long past = cache?.Length ?? 0;
            // A packed row holds several sequences: the longest of them is what needs positions.
            long longest = PackedSequences.Of(attentionMask) is { } packed ? packed.Lengths.SelectMany(l => l).DefaultIfEmpty(0).Max() : past + inputIds.shape[1];
            if (longest > _maxPositions)
                throw new ArgumentException($"Sequence length {longest} exceeds gpt2 n_positions {_maxPositions}.", nameof(inputIds));
            var (positions, mask) = PrepareInputs(inputIds, attentionMask, past);     // [B, T], [B, 1, T, S]
            var x = wte.forward(inputIds) + wpe.forward(positions);                   // [B, T, H]
            foreach (var block in h)
                x = Checkpointing.Applies(cache)
                    ? Checkpointing.Run(block, x, [mask], (y, c) => block.forward(y, c[0]!, null))
                    : block.forward(x, mask, cache);
            x = ln_f.forward(x);
            cache?.Advance((int)inputIds.shape[1]);
            return x.MoveToOuterDisposeScope();
        }
    }

    sealed class Gpt2Block : nn.Module
    {
        readonly LayerNorm ln_1;
        readonly Gpt2Attention attn;
        readonly LayerNorm ln_2;
        readonly Gpt2Mlp mlp;

        public Gpt2Block(CausalLMConfig c, int layer) : base(nameof(Gpt2Block))
        {
            ln_1 = new LayerNorm(c.HiddenSize, c.LayerNormEpsilon);
            attn = new Gpt2Attention(c, layer);
            ln_2 = new LayerNorm(c.HiddenSize, c.LayerNormEpsilon);
            mlp = new Gpt2Mlp(c);
            RegisterComponents();
        }

        public Tensor forward(Tensor x, Tensor mask, KvCache? cache)
        {
            using var scope = torch.NewDisposeScope();
            x = x + attn.forward(ln_1.forward(x), mask, cache);    // [B, T, H]
            x = x + mlp.forward(ln_2.forward(x));
            return x.MoveToOuterDisposeScope();
        }
    }

    sealed class Gpt2Attention : nn.Module, IProjectionOwner
    {
        nn.Module<Tensor, Tensor> c_attn;   // Conv1D [H, 3H]: q | k | v
        nn.Module<Tensor, Tensor> c_proj;   // Conv1D [H, H]
        readonly int _layer, _heads, _headDim;

        public Gpt2Attention(CausalLMConfig c, int layer) : base(nameof(Gpt2Attention))
        {
            (_layer, _heads, _headDim) = (layer, c.NumAttentionHeads, c.HeadDim);
            c_attn = new Conv1D(c.HiddenSize, 3 * c.HiddenSize);
            c_proj = new Conv1D(c.HiddenSize, c.HiddenSize);
            RegisterComponents();
        }

        public Tensor forward(Tensor x, Tensor mask, KvCache? cache)
        {
            using var scope = torch.NewDisposeScope();
            long b = x.shape[0], t = x.shape[1], hidden = _heads * _headDim;
            var qkv = c_attn.forward(x);                                                             // [B, T, 3H]
            Tensor Heads(long i) => qkv.narrow(2, i * hidden, hidden).view(b, t, _heads, _headDim).transpose(1, 2);   // [B, nh, T, D]
            var (q, k, v) = (Heads(0), Heads(1), Heads(2));
            if (cache is not null)
                (k, v) = cache.Append(_layer, k, v);                                                 // [B, nh, S, D]
            var y = Attend(q, k, v, mask).transpose(1, 2).reshape(b, t, hidden);                    // [B, T, H]
            return c_proj.forward(y).MoveToOuterDisposeScope();
        }

        public IReadOnlyList<string> ProjectionSlots { get; } = new[] { "c_attn", "c_proj" };

        public nn.Module<Tensor, Tensor> GetProjection(string slot) => slot switch
        {
            "c_attn" => c_attn, "c_proj" => c_proj, _ => throw new ArgumentException(slot),
        };

        public nn.Module<Tensor, Tensor> SetProjection(string slot, nn.Module<Tensor, Tensor> replacement)
        {
            var old = GetProjection(slot);
            if (slot == "c_attn") c_attn = replacement; else c_proj = replacement;
            LlamaForCausalLM.Reregister(this, slot, replacement);
            return old;
        }
    }

    sealed class Gpt2Mlp : nn.Module, IProjectionOwner
    {
        nn.Module<Tensor, Tensor> c_fc;     // Conv1D [H, I]
        nn.Module<Tensor, Tensor> c_proj;   // Conv1D [I, H]

        public Gpt2Mlp(CausalLMConfig c) : base(nameof(Gpt2Mlp))
        {
            c_fc = new Conv1D(c.HiddenSize, c.IntermediateSize);
            c_proj = new Conv1D(c.IntermediateSize, c.HiddenSize);
            RegisterComponents();
        }

        public Tensor forward(Tensor x)
        {
            using var scope = torch.NewDisposeScope();
            var h = nn.functional.gelu(c_fc.forward(x), GELU.Approximate.tanh);   // [B, T, I]
            return c_proj.forward(h).MoveToOuterDisposeScope();                              // [B, T, H]
        }

        public IReadOnlyList<string> ProjectionSlots { get; } = new[] { "c_fc", "c_proj" };

        public nn.Module<Tensor, Tensor> GetProjection(string slot) => slot switch
        {
            "c_fc" => c_fc, "c_proj" => c_proj, _ => throw new ArgumentException(slot),
        };

        public nn.Module<Tensor, Tensor> SetProjection(string slot, nn.Module<Tensor, Tensor> replacement)
        {
            var old = GetProjection(slot);
            if (slot == "c_fc") c_fc = replacement; else c_proj = replacement;
            LlamaForCausalLM.Reregister(this, slot, replacement);
            return old;
        }
    }
}
