using System.Text.Json;
using TorchSharp.Modules;

namespace Microsoft.ML.Dpo.Training;

/// <summary>Where a run stands: enough, with the weights and optimizer state, to resume it exactly.</summary>
internal sealed record TrainingState(int Step, int Epoch, int NextBatchInEpoch, int TotalSteps, string Fingerprint);

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

    public void Save(TrainingState state, OptimizerHelper optimizer)
    {
        Directory.CreateDirectory(directory);
        string temp = Path + ".tmp-" + Guid.NewGuid().ToString("N")[..8];
        string old = Path + ".old";
        try
        {
            Directory.CreateDirectory(temp);
            saveWeights(temp);
            optimizer.save_state_dict(System.IO.Path.Combine(temp, OptimizerFile));
            File.WriteAllText(System.IO.Path.Combine(temp, StateFile), JsonSerializer.Serialize(state));
            if (Directory.Exists(old)) Directory.Delete(old, recursive: true);
            if (Directory.Exists(Path)) Directory.Move(Path, old);
            Directory.Move(temp, Path);
            if (Directory.Exists(old)) Directory.Delete(old, recursive: true);
        }
        finally
        {
            if (Directory.Exists(temp)) Directory.Delete(temp, recursive: true);
        }
    }

    /// <summary>Loads the checkpoint into the model and optimizer; null when there is none.</summary>
    public TrainingState? TryLoad(OptimizerHelper optimizer, string expectedFingerprint)
    {
        // A crash between the two renames of Save leaves the previous checkpoint as ".old".
        string path = Directory.Exists(Path) ? Path : Directory.Exists(Path + ".old") ? Path + ".old" : "";
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
