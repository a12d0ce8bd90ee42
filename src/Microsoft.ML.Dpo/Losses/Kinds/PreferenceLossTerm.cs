using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Microsoft.ML.Dpo.Losses.Kinds;

/// <summary>
/// What every loss unit reads for a batch of B pairs, computed once by <see cref="PreferenceLoss"/>. Notation of
/// <see cref="PreferenceLossKind"/>: π (policy, with grad), ref (detached), log-ratios u = π − ref, scores s = f(u) under
/// the f-divergence, Δ = s<sub>c</sub> − s<sub>r</sub>. Reference-based members are null for a reference-free mix.
/// </summary>
internal sealed class PairScores
{
    public required PreferenceLossOptions Options { get; init; }
    public required Tensor PolicyChosen { get; init; }              // [B]
    public required Tensor PolicyRejected { get; init; }            // [B]
    public Tensor? ReferenceChosen { get; init; }                   // [B]
    public Tensor? ReferenceRejected { get; init; }                 // [B]
    public Tensor? ChosenCounts { get; init; }                      // [B] or null: values are already per-token
    public Tensor? RejectedCounts { get; init; }                    // [B]
    public Tensor? ChosenLogratios { get; init; }                   // [B] πc − refc
    public Tensor? RejectedLogratios { get; init; }                 // [B] πr − refr
    public Tensor? ChosenScores { get; init; }                      // [B] f(uc)
    public Tensor? RejectedScores { get; init; }                    // [B] f(ur)
    public Tensor? ChosenNll { get; init; }                         // scalar

    public double Beta => Options.Beta;
    public double Epsilon => Options.LabelSmoothing;
    public Tensor Delta => Need(ChosenScores) - Need(RejectedScores);

    /// <summary>x / n per pair, or x when no counts were given.</summary>
    public Tensor PerToken(Tensor x, Tensor? counts) => counts is null ? x : x / counts.clamp_min(1);

    public static Tensor Need(Tensor? t) => t ?? throw new InvalidOperationException("A reference-based loss ran without reference log-probabilities.");
}

/// <summary>One preference loss: per-pair losses [B] from <see cref="PairScores"/>. One small class per kind.</summary>
internal abstract class PreferenceLossTerm
{
    /// <summary>The per-pair loss [B], attached to the policy's graph.</summary>
    public abstract Tensor Losses(PairScores s);

    /// <summary>
    /// The implicit rewards this kind reports, or null for none (<see cref="PreferenceLossKind.Sft"/>). The default is TRL's:
    /// <c>β·(π − ref)</c>.
    /// </summary>
    public virtual (Tensor Chosen, Tensor Rejected)? Rewards(PairScores s) =>
        (PairScores.Need(s.ChosenLogratios).detach() * s.Beta, PairScores.Need(s.RejectedLogratios).detach() * s.Beta);

    /// <summary>The unit of a kind.</summary>
    public static PreferenceLossTerm For(PreferenceLossKind kind) => kind switch
    {
        PreferenceLossKind.Sigmoid => new SigmoidLoss(),
        PreferenceLossKind.Robust => new RobustLoss(),
        PreferenceLossKind.ExoPair => new ExoPairLoss(),
        PreferenceLossKind.DiscoPop => new DiscoPopLoss(),
        PreferenceLossKind.SigmoidNorm => new SigmoidNormLoss(),
        PreferenceLossKind.Aot => new AotLoss(),
        PreferenceLossKind.AotUnpaired => new AotUnpairedLoss(),
        PreferenceLossKind.Hinge => new HingeLoss(),
        PreferenceLossKind.Ipo => new IpoLoss(),
        PreferenceLossKind.SppoHard => new SppoHardLoss(),
        PreferenceLossKind.NcaPair => new NcaPairLoss(),
        PreferenceLossKind.BcoPair => new BcoPairLoss(),
        PreferenceLossKind.ApoZero => new ApoZeroLoss(),
        PreferenceLossKind.ApoDown => new ApoDownLoss(),
        PreferenceLossKind.SimPO => new SimPOLoss(),
        PreferenceLossKind.Cpo => new CpoLoss(),
        PreferenceLossKind.Sft => new SftLoss(),
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "Unknown PreferenceLossKind."),
    };

    /// <summary>The label-smoothed logistic loss <c>−(1−ε)·log σ(x) − ε·log σ(−x)</c> several kinds share.</summary>
    protected static Tensor SmoothedLogistic(Tensor x, double epsilon) =>
        epsilon == 0 ? -F.logsigmoid(x) : -F.logsigmoid(x) * (1 - epsilon) - F.logsigmoid(-x) * epsilon;
}
