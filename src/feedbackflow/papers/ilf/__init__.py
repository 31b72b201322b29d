"""ILF, imitation learning from language feedback (Scheurer et al. 2023): SLF5K data, prompts, InstructRM
selection, OPT-RM and the evaluation."""
