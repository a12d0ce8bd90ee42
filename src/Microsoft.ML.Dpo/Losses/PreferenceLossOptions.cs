using System.Globalization;

namespace Microsoft.ML.Dpo;

/// <summary>Hyper-parameters of <see cref="PreferenceLoss.Compute(PreferenceLossOptions, PreferenceLossInput)"/>.</summary>
public sealed class PreferenceLossOptions
{
    /// <summary>
    /// The objective; <see cref="PreferenceLossKind.Sigmoid"/> (DPO) by default. Ignored when <see cref="Kinds"/> is set
    /// (then it must be left at its default or be one of <see cref="Kinds"/>).
    /// </summary>
    public PreferenceLossKind Kind { get; set; } = PreferenceLossKind.Sigmoid;

    /// <summary>
    /// Several objectives summed with <see cref="Weights"/> (TRL's list-valued <c>loss_type</c>), e.g.
    /// <c>[Sigmoid, BcoPair, Sft]</c> with <c>[0.8, 0.2, 1]</c> (MPO). Null (the default) means <c>[Kind]</c>. A kind may
    /// appear once.
    /// </summary>
    public IReadOnlyList<PreferenceLossKind>? Kinds { get; set; }

    /// <summary>One weight per entry of <see cref="Kinds"/> (finite, ≥ 0); null (the default) gives every kind weight 1.</summary>
    public IReadOnlyList<double>? Weights { get; set; }

    /// <summary>
    /// β, the inverse temperature of the implicit reward <c>β·(π − ref)</c>: larger values keep the policy closer to the
    /// reference (DPO's KL-penalty coefficient; IPO's τ). Must be finite and greater than 0. Default 0.1, DPO's usual value
    /// (SimPO is usually run with β ≈ 2).
    /// </summary>
    public double Beta { get; set; } = 0.1;

    /// <summary>
    /// ε, the assumed probability that a preference label is flipped, used by <see cref="PreferenceLossKind.Sigmoid"/>
    /// (ε &gt; 0 gives conservative DPO, as TRL before v1.0; TRL v1.9's sigmoid ignores ε), <see cref="PreferenceLossKind.Robust"/>,
    /// <see cref="PreferenceLossKind.ExoPair"/> (which needs ε &gt; 0), <see cref="PreferenceLossKind.Aot"/>,
    /// <see cref="PreferenceLossKind.AotUnpaired"/>, <see cref="PreferenceLossKind.SimPO"/> and <see cref="PreferenceLossKind.Cpo"/>;
    /// ignored by the other kinds. Must lie in [0, 0.5). Default 0.
    /// </summary>
    public double LabelSmoothing { get; set; }

    /// <summary>
    /// γ, SimPO's target reward margin: the loss is <c>−log σ(β·(π<sub>c</sub> − π<sub>r</sub>) − γ)</c>, so the
    /// chosen completion's reward must exceed the rejected one's by about γ before the loss flattens. Used only by
    /// <see cref="PreferenceLossKind.SimPO"/>. Must be finite and non-negative. Default 0.5 (the SimPO paper tunes
    /// γ between 0.3 and 1.6 with β between 2 and 2.5; γ/β ≈ 0.5 is TRL's default ratio).
    /// </summary>
    public double Gamma { get; set; } = 0.5;

    /// <summary>τ, the temperature of DiscoPOP's mixing coefficient σ(βΔ/τ). Must be finite and greater than 0. Default 0.05 (the paper's and TRL's).</summary>
    public double DiscoPopTau { get; set; } = 0.05;

    /// <summary>α, the weight of the NLL term inside <see cref="PreferenceLossKind.Cpo"/>. Must be finite and ≥ 0. Default 1 (TRL's <c>cpo_alpha</c>).</summary>
    public double CpoAlpha { get; set; } = 1.0;

    /// <summary>
    /// How log-ratios become scores (see <see cref="FDivergenceKind"/>); applies to every reference-based kind except
    /// <see cref="PreferenceLossKind.Aot"/>, <see cref="PreferenceLossKind.AotUnpaired"/> and
    /// <see cref="PreferenceLossKind.ApoZero"/>, which use the log-ratios as TRL does. Reference-free kinds refuse any
    /// other than the default <see cref="FDivergenceKind.ReverseKL"/>.
    /// </summary>
    public FDivergenceKind FDivergence { get; set; } = FDivergenceKind.ReverseKL;

    /// <summary>The α of <see cref="FDivergenceKind.AlphaDivergence"/>. Must be finite. Default 0.5 (TRL's <c>f_alpha_divergence_coef</c>).</summary>
    public double AlphaDivergenceCoefficient { get; set; } = 0.5;

    /// <summary>The objectives with their weights: <see cref="Kinds"/> and <see cref="Weights"/>, or <c>[(Kind, 1)]</c>.</summary>
    public IReadOnlyList<(PreferenceLossKind Kind, double Weight)> Terms =>
        Kinds is null ? [(Kind, 1.0)] : Kinds.Select((k, i) => (k, Weights is null ? 1.0 : Weights[i])).ToArray();

    /// <summary>Whether a reference model is needed: every kind except <see cref="PreferenceLossKind.SimPO"/>, <see cref="PreferenceLossKind.Cpo"/> and <see cref="PreferenceLossKind.Sft"/> compares with one.</summary>
    public bool RequiresReference => Terms.Any(t => !IsReferenceFree(t.Kind));

    /// <summary>Whether the supervised NLL of the chosen completions is needed (<see cref="PreferenceLossKind.Sft"/> or <see cref="PreferenceLossKind.Cpo"/>).</summary>
    public bool RequiresChosenNll => Terms.Any(t => t.Kind is PreferenceLossKind.Sft or PreferenceLossKind.Cpo);

    internal static bool IsReferenceFree(PreferenceLossKind kind) => kind is PreferenceLossKind.SimPO or PreferenceLossKind.Cpo or PreferenceLossKind.Sft;

    /// <summary>Throws an <see cref="ArgumentException"/> that names the offending property if any value is out of range.</summary>
    public void Validate()
    {
        if (Kinds is not null)
        {
            if (Kinds.Count == 0) throw new ArgumentException("PreferenceLossOptions.Kinds is empty; give at least one kind, or leave it null to use Kind.", nameof(Kinds));
            if (Kind != PreferenceLossKind.Sigmoid && !Kinds.Contains(Kind))
                throw new ArgumentException($"PreferenceLossOptions.Kind is {Kind} but Kinds is [{string.Join(", ", Kinds)}]; set one of them.", nameof(Kind));
            var repeated = Kinds.GroupBy(k => k).FirstOrDefault(g => g.Count() > 1);
            if (repeated is not null) throw new ArgumentException($"PreferenceLossOptions.Kinds lists {repeated.Key} twice; give it once with the summed weight.", nameof(Kinds));
        }
        if (Weights is not null)
        {
            int count = Kinds?.Count ?? 1;
            if (Weights.Count != count)
                throw new ArgumentException($"PreferenceLossOptions.Weights has {Weights.Count} entries but there {(count == 1 ? "is 1 loss kind" : $"are {count} loss kinds")}; give one weight per kind.", nameof(Weights));
            for (int i = 0; i < Weights.Count; i++)
                if (!(Weights[i] >= 0) || double.IsInfinity(Weights[i]))
                    throw new ArgumentOutOfRangeException(nameof(Weights), Weights[i], $"PreferenceLossOptions.Weights[{i}] must be a finite number ≥ 0 (got {F(Weights[i])}).");
        }
        foreach (var (kind, _) in Terms)
            if (!Enum.IsDefined(typeof(PreferenceLossKind), kind))
                throw new ArgumentOutOfRangeException(nameof(Kind), kind, $"PreferenceLossOptions.Kind has an unknown value {(int)kind}.");
        if (!Enum.IsDefined(typeof(FDivergenceKind), FDivergence))
            throw new ArgumentOutOfRangeException(nameof(FDivergence), FDivergence, $"PreferenceLossOptions.FDivergence has an unknown value {(int)FDivergence}.");
        string kinds = string.Join("+", Terms.Select(t => t.Kind));
        if (!(Beta > 0) || double.IsInfinity(Beta))
            throw new ArgumentOutOfRangeException(nameof(Beta), Beta,
                $"PreferenceLossOptions.Beta must be a finite number greater than 0 (got {F(Beta)}); {kinds} divides by or scales with β.");
        if (!(LabelSmoothing >= 0 && LabelSmoothing < 0.5))
            throw new ArgumentOutOfRangeException(nameof(LabelSmoothing), LabelSmoothing,
                $"PreferenceLossOptions.LabelSmoothing must lie in [0, 0.5) (got {F(LabelSmoothing)}): it is the probability that a label is flipped, and Robust DPO divides by 1 − 2ε.");
        if (Terms.Any(t => t.Kind == PreferenceLossKind.ExoPair) && LabelSmoothing == 0)
            throw new ArgumentOutOfRangeException(nameof(LabelSmoothing), LabelSmoothing,
                "PreferenceLossKind.ExoPair needs PreferenceLossOptions.LabelSmoothing > 0 (its target distribution is [1 − ε, ε] and it takes log ε); the EXO paper uses 1e-3.");
        if (!(Gamma >= 0) || double.IsInfinity(Gamma))
            throw new ArgumentOutOfRangeException(nameof(Gamma), Gamma,
                $"PreferenceLossOptions.Gamma (SimPO's target reward margin) must be a finite number ≥ 0 (got {F(Gamma)}).");
        if (!(DiscoPopTau > 0) || double.IsInfinity(DiscoPopTau))
            throw new ArgumentOutOfRangeException(nameof(DiscoPopTau), DiscoPopTau, $"PreferenceLossOptions.DiscoPopTau must be a finite number greater than 0 (got {F(DiscoPopTau)}).");
        if (!(CpoAlpha >= 0) || double.IsInfinity(CpoAlpha))
            throw new ArgumentOutOfRangeException(nameof(CpoAlpha), CpoAlpha, $"PreferenceLossOptions.CpoAlpha must be a finite number ≥ 0 (got {F(CpoAlpha)}).");
        if (!double.IsFinite(AlphaDivergenceCoefficient))
            throw new ArgumentOutOfRangeException(nameof(AlphaDivergenceCoefficient), AlphaDivergenceCoefficient, "PreferenceLossOptions.AlphaDivergenceCoefficient must be finite.");
        var referenceFree = Terms.Select(t => t.Kind).Where(k => k is PreferenceLossKind.SimPO or PreferenceLossKind.Cpo).ToList();
        if (FDivergence != FDivergenceKind.ReverseKL && referenceFree.Count > 0)
            throw new ArgumentException($"PreferenceLossKind.{referenceFree[0]} is reference-free and has no log-ratio for FDivergence = {FDivergence} to transform; use FDivergenceKind.ReverseKL with it.", nameof(FDivergence));
    }

    /// <summary>A copy of these options.</summary>
    public PreferenceLossOptions Clone() => new()
    {
        Kind = Kind,
        Kinds = Kinds?.ToArray(),
        Weights = Weights?.ToArray(),
        Beta = Beta,
        LabelSmoothing = LabelSmoothing,
        Gamma = Gamma,
        DiscoPopTau = DiscoPopTau,
        CpoAlpha = CpoAlpha,
        FDivergence = FDivergence,
        AlphaDivergenceCoefficient = AlphaDivergenceCoefficient,
    };

    /// <summary>A short description such as <c>Sigmoid(β=0.1, ε=0)</c> or <c>0.8·Sigmoid(β=0.1, ε=0) + 1·Sft</c>, for logs.</summary>
    public override string ToString()
    {
        string text = Kinds is null ? Describe(Kind) : string.Join(" + ", Terms.Select(t => $"{F(t.Weight)}·{Describe(t.Kind)}"));
        if (FDivergence != FDivergenceKind.ReverseKL)
            text += FDivergence == FDivergenceKind.AlphaDivergence ? $" [{FDivergence}(α={F(AlphaDivergenceCoefficient)})]" : $" [{FDivergence}]";
        return text;
    }

    string Describe(PreferenceLossKind kind) => kind switch
    {
        PreferenceLossKind.Sigmoid or PreferenceLossKind.Robust or PreferenceLossKind.ExoPair or PreferenceLossKind.Aot
            or PreferenceLossKind.AotUnpaired => $"{kind}(β={F(Beta)}, ε={F(LabelSmoothing)})",
        PreferenceLossKind.SimPO => LabelSmoothing == 0 ? $"{kind}(β={F(Beta)}, γ={F(Gamma)})" : $"{kind}(β={F(Beta)}, γ={F(Gamma)}, ε={F(LabelSmoothing)})",
        PreferenceLossKind.Cpo => $"{kind}(β={F(Beta)}, ε={F(LabelSmoothing)}, α={F(CpoAlpha)})",
        PreferenceLossKind.DiscoPop => $"{kind}(β={F(Beta)}, τ={F(DiscoPopTau)})",
        PreferenceLossKind.Sft => "Sft",
        _ => $"{kind}(β={F(Beta)})",
    };

    static string F(double v) => v.ToString("R", CultureInfo.InvariantCulture);
}
