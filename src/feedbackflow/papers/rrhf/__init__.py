"""RRHF (Yuan et al. 2023): prompt sets, the imported scorer, and ranked-response fine-tuning."""
