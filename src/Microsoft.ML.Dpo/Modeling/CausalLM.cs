using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Modeling;

/// <summary>
/// A decoder-only (causal) language model: token ids in, next-token logits out. Built by <see cref="Create"/> or by the
/// checkpoint loaders; parameter names (<c>state_dict()</c> keys) are the Hugging Face names of the architecture.
/// </summary>
/// <remarks>
/// Attention masks are <c>[B, past + T]</c> with 1 for real tokens and 0 for padding; position ids are derived from them
/// (cumulative sum − 1), so left-padded batches see the same positions as each prompt alone. The linear projections are
/// swappable submodules (<see cref="ProjectionNames"/>, <see cref="ReplaceProjection"/>), e.g. for LoRA.
/// </remarks>
public abstract class CausalLM : nn.Module
{
    private protected CausalLM(string name, CausalLMConfig config) : base(NativeReady(name)) => Config = config;

    /// <summary>Runs <see cref="Runtime.DpoRuntime.EnsureNativeLibrary"/> before <see cref="nn.Module"/>'s constructor touches libtorch.</summary>
    static string NativeReady(string name)
    {
        Runtime.DpoRuntime.EnsureNativeLibrary();
        return name;
    }

    /// <summary>The model's configuration.</summary>
    public CausalLMConfig Config { get; }

    /// <summary>The dtype of the parameters.</summary>
    public ScalarType DType => parameters().First().dtype;

    /// <summary>The device of the parameters.</summary>
    public Device Device => parameters().First().device;

    /// <summary>
    /// The final-normed hidden states <c>[B, T, H]</c> of <paramref name="inputIds"/> <c>[B, T]</c> (int64).
    /// </summary>
    /// <param name="inputIds">Token ids <c>[B, T]</c>, int64.</param>
    /// <param name="attentionMask">
    /// Optional <c>[B, past + T]</c> (int64 or bool): 1 for real tokens, 0 for padding. Null means all real. An int64 mask may
    /// instead number the sequences packed into a row 1, 2, … (0 still padding): each then sees only itself, with positions
    /// from 0, exactly as if it were alone in a padded row (not with a cache).
    /// </param>
    /// <param name="cache">Optional key/value cache: its past positions are attended to and this call's keys/values are appended.</param>
    public abstract Tensor HiddenStates(Tensor inputIds, Tensor? attentionMask = null, KvCache? cache = null);

    /// <summary>The output head: logits <c>[B, T, V]</c> (in the model's dtype) of hidden states <c>[B, T, H]</c>.</summary>
    public abstract Tensor LogitsFromHidden(Tensor hidden);

    /// <summary>
    /// The output head as one linear map (weight, bias, soft-cap) that computes exactly what <see cref="LogitsFromHidden"/>
    /// does, so the completion log-probs can run it a chunk of positions at a time (<see cref="Training.ChunkedLogProbs"/>);
    /// null for a head that is not such a map, which the scoring then runs whole. An override must change with <see cref="LogitsFromHidden"/>.
    /// </summary>
    internal virtual Training.OutputHead? FusedHead => null;

    /// <summary>Logits <c>[B, T, V]</c> as float32: <c>LogitsFromHidden(HiddenStates(...))</c>.</summary>
    /// <param name="inputIds">Token ids <c>[B, T]</c>, int64.</param>
    /// <param name="attentionMask">Optional <c>[B, past + T]</c> mask: 1 for real tokens, 0 for padding.</param>
    /// <param name="cache">Optional key/value cache, extended by this call.</param>
    public Tensor Forward(Tensor inputIds, Tensor? attentionMask = null, KvCache? cache = null)
    {
        using var scope = torch.NewDisposeScope();
        var logits = LogitsFromHidden(HiddenStates(inputIds, attentionMask, cache));
        // Half-precision logits are widened to float32 for the softmax; float64 models (used in gradient checks) stay float64.
        return logits.to(Precision.Wide(logits.dtype)).MoveToOuterDisposeScope();
    }

    /// <summary>An empty key/value cache for this model.</summary>
    public KvCache CreateCache() => new(Config.NumHiddenLayers);

    /// <summary>The qualified names of the swappable linear projections, e.g. <c>model.layers.0.self_attn.q_proj</c>.</summary>
    public IReadOnlyList<string> ProjectionNames =>
        named_modules().Where(m => m.module is IProjectionOwner)
            .SelectMany(m => ((IProjectionOwner)m.module).ProjectionSlots.Select(s => m.name + "." + s)).ToList();

    /// <summary>
    /// The qualified names of the routers of the sparse MoE layers (e.g. <c>model.layers.0.block_sparse_moe.gate</c>), a subset
    /// of <see cref="ProjectionNames"/>; empty for a dense model. LoRA adapts a router only when a target names it.
    /// </summary>
    public IReadOnlyList<string> RouterNames =>
        named_modules().Where(m => m.module is SparseMoeBlock).Select(m => m.name + "." + SparseMoeBlock.RouterSlot).ToList();

    /// <summary>Where this network's MoE layers put their router logits; null for a dense model.</summary>
    private protected virtual RouterLogitsSink? RouterSink => null;

    /// <summary>Records the router logits of every forward pass until disposed (for the load-balancing loss); null for a dense model.</summary>
    internal RouterLogitsRecording? RecordRouterLogits() => RouterSink?.Start();

    /// <summary>Forward passes inside the returned scope are not recorded (a reference pass through the same network).</summary>
    internal IDisposable? PauseRouterRecording() => RouterSink?.Pause();

    /// <summary>The projection module registered under the qualified <paramref name="name"/> (see <see cref="ProjectionNames"/>).</summary>
    /// <exception cref="ArgumentException">No projection has that name.</exception>
    public nn.Module<Tensor, Tensor> GetProjection(string name)
    {
        var (owner, slot) = FindOwner(name);
        return owner.GetProjection(slot);
    }

    /// <summary>
    /// Replaces the projection registered under <paramref name="name"/> by <paramref name="replacement"/> (same call signature,
    /// <c>[.., in] → [.., out]</c>), registered under the same name, so its parameters appear as <c>{name}.…</c>.
    /// Returns the module replaced (which the caller may wrap or dispose).
    /// </summary>
    /// <exception cref="ArgumentException">No projection has that name.</exception>
    public nn.Module<Tensor, Tensor> ReplaceProjection(string name, nn.Module<Tensor, Tensor> replacement)
    {
        ArgumentNullException.ThrowIfNull(replacement);
        var (owner, slot) = FindOwner(name);
        return owner.SetProjection(slot, replacement);
    }

    (IProjectionOwner Owner, string Slot) FindOwner(string name)
    {
        int dot = name.LastIndexOf('.');
        if (dot > 0)
        {
            string parent = name[..dot], slot = name[(dot + 1)..];
            foreach (var (n, m) in named_modules())
                if (n == parent && m is IProjectionOwner owner && owner.ProjectionSlots.Contains(slot))
                    return (owner, slot);
        }
        throw new ArgumentException($"'{name}' is not a projection of this model; projections are named like '{ProjectionNames.FirstOrDefault()}'.", nameof(name));
    }

    /// <summary>
    /// A new model of <paramref name="config"/> with random weights as Hugging Face initialises them (linear and embedding
    /// weights ~ N(0, 0.02), biases 0, norm weights 1, Gemma's (1 + w) norm weights 0), deterministic under <c>torch.manual_seed</c>.
    /// </summary>
    /// <param name="config">The architecture.</param>
    /// <param name="dtype">Parameter dtype: Float32 (default), BFloat16 or Float16.</param>
    /// <param name="device">Device; CPU when null.</param>
    public static CausalLM Create(CausalLMConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null)
        => CreateCore(config, dtype, device, initialize: true);

    internal static CausalLM CreateCore(CausalLMConfig config, ScalarType dtype, Device? device, bool initialize)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (dtype is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16 or ScalarType.Float64))
            throw new ArgumentException($"dtype {dtype} is not supported; use Float32, BFloat16 or Float16.", nameof(dtype));
        config.Validate();
        // TorchSharp's built-in modules create their parameters in the caller's dispose scope, which would free them
        // when that scope ends; build (and convert) inside a scope of our own and detach everything it caught.
        using var scope = torch.NewDisposeScope();
        CausalLM model = config.ModelType switch
        {
            "gpt2" => new Gpt2LMHeadModel(config.Clone()),
            "qwen3" => new Qwen3ForCausalLM(config.Clone()),
            "qwen3_moe" => new Qwen3MoeForCausalLM(config.Clone()),
            "gemma" => new GemmaForCausalLM(config.Clone()),
            "gemma2" or "gemma3_text" => new Gemma2ForCausalLM(config.Clone()),
            "phi3" => new Phi3ForCausalLM(config.Clone()),
            "olmo2" => new Olmo2ForCausalLM(config.Clone()),
            _ => new LlamaForCausalLM(config.Clone()),
        };
        scope.Detach(scope.DisposablesView.ToArray());
        try
        {
            if (initialize)
                using (torch.NewDisposeScope()) model.InitializeWeights();
            if (dtype != ScalarType.Float32) model.to(dtype);
            if (device is not null && device.type != DeviceType.CPU) model.to(device);
            scope.Detach(scope.DisposablesView.ToArray());
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    void InitializeWeights()
    {
        using var noGrad = torch.no_grad();
        foreach (var (name, p) in named_parameters())
        {
            if (p.dim() >= 2) nn.init.normal_(p, 0.0, 0.02);          // linear, embedding, Conv1D weights
            else if (name.EndsWith("bias", StringComparison.Ordinal)) p.zero_();
            else p.fill_(1.0);                                          // norm weights
        }
        foreach (var m in modules())
            if (m is GemmaRMSNorm gemmaNorm) gemmaNorm.ResetWeight();     // (1 + w) norms start at w = 0
    }

    /// <summary>
    /// Shared input preparation: position ids <c>[B, T]</c> from the mask (cumsum − 1, continuing after the cache) and the
    /// boolean attention mask <c>[B, 1, T, S]</c> (true = attend) combining causality and padding. Every query row may
    /// attend to its own position, so rows of padding queries are never fully masked (no NaN); real tokens never attend to padding.
    /// With a sliding window W, a query also ignores keys W or more positions back (counted in cache slots, as Hugging Face does).
    /// An int64 mask may hold segment ids instead of ones (a packed batch: several sequences in one row, numbered 1, 2, …
    /// left to right): positions restart at 0 with each segment and a token attends only to earlier tokens of its own
    /// segment; a 0/1 mask is the one-segment case, unchanged. A mask carrying a <see cref="PackedSequences"/> layout
    /// (<see cref="PackedSequences.Register"/>) skips the dense mask: positions come from the layout and
    /// <see cref="Attend"/> runs per sequence.
    /// </summary>
    internal static (Tensor Positions, Tensor Mask) PrepareInputs(Tensor inputIds, Tensor? attentionMask, long past, int? slidingWindow = null)
    {
        if (inputIds.dim() != 2)
            throw new ArgumentException($"inputIds must be [B, T], got [{string.Join(", ", inputIds.shape)}].", nameof(inputIds));
        long b = inputIds.shape[0], t = inputIds.shape[1], s = past + t;
        var device = inputIds.device;
        if (PackedSequences.Of(attentionMask) is { } packed)
        {
            if (past != 0 || packed.Lengths.Count != b || packed.RowLength != t)
                throw new ArgumentException($"A packed batch's mask describes [{packed.Lengths.Count}, {packed.RowLength}] tokens and no cache; got [{b}, {t}] with {past} cached positions.", nameof(attentionMask));
            return packed.Prepare(device, slidingWindow);
        }
        Tensor valid;                                                                 // [B, S] bool
        Tensor? segment = null;                                                       // [B, S] int64 segment ids (int64 masks)
        if (attentionMask is null)
            valid = torch.ones(b, s, ScalarType.Bool, device);
        else
        {
            if (attentionMask.dim() != 2 || attentionMask.shape[0] != b || attentionMask.shape[1] != s)
                throw new ArgumentException(
                    $"attentionMask must be [B, past + T] = [{b}, {s}] (past = {past} cached positions), got [{string.Join(", ", attentionMask.shape)}].",
                    nameof(attentionMask));
            valid = attentionMask.to(device).ne(0);
            if (attentionMask.dtype != ScalarType.Bool) segment = attentionMask.to(device).to(ScalarType.Int64).mul(valid);
        }
        var count = valid.to(ScalarType.Int64).cumsum(1);                             // [B, S] real tokens so far (inclusive)
        var before = count.sub(1);
        if (segment is not null)
        {
            // A segment starts where its id exceeds every id before it; its tokens count from that token's count.
            var previous = torch.cat(new[] { torch.zeros(b, 1, ScalarType.Int64, device), segment.narrow(1, 0, s - 1) }, 1).cummax(1).values;
            var start = valid.logical_and(segment.gt(previous));
            before = before.sub(torch.where(start, before, torch.zeros_like(before)).cummax(1).values);
        }
        var positions = before.clamp_min(0)                                            // [B, S]
            .narrow(1, past, t);                                                      // [B, T]
        var queryPos = torch.arange(past, s, dtype: ScalarType.Int64, device: device).view(t, 1);   // [T, 1]
        var keyPos = torch.arange(0, s, dtype: ScalarType.Int64, device: device).view(1, s);        // [1, S]
        var causal = keyPos.le(queryPos);                                             // [T, S]
        if (slidingWindow is int window) causal = causal.logical_and(queryPos.sub(keyPos).lt(window));
        var self = keyPos.eq(queryPos);                                               // [T, S]
        var keys = valid.view(b, 1, s);                                               // [B, 1, S]
        if (segment is not null)
        {
            // Same segment as the query (a padding query keeps the padded path's rule: every real key before it).
            var query = segment.narrow(1, past, t).view(b, t, 1);                         // [B, T, 1]
            keys = keys.logical_and(segment.view(b, 1, s).eq(query).logical_or(query.eq(0)));   // [B, T, S]
        }
        var mask = causal.unsqueeze(0).logical_and(keys)                              // [B, T, S]
            .logical_or(self.unsqueeze(0))
            .unsqueeze(1);                                                            // [B, 1, T, S]
        return (positions, mask);
    }

    /// <summary>
    /// Scaled dot-product attention of q <c>[B, H, T, D]</c> over k, v <c>[B, Hkv, S, D]</c> (GQA by repeating kv heads); softmax in
    /// float32. Under mixed precision (<see cref="ComputePrecision"/>) v may be half while q and k are float32 after rotary: all three are widened.
    /// </summary>
    /// <remarks>With a packed batch's marker mask (<see cref="PackedSequences"/>) each sequence is attended on its own, with SDPA's causal kernel.</remarks>
    internal static Tensor Attend(Tensor q, Tensor k, Tensor v, Tensor mask)
    {
        long h = q.shape[1], hkv = k.shape[1];
        if (hkv != h)
        {
            k = k.repeat_interleave(h / hkv, dim: 1);                                 // [B, H, S, D]
            v = v.repeat_interleave(h / hkv, dim: 1);
        }
        if (PackedSequences.Of(mask) is { } packed)
            return packed.AttendEach(q, k, v, (qs, ks, vs, m) => Sdpa(qs, ks, vs, m, causal: m is null));
        return Sdpa(q, k, v, mask, causal: false);
    }

    static Tensor Sdpa(Tensor q, Tensor k, Tensor v, Tensor? mask, bool causal)
    {
        var dtype = q.dtype;
        var wide = Precision.Wide(dtype);
        if (dtype == wide && k.dtype == wide && v.dtype == wide)
            return nn.functional.scaled_dot_product_attention(q, k, v, mask, is_casual: causal);
        return nn.functional.scaled_dot_product_attention(q.to(wide), k.to(wide), v.to(wide), mask, is_casual: causal).to(dtype);
    }
}

/// <summary>A module that holds swappable linear projections under named slots.</summary>
internal interface IProjectionOwner
{
    IReadOnlyList<string> ProjectionSlots { get; }
    nn.Module<Tensor, Tensor> GetProjection(string slot);
    nn.Module<Tensor, Tensor> SetProjection(string slot, nn.Module<Tensor, Tensor> replacement);
}
