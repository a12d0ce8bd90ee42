using DistilledDpo;

// Zephyr's distilled DPO in miniature, on data it creates: dSFT → sample k completions per prompt → AI feedback (a judge)
// → binarize (best vs random) → dDPO → judged win rate over the SFT model on held-out prompts; and URIAL on the base model.
// Then the DPO paper's comparison at an equal budget of judge calls: offline DPO vs online DPO, RLOO and GRPO, as a Markdown table.
// dotnet run -c Release --project samples/DistilledDpo [-- --output DIR] [--completions K] [--seed S] [--compare online-dpo,rloo,grpo | --no-compare]
return DistilledDpoApp.Run(args);
