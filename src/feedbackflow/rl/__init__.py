"""The PPO engine (seq2seq and causal policies), its reward-function registry and its training curves."""
