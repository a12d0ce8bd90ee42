namespace Microsoft.ML.Dpo.Lora;

/// <summary>
/// Low-rank adaptation (LoRA, Hu et al. 2021): each targeted projection <c>W</c> becomes <c>W + (α/r)·B·A</c> with
/// trainable <c>A</c> <c>[r, in]</c> and <c>B</c> <c>[out, r]</c> while <c>W</c> stays frozen.
/// </summary>
public sealed class LoraOptions
{
    /// <summary>The rank r of the update. Default 8.</summary>
    public int Rank { get; set; } = 8;

    /// <summary>α: the update is scaled by α / r. Default 16.</summary>
    public double Alpha { get; set; } = 16;

    /// <summary>Dropout probability applied to the adapter's input during training. Default 0.</summary>
    public double Dropout { get; set; }

    /// <summary>
    /// The projections to adapt, by short name (Llama: <c>q</c>, <c>k</c>, <c>v</c>, <c>o</c>, <c>gate</c>, <c>up</c>,
    /// <c>down</c>, the same for Qwen3, Gemma and OLMo 2; Phi-3's fused <c>qkv</c>, <c>o</c>, <c>gate_up</c>, <c>down</c>; GPT-2:
    /// <c>c_attn</c>, <c>c_proj</c>, <c>c_fc</c>), Hugging Face name (<c>q_proj</c>, <c>qkv_proj</c>, …), any dotted
    /// suffix of a projection's qualified name (<c>mlp.c_proj</c>), or <c>all-linear</c>. Null (the default) means
    /// q and v (Phi-3: qkv_proj) for the rotary models and c_attn for GPT-2, as PEFT does. Mixture-of-experts models add the experts' projections
    /// (Mixtral <c>w1</c>, <c>w2</c>, <c>w3</c>; Qwen3-MoE <c>gate</c>, <c>up</c>, <c>down</c>, which are also its dense MLP's names);
    /// their routers stay frozen — <c>all-linear</c> leaves them out — unless <c>router</c> (or a router's own name, such as
    /// <c>block_sparse_moe.gate</c>) is listed, which puts an adapter on every router.
    /// </summary>
    public IReadOnlyList<string>? TargetModules { get; set; }

    /// <summary>Seed of the random initialisation of the A matrices. Default 0.</summary>
    public int Seed { get; set; }

    /// <summary>The scaling α / r applied to the update.</summary>
    public double Scaling => Alpha / Rank;

    /// <summary>Checks the values.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A value is out of range.</exception>
    /// <exception cref="ArgumentException">A target name is empty.</exception>
    public void Validate()
    {
        if (Rank < 1) throw new ArgumentOutOfRangeException(nameof(Rank), Rank, "LoRA rank must be at least 1.");
        if (!(Alpha > 0) || double.IsInfinity(Alpha)) throw new ArgumentOutOfRangeException(nameof(Alpha), Alpha, "LoRA alpha must be a positive number.");
        if (!(Dropout >= 0 && Dropout < 1)) throw new ArgumentOutOfRangeException(nameof(Dropout), Dropout, "LoRA dropout must be in [0, 1).");
        if (TargetModules is { } t && (t.Count == 0 || t.Any(string.IsNullOrWhiteSpace)))
            throw new ArgumentException("LoRA target modules must be null (the default) or a non-empty list of names.", nameof(TargetModules));
    }

    /// <summary>A copy of these options.</summary>
    public LoraOptions Clone() => new() { Rank = Rank, Alpha = Alpha, Dropout = Dropout, TargetModules = TargetModules?.ToArray(), Seed = Seed };

    /// <summary>The options as text (for run fingerprints and logs).</summary>
    public override string ToString() =>
        $"r={Rank};alpha={Alpha:R};dropout={Dropout:R};targets={(TargetModules is null ? "default" : string.Join(",", TargetModules))};seed={Seed}";
}
