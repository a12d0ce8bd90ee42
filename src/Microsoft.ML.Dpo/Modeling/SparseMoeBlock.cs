using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Modeling;

/// <summary>
/// The sparse mixture-of-experts feed-forward block of Mixtral (<c>block_sparse_moe</c>) and Qwen3-MoE (<c>mlp</c>), as
/// Hugging Face's <c>MixtralSparseMoeBlock</c> / <c>Qwen3MoeSparseMoeBlock</c> compute it:
/// <code>
///   router logits = gate(x)                                  [N, E]   (N = B·T tokens, E experts; gate has no bias)
///   p = softmax(router logits) in float32 over all E experts
///   (w, e) = top-k of p                                      [N, k]
///   w /= Σ w   (Mixtral always; Qwen3-MoE when norm_topk_prob)
///   y[n] = Σ_j w[n, j] · expert_{e[n, j]}(x[n])              expert(x) = down(silu(gate(x)) · up(x))
/// </code>
/// Each expert runs only on the tokens routed to it: the N·k (token, slot) assignments are sorted by expert (stable,
/// so deterministic), the routed rows gathered once, each expert applied to its contiguous span, and the results put
/// back in (token, slot) order and summed over the k slots. No atomics, no dependence on thread scheduling.
/// </summary>
/// <remarks>
/// Parameter names: <c>gate.weight</c> <c>[E, H]</c> and <c>experts.{i}.{w1|w3|w2}.weight</c> (Mixtral) or
/// <c>experts.{i}.{gate_proj|up_proj|down_proj}.weight</c> (Qwen3-MoE). The router and every expert projection are
/// swappable projections (LoRA targets); the router is a slot named <c>gate</c>, which LoRA leaves alone unless asked
/// (see <see cref="CausalLM.RouterNames"/>). While a <see cref="RouterLogitsRecording"/> is active the router logits of
/// every forward pass are handed to it for the load-balancing loss.
/// </remarks>
internal sealed class SparseMoeBlock : nn.Module<Tensor, Tensor>, IProjectionOwner
{
    /// <summary>The router's slot name (its Hugging Face name).</summary>
    public const string RouterSlot = "gate";

#pragma warning disable IDE1006 // Hugging Face names
    nn.Module<Tensor, Tensor> gate;                  // [E, H]: the router
    readonly ModuleList<SwiGluExpert> experts;       // E experts, each [H → I → H]
#pragma warning restore IDE1006
    readonly int _numExperts, _topK;
    readonly bool _normalizeTopK;
    readonly double _jitter;
    readonly RouterLogitsSink _sink;

    public SparseMoeBlock(CausalLMConfig c, RouterLogitsSink sink) : base(nameof(SparseMoeBlock))
    {
        (_numExperts, _topK, _normalizeTopK, _jitter, _sink) = (c.NumExperts, c.NumExpertsPerToken, c.NormTopKProb, c.RouterJitterNoise, sink);
        gate = nn.Linear(c.HiddenSize, c.NumExperts, hasBias: false);
        var names = c.ModelType == "mixtral" ? SwiGluExpert.MixtralNames : SwiGluExpert.LlamaNames;
        experts = new ModuleList<SwiGluExpert>(Enumerable.Range(0, c.NumExperts)
            .Select(_ => new SwiGluExpert(c.HiddenSize, c.ExpertIntermediateSize, names)).ToArray());
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)                                          // [B, T, H]
    {
        using var scope = torch.NewDisposeScope();
        long b = x.shape[0], t = x.shape[1], h = x.shape[2], n = b * t;
        if (training && _jitter > 0)                                                  // Mixtral's router_jitter_noise (router and experts see it)
        {
            Checkpointing.EnsureReplayable(x.device, "the router jitter noise (router_jitter_noise)");
            x = x * torch.empty_like(x).uniform_(1.0 - _jitter, 1.0 + _jitter);
        }
        var tokens = x.reshape(n, h);                                                 // [N, H]
        var routerLogits = gate.forward(tokens);                                      // [N, E]
        _sink.Add(routerLogits);

        var probabilities = nn.functional.softmax(routerLogits.to(Precision.Wide(routerLogits.dtype)), -1);   // [N, E]
        var (weights, selected) = probabilities.topk(_topK, dim: -1);                // [N, k] each
        if (_normalizeTopK) weights = weights / weights.sum(-1, keepdim: true);
        weights = weights.to(x.dtype);

        // Dispatch: group the N·k assignments by expert (stable sort: tokens ascending within an expert).
        var expertOfSlot = selected.reshape(-1);                                      // [N·k]
        var order = expertOfSlot.sort(stable: true).Indices;                             // [N·k]: slots grouped by expert
        var tokenOfSlot = order.div(_topK, rounding_mode: RoundingMode.floor);        // [N·k]
        long[] counts = expertOfSlot.bincount(null, _numExperts).cpu().data<long>().ToArray();   // [E] on the host
        var routed = tokens.index_select(0, tokenOfSlot);                             // [N·k, H], grouped by expert
        var outputs = new List<Tensor>(_numExperts);
        long start = 0;
        for (int e = 0; e < _numExperts; e++)
        {
            if (counts[e] == 0) continue;                                             // an expert no token chose is not run
            outputs.Add(experts[e].forward(routed.narrow(0, start, counts[e])));     // [count_e, H]
            start += counts[e];
        }
        var y = torch.cat(outputs, 0) * weights.reshape(-1).index_select(0, order).unsqueeze(1);   // [N·k, H]
        var inverse = order.argsort();                                                // slot s sits at inverse[s] in y
        var result = y.index_select(0, inverse).view(n, _topK, h).sum(1);             // [N, H]
        return result.view(b, t, h).MoveToOuterDisposeScope();                        // [B, T, H]
    }

    public IReadOnlyList<string> ProjectionSlots { get; } = new[] { RouterSlot };

    public nn.Module<Tensor, Tensor> GetProjection(string slot) =>
        slot == RouterSlot ? gate : throw new ArgumentException(slot);

    public nn.Module<Tensor, Tensor> SetProjection(string slot, nn.Module<Tensor, Tensor> replacement)
    {
        var old = GetProjection(slot);
        gate = replacement;
        LlamaForCausalLM.Reregister(this, slot, replacement);
        return old;
    }
}

/// <summary>
/// One expert: the SwiGLU MLP <c>down(silu(gate(x)) · up(x))</c> without biases, under the architecture's names
/// (Mixtral <c>w1</c>/<c>w3</c>/<c>w2</c>; Qwen3-MoE <c>gate_proj</c>/<c>up_proj</c>/<c>down_proj</c>).
/// </summary>
internal sealed class SwiGluExpert : nn.Module<Tensor, Tensor>, IProjectionOwner
{
    /// <summary>Mixtral's names of the gate, up and down projections.</summary>
    public static readonly string[] MixtralNames = ["w1", "w3", "w2"];

    /// <summary>Llama's (and Qwen3-MoE's) names of the gate, up and down projections.</summary>
    public static readonly string[] LlamaNames = ["gate_proj", "up_proj", "down_proj"];

    readonly nn.Module<Tensor, Tensor>[] _projections;   // gate [I, H], up [I, H], down [H, I]
    readonly string[] _names;

    public SwiGluExpert(long hidden, long intermediate, string[] names) : base(nameof(SwiGluExpert))
    {
        _names = names;
        _projections = [nn.Linear(hidden, intermediate, hasBias: false), nn.Linear(hidden, intermediate, hasBias: false), nn.Linear(intermediate, hidden, hasBias: false)];
        // Registered in Hugging Face's order (w1, w2, w3 / gate, up, down), which is the checkpoints' order too.
        foreach (int i in names == MixtralNames ? new[] { 0, 2, 1 } : new[] { 0, 1, 2 })
            register_module(names[i], _projections[i]);
    }

    public override Tensor forward(Tensor x)                                          // [M, H]
    {
        using var scope = torch.NewDisposeScope();
        var hidden = nn.functional.silu(ComputePrecision.Project(_projections[0], x)) * ComputePrecision.Project(_projections[1], x);   // [M, I]
        return ComputePrecision.Project(_projections[2], hidden).MoveToOuterDisposeScope();                           // [M, H]
    }

    public IReadOnlyList<string> ProjectionSlots => _names == MixtralNames ? ["w1", "w2", "w3"] : _names;

    public nn.Module<Tensor, Tensor> GetProjection(string slot) => _projections[IndexOf(slot)];

    public nn.Module<Tensor, Tensor> SetProjection(string slot, nn.Module<Tensor, Tensor> replacement)
    {
        int i = IndexOf(slot);
        var old = _projections[i];
        _projections[i] = replacement;
        LlamaForCausalLM.Reregister(this, slot, replacement);
        return old;
    }

    int IndexOf(string slot) => Array.IndexOf(_names, slot) is int i and >= 0 ? i : throw new ArgumentException(slot);
}

/// <summary>
/// Where the MoE layers of one network hand their router logits while a <see cref="RouterLogitsRecording"/> is active
/// (at most one at a time). The network announces each forward pass with its attention mask, so the load-balancing
/// loss can leave padding out as Hugging Face does.
/// </summary>
internal sealed class RouterLogitsSink
{
    RouterLogitsRecording? _active;
    int _paused;

    /// <summary>Starts recording; dispose the recording to stop and free what it holds.</summary>
    public RouterLogitsRecording Start()
    {
        if (_active is not null) throw new InvalidOperationException("Router logits are already being recorded for this network.");
        return _active = new RouterLogitsRecording(() => _active = null);
    }

    /// <summary>No forward pass is recorded until the returned scope is disposed (the DPO reference pass of a LoRA policy).</summary>
    public IDisposable Pause()
    {
        _paused++;
        return new PauseScope(this);
    }

    sealed class PauseScope(RouterLogitsSink sink) : IDisposable
    {
        bool done;
        public void Dispose()
        {
            if (done) return;
            done = true;
            sink._paused--;
        }
    }

    bool Recording => _active is not null && _paused == 0;

    /// <summary>Called by the network at the start of a forward pass over <c>[B, T]</c> new tokens with mask <c>[B, past + T]</c> (or null).</summary>
    public void BeginForward(Tensor? attentionMask, long past, long batch, long length)
    {
        if (!Recording) return;
        Tensor? mask = null;
        if (attentionMask is not null)
            using (torch.no_grad()) mask = attentionMask.narrow(1, past, length).ne(0).to(ScalarType.Int64).DetachFromDisposeScope();   // [B, T]
        _active!.Forwards.Add(new RecordedForward(new List<Tensor>(), mask, batch, length));
    }

    /// <summary>Called by each MoE layer with its router logits <c>[B·T, E]</c>; they stay alive (with their autograd graph) until the recording is disposed.</summary>
    public void Add(Tensor routerLogits)
    {
        // Inside a checkpointed layer the logits leave the layer as an output of its checkpoint node, then come back here.
        if (Checkpointing.Divert(routerLogits, Recording && _active!.Forwards.Count > 0, Add)) return;
        if (!Recording || _active!.Forwards.Count == 0) return;
        _active.Forwards[^1].RouterLogits.Add(routerLogits.alias().DetachFromDisposeScope());
    }
}

/// <summary>One recorded forward pass: the router logits of each MoE layer <c>[B·T, E]</c> and the mask <c>[B, T]</c> (null: all real).</summary>
internal sealed record RecordedForward(List<Tensor> RouterLogits, Tensor? AttentionMask, long Batch, long Length);

/// <summary>The router logits recorded from a network's forward passes (see <see cref="CausalLM.RecordRouterLogits"/>); owns them.</summary>
internal sealed class RouterLogitsRecording(Action onDispose) : IDisposable
{
    bool _disposed;

    /// <summary>The forward passes recorded so far, oldest first.</summary>
    public List<RecordedForward> Forwards { get; } = new();

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var f in Forwards)
        {
            foreach (var t in f.RouterLogits) t.Dispose();
            f.AttentionMask?.Dispose();
        }
        Forwards.Clear();
        onDispose();
    }
}
