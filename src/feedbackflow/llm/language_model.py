"""One cached language-model interface for ILF (Scheurer et al. 2023, "Training Language Models with Language
Feedback at Scale"): sampling (initial summaries, refinements), next-token log-probabilities (InstructRM's
P(" Yes") / P(" No"), the pairwise judge) and the log-probability of a continuation (the "log-probability" selection
baseline).

- Backends: `openai` (the official client against OpenAI or any OpenAI-compatible server such as vLLM; `api`
  "completions" sends the plain-text prompt to /completions, the default since the ILF prompts are written for base
  LMs; "chat" sends it as one user message) and `hf` (a local transformers causal LM; a prompt is bos + its ids).
- Every request is cached (`client.CachedClient`, SQLite) under the sha256 of a canonical JSON of everything that
  determines the reply: the backend identity (backend, model, base_url, api; for hf the dtype, max_prompt_tokens
  and a hash of the model directory's files), the method, the prompt and the method's settings (n, temperature,
  top_p, max_tokens, stop, seed; k; the continuation). Never the key. A reply is stored as JSON text the moment it
  arrives; a rerun sends only what is not cached. Failures are not cached (a rerun retries them) and come back per
  prompt with the reason in `LMResult.error`: status "failed" (no reply: HTTP errors, retries exhausted, a prompt
  too long for the model) or "unparsed" (a reply without what was asked for, e.g. without log-probabilities: not
  retried within the run, since a server that omits them does so every time).
- `openai` requests share the judge's retries, backoff, Retry-After handling, 401/403 abort, bounded concurrency
  and key masking (`openai_backend.OpenAIConnection`); the API key is read only when a request must be sent.
- Sampled texts are cut at the first stop string and stripped (ILF cuts refinements at the first newline: the
  caller passes stop=["\\n"]); the cut is redone from the stored reply on every read.
- hf sampling batches by sequences (`sampling_calls`): one `generate` call holds at most `max_sequences_per_generate`
  sequences (prompts x n). A call takes min(batch_size, max_sequences_per_generate // n) prompts with all n samples
  each and is seeded with a hash of (seed, its prompts); a prompt whose n exceeds the limit goes alone in
  ceil(n / limit) calls (limit samples each, the rest in the last), call j seeded with a hash of (seed, prompt, j).
  So a prompt's samples depend only on (prompt, seed) when the limit does not bind and batch_size is 1, on
  (prompt, seed, limit) when n exceeds the limit, and otherwise also on the prompts batched with it (which batch_size,
  n and the limit decide). The cache keeps what was drawn, so a rerun returns exactly the same texts.
- A prompt longer than the hf model's positions (after left-truncation to `max_prompt_tokens`, when set) fails
  with the reason "prompt too long"; nothing is silently cut unless `max_prompt_tokens` asks for it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from feedbackflow.core.stage_args import dataclass_from_dict
from feedbackflow.errors import ConfigError
from feedbackflow.llm.cache import CachedReply, canonical_json
from feedbackflow.llm.client import Answer, CachedClient
from feedbackflow.llm.config import ClientConfig
from feedbackflow.llm.hf_backend import HFBackendBase
from feedbackflow.llm.openai_backend import MalformedReply, OpenAIBackendBase, reply_choices, reply_usage
from feedbackflow.stages.sampling import SamplingConfig, generate_responses
from feedbackflow.text.nll import sequence_nll
from feedbackflow.text.tokens import cut_at_stop_strings, pad_id_of, pad_left

log = logging.getLogger(__name__)

APIS = ("completions", "chat")
CACHE_KEY_VERSION = 1
STATUSES = ("ok", "unparsed", "failed")


@dataclasses.dataclass(kw_only=True)
class LMConfig(ClientConfig):
    """The shared client keys (`config.ClientConfig`) and the language model's own: the OpenAI API flavour, how many
    next-token alternatives to ask for, and hf's sampling and prompt limits."""

    api: str = dataclasses.field(
        default="completions",
        metadata={"help": "openai: completions (plain-text prompt, base LMs) or chat (the prompt as one user message)"},
    )
    top_logprobs: int = dataclasses.field(
        default=5, metadata={"help": "next-token alternatives asked for (completions logprobs=k; chat top_logprobs)"}
    )
    max_sequences_per_generate: int = dataclasses.field(
        default=256, metadata={"help": "hf sampling: most sequences (prompts x n) in one generate call (KV cache)"}
    )
    max_prompt_tokens: int | None = dataclasses.field(
        default=None, metadata={"help": "hf: left-truncate prompts to this many tokens, bos included (none = never)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.api not in APIS:
            raise ConfigError(f"api: {self.api!r} is not one of {list(APIS)}")
        if not 1 <= self.top_logprobs <= 20:
            raise ConfigError(f"top_logprobs: must be from 1 to 20, got {self.top_logprobs}")
        self.check_at_least_one("max_sequences_per_generate")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 2:
            raise ConfigError(f"max_prompt_tokens: must be at least 2 (bos + one token), got {self.max_prompt_tokens}")


# --------------------------------------------------------------------------------------------------------------
# Results


@dataclasses.dataclass(frozen=True)
class LMResult:
    """One prompt's answer: `value` when status is "ok", else `error` says why ("unparsed" or "failed").

    value: sample -> list of n texts; next_token_logprobs -> {token string: log-probability};
    sequence_logprob -> (sum of log-probabilities, number of tokens).
    """

    value: Any = None
    error: str | None = None
    status: str = "ok"
    cached: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A backend's answer to one request: `payload` (JSON-able, what the cache stores) or an error."""

    payload: dict | None
    error: str | None = None
    status: str = "ok"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def answer_probability(logprobs: dict[str, float], positive: str, negative: str) -> float | None:
    """P(positive) / (P(positive) + P(negative)) from next-token log-probabilities: ILF's pairwise judge (A / B).
    InstructRM reads its templates' exact tokens instead (`papers.ilf.instruct_rm.template_score`,
    docs/methods/ilf.md).

    P(word) is the sum of exp(log-probability) over the entries whose token, stripped of surrounding whitespace,
    equals the word case-insensitively (" Yes", "Yes" and "yes" all count for "Yes"). When neither word is among
    the entries the answer is None (no information); when only one is, the other counts as probability 0 (it was
    not among the top alternatives), so the answer is 1.0 or 0.0. Computed in log space, so tiny probabilities do
    not underflow; None also when both are present with probability 0 (log-probability -inf).
    """

    def log_mass(word: str) -> float | None:
        target = word.strip().casefold()
        values = [value for token, value in logprobs.items() if token.strip().casefold() == target]
        if not values:
            return None
        top = max(values)
        if top == -math.inf:
            return -math.inf
        return top + math.log(sum(math.exp(value - top) for value in values))

    pos, neg = log_mass(positive), log_mass(negative)
    if pos is None and neg is None:
        return None
    if neg is None or (neg == -math.inf and pos != -math.inf):
        return 1.0
    if pos is None or (pos == -math.inf and neg != -math.inf):
        return 0.0
    if pos == -math.inf and neg == -math.inf:
        return None
    return 1.0 / (1.0 + math.exp(neg - pos))  # = e^pos / (e^pos + e^neg)


# --------------------------------------------------------------------------------------------------------------
# Backends: each method answers a list of request dicts (built by LanguageModel; they are also the cache keys),
# calling on_outcome(index, outcome) as each is done.

OnOutcome = Answer  # called with (index of the request, its Outcome)


class LMBackend(Protocol):
    attempts: int

    def identity(self) -> dict:
        """What, besides the method and its settings, determines a reply (goes into the cache key)."""

    def sample(self, requests: Sequence[dict], on_outcome: OnOutcome) -> None: ...

    def next_token_logprobs(self, requests: Sequence[dict], on_outcome: OnOutcome) -> None: ...

    def sequence_logprob(self, requests: Sequence[dict], on_outcome: OnOutcome) -> None: ...


def _unparsed(reason: str, response) -> Outcome:
    return Outcome(None, reason, "unparsed", *reply_usage(response))


class OpenAILMBackend(OpenAIBackendBase):
    """An OpenAI-compatible server through the official client (completions or chat), with the judge's retries."""

    thread_name_prefix = "lm"

    def identity(self) -> dict:
        return {**super().identity(), "api": self.config.api}

    def _create(self, client, prompt: str, **kwargs):
        kwargs = {name: value for name, value in kwargs.items() if value is not None}
        if self.config.api == "completions":
            return client.completions.create(model=self.config.model, prompt=prompt, **kwargs)
        return client.chat.completions.create(
            model=self.config.model, messages=[{"role": "user", "content": prompt}], **kwargs
        )

    def _run(self, requests: Sequence[dict], attempt: Callable[[Any, dict], Outcome], on_outcome: OnOutcome) -> None:
        def work(index: int) -> None:
            outcome, error = self.connection.call(lambda client: attempt(client, requests[index]))
            on_outcome(index, outcome if outcome is not None else Outcome(None, error, "failed"))

        self.connection.map(len(requests), work)

    # sample

    def _sample(self, client, request: dict) -> Outcome:
        response = self._create(
            client,
            request["prompt"],
            n=request["n"],
            temperature=request["temperature"],
            top_p=request["top_p"],
            max_tokens=request["max_tokens"],
            stop=request["stop"] or None,
            seed=request["seed"],
        )
        choices = reply_choices(response)
        if len(choices) != request["n"]:
            raise MalformedReply(f"{len(choices)} choices in the reply, asked for {request['n']}")
        if self.config.api == "completions":
            texts = [getattr(choice, "text", None) for choice in choices]
        else:
            texts = [getattr(getattr(choice, "message", None), "content", None) for choice in choices]
        if not all(isinstance(text, str) for text in texts):
            raise MalformedReply("a choice without text in the reply")
        return Outcome({"texts": texts}, None, "ok", *reply_usage(response))

    def sample(self, requests: Sequence[dict], on_outcome: OnOutcome) -> None:
        self._run(requests, self._sample, on_outcome)

    # next-token log-probabilities

    def _next_token(self, client, request: dict) -> Outcome:
        k = request["top_logprobs"]
        if self.config.api == "completions":
            response = self._create(client, request["prompt"], max_tokens=1, temperature=0, logprobs=k)
            logprobs = getattr(reply_choices(response)[0], "logprobs", None)
            tops = getattr(logprobs, "top_logprobs", None) or [None]
            entries = dict(tops[0] or {})
            tokens, values = getattr(logprobs, "tokens", None), getattr(logprobs, "token_logprobs", None)
            if tokens and values and values[0] is not None:
                entries.setdefault(tokens[0], values[0])  # the chosen token, should the top list lack it
        else:
            response = self._create(
                client, request["prompt"], max_tokens=1, temperature=0, logprobs=True, top_logprobs=k
            )
            content = getattr(getattr(reply_choices(response)[0], "logprobs", None), "content", None) or [None]
            first = content[0]
            entries = {item.token: item.logprob for item in (getattr(first, "top_logprobs", None) or [])}
            if first is not None and getattr(first, "logprob", None) is not None:
                entries.setdefault(first.token, first.logprob)
        try:
            entries = {str(token): float(value) for token, value in entries.items() if value is not None}
        except (TypeError, ValueError):
            return _unparsed("log-probabilities in the reply are not numbers", response)
        if not entries:
            return _unparsed("no log-probabilities in the reply", response)
        return Outcome({"logprobs": entries}, None, "ok", *reply_usage(response))

    def next_token_logprobs(self, requests: Sequence[dict], on_outcome: OnOutcome) -> None:
        self._run(requests, self._next_token, on_outcome)

    # log-probability of a continuation

    def _sequence(self, client, request: dict) -> Outcome:
        prompt, continuation = request["prompt"], request["continuation"]
        response = self._create(client, prompt + continuation, max_tokens=0, echo=True, logprobs=0)
        logprobs = getattr(reply_choices(response)[0], "logprobs", None)
        tokens = getattr(logprobs, "tokens", None)
        values = getattr(logprobs, "token_logprobs", None)
        offsets = getattr(logprobs, "text_offset", None)
        if not tokens or values is None or offsets is None or not len(tokens) == len(values) == len(offsets):
            return _unparsed("no echoed token log-probabilities (tokens, token_logprobs, text_offset) in the reply",
                             response)
        start, end = len(prompt), len(prompt) + len(continuation)
        total, count = 0.0, 0
        for offset, value in zip(offsets, values, strict=True):
            if start <= offset < end and value is not None:
                total += float(value)
                count += 1
        return Outcome({"logprob": total, "tokens": count}, None, "ok", *reply_usage(response))

    def sequence_logprob(self, requests: Sequence[dict], on_outcome: OnOutcome) -> None:
        self._run(requests, self._sequence, on_outcome)


class HFLMBackend(HFBackendBase):
    """A local transformers causal LM: prompts are bos + ids, batched with left padding (right for scoring)."""

    def identity(self) -> dict:
        return self.hf_identity(dtype=self.config.dtype, max_prompt_tokens=self.config.max_prompt_tokens)

    def prompt_ids(self, prompt: str) -> list[int]:
        """bos + the prompt's ids, left-truncated to `max_prompt_tokens` when set (bos kept)."""
        _, tokenizer = self.load()
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if self.config.max_prompt_tokens is not None:
            ids = ids[-(self.config.max_prompt_tokens - len(bos)) :]
        return bos + ids

    def sample(self, requests: Sequence[dict], on_outcome: OnOutcome) -> None:

        if not requests:
            return
        model, tokenizer = self.load()
        settings = ("n", "temperature", "top_p", "max_tokens", "stop", "seed")
        groups: dict[str, list[int]] = {}
        lengths: dict[int, int] = {}
        for index, request in enumerate(requests):
            lengths[index] = len(self.prompt_ids(request["prompt"]))
            error = self.too_long(lengths[index], request["max_tokens"], "max_tokens")
            if error:
                on_outcome(index, Outcome(None, error, "failed"))
                continue
            groups.setdefault(canonical_json({name: request[name] for name in settings}), []).append(index)
        for members in groups.values():
            first = requests[members[0]]
            drawn: dict[int, list[str]] = {}
            for call in sampling_calls(
                members, first["n"], self.config.batch_size, self.config.max_sequences_per_generate
            ):
                batch = call.members
                prompts = [requests[i]["prompt"] for i in batch]
                config = SamplingConfig(
                    num_return_sequences=call.n,
                    max_new_tokens=first["max_tokens"],
                    do_sample=first["temperature"] > 0,
                    temperature=first["temperature"] if first["temperature"] > 0 else 1.0,
                    top_k=None,
                    top_p=first["top_p"],
                    num_beams=1,
                    num_beam_groups=1,
                    max_prompt_tokens=self.config.max_prompt_tokens or max(2, *(lengths[i] for i in batch)),
                    batch_size=len(batch),
                    seed=batch_seed(first["seed"], prompts, call.part),
                    stop_strings=list(first["stop"] or []),
                )
                texts = generate_responses(model, tokenizer, prompts, config)
                for index, group in zip(batch, texts, strict=True):
                    drawn.setdefault(index, []).extend(group)
                    if len(drawn[index]) == first["n"]:  # a split prompt: after its last call
                        self.attempts += 1
                        on_outcome(index, Outcome({"texts": drawn.pop(index)}, None, "ok", lengths[index], None))

    def next_token_logprobs(self, requests: Sequence[dict], on_outcome: OnOutcome) -> None:
        import torch


        if not requests:
            return
        model, tokenizer = self.load()
        pending: list[tuple[int, list[int]]] = []
        for index, request in enumerate(requests):
            ids = self.prompt_ids(request["prompt"])
            error = self.too_long(len(ids), 0, "nothing")
            if error:
                on_outcome(index, Outcome(None, error, "failed"))
            else:
                pending.append((index, ids))
        pending.sort(key=lambda item: len(item[1]))
        for start in range(0, len(pending), self.config.batch_size):
            batch = pending[start : start + self.config.batch_size]
            input_ids, mask = pad_left([ids for _, ids in batch], pad_id_of(tokenizer))
            positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = model(
                    input_ids=input_ids.to(self._device),
                    attention_mask=mask.to(self._device),
                    position_ids=positions.to(self._device),
                ).logits[:, -1, :]
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
            self.attempts += len(batch)
            for row, (index, ids) in enumerate(batch):
                request = requests[index]
                entries = next_token_entries(tokenizer, logprobs[row], request["top_logprobs"], request["candidates"],
                                             request["prompt"])
                on_outcome(index, Outcome({"logprobs": entries}, None, "ok", len(ids), None))

    def sequence_logprob(self, requests: Sequence[dict], on_outcome: OnOutcome) -> None:
        if not requests:
            return
        model, tokenizer = self.load()
        pending: list[int] = []
        encoded: list[tuple[list[int], int]] = []
        for index, request in enumerate(requests):
            ids = self.prompt_ids(request["prompt"])
            continuation = list(tokenizer(request["continuation"], add_special_tokens=False)["input_ids"])
            error = self.too_long(len(ids), len(continuation), "continuation tokens")
            if error:
                on_outcome(index, Outcome(None, error, "failed"))
                continue
            pending.append(index)
            encoded.append((ids + continuation, len(ids)))
        if not pending:
            return
        results = sequence_nll(model, encoded, self.config.batch_size, pad_id_of(tokenizer))
        self.attempts += len(pending)
        for index, (_ids, first), (nll, count) in zip(pending, encoded, results, strict=True):
            on_outcome(index, Outcome({"logprob": -nll if count else 0.0, "tokens": count}, None, "ok", first, None))


@dataclasses.dataclass(frozen=True)
class SamplingCall:
    """One hf `generate` call: `members` (request indices) with `n` samples each; `part` is None for a call that
    draws all of its prompts' samples, else the 0-based part of one prompt's samples split over several calls."""

    members: list[int]
    n: int
    part: int | None = None


def sampling_calls(members: Sequence[int], n: int, batch_size: int, max_sequences: int) -> list[SamplingCall]:
    """The generate calls for `members` (requests with equal settings) so that no call holds more than
    `max_sequences` sequences (prompts x samples): up to min(batch_size, max_sequences // n) prompts per call with
    all n samples each, or, when n > max_sequences, each prompt alone over ceil(n / max_sequences) calls of
    `max_sequences` samples (the rest in the last)."""
    if n <= max_sequences:
        size = min(batch_size, max_sequences // n)
        return [SamplingCall(list(members[start : start + size]), n) for start in range(0, len(members), size)]
    return [
        SamplingCall([index], min(max_sequences, n - start), part)
        for index in members
        for part, start in enumerate(range(0, n, max_sequences))
    ]


def batch_seed(seed: int, prompts: Sequence[str], part: int | None = None) -> int:
    """The seed of one hf sampling call: a hash of (seed, its prompts) (and of the part, for one prompt's samples
    split over several calls), so equal calls draw equal samples and different calls do not share a random stream."""
    key = [seed, list(prompts)] if part is None else [seed, list(prompts), part]
    digest = hashlib.sha256(canonical_json(key).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big")


def candidate_token_id(tokenizer, candidate: str, prompt: str = "") -> int | None:
    """The one token id that `candidate` is as the next token after `prompt`: its id when it is one token alone, else
    the single id that `prompt + candidate` adds to `prompt`'s ids (a SentencePiece tokenizer spells " Yes" alone as
    two pieces, "▁" + "▁Yes", but after "Answer:" as the one piece "▁Yes"); None when it is more than
    one token either way."""
    alone = tokenizer(candidate, add_special_tokens=False)["input_ids"]
    if len(alone) == 1:
        return alone[0]
    if not prompt:
        return None
    before = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    after = tokenizer(prompt + candidate, add_special_tokens=False)["input_ids"]
    if len(after) == len(before) + 1 and after[: len(before)] == before:
        return after[-1]
    return None


def next_token_entries(tokenizer, logprobs, k: int, candidates: Sequence[str], prompt: str = "") -> dict[str, float]:
    """{token string: log-probability} of the `k` most likely next tokens (decoded; of two ids with the same text
    the likelier is kept) plus every candidate string that is one token after `prompt` (`candidate_token_id`), with
    its exact log-probability (InstructRM reads exactly its answer tokens from these: docs/methods/ilf.md)."""
    values, ids = logprobs.topk(min(k, logprobs.shape[-1]))
    entries: dict[str, float] = {}
    for value, token_id in zip(values.tolist(), ids.tolist(), strict=True):
        entries.setdefault(tokenizer.decode([token_id]), float(value))
    for candidate in candidates:
        token_id = candidate_token_id(tokenizer, candidate, prompt)
        if token_id is not None:
            entries[candidate] = float(logprobs[token_id])
    return entries


def make_backend(config: LMConfig) -> LMBackend:
    return OpenAILMBackend(config) if config.backend == "openai" else HFLMBackend(config)


# --------------------------------------------------------------------------------------------------------------
# The cached interface


def _decode_sample(payload: dict, request: dict) -> list[str]:
    return [cut_at_stop_strings(text, request["stop"] or []).strip() for text in payload["texts"]]


def _decode_logprobs(payload: dict, request: dict) -> dict[str, float]:
    return {str(token): float(value) for token, value in payload["logprobs"].items()}


def _decode_sequence(payload: dict, request: dict) -> tuple[float, int]:
    return float(payload["logprob"]), int(payload["tokens"])


class LanguageModel(CachedClient):
    """Cached sampling and log-probabilities through one backend. Use as a context manager (closes the cache)."""

    def __init__(self, config: LMConfig, cache_path: str | os.PathLike, backend: LMBackend | None = None):
        super().__init__(config, cache_path, backend or make_backend(config))
        self._identity: dict | None = None

    @property
    def name(self) -> str:
        return f"lm:{self.config.backend}:{self.config.model}"

    def _request(self, method: str, prompt: str, **settings) -> dict:
        if self._identity is None:
            self._identity = self.backend.identity()
        return {"v": CACHE_KEY_VERSION, **self._identity, "method": method, "prompt": prompt, **settings}

    def sample(
        self,
        prompts: Sequence[str],
        n: int = 1,
        temperature: float = 1.0,
        top_p: float | None = None,
        max_tokens: int = 48,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> list[LMResult]:
        """n sampled texts per prompt (value: list of n strings), each cut at the first stop string and stripped.

        temperature 0 is greedy decoding (hf: then n must be 1). hf always seeds: seed None means 0.
        """
        if n < 1:
            raise ConfigError(f"n: must be at least 1, got {n}")
        if max_tokens < 1:
            raise ConfigError(f"max_tokens: must be at least 1, got {max_tokens}")
        if not math.isfinite(temperature) or temperature < 0:
            raise ConfigError(f"temperature: must not be negative, got {temperature}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ConfigError(f"top_p: must be in (0, 1], got {top_p}")
        if isinstance(stop, str) or not all(isinstance(s, str) and s for s in (stop or [])):
            raise ConfigError(f"stop: must be a list of non-empty strings, got {stop!r}")
        if self.config.backend == "hf":
            if temperature == 0 and n > 1:
                raise ConfigError("n: greedy decoding (temperature 0) gives one text per prompt on the hf backend")
            seed = 0 if seed is None else seed
        settings = {
            "n": int(n),
            "temperature": float(temperature),
            "top_p": None if top_p is None else float(top_p),
            "max_tokens": int(max_tokens),
            "stop": list(stop or []),
            "seed": seed,
        }
        requests = [self._request("sample", str(p), **settings) for p in prompts]
        return self._run(requests, self.backend.sample, _decode_sample)

    def next_token_logprobs(self, prompts: Sequence[str], candidates: Sequence[str] = ()) -> list[LMResult]:
        """The next token's log-probabilities after each prompt (value: {token string: log-probability}): the top
        `top_logprobs` alternatives; hf also gives every `candidates` string that is a single token after the prompt
        its exact log-probability (`candidate_token_id`); openai reports only the top alternatives: a candidate
        outside them is absent."""
        settings: dict = {"top_logprobs": self.config.top_logprobs}
        if self.config.backend == "hf":
            settings["candidates"] = sorted({str(c) for c in candidates})
        requests = [self._request("next_token_logprobs", str(p), **settings) for p in prompts]
        return self._run(requests, self.backend.next_token_logprobs, _decode_logprobs)

    def sequence_logprob(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[LMResult]:
        """(sum of log-probabilities, number of tokens) of each continuation given its prompt (value: a tuple).

        The continuation follows the prompt directly (put any separating space in it). hf: bos + prompt ids +
        continuation ids, tokenized separately (as the trainers do), no eos. openai (completions only): the
        server's tokens of prompt + continuation echoed back; the tokens that start at or after the prompt's last
        character count (a token that straddles the boundary belongs to the prompt).
        """
        if self.config.backend == "openai" and self.config.api != "completions":
            raise ConfigError("api: sequence_logprob needs the completions API (echo with log-probabilities)")
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        requests = [
            self._request("sequence_logprob", str(p), continuation=str(c))
            for p, c in zip(prompts, continuations, strict=True)
        ]
        return self._run(requests, self.backend.sequence_logprob, _decode_sequence)

    def _run(
        self,
        requests: list[dict],
        send: Callable[[Sequence[dict], OnOutcome], None],
        decode: Callable[[dict, dict], Any],
    ) -> list[LMResult]:
        """Answer each request from the cache or the backend (identical requests once); store replies on arrival."""

        def from_cache(hit: CachedReply, request: dict) -> LMResult:
            return LMResult(decode(json.loads(hit.text), request), None, "ok", True, hit.prompt_tokens,
                            hit.completion_tokens)

        def arrived(outcome: Outcome, request: dict) -> tuple[LMResult, CachedReply | None]:
            if outcome.payload is None:
                status = outcome.status if outcome.status in ("unparsed", "failed") else "failed"
                return LMResult(None, outcome.error or "no reply", status, False, outcome.prompt_tokens,
                                outcome.completion_tokens), None
            text = json.dumps(outcome.payload, ensure_ascii=False, sort_keys=True)
            stored = CachedReply(text, outcome.prompt_tokens, outcome.completion_tokens)
            return LMResult(decode(outcome.payload, request), None, "ok", False, outcome.prompt_tokens,
                            outcome.completion_tokens), stored

        label = f"{self.name} {requests[0]['method']}" if requests else None
        out = self.answer(requests, send, from_cache, arrived, label)
        stats = self.stats
        for result in out:
            setattr(stats, result.status, getattr(stats, result.status) + 1)
        failures = sorted({r.error for r in out if not r.ok})
        if failures:
            log.warning("%s: %d of %d items without a result (a rerun retries them); reasons: %s", self.name,
                        sum(1 for r in out if not r.ok), len(out), failures[:5])
        return out


def lm_config_from_json(text: str, where: str = "--lm") -> LMConfig:
    """An LMConfig from a JSON object (a stage's `--lm`); an unknown key is a ConfigError naming it."""

    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{where}: not valid JSON ({error}): {text!r}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: must be a JSON object, got {text!r}")
    return dataclass_from_dict(LMConfig, values, where=where)
