using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Trainers;
using Microsoft.ML.Dpo.Training;
using Microsoft.ML.Dpo.Tests.Trainers;

namespace Microsoft.ML.Dpo.Tests.Tokenization;

/// <summary>Data preparation checks cancellation between rows, so Ctrl+C/SIGTERM stop a long tokenization (issue 14, "Hangs").</summary>
[TestClass]
public sealed class TokenizationCancellationTests
{
    [TestMethod]
    public void TokenizingPairsStopsAtTheNextRowWhenCancelled()
    {
        using var dir = new TempDirectory();
        using var model = StylePreferenceTask.CreateBaseModel(dir.Path);
        using var cancel = new CancellationTokenSource();
        int read = 0;
        IEnumerable<PreferencePair> Rows()
        {
            for (int i = 0; i < 1000; i++)
            {
                read++;
                if (i == 3) cancel.Cancel();
                yield return new PreferencePair("prompt " + i, "yes", "no", i);
            }
        }
        Assert.ThrowsExactly<OperationCanceledException>(() =>
            FineTuningRun.TokenizePairs(model, Rows(), 64, 32, TruncationMode.KeepEnd, new DataPreparationReport(), cancel.Token));
        Assert.AreEqual(4, read, "the row after the cancellation is not tokenized");
    }
}
