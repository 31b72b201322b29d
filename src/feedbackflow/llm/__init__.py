"""One language-model client stack: its config, the reply cache, the openai and hf backends, the judge and
generation."""
