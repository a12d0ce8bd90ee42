using System.Text.Json;
using Microsoft.ML.Dpo.Checkpoints;
using TorchSharp.Modules;

namespace Microsoft.ML.Dpo.Training;

/// <summary>Where a run stands: enough, with the weights and optimizer state, to resume it exactly.</summary>
// Tokens: real (non-padding) tokens of the optimizer steps taken, for num_tokens.
internal sealed record TrainingState(int Step, int Epoch, int NextBatchInEpoch, int TotalSteps, string Fingerprint, long Tokens = 0);

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
    });

    /// <summary>Loads the checkpoint into the model and optimizer; null when there is none.</summary>
    public TrainingState? TryLoad(OptimizerHelper optimizer, string expectedFingerprint)
    {
        // A crash between the two renames of Save leaves the previous checkpoint at AtomicDirectory.PreviousVersion.
        string previous = AtomicDirectory.PreviousVersion(Path);
        string path = Directory.Exists(Path) ? Path : Directory.Exists(previous) ? previous : "";
        if (path.Length == 0) return null;
        string stateFile = System.IO.Path.Combine(path, StateFile);
        var state = JsonSerializer.Deserialize<TrainingState>(File.ReadAllText(stateFile))
            ?? throw new InvalidDataException($"Checkpoint state '{stateFile}' is empty.");
        if (state.Fingerprint != expectedFingerprint)
            throw new InvalidOperationException($"The checkpoint in '{path}' was written by a run with other data or options (fingerprint {state.Fingerprint}, this run {expectedFingerprint}). Use another CheckpointDirectory or delete it to start afresh.");
        loadWeights(path);
        optimizer.load_state_dict(System.IO.Path.Combine(path, OptimizerFile));
        return state;
    }
}
