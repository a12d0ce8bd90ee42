using DistilledDpo;

// Zephyr's distilled DPO in miniature, on data it creates: dSFT → sample k completions per prompt → AI feedback (a judge)
// → binarize (best vs random) → dDPO → judged win rate over the SFT model on held-out prompts; and URIAL on the base model.
// dotnet run -c Release --project samples/DistilledDpo [-- --output DIR] [--completions K] [--seed S]
return DistilledDpoApp.Run(args);
