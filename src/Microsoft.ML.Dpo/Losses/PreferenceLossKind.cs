namespace Microsoft.ML.Dpo;

/// <summary>
/// The per-pair objective <see cref="PreferenceLoss.Compute"/> applies to the policy's (and, except for
/// <see cref="SimPO"/>, the reference model's) log-probabilities of the chosen and rejected completions.
/// </summary>
/// <remarks>
/// <para>
/// Notation: π<sub>c</sub>, π<sub>r</sub> are the policy's log-probabilities of the chosen and rejected completions,
/// ref<sub>c</sub>, ref<sub>r</sub> the frozen reference model's, β is <see cref="PreferenceLossOptions.Beta"/>,
/// ε is <see cref="PreferenceLossOptions.LabelSmoothing"/>, γ is <see cref="PreferenceLossOptions.Gamma"/>, σ is the
/// logistic function, and <c>logits = (π<sub>c</sub> − π<sub>r</sub>) − (ref<sub>c</sub> − ref<sub>r</sub>)</c>.
/// </para>
/// <para>
/// <see cref="Sigmoid"/>, <see cref="Robust"/> and <see cref="Hinge"/> expect <b>summed</b> log-probabilities over the
/// completion tokens (the sequence log-likelihood). <see cref="Ipo"/> and <see cref="SimPO"/> are meant to get the
/// <b>per-token mean</b> log-probability (sum divided by the number of completion tokens; see
/// <see cref="Losses.SequenceLogProbs.Mean"/>): IPO's target margin 1/(2β) and SimPO's γ are on a per-token scale.
/// The loss itself does not know which was passed; the trainer decides.
/// </para>
/// <para>
/// RPO (Pang et al., 2024, "Iterative Reasoning Preference Optimization") is not a separate kind: it is
/// <see cref="Sigmoid"/> plus α times the chosen completion's negative log-likelihood, which the trainer adds from
/// <see cref="PreferenceLoss.NegativeLogLikelihood"/> (the same term can be added to any kind).
/// </para>
/// </remarks>
public enum PreferenceLossKind
{
    /// <summary>
    /// DPO (Rafailov et al., 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward Model"):
    /// <c>−log σ(β·logits)</c>. With label smoothing ε &gt; 0 this is conservative DPO (cDPO, Mitchell, 2023, "A note
    /// on DPO with noisy preferences"), which assumes each label is flipped with probability ε:
    /// <c>−(1−ε)·log σ(β·logits) − ε·log σ(−β·logits)</c>. Expects summed log-probabilities.
    /// </summary>
    Sigmoid = 0,

    /// <summary>
    /// Robust DPO (Chowdhury et al., 2024, "Provably Robust DPO: Aligning Language Models with Noisy Feedback"): an
    /// unbiased estimate of the clean-label DPO loss under label-flip rate ε,
    /// <c>[−(1−ε)·log σ(β·logits) + ε·log σ(−β·logits)] / (1 − 2ε)</c>; requires ε &lt; 0.5 and equals DPO at ε = 0.
    /// Expects summed log-probabilities.
    /// </summary>
    Robust = 1,

    /// <summary>
    /// Hinge loss of SLiC-HF (Zhao et al., 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback"),
    /// applied to the reference-normalised margin: <c>max(0, 1 − β·logits)</c>, so 1/β acts as the margin.
    /// Label smoothing is ignored. Expects summed log-probabilities.
    /// </summary>
    Hinge = 2,

    /// <summary>
    /// IPO (Azar et al., 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences"): a squared
    /// loss that regresses the margin to a finite target instead of pushing it to infinity,
    /// <c>(logits − 1/(2β))²</c>; here β plays the role of the paper's τ. Label smoothing is ignored. Meant to get
    /// per-token mean log-probabilities.
    /// </summary>
    Ipo = 3,

    /// <summary>
    /// SimPO (Meng et al., 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward"): reference-free,
    /// <c>−log σ(β·(π<sub>c</sub> − π<sub>r</sub>) − γ)</c> with a target reward margin γ
    /// (<see cref="PreferenceLossOptions.Gamma"/>). Reference log-probabilities may be <see langword="null"/> and are
    /// ignored if given; rewards are <c>β·π</c>. Label smoothing is ignored. Meant to get per-token mean
    /// log-probabilities (the paper's length normalisation); the paper uses β around 2 to 2.5.
    /// </summary>
    SimPO = 4,
}
