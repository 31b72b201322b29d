"""Fine-Grained RLHF (Wu et al. 2023): the qa-feedback and detoxification tasks."""
