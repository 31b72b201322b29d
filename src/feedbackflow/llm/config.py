"""The config keys every language-model client shares, with their checks (config/README.md: `rrhf.judge.*` and
the ILF LMConfig keys): which backend and model, the OpenAI-compatible endpoint with its key, retries and
concurrency, and the hf batch, device and dtype. `judge.JudgeConfig` and `language_model.LMConfig` extend it."""

from __future__ import annotations

import dataclasses

from feedbackflow.errors import ConfigError

BACKENDS = ("openai", "hf")


@dataclasses.dataclass(kw_only=True)
class ClientConfig:
    backend: str = dataclasses.field(default="openai", metadata={"help": "openai or hf"})
    model: str | None = dataclasses.field(
        default=None, metadata={"help": "model name (openai) or local path / hub id (hf); required"}
    )
    base_url: str | None = dataclasses.field(
        default=None, metadata={"help": "OpenAI-compatible endpoint, e.g. http://host:8000/v1 (openai; none = default)"}
    )
    api_key_env: str = dataclasses.field(
        default="OPENAI_API_KEY", metadata={"help": "name of the environment variable that holds the API key"}
    )
    max_concurrency: int = dataclasses.field(default=4, metadata={"help": "requests in flight at once (openai)"})
    max_retries: int = dataclasses.field(default=4, metadata={"help": "retries after the first attempt (openai)"})
    timeout_s: float = dataclasses.field(default=60.0, metadata={"help": "per-request timeout in seconds (openai)"})
    backoff_s: float = dataclasses.field(default=1.0, metadata={"help": "first retry wait; doubles each retry"})
    max_backoff_s: float = dataclasses.field(default=60.0, metadata={"help": "cap on a wait, Retry-After included"})
    batch_size: int = dataclasses.field(
        default=8, metadata={"help": "prompts per batch (hf: one generate() call or forward pass)"}
    )
    device: str | None = dataclasses.field(default=None, metadata={"help": "torch device (hf; none = cuda if any)"})
    dtype: str | None = dataclasses.field(default=None, metadata={"help": "dtype on a GPU (hf; none = bf16); CPU fp32"})

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend: {self.backend!r} is not one of {list(BACKENDS)}")
        if not self.model or not isinstance(self.model, str):
            raise ConfigError(f"model: required, a string (a model name for openai, a local path or hub id for hf), "
                              f"got {self.model!r}")
        if not self.api_key_env:
            raise ConfigError("api_key_env: must name an environment variable")
        self.check_at_least_one("max_concurrency", "batch_size")
        self.check_not_negative("max_retries", "timeout_s", "backoff_s", "max_backoff_s")

    def check_at_least_one(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")

    def check_not_negative(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must not be negative, got {getattr(self, name)}")
