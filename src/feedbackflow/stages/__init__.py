"""Workflow stages that several papers run: preference conversion, sampling, reward scoring, response evaluation
and supervised fine-tuning."""
