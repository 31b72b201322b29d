"""Fine-Grained RLHF on qa-feedback: data, the R1/R2/R3 reward models, their PPO rewards and the evaluation."""
