using System.Text.Json;
using Microsoft.ML.Dpo.Checkpoints;
using TorchSharp.Modules;

namespace Microsoft.ML.Dpo.Training;

/// <summary>Where a run stands: enough, with the weights and optimizer state, to resume it exactly.</summary>
// Tokens: real (non-padding) tokens of the optimizer steps taken, for num_tokens. LossScale, LossScaleGoodSteps: the float16
// loss scaler's state (null and 0 without float16 mixed precision), so a resumed run scales exactly as the uninterrupted one.
internal sealed record TrainingState(int Step, int Epoch, int NextBatchInEpoch, int TotalSteps, string Fingerprint, long Tokens = 0,
    double? LossScale = null, int LossScaleGoodSteps = 0);

/// <summary>
/// Writes and reads training checkpoints in <c>{directory}/checkpoint</c>: the trainable weights (written by the caller's
/// <c>saveWeights</c>), the optimizer state and the loop state. Writes are atomic: everything goes into a temporary
/// sibling folder that then replaces the previous checkpoint, so a crash leaves either the old or the new one.
/// </summary>
internal sealed class TrainingCheckpoint(string directory, Action<string> saveWeights, Action<string> loadWeights)
{
    const string StateFile = "trainer_state.json", OptimizerFile = "optimizer.bin";

    /// <summary>The folder of the current checkpoint.</summary>
    public string Path { get; } = System.IO.Path.Combine(directory, "checkpoint");

    public void Save(TrainingState state, OptimizerHelper optimizer) => AtomicDirectory.Write(Path, temp =>
    {
        saveWeights(temp);
        optimizer.save_state_dict(System.IO.Path.Combine(temp, OptimizerFile));
        File.WriteAllText(System.IO.Path.Combine(temp, StateFile), JsonSerializer.Serialize(state));
    }, OutputOverwrite.Always);   // the folder is the library's own: Prepare refused a foreign one before training

    /// <summary>
    /// Runs before training (and before data preparation): removes stale temporary folders that an interrupted checkpoint
    /// write left in <see cref="TrainingOptions.CheckpointDirectory"/> (only <c>.checkpoint.tmp-</c> followed by the 32-digit id
    /// this library gives them), then applies <see cref="TrainingOptions.ExistingCheckpoint"/> to a checkpoint of an earlier
    /// run: refuse, keep it for resuming, or discard it (with that run's metrics.jsonl).
    /// </summary>
    /// <exception cref="InvalidOperationException">A checkpoint exists and <see cref="ExistingCheckpointAction.Refuse"/> is set.</exception>
    /// <exception cref="OutputFolderException">The folder's <c>checkpoint</c> entry is not a checkpoint this library wrote.</exception>
    public static void Prepare(TrainingOptions options, Action<string>? log)
    {
        if (options.CheckpointDirectory is not { } directory || !Directory.Exists(directory)) return;
        if (!Distributed.DistributedWorld.Current.IsMain) return;   // data parallel: rank 0 owns the folder (its refusal stops the job)
        string current = System.IO.Path.Combine(directory, "checkpoint");
        string prefix = AtomicDirectory.TemporaryPrefix(current);
        int removed = 0;
        foreach (string stale in Directory.EnumerateDirectories(directory, prefix + "*"))
        {
            string id = System.IO.Path.GetFileName(stale)[prefix.Length..];
            if (id.Length != 32 || !id.All(char.IsAsciiHexDigitLower)) continue;     // not one of ours
            Directory.Delete(stale, recursive: true);
            removed++;
        }
        if (removed > 0) log?.Invoke($"Removed {removed} temporary folder(s) left in {directory} by an interrupted checkpoint write.");

        string previous = AtomicDirectory.PreviousVersion(current);
        var existing = new[] { current, previous }.Where(Directory.Exists).ToList();
        if (existing.Count == 0) return;
        foreach (string folder in existing)
            if (!File.Exists(System.IO.Path.Combine(folder, StateFile)) && !OutputFolder.IsOwn(folder))
                throw new OutputFolderException($"'{folder}' is not a training checkpoint this library wrote; it was left untouched. Choose another checkpoint folder.");
        switch (options.ExistingCheckpoint)
        {
            case ExistingCheckpointAction.Resume:
                return;
            case ExistingCheckpointAction.Restart:
                foreach (string folder in existing) Directory.Delete(folder, recursive: true);
                string metrics = System.IO.Path.Combine(directory, MetricsLog.FileName);
                if (File.Exists(metrics)) File.Delete(metrics);
                log?.Invoke($"Restart: discarded the checkpoint{(existing.Count > 1 ? "s" : "")} of an earlier run in {directory}.");
                return;
            default:
                throw new InvalidOperationException(
                    $"'{directory}' holds the checkpoint of an earlier run ({Describe(existing[0])}). Continue it with --resume " +
                    "(it needs the same data and options; C#: ExistingCheckpoint = Resume), discard it with --restart (C#: ExistingCheckpoint = Restart), " +
                    "or choose another checkpoint folder.");
        }
    }

    static string Describe(string folder)
    {
        try
        {
            var state = JsonSerializer.Deserialize<TrainingState>(File.ReadAllText(System.IO.Path.Combine(folder, StateFile)));
            if (state is not null) return $"step {state.Step} of {state.TotalSteps}";
        }
        catch (Exception e) when (e is JsonException or IOException or NotSupportedException) { }
        return "its state file is unreadable";
    }

    /// <summary>Loads the checkpoint into the model and optimizer; null when there is none.</summary>
    public TrainingState? TryLoad(OptimizerHelper optimizer, string expectedFingerprint)
    {
        // A crash between the two renames of Save leaves the previous checkpoint at AtomicDirectory.PreviousVersion.
        string previous = AtomicDirectory.PreviousVersion(Path);
        string path = Directory.Exists(Path) ? Path : Directory.Exists(previous) ? previous : "";
        if (path.Length == 0) return null;
        string stateFile = System.IO.Path.Combine(path, StateFile);
        var state = ReadState(stateFile);
        if (state.Fingerprint != expectedFingerprint)
            throw new InvalidOperationException($"The checkpoint in '{path}' was written by a run with other data or options (fingerprint {state.Fingerprint}, this run {expectedFingerprint}). Use another CheckpointDirectory, or discard it with ExistingCheckpoint = Restart (mldpo: --restart).");
        loadWeights(path);
        optimizer.load_state_dict(System.IO.Path.Combine(path, OptimizerFile));
        return state;
    }

    /// <summary>Reads <c>trainer_state.json</c>; a missing, truncated or malformed file is one error naming it.</summary>
    internal static TrainingState ReadState(string stateFile)
    {
        if (!File.Exists(stateFile))
            throw new FileNotFoundException($"Checkpoint state '{stateFile}' is missing; the checkpoint is incomplete. Delete the checkpoint folder to start afresh.", stateFile);
        TrainingState? state;
        try
        {
            state = JsonSerializer.Deserialize<TrainingState>(File.ReadAllText(stateFile));
        }
        catch (Exception e) when (e is JsonException or NotSupportedException or ArgumentException or InvalidOperationException)
        {
            throw new InvalidDataException($"Checkpoint state '{stateFile}' is malformed or truncated ({e.Message.ReplaceLineEndings(" ")}). Delete the checkpoint folder to start afresh.", e);
        }
        if (state is null || state.Fingerprint is null)
            throw new InvalidDataException($"Checkpoint state '{stateFile}' is empty or lacks its fields. Delete the checkpoint folder to start afresh.");
        if (state.Step < 0 || state.Epoch < 0 || state.NextBatchInEpoch < 0 || state.TotalSteps < 0)
            throw new InvalidDataException($"Checkpoint state '{stateFile}' has out-of-range values (step {state.Step}, epoch {state.Epoch}, batch {state.NextBatchInEpoch}, total steps {state.TotalSteps}).");
        return state;
    }
}
