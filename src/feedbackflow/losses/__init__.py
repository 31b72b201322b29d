"""The papers' losses as small pure torch functions: PPO (Fine-Grained RLHF), RRHF, and reward-model ranking (DSP)."""
