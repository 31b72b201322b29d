"""Model classes shared by several papers: the causal-LM reward model with a linear head."""
