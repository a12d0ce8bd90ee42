namespace Microsoft.ML.Dpo;

/// <summary>
/// The per-pair objective <see cref="PreferenceLoss.Compute(PreferenceLossOptions, PreferenceLossInput)"/> applies to the policy's (and, except for
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
/// Every kind takes <b>summed</b> log-probabilities over the completion tokens. <see cref="Ipo"/>, <see cref="SigmoidNorm"/>
/// and <see cref="SimPO"/> divide by the completion-token counts themselves when <see cref="PreferenceLossInput"/> carries
/// them (as TRL does; IPO's target margin 1/(2β) and SimPO's γ are on a per-token scale); without counts the values passed
/// are used as they are (a caller may pass per-token means, see <see cref="Losses.SequenceLogProbs.Mean"/>).
/// </para>
/// <para>
/// s<sub>c</sub>, s<sub>r</sub> are the <em>scores</em>: the log-ratios π − ref, or their transform under
/// <see cref="PreferenceLossOptions.FDivergence"/>; <c>Δ = s<sub>c</sub> − s<sub>r</sub></c> (equal to <c>logits</c> under
/// the default reverse KL). Names in TRL's <c>loss_type</c> spelling are read and written by <see cref="PreferenceLossNames"/>.
/// </para>
/// <para>
/// Kinds combine: <see cref="PreferenceLossOptions.Kinds"/> with <see cref="PreferenceLossOptions.Weights"/> is a
/// weighted sum (MPO is <c>[Sigmoid, BcoPair, Sft]</c> with <c>[0.8, 0.2, 1]</c>; RPO is <c>[Sigmoid, Sft]</c> with
/// <c>[1, α]</c>).
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

    /// <summary>
    /// EXO-pref (Ji et al., 2024, "Towards Efficient Exact Optimization of Language Model Alignment", eq. 16): the reverse
    /// KL from the model's two-way preference distribution softmax(β·scores) to the labels' [1 − ε, ε],
    /// <c>σ(βΔ)·(log σ(βΔ) − log(1 − ε)) + σ(−βΔ)·(log σ(−βΔ) − log ε)</c>. Requires ε &gt; 0 (the paper uses 1e-3).
    /// </summary>
    ExoPair = 5,

    /// <summary>
    /// Pairwise NCA (Chen et al., 2024, "Noise Contrastive Alignment of Language Models with Explicit Rewards"):
    /// <c>−log σ(β·s<sub>c</sub>) − ½·log σ(−β·s<sub>c</sub>) − ½·log σ(−β·s<sub>r</sub>)</c>, on each completion's own
    /// reward rather than their difference.
    /// </summary>
    NcaPair = 6,

    /// <summary>
    /// Pairwise BCO (Jung et al., 2024, "Binary Classifier Optimization for Large Language Model Alignment"), as TRL v1.9
    /// computes it: <c>−log σ(β·s<sub>c</sub>) − log σ(−β·s<sub>r</sub>)</c> (no running reward-mean shift δ; TRL dropped it).
    /// </summary>
    BcoPair = 7,

    /// <summary>
    /// SPPO with hard labels (Wu et al., 2024, "Self-Play Preference Optimization"):
    /// <c>(s<sub>c</sub> − 1/(2β))² + (s<sub>r</sub> + 1/(2β))²</c>.
    /// </summary>
    SppoHard = 8,

    /// <summary>
    /// AOT (Melnyk et al., 2024, "Distributional Preference Alignment of LLMs via Optimal Transport") for paired data: the
    /// policy's and the reference's log-ratios <c>π<sub>c</sub> − π<sub>r</sub></c> are each sorted over the batch, and
    /// the sigmoid loss (with label smoothing ε) is applied to the differences of the sorted values. Ignores
    /// the f-divergence; not combinable with WPO weighting (sorting breaks the pairing).
    /// </summary>
    Aot = 9,

    /// <summary>
    /// AOT for unpaired data: the chosen and the rejected log-ratios <c>π − ref</c> are each sorted over the batch, then
    /// the sigmoid loss (with label smoothing ε) is applied to their differences.
    /// </summary>
    AotUnpaired = 10,

    /// <summary>
    /// APO-zero (D'Oosterlinck et al., 2024, "Anchored Preference Optimization", eq. 7), for chosen answers better than the
    /// model's own: <c>1 − σ(β·(π<sub>c</sub> − ref<sub>c</sub>)) + σ(β·(π<sub>r</sub> − ref<sub>r</sub>))</c> — pushes the
    /// chosen likelihood up and the rejected one down.
    /// </summary>
    ApoZero = 11,

    /// <summary>
    /// APO-down (eq. 8), for chosen answers worse than the model's own: <c>σ(β·(π<sub>c</sub> − ref<sub>c</sub>)) + 1 − σ(βΔ)</c>
    /// — lowers both likelihoods, the rejected one more.
    /// </summary>
    ApoDown = 12,

    /// <summary>
    /// DiscoPOP (Chris Lu et al., 2024, "Discovering Preference Optimization Algorithms with and for Large Language Models",
    /// eq. 5; log-ratio modulated loss): with x = βΔ and m = σ(x/τ) (τ = <see cref="PreferenceLossOptions.DiscoPopTau"/>),
    /// <c>(1 − m)·(−log σ(x)) + m·e<sup>−x</sup></c>.
    /// </summary>
    DiscoPop = 13,

    /// <summary>
    /// The sigmoid loss on length-normalised scores: <c>−log σ(β·(s<sub>c</sub>/n<sub>c</sub> − s<sub>r</sub>/n<sub>r</sub>))</c>
    /// with n the completion-token counts.
    /// </summary>
    SigmoidNorm = 14,

    /// <summary>
    /// Supervised NLL of the chosen completions, the token-mean cross-entropy over every chosen completion token of the
    /// batch (the same value for each pair), as TRL's <c>sft</c> loss type. Alone it is SFT on the chosen answers; in a
    /// weighted list it is RPO's (Pang et al., 2024) and MPO's generation term. Contributes no rewards.
    /// </summary>
    Sft = 15,

    /// <summary>
    /// CPO (Xu et al., 2024, "Contrastive Preference Optimization"): reference-free,
    /// <c>−(1−ε)·log σ(β·(π<sub>c</sub> − π<sub>r</sub>)) − ε·log σ(−β·(π<sub>c</sub> − π<sub>r</sub>))</c> on summed
    /// log-probabilities, plus α times the chosen completions' token-mean NLL (α = <see cref="PreferenceLossOptions.CpoAlpha"/>),
    /// as TRL's CPOTrainer; rewards are <c>β·π</c>.
    /// </summary>
    Cpo = 16,
}
