using System.Globalization;

namespace Microsoft.ML.Dpo;

/// <summary>Hyper-parameters of <see cref="PreferenceLoss.Compute"/>.</summary>
public sealed class PreferenceLossOptions
{
    /// <summary>The objective; <see cref="PreferenceLossKind.Sigmoid"/> (DPO) by default.</summary>
    public PreferenceLossKind Kind { get; set; } = PreferenceLossKind.Sigmoid;

    /// <summary>
    /// β, the inverse temperature of the implicit reward <c>β·(π − ref)</c>: larger values keep the policy closer to the
    /// reference (DPO's KL-penalty coefficient; IPO's τ). Must be finite and greater than 0. Default 0.1, DPO's usual value
    /// (SimPO is usually run with β ≈ 2).
    /// </summary>
    public double Beta { get; set; } = 0.1;

    /// <summary>
    /// ε, the assumed probability that a preference label is flipped, used by <see cref="PreferenceLossKind.Sigmoid"/>
    /// (ε &gt; 0 gives conservative DPO) and <see cref="PreferenceLossKind.Robust"/>; ignored by the other kinds.
    /// Must lie in [0, 0.5). Default 0.
    /// </summary>
    public double LabelSmoothing { get; set; }

    /// <summary>
    /// γ, SimPO's target reward margin: the loss is <c>−log σ(β·(π<sub>c</sub> − π<sub>r</sub>) − γ)</c>, so the
    /// chosen completion's reward must exceed the rejected one's by about γ before the loss flattens. Used only by
    /// <see cref="PreferenceLossKind.SimPO"/>. Must be finite and non-negative. Default 0.5 (the SimPO paper tunes
    /// γ between 0.3 and 1.6 with β between 2 and 2.5; γ/β ≈ 0.5 is TRL's default ratio).
    /// </summary>
    public double Gamma { get; set; } = 0.5;

    /// <summary>Whether the kind compares against a reference model (every kind except <see cref="PreferenceLossKind.SimPO"/>).</summary>
    public bool RequiresReference => Kind != PreferenceLossKind.SimPO;

    /// <summary>Throws an <see cref="ArgumentException"/> that names the offending property if any value is out of range.</summary>
    public void Validate()
    {
        if (!Enum.IsDefined(typeof(PreferenceLossKind), Kind))
            throw new ArgumentOutOfRangeException(nameof(Kind), Kind, $"PreferenceLossOptions.Kind has an unknown value {(int)Kind}.");
        if (!(Beta > 0) || double.IsInfinity(Beta))
            throw new ArgumentOutOfRangeException(nameof(Beta), Beta,
                $"PreferenceLossOptions.Beta must be a finite number greater than 0 (got {F(Beta)}); {Kind} divides by or scales with β.");
        if (!(LabelSmoothing >= 0 && LabelSmoothing < 0.5))
            throw new ArgumentOutOfRangeException(nameof(LabelSmoothing), LabelSmoothing,
                $"PreferenceLossOptions.LabelSmoothing must lie in [0, 0.5) (got {F(LabelSmoothing)}): it is the probability that a label is flipped, and Robust DPO divides by 1 − 2ε.");
        if (!(Gamma >= 0) || double.IsInfinity(Gamma))
            throw new ArgumentOutOfRangeException(nameof(Gamma), Gamma,
                $"PreferenceLossOptions.Gamma (SimPO's target reward margin) must be a finite number ≥ 0 (got {F(Gamma)}).");
    }

    /// <summary>A copy of these options.</summary>
    public PreferenceLossOptions Clone() => new()
    {
        Kind = Kind,
        Beta = Beta,
        LabelSmoothing = LabelSmoothing,
        Gamma = Gamma,
    };

    /// <summary>A short description such as <c>Sigmoid(β=0.1, ε=0)</c>, for logs.</summary>
    public override string ToString() => Kind switch
    {
        PreferenceLossKind.Sigmoid or PreferenceLossKind.Robust => $"{Kind}(β={F(Beta)}, ε={F(LabelSmoothing)})",
        PreferenceLossKind.SimPO => $"{Kind}(β={F(Beta)}, γ={F(Gamma)})",
        _ => $"{Kind}(β={F(Beta)})",
    };

    static string F(double v) => v.ToString("R", CultureInfo.InvariantCulture);
}
