namespace Microsoft.ML.Dpo.Trainers;

/// <summary>The entry point of Microsoft.ML.Dpo in an ML.NET pipeline: <c>mlContext.Alignment()</c>.</summary>
public sealed class AlignmentCatalog
{
    internal AlignmentCatalog(MLContext context)
    {
        Context = context;
        Trainers = new AlignmentTrainers(context);
        Model = new AlignmentModelOperations(context);
    }

    internal MLContext Context { get; }

    /// <summary>The SFT, DPO, ORPO, KTO and reward-model trainers.</summary>
    public AlignmentTrainers Trainers { get; }

    /// <summary>Saving and loading pipelines that contain language-model transformers.</summary>
    public AlignmentModelOperations Model { get; }
}

/// <summary>The trainers of <see cref="AlignmentCatalog"/>.</summary>
public sealed class AlignmentTrainers
{
    readonly MLContext context;

    internal AlignmentTrainers(MLContext context) => this.context = context;

    /// <summary>Supervised fine-tuning on (prompt, completion) text columns.</summary>
    public SftTrainer Sft(SftTrainer.Options options) => new(context, options);

    /// <summary>Direct Preference Optimization on (prompt, chosen, rejected) text columns.</summary>
    public DpoTrainer Dpo(DpoTrainer.Options options) => new(context, options);

    /// <summary>ORPO (odds-ratio preference optimization; no reference model) on (prompt, chosen, rejected) text columns.</summary>
    public OrpoTrainer Orpo(OrpoTrainer.Options options) => new(context, options);

    /// <summary>KTO (Kahneman–Tversky optimization) on unpaired (prompt, completion, label) columns.</summary>
    public KtoTrainer Kto(KtoTrainer.Options options) => new(context, options);

    /// <summary>GRPO (online RL): K sampled completions per prompt, group-relative advantages, clipped surrogate; rewards from any judge or function.</summary>
    public GrpoTrainer Grpo(GrpoTrainer.Options options) => new(context, options);

    /// <summary>RLOO (online RL): K sampled completions per prompt, leave-one-out baseline, KL-shaped reward, REINFORCE.</summary>
    public RlooTrainer Rloo(RlooTrainer.Options options) => new(context, options);

    /// <summary>Online DPO: two sampled completions per prompt, the judge picks the better, DPO loss on the fresh pair.</summary>
    public OnlineDpoTrainer OnlineDpo(OnlineDpoTrainer.Options options) => new(context, options);

    /// <summary>A reward model (scalar head, Bradley–Terry loss) on (prompt, chosen, rejected) text columns.</summary>
    public Feedback.RewardModelTrainer RewardModel(Feedback.RewardModelTrainer.Options options) => new(context, options);
}
