using QuickStart;

// The quick start: SFT then DPO (full, and LoRA unless --quick) on a built-in task (or your model and data), with the evidence written to disk.
// dotnet run --project samples/QuickStart [-- --model DIR] [--data pairs.jsonl] [--sft-data sft.jsonl] [--output DIR] [--quick]
return QuickStartApp.Run(args);
