"""DSP, "Everyone Deserves A Reward" (Cheng et al. 2023): general (GRFT) then domain-specific (CRFT) reward
models, and their evaluation."""
