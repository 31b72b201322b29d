"""What every `hf` backend shares: a local transformers causal LM and its tokenizer, loaded once through
`core.inference.load_for_inference` (the job's GPU when there is one, `dtype` there, float32 on the CPU; eval and
inference mode), the hash of the model directory's files that goes into every cache key (so a retrained model in
the same directory never meets the replies of the old one), and the check that a prompt fits the model's positions
(a prompt that does not is a recorded failure, never silently cut)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def directory_fingerprint(path: Path) -> str:
    """sha256 over the relative names and contents of every (non-hidden) file under a model directory."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path).as_posix()
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        digest.update(relative.encode("utf-8") + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


class HFBackendBase:
    """The model of `config` (a `ClientConfig`: model, device, dtype), loaded on first use; `attempts` counts the
    prompts run through it."""

    def __init__(self, config):
        self.config = config
        self._model = None
        self._tokenizer = None
        self._device = None
        self._fingerprint: str | None = None
        self.attempts = 0

    def hf_identity(self, **settings) -> dict:
        """The cache-key part that names the model: backend, model, `settings`, and the hash of the model
        directory's files when `model` is a directory."""
        if self._fingerprint is None:
            path = Path(self.config.model)
            self._fingerprint = directory_fingerprint(path) if path.is_dir() else ""
        identity = {"backend": "hf", "model": self.config.model, **settings}
        if self._fingerprint:
            identity["model_files_sha256"] = self._fingerprint
        return identity

    def load(self):
        """(model in eval mode on its device, tokenizer), loaded once."""
        if self._model is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from feedbackflow.core.inference import load_for_inference, model_device

            cfg = self.config
            self._tokenizer = AutoTokenizer.from_pretrained(cfg.model)
            self._model = load_for_inference(AutoModelForCausalLM, cfg.model, device=cfg.device, dtype=cfg.dtype)
            self._device = model_device(self._model)
        return self._model, self._tokenizer

    def too_long(self, length: int, extra: int, what: str) -> str | None:
        """Why a prompt of `length` tokens plus `extra` more (`what`) does not fit the model's positions, or None."""
        limit = getattr(self._model.config, "max_position_embeddings", None)
        if limit is not None and length + extra > limit:
            return f"prompt too long: {length} tokens + {what} {extra} > {limit} positions"
        return None
