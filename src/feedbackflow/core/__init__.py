"""Shared plumbing of every stage: table formats and atomic writes, stage arguments, checkpoints, launching, the
shared training-loop set-up, the inference loader, planning-time checks and the experiment report."""
