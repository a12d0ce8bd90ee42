namespace Microsoft.ML.Dpo;

/// <summary>
/// The names of <see cref="PreferenceLossKind"/> and <see cref="FDivergenceKind"/> values as TRL spells them
/// (<c>loss_type</c>, <c>f_divergence_type</c>), for command lines and configuration files; <c>simpo</c> and <c>cpo</c>
/// name TRL's CPOTrainer losses.
/// </summary>
public static class PreferenceLossNames
{
    static readonly (string Name, PreferenceLossKind Kind)[] Losses =
    [
        ("sigmoid", PreferenceLossKind.Sigmoid), ("robust", PreferenceLossKind.Robust), ("hinge", PreferenceLossKind.Hinge),
        ("ipo", PreferenceLossKind.Ipo), ("simpo", PreferenceLossKind.SimPO), ("exo_pair", PreferenceLossKind.ExoPair),
        ("nca_pair", PreferenceLossKind.NcaPair), ("bco_pair", PreferenceLossKind.BcoPair), ("sppo_hard", PreferenceLossKind.SppoHard),
        ("aot", PreferenceLossKind.Aot), ("aot_unpaired", PreferenceLossKind.AotUnpaired), ("apo_zero", PreferenceLossKind.ApoZero),
        ("apo_down", PreferenceLossKind.ApoDown), ("discopop", PreferenceLossKind.DiscoPop), ("sigmoid_norm", PreferenceLossKind.SigmoidNorm),
        ("sft", PreferenceLossKind.Sft), ("cpo", PreferenceLossKind.Cpo),
    ];

    static readonly (string Name, FDivergenceKind Kind)[] Divergences =
    [
        ("reverse_kl", FDivergenceKind.ReverseKL), ("forward_kl", FDivergenceKind.ForwardKL),
        ("js_divergence", FDivergenceKind.JsDivergence), ("alpha_divergence", FDivergenceKind.AlphaDivergence),
    ];

    /// <summary>Every loss name, in enum order.</summary>
    public static IReadOnlyList<string> LossNames { get; } = Losses.Select(l => l.Name).ToArray();

    /// <summary>Every divergence name, in enum order.</summary>
    public static IReadOnlyList<string> DivergenceNames { get; } = Divergences.Select(d => d.Name).ToArray();

    /// <summary>The TRL name of a loss kind (<c>exo_pair</c> for <see cref="PreferenceLossKind.ExoPair"/>).</summary>
    public static string Name(PreferenceLossKind kind) =>
        Losses.FirstOrDefault(l => l.Kind == kind).Name ?? throw new ArgumentOutOfRangeException(nameof(kind), kind, "Unknown PreferenceLossKind.");

    /// <summary>The TRL name of a divergence (<c>js_divergence</c>).</summary>
    public static string Name(FDivergenceKind kind) =>
        Divergences.FirstOrDefault(d => d.Kind == kind).Name ?? throw new ArgumentOutOfRangeException(nameof(kind), kind, "Unknown FDivergenceKind.");

    /// <summary>Reads a loss name (case-insensitive; '-' accepted for '_'); the error lists the known names.</summary>
    public static PreferenceLossKind ParseLoss(string name)
    {
        string key = Normalize(name);
        foreach (var (n, kind) in Losses) if (n == key) return kind;
        throw new ArgumentException($"Unknown preference loss '{name}'; known: {string.Join(", ", LossNames)}.", nameof(name));
    }

    /// <summary>Reads a divergence name; the error lists the known names.</summary>
    public static FDivergenceKind ParseDivergence(string name)
    {
        string key = Normalize(name);
        foreach (var (n, kind) in Divergences) if (n == key) return kind;
        throw new ArgumentException($"Unknown f-divergence '{name}'; known: {string.Join(", ", DivergenceNames)}.", nameof(name));
    }

    static string Normalize(string name) => (name ?? throw new ArgumentNullException(nameof(name))).Trim().ToLowerInvariant().Replace('-', '_');
}
