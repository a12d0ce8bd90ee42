namespace Microsoft.ML.Dpo;

/// <summary>
/// The divergence that regularises the policy toward the reference (Wang et al., 2023, "Beyond Reverse KL: Generalizing
/// Direct Preference Optimization with Diverse Divergence Constraints"). It decides how a completion's log-ratio
/// <c>u = π − ref</c> becomes the <em>score</em> s the losses compare, <c>s = f′(e<sup>u</sup>)</c> up to constants — the
/// same transforms TRL v1.9 applies (<c>f_divergence_type</c>).
/// </summary>
public enum FDivergenceKind
{
    /// <summary>Reverse KL, standard DPO: <c>s = u</c>. The default.</summary>
    ReverseKL = 0,

    /// <summary>Forward KL: <c>s = −e<sup>−u</sup></c>.</summary>
    ForwardKL = 1,

    /// <summary>Jensen–Shannon: <c>s = log σ(u)</c>.</summary>
    JsDivergence = 2,

    /// <summary>
    /// α-divergence with α = <see cref="PreferenceLossOptions.AlphaDivergenceCoefficient"/>:
    /// <c>s = e<sup>(α−1)·u</sup> / (α − 1)</c>, the exponent clamped at 80 (at 11 for float16); α = 1 is reverse KL.
    /// </summary>
    AlphaDivergence = 3,
}
