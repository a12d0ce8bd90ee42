using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Data;

[TestClass]
public sealed class SequenceBatchTests
{
    [TestMethod]
    public void CollatesRightPaddedRowsWithCompletionMask()
    {
        using var batch = SequenceBatch.Collate(new[] { (new[] { 5, 6 }, new[] { 7, 8, 9 }), (new[] { 5 }, new[] { 1 }) }, padId: 0, CPU);
        CollectionAssert.AreEqual(new long[] { 2, 5 }, batch.InputIds.shape);
        CollectionAssert.AreEqual(new long[] { 5, 6, 7, 8, 9, 5, 1, 0, 0, 0 }, batch.InputIds.data<long>().ToArray());
        CollectionAssert.AreEqual(new long[] { 1, 1, 1, 1, 1, 1, 1, 0, 0, 0 }, batch.AttentionMask.data<long>().ToArray());
        CollectionAssert.AreEqual(new[] { false, false, true, true, true, false, true, false, false, false }, batch.CompletionMask.data<bool>().ToArray());
        Assert.AreEqual(7L, batch.Tokens);
    }

    [TestMethod]
    public void AllTokensModeTargetsThePromptExceptTheFirstToken()
    {
        using var batch = SequenceBatch.Collate(new[] { (new[] { 5, 6 }, new[] { 7 }) }, padId: 0, CPU, completionOnlyLoss: false);
        CollectionAssert.AreEqual(new[] { false, true, true }, batch.CompletionMask.data<bool>().ToArray());
    }

    [TestMethod]
    public void TruncationKeepsThePromptEndOrStartAndCutsCompletions()
    {
        int[] prompt = [1, 2, 3, 4, 5];
        int[][] completions = [[6, 7, 8, 9], [6]];
        Assert.IsTrue(SequenceTruncation.Fit(ref prompt, completions, maxLength: 6, maxPromptLength: 3, TruncationMode.KeepEnd));
        CollectionAssert.AreEqual(new[] { 3, 4, 5 }, prompt);
        CollectionAssert.AreEqual(new[] { 6, 7, 8 }, completions[0]);
        CollectionAssert.AreEqual(new[] { 6 }, completions[1]);

        prompt = [1, 2, 3, 4, 5];
        Assert.IsTrue(SequenceTruncation.Fit(ref prompt, [[6]], 6, 3, TruncationMode.KeepStart));
        CollectionAssert.AreEqual(new[] { 1, 2, 3 }, prompt);

        prompt = [1, 2];
        Assert.IsFalse(SequenceTruncation.Fit(ref prompt, [[6, 7]], 6, 3, TruncationMode.KeepEnd));
    }
}
