namespace Microsoft.ML.Dpo.Data;

/// <summary>
/// A preference pair as token ids. The prompt is tokenized once, on its own, and shared by both sequences, so the
/// chosen and rejected sequences have identical prompt tokens even for tokenizers that would merge across the
/// prompt/completion boundary if the texts were concatenated first.
/// </summary>
internal sealed record TokenizedPreference(int[] Prompt, int[] Chosen, int[] Rejected, long Row, int Index);

/// <summary>A prompt and a completion as token ids (SFT).</summary>
internal sealed record TokenizedCompletion(int[] Prompt, int[] Completion, long Row, int Index);

/// <summary>An unpaired (KTO) example as token ids: prompt, completion, and whether the completion is desirable.</summary>
internal sealed record TokenizedUnpaired(int[] Prompt, int[] Completion, bool Desirable, long Row, int Index);

/// <summary>Fits prompt and completions into the length limits.</summary>
internal static class SequenceTruncation
{
    /// <summary>
    /// The length limits within a model's context of <paramref name="context"/> positions: a longer <paramref name="maxLength"/>
    /// is capped at the context, and the prompt limit shrinks in proportion (so completions keep their share).
    /// </summary>
    public static (int MaxLength, int MaxPromptLength) WithinContext(int maxLength, int maxPromptLength, int context)
    {
        if (maxLength <= context || context < 2) return (maxLength, maxPromptLength);
        int prompt = (int)Math.Clamp((long)maxPromptLength * context / maxLength, 1, context - 1);
        return (context, Math.Min(maxPromptLength, prompt));
    }

    /// <summary>
    /// Truncates the prompt to <paramref name="maxPromptLength"/> (keeping its end or start), then each completion so that
    /// prompt + completion fits <paramref name="maxLength"/> (keeping the completion's start). Returns whether anything was cut.
    /// </summary>
    public static bool Fit(ref int[] prompt, int[][] completions, int maxLength, int maxPromptLength, Training.TruncationMode mode)
    {
        bool cut = false;
        if (prompt.Length > maxPromptLength)
        {
            prompt = mode == Training.TruncationMode.KeepEnd ? prompt[^maxPromptLength..] : prompt[..maxPromptLength];
            cut = true;
        }
        int room = maxLength - prompt.Length;
        for (int i = 0; i < completions.Length; i++)
        {
            if (completions[i].Length <= room) continue;
            completions[i] = completions[i][..room];
            cut = true;
        }
        return cut;
    }
}
