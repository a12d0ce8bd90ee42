using System.Text;
using LLama;
using LLama.Common;
using LLama.Native;

namespace Microsoft.ML.Dpo.Tests;

/// <summary>
/// llama.cpp itself (through LLamaSharp and its CPU backend), to check what the GGUF exporter writes: the file is loaded by
/// llama.cpp's loader, tokenized by its tokenizer and run by its CPU kernels — nothing of ours reads it back.
/// </summary>
internal sealed class LlamaCpp : IDisposable
{
    static readonly StringBuilder s_log = new();
    static readonly object s_lock = new();

    static LlamaCpp()
    {
        // llama.cpp's log goes to a buffer, shown when something fails (warnings and errors only: loading is verbose).
        NativeLibraryConfig.All.WithLogCallback((level, message) =>
        {
            if (level is LLamaLogLevel.Warning or LLamaLogLevel.Error)
                lock (s_lock) s_log.Append(message);
        });
    }

    readonly ModelParams _parameters;

    /// <summary>The model's weights as llama.cpp loaded them.</summary>
    public LLamaWeights Weights { get; }

    /// <summary>Loads <paramref name="ggufPath"/> on the CPU, with an F32 KV cache so that F32 weights are compared at F32.</summary>
    public LlamaCpp(string ggufPath, int contextSize = 256)
    {
        _parameters = new ModelParams(ggufPath)
        {
            ContextSize = (uint)contextSize, BatchSize = (uint)contextSize, UBatchSize = (uint)contextSize, Threads = 2, BatchThreads = 2,
            GpuLayerCount = 0, TypeK = GGMLType.GGML_TYPE_F32, TypeV = GGMLType.GGML_TYPE_F32,
        };
        try { Weights = LLamaWeights.LoadFromFile(_parameters); }
        catch (Exception e) { throw new InvalidOperationException($"llama.cpp did not load '{ggufPath}': {e.Message}\nllama.cpp log:\n{Log()}", e); }
    }

    /// <summary>The warnings and errors llama.cpp logged so far.</summary>
    public static string Log() { lock (s_lock) return s_log.ToString(); }

    /// <summary>llama.cpp's <c>llama_tokenize(text, add_special, parse_special: true)</c>.</summary>
    public int[] Tokenize(string text, bool addSpecial) =>
        Weights.Tokenize(text, addSpecial, special: true, Encoding.UTF8).Select(t => (int)t).ToArray();

    /// <summary>
    /// Greedy continuation of <paramref name="prompt"/>: <paramref name="count"/> tokens, each the argmax of llama.cpp's logits
    /// (lowest id on ties), end-of-sequence tokens included. Also returns the logits of every step.
    /// </summary>
    public (int[] Tokens, float[][] Logits) Greedy(IReadOnlyList<int> prompt, int count)
    {
        using var context = Weights.CreateContext(_parameters);
        var batch = new LLamaBatch();
        var tokens = new List<int>();
        var logits = new List<float[]>();
        int position = 0;
        var next = prompt.Select(t => (LLamaToken)t).ToArray();
        for (int step = 0; step < count; step++)
        {
            batch.Clear();
            for (int i = 0; i < next.Length; i++) batch.Add(next[i], position + i, LLamaSeqId.Zero, i == next.Length - 1);
            position += next.Length;
            var result = context.Decode(batch);
            if (result != DecodeResult.Ok) throw new InvalidOperationException($"llama_decode: {result}\n{Log()}");
            float[] row = context.NativeHandle.GetLogitsIth(batch.TokenCount - 1).ToArray();
            logits.Add(row);
            int best = 0;
            for (int v = 1; v < row.Length; v++) if (row[v] > row[best]) best = v;
            tokens.Add(best);
            next = [(LLamaToken)best];
        }
        return (tokens.ToArray(), logits.ToArray());
    }

    /// <summary>llama.cpp's argmax after each of <paramref name="sequence"/>'s tokens, from one batch over the whole sequence (teacher forcing).</summary>
    public int[] ArgmaxAfterEach(IReadOnlyList<int> sequence)
    {
        using var context = Weights.CreateContext(_parameters);
        var batch = new LLamaBatch();
        for (int i = 0; i < sequence.Count; i++) batch.Add((LLamaToken)sequence[i], i, LLamaSeqId.Zero, true);
        var result = context.Decode(batch);
        if (result != DecodeResult.Ok) throw new InvalidOperationException($"llama_decode: {result}\n{Log()}");
        var argmax = new int[sequence.Count];
        for (int i = 0; i < sequence.Count; i++)
        {
            var row = context.NativeHandle.GetLogitsIth(i);
            int best = 0;
            for (int v = 1; v < row.Length; v++) if (row[v] > row[best]) best = v;
            argmax[i] = best;
        }
        return argmax;
    }

    public void Dispose() => Weights.Dispose();
}
