using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests;

[TestClass]
public sealed class TorchSharpSmokeTests
{
    [TestMethod]
    public void MatmulBackwardAndAdamWStep()
    {
        using var scope = NewDisposeScope();
        var a = tensor(new float[] { 1, 2, 3, 4 }, 2, 2);
        var w = tensor(new float[] { 0.5f, -1f, 2f, 0.25f }, 2, 2).requires_grad_();
        var y = a.matmul(w);                           // [[4.5, -0.5], [9.5, -2]]
        CollectionAssert.AreEqual(new float[] { 4.5f, -0.5f, 9.5f, -2f }, y.data<float>().ToArray());
        y.sum().backward();                            // dL/dw = a^T · 1 = column sums of a per row of w
        CollectionAssert.AreEqual(new float[] { 4, 4, 6, 6 }, w.grad!.data<float>().ToArray());
        var opt = optim.AdamW(new[] { new TorchSharp.Modules.Parameter(w.detach().clone(), true) }, lr: 0.1, weight_decay: 0.01);
        var p = opt.parameters().First();
        p.grad = tensor(new float[] { 4, 4, 6, 6 }, 2, 2);
        opt.step();
        // First AdamW step: w <- w·(1 − lr·wd) − lr·sign(g) (bias-corrected m/√v = ±1), wd = 0.01.
        float[] expected = { 0.5f * 0.999f - 0.1f, -1f * 0.999f - 0.1f, 2f * 0.999f - 0.1f, 0.25f * 0.999f - 0.1f };
        var got = p.data<float>().ToArray();
        for (int i = 0; i < 4; i++) Assert.AreEqual(expected[i], got[i], 1e-5);
    }
}
