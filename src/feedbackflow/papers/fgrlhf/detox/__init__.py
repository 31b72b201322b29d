"""Fine-Grained RLHF on detoxification: RealToxicityPrompts data, toxicity scorers, rewards and evaluation."""
