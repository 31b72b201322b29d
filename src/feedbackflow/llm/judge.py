"""A language-model judge: one interface, two backends, every reply cached.

Used to rate responses: the Wombat variant of RRHF (Yuan et al. 2023, "RRHF: Rank Responses to Align Language Models
with Human Feedback without tears") scores each sampled response with an LLM instead of a reward model. `Judge.complete`
answers any conversation through the same cache.

- Backends: `openai` (chat completions through `openai_backend`: `base_url`, model and the *name* of the key's
  environment variable come from the config, so OpenAI, Azure or any OpenAI-compatible server such as vLLM works;
  retries, backoff, 401/403 abort and key handling are that module's) and `hf` (a local transformers causal LM
  through `hf_backend`, greedy decoding, batched with left padding).
- Every request is cached (`client.CachedClient`) under the sha256 of a canonical JSON of everything that determines
  the reply: backend, model (for a local `hf` model directory also a hash of its files), base_url, messages,
  temperature and max_tokens. Never the key. Scores are parsed again from the stored reply on every run, so changing
  `score_pattern` / `score_min` / `score_max` needs no new request.
- An item still without a reply is recorded with status "failed" and the reason; failures are not cached, so a rerun
  retries them. A reply with no score, or a score outside [score_min, score_max], is "unparsed" with the reason:
  never guessed.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from typing import Protocol

from feedbackflow.core.formats import RANKED_RESPONSES, SCORED_SAMPLES, read_sample_rows, write_rows
from feedbackflow.core.stage_args import add_dataclass_arguments, dataclass_from_args
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.llm.cache import CachedReply
from feedbackflow.llm.client import CachedClient, ClientStats
from feedbackflow.llm.config import ClientConfig
from feedbackflow.llm.hf_backend import HFBackendBase
from feedbackflow.llm.openai_backend import MalformedReply, OpenAIBackendBase, reply_choices, reply_usage

log = logging.getLogger(__name__)

CACHE_KEY_VERSION = 1

DEFAULT_SYSTEM_PROMPT = "You are a strict and impartial judge of the quality of AI assistant responses."
DEFAULT_PROMPT_TEMPLATE = (
    "Rate how helpful, honest and harmless the assistant's response to the conversation below is, on a scale "
    "from 1 (very poor) to 10 (excellent).\n\n"
    "[Conversation]\n{prompt}\n\n"
    "[Response]\n{response}\n\n"
    "Reply with the score only: a single number from 1 to 10."
)
DEFAULT_SCORE_PATTERN = r"(-?\d+(?:\.\d+)?)"


@dataclasses.dataclass(kw_only=True)
class JudgeConfig(ClientConfig):
    """The shared client keys (`config.ClientConfig`) and the judge's own: its prompts, how a score is read, and
    the decoding."""

    system_prompt: str = dataclasses.field(
        default=DEFAULT_SYSTEM_PROMPT, metadata={"help": "system message; empty = none"}
    )
    prompt_template: str = dataclasses.field(
        default=DEFAULT_PROMPT_TEMPLATE, metadata={"help": "user message, str.format with {prompt} and {response}"}
    )
    score_pattern: str = dataclasses.field(
        default=DEFAULT_SCORE_PATTERN, metadata={"help": "regex with one group: the score (first match is used)"}
    )
    score_min: float = dataclasses.field(default=1.0, metadata={"help": "lowest valid score"})
    score_max: float = dataclasses.field(default=10.0, metadata={"help": "highest valid score"})
    temperature: float = dataclasses.field(default=0.0, metadata={"help": "sampling temperature (hf: must be 0)"})
    max_tokens: int = dataclasses.field(default=16, metadata={"help": "most tokens in a reply"})

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            self.prompt_template.format(prompt="p", response="r")
        except (KeyError, IndexError, ValueError) as error:
            raise ConfigError(
                f"prompt_template: cannot be formatted with only {{prompt}} and {{response}} ({error!r}); "
                "write a literal brace as {{ or }}"
            ) from error
        try:
            groups = re.compile(self.score_pattern).groups
        except re.error as error:
            raise ConfigError(f"score_pattern: not a valid regex ({error})") from error
        if groups != 1:
            raise ConfigError(f"score_pattern: needs exactly one group (the score), has {groups}")
        if not self.score_min <= self.score_max:
            raise ConfigError(f"score_min ({self.score_min}) must not exceed score_max ({self.score_max})")
        self.check_at_least_one("max_tokens")
        self.check_not_negative("temperature")
        if self.backend == "hf" and self.temperature != 0:
            raise ConfigError("temperature: the hf backend decodes greedily; set temperature to 0")


# --------------------------------------------------------------------------------------------------------------
# Parsing


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_score_with_reason(
    reply: str, pattern: str | re.Pattern, lo: float, hi: float
) -> tuple[float | None, str | None]:
    """(score, None) when `reply` holds a score in [lo, hi], else (None, why not)."""
    match = re.search(pattern, reply)
    if match is None:
        return None, f"no score in reply {_short(reply)}"
    try:
        score = float(match.group(1))
    except (TypeError, ValueError):
        return None, f"cannot read a number from {match.group(1)!r} in reply {_short(reply)}"
    if not math.isfinite(score) or not lo <= score <= hi:
        return None, f"score {match.group(1)} outside [{lo:g}, {hi:g}] in reply {_short(reply)}"
    return score, None


def parse_score(reply: str, pattern: str | re.Pattern, lo: float, hi: float) -> float | None:
    """The first match of `pattern`'s group in `reply` as a float, or None when absent or outside [lo, hi]."""
    return parse_score_with_reason(reply, pattern, lo, hi)[0]


# --------------------------------------------------------------------------------------------------------------
# Backends


@dataclasses.dataclass(frozen=True)
class Reply:
    """One backend outcome: `text` set on success, else `error` says why."""

    text: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None


Messages = list[dict[str, str]]


class Backend(Protocol):
    def identity(self) -> dict:
        """What, besides the messages and sampling settings, determines a reply (goes into the cache key)."""

    def run(self, conversations: Sequence[Messages], on_reply: Callable[[int, Reply], None]) -> None:
        """Answer every conversation; call `on_reply(index, reply)` as each one is done."""


class OpenAIBackend(OpenAIBackendBase):
    """Chat completions through the official `openai` client, with `openai_backend`'s retries and concurrency."""

    thread_name_prefix = "judge"

    def _attempt(self, client, messages: Messages) -> Reply:
        response = client.chat.completions.create(
            model=self.config.model,
            messages=messages,
            temperature=self.config.temperature,
            max_tokens=self.config.max_tokens,
        )
        content = getattr(getattr(reply_choices(response)[0], "message", None), "content", None)
        if not isinstance(content, str):
            raise MalformedReply("no message content in the reply")
        prompt_tokens, completion_tokens = reply_usage(response)
        return Reply(text=content, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

    def request(self, messages: Messages) -> Reply:
        """One conversation, with retries; never raises for a per-request failure (ConfigError for 401/403)."""
        reply, error = self.connection.call(lambda client: self._attempt(client, messages))
        return reply if reply is not None else Reply(text=None, error=error)

    def run(self, conversations: Sequence[Messages], on_reply: Callable[[int, Reply], None]) -> None:
        self.connection.map(len(conversations), lambda index: on_reply(index, self.request(conversations[index])))


def plain_prompt_text(messages: Messages) -> str:
    """What the `hf` backend feeds a model without a chat template: the non-empty contents joined by a blank line."""
    return "\n\n".join(m["content"] for m in messages if m["content"])


class HFBackend(HFBackendBase):
    """A local transformers causal LM: chat template when the tokenizer has one, greedy decoding, left padding."""

    def identity(self) -> dict:
        return self.hf_identity(base_url=None)

    def prompt_ids(self, messages: Messages) -> list[int]:
        """Token ids of a conversation: the chat template if there is one, else `plain_prompt_text` after bos."""
        _, tokenizer = self.load()
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids = list(tokenizer(plain_prompt_text(messages), add_special_tokens=True)["input_ids"])
        bos = tokenizer.bos_token_id
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return ids

    def run(self, conversations: Sequence[Messages], on_reply: Callable[[int, Reply], None]) -> None:
        if not conversations:
            return
        import torch

        from feedbackflow.text.tokens import pad_id_of, pad_left

        model, tokenizer = self.load()
        cfg = self.config
        pad, eos = pad_id_of(tokenizer), tokenizer.eos_token_id
        pending: list[tuple[int, list[int]]] = []
        for index, messages in enumerate(conversations):
            ids = self.prompt_ids(messages)
            error = self.too_long(len(ids), cfg.max_tokens, "max_tokens")
            if error:
                on_reply(index, Reply(text=None, error=error))
            else:
                pending.append((index, ids))
        for start in range(0, len(pending), cfg.batch_size):
            batch = pending[start : start + cfg.batch_size]
            input_ids, mask = pad_left([ids for _, ids in batch], pad)
            width = input_ids.shape[1]
            self.attempts += len(batch)
            with torch.inference_mode():
                out = model.generate(
                    input_ids=input_ids.to(self._device),
                    attention_mask=mask.to(self._device),
                    max_new_tokens=cfg.max_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                    eos_token_id=eos,
                )
            for row, (index, ids) in enumerate(batch):
                generated = out[row, width:].tolist()
                count = generated.index(eos) + 1 if eos is not None and eos in generated else len(generated)
                text = tokenizer.decode(generated[:count], skip_special_tokens=True)
                on_reply(index, Reply(text=text, prompt_tokens=len(ids), completion_tokens=count))


# --------------------------------------------------------------------------------------------------------------
# The judge


@dataclasses.dataclass(frozen=True)
class Completion:
    """A reply to one conversation: `text` set when ok, else `error`; `cached` when it came from the cache."""

    text: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cached: bool
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.text is not None


@dataclasses.dataclass(frozen=True)
class Rating:
    """A judged response: status "ok" (score set), "unparsed" (reply without a valid score) or "failed"."""

    score: float | None
    status: str
    reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cached: bool


def make_backend(config: JudgeConfig) -> Backend:
    return OpenAIBackend(config) if config.backend == "openai" else HFBackend(config)


def rating_messages(config: JudgeConfig, prompt: str, response: str) -> Messages:
    """The conversation that asks for a rating of `response` to `prompt`: system prompt (if any) + the template."""
    user = config.prompt_template.format(prompt=prompt, response=response)
    system = [{"role": "system", "content": config.system_prompt}] if config.system_prompt else []
    return [*system, {"role": "user", "content": user}]


def _completion(reply: Reply, request: dict) -> tuple[Completion, CachedReply | None]:
    """A backend's reply as a Completion, and what the cache stores of it (nothing for a failure)."""
    completion = Completion(reply.text, reply.prompt_tokens, reply.completion_tokens, cached=False, error=reply.error)
    stored = None if reply.text is None else CachedReply(reply.text, reply.prompt_tokens, reply.completion_tokens)
    return completion, stored


def _cached_completion(hit: CachedReply, request: dict) -> Completion:
    return Completion(hit.text, hit.prompt_tokens, hit.completion_tokens, cached=True)


class Judge(CachedClient):
    """Cached completions and ratings through one backend. Use as a context manager (closes the cache)."""

    def __init__(self, config: JudgeConfig, cache_path: str | os.PathLike, backend: Backend | None = None):
        super().__init__(config, cache_path, backend or make_backend(config))
        self._pattern = re.compile(config.score_pattern)

    @property
    def scorer(self) -> str:
        return f"judge:{self.config.backend}:{self.config.model}"

    name = scorer

    def messages(self, prompt: str, response: str) -> Messages:
        """The conversation that asks for a rating of `response` to `prompt`."""
        return rating_messages(self.config, prompt, response)

    def _request(self, messages: Messages) -> dict:
        return {
            "v": CACHE_KEY_VERSION,
            **self.backend.identity(),
            "messages": messages,
            "temperature": float(self.config.temperature),
            "max_tokens": int(self.config.max_tokens),
        }

    def _send(self, requests: list[dict], on_reply: Callable[[int, Reply], None]) -> None:
        self.backend.run([request["messages"] for request in requests], on_reply)

    def complete(self, conversations: Sequence[Messages]) -> list[Completion]:
        """Replies to `conversations` (lists of {"role", "content"}), from the cache or the backend.

        Identical conversations are sent once. Each reply is written to the cache as it arrives.
        """
        conversations = [[{"role": str(m["role"]), "content": str(m["content"])} for m in c] for c in conversations]
        requests = [self._request(messages) for messages in conversations]
        return self.answer(requests, self._send, _cached_completion, _completion)

    def rating(self, completion: Completion) -> Rating:
        """Parse a completion into a Rating (the parse is redone from the stored reply every time)."""
        if completion.text is None:
            return Rating(None, "failed", completion.error, None, None, completion.cached)
        score, reason = parse_score_with_reason(
            completion.text, self._pattern, self.config.score_min, self.config.score_max
        )
        return Rating(
            score,
            "ok" if score is not None else "unparsed",
            reason,
            completion.prompt_tokens,
            completion.completion_tokens,
            completion.cached,
        )

    def rate(self, pairs: Sequence[tuple[str, str]]) -> list[Rating]:
        """Rate each (prompt, response) pair."""
        completions = self.complete([self.messages(prompt, response) for prompt, response in pairs])
        ratings = [self.rating(c) for c in completions]
        for rating in ratings:
            setattr(self.stats, rating.status, getattr(self.stats, rating.status) + 1)
        return ratings


# --------------------------------------------------------------------------------------------------------------
# The stage


def judge_samples(
    samples_path: str | os.PathLike,
    output_path: str | os.PathLike,
    cache_path: str | os.PathLike,
    config: JudgeConfig,
    backend: Backend | None = None,
) -> ClientStats:
    """Rate every sample of a SAMPLES Parquet and write a SCORED_SAMPLES Parquet (atomically); return the counts."""
    rows = read_sample_rows(samples_path)
    with Judge(config, cache_path, backend=backend) as judge:
        ratings = judge.rate([(row["prompt"], row["response"]) for row in rows])
        scorer = judge.scorer
        stats = judge.stats
    out = [
        {
            **row,
            "score": rating.score,
            "status": rating.status,
            "reason": rating.reason,
            "scorer": scorer,
            "prompt_tokens": rating.prompt_tokens,
            "completion_tokens": rating.completion_tokens,
        }
        for row, rating in zip(rows, ratings, strict=True)
    ]
    write_rows(out, output_path, SCORED_SAMPLES)
    log.info(
        "%s: %d samples -> %s; %d unique requests, %d cache hits, %d sent (%d attempts, %d replies, "
        "%d+%d tokens); ok %d, unparsed %d, failed %d",
        scorer,
        stats.items,
        output_path,
        stats.unique_requests,
        stats.cache_hits,
        stats.requests_sent,
        stats.attempts,
        stats.replies,
        stats.prompt_tokens,
        stats.completion_tokens,
        stats.ok,
        stats.unparsed,
        stats.failed,
    )
    if stats.failed:
        reasons = sorted({r.reason for r in ratings if r.status == "failed"})
        log.warning("%s: %d samples failed (a rerun retries them); reasons: %s", scorer, stats.failed, reasons[:5])
    return stats


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", required=True, help="samples Parquet (prompt_id, prompt, response, ...)")
    parser.add_argument("--output", required=True, help="scored-samples Parquet to write")
    parser.add_argument("--cache", required=True, help="SQLite reply cache (created if absent; shared across runs)")
    add_dataclass_arguments(parser, JudgeConfig)


def main(args: argparse.Namespace) -> None:
    config = dataclass_from_args(JudgeConfig, args)
    judge_samples(args.samples, args.output, args.cache, config)


# --------------------------------------------------------------------------------------------------------------
# Training data for a local judge (tiny scale)


def rating_sft_rows(rows: Sequence[dict], config: JudgeConfig, targets: dict[str, float]) -> list[dict]:
    """RANKED_RESPONSES rows that teach a local causal LM to be the `hf` judge: one row per sample whose origin has a
    target, query = exactly the text the `hf` backend sends for its rating request (`plain_prompt_text`; the trainer
    adds bos, as the backend does), response = the target score written as the reply to give.

    The tiny default run has no real LLM to judge with, so it fine-tunes its tiny LM on the data set's own labels
    (e.g. chosen -> 8, rejected -> 3) with the RRHF trainer in SFT mode (rrhf_weight 0); the judge stage then runs
    the same code path (templates, parsing, cache) as with a real model. Samples of other origins are left out.
    """
    pattern = re.compile(config.score_pattern)
    replies = {}
    for origin, score in targets.items():
        reply = f"{score:g}"
        parsed, reason = parse_score_with_reason(reply, pattern, config.score_min, config.score_max)
        if parsed != score:
            raise ConfigError(f"targets: {origin}={score:g} is not a score this judge reads back ({reason})")
        replies[origin] = reply
    out = [
        {
            "prompt_id": row["prompt_id"],
            "query": plain_prompt_text(rating_messages(config, row["prompt"], row["response"])),
            "responses": [replies[row["origin"]]],
            "scores": [0.0],
        }
        for row in rows
        if row["origin"] in replies
    ]
    return out


def _parse_target(text: str) -> tuple[str, float]:
    origin, sep, score = text.partition("=")
    try:
        if not sep or not origin:
            raise ValueError
        return origin, float(score)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ORIGIN=SCORE, got {text!r}") from None


def configure_sft_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", required=True, help="SAMPLES Parquet with labelled origins (e.g. chosen/rejected)")
    parser.add_argument("--output", required=True, help="RANKED_RESPONSES Parquet (rating prompt -> score reply)")
    parser.add_argument(
        "--target", action="append", type=_parse_target, required=True, metavar="ORIGIN=SCORE",
        help="the score the judge should give to samples of ORIGIN (repeat per origin)",
    )
    add_dataclass_arguments(parser, JudgeConfig)


def main_sft_data(args: argparse.Namespace) -> None:
    config = dataclass_from_args(JudgeConfig, args)
    targets = dict(args.target)
    rows = read_sample_rows(args.samples)
    out = rating_sft_rows(rows, config, targets)
    if not out:
        raise DataError(args.samples, None, "origin", f"no sample has one of the target origins {sorted(targets)}")
    write_rows(out, args.output, RANKED_RESPONSES)
    log.info("wrote %d rating examples (%d samples of other origins left out) to %s", len(out), len(rows) - len(out),
             args.output)
