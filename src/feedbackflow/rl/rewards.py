"""Reward functions for PPO (Wu et al. 2023, "Reward assignment during PPO"): the interface and the registry.

A reward function is called once per rollout with every sample of this process:

    result = reward_fn(prompts, responses, token_ids)

- `prompts`: list[str], the prompt of each sample (a prompt sampled k times appears k times, consecutively);
- `responses`: list[str], the decoded responses (special tokens skipped; with PPO's `clean_up_tokenization_spaces`,
  the spaces before punctuation removed as the original's fgrlhf/policy.py does: `text.tokens.decode_tokens`);
- `token_ids`: list[list[int]], the generated policy token ids of each response, padding excluded (the final eos is
  included when the policy generated one: it is a response token that receives reward and KL like any other).

It returns a `RewardResult(rewards, stats)`: `rewards[i]` is a list of floats, one per token of `token_ids[i]` (the
reward placed on that token; 0.0 where there is none), and `stats` maps names to one float per sample, logged as
their mean (e.g. {"n_errors": [...]}). The trainer sums the rewards of all functions token by token.

A reward function that scores with torch models may expose them as `frozen_models() -> list[nn.Module]`: PPO puts
them in its mixed-precision dtype (bf16 under `mixed_precision: bf16`, on every device; `rl.ppo`).

Reward functions are built from a JSON spec, a list of objects with a "type", an optional "name" (default: the type;
names must be unique, they label the logged rewards) and the type's own keys:

    [{"type": "target_token", "token": "the", "value": 1.0}]

`build_reward_functions(spec, policy_tokenizer)` looks each type up in `REWARD_TYPES`, whose values are builders
`builder(spec: dict, policy_tokenizer) -> RewardFunction`, or "module:attribute" strings imported on first use (so a
type backed by heavy models costs nothing until it is used). To add a type: write a builder and add one line to
`REWARD_TYPES` (or call `register_reward_type`).
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

from transformers import PreTrainedTokenizerBase

from feedbackflow.errors import ConfigError


class RewardResult(NamedTuple):
    """Per-token rewards (one list per sample, as long as its tokens) and per-sample statistics for the log."""

    rewards: list[list[float]]
    stats: dict[str, list[float]]


@runtime_checkable
class RewardFunction(Protocol):
    """What the PPO trainer calls once per rollout; `name` labels its rewards in the training log."""

    name: str

    def __call__(self, prompts: list[str], responses: list[str], token_ids: list[list[int]]) -> RewardResult: ...


RewardBuilder = Callable[[dict, PreTrainedTokenizerBase], RewardFunction]


class TargetTokenReward:
    """Toy reward: `value` on every generated occurrence of one policy token (tests and the tiny default run).

    Spec: {"type": "target_token", "token": "<a token of the policy vocabulary, or text that encodes to one>",
    "value": 1.0}. Statistic: "count", the occurrences per response.
    """

    def __init__(self, name: str, token_id: int, value: float):
        self.name = name
        self.token_id = token_id
        self.value = value

    def __call__(self, prompts: list[str], responses: list[str], token_ids: list[list[int]]) -> RewardResult:
        rewards = [[self.value if token == self.token_id else 0.0 for token in ids] for ids in token_ids]
        counts = [float(sum(1 for token in ids if token == self.token_id)) for ids in token_ids]
        return RewardResult(rewards, {"count": counts})


def token_id_of(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    """The id of a vocabulary token, else of the single token that `token` encodes to; ConfigError otherwise."""
    vocab = tokenizer.get_vocab()
    if token in vocab:
        return vocab[token]
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ConfigError(f"reward token {token!r} is not one token of the policy tokenizer (it encodes to {ids})")
    return ids[0]


def check_spec_keys(spec: dict, required: set[str], optional: set[str]) -> None:
    missing = sorted(required - set(spec))
    unknown = sorted(set(spec) - required - optional - {"type", "name"})
    if missing or unknown:
        raise ConfigError(
            f"reward {spec.get('name', spec['type'])!r} (type {spec['type']!r}): "
            + (f"missing key(s) {missing}" if missing else "")
            + ("; " if missing and unknown else "")
            + (f"unknown key(s) {unknown}" if unknown else "")
        )


def build_target_token_reward(spec: dict, policy_tokenizer: PreTrainedTokenizerBase) -> TargetTokenReward:
    check_spec_keys(spec, {"token"}, {"value"})
    value = float(spec.get("value", 1.0))
    if not math.isfinite(value):
        raise ConfigError(f"reward {spec['name']!r}: value {value} is not finite")
    return TargetTokenReward(spec["name"], token_id_of(policy_tokenizer, str(spec["token"])), value)


# type -> builder, or "module:attribute" of a builder (imported when the type is first used)
REWARD_TYPES: dict[str, RewardBuilder | str] = {
    "target_token": build_target_token_reward,
    "qa_relevance": "feedbackflow.papers.fgrlhf.qa.rewards:build_relevance_reward",
    "qa_factuality": "feedbackflow.papers.fgrlhf.qa.rewards:build_factuality_reward",
    "qa_completeness": "feedbackflow.papers.fgrlhf.qa.rewards:build_sequence_reward",
    "preference": "feedbackflow.papers.fgrlhf.qa.rewards:build_sequence_reward",
    "toxicity": "feedbackflow.papers.fgrlhf.detox.rewards:build_toxicity_reward",
}


def register_reward_type(type_name: str, builder: RewardBuilder | str) -> None:
    """Add a reward type (a builder, or its "module:attribute" path); an existing type is an error."""
    if type_name in REWARD_TYPES:
        raise ConfigError(f"reward type {type_name!r} is already registered")
    REWARD_TYPES[type_name] = builder


def _builder_of(type_name: str) -> RewardBuilder:
    if type_name not in REWARD_TYPES:
        raise ConfigError(f"unknown reward type {type_name!r}; known types: {sorted(REWARD_TYPES)}")
    builder = REWARD_TYPES[type_name]
    if isinstance(builder, str):
        module_name, _, attribute = builder.partition(":")
        builder = getattr(importlib.import_module(module_name), attribute)
        REWARD_TYPES[type_name] = builder
    return builder


def build_reward_functions(spec: list[dict], policy_tokenizer: PreTrainedTokenizerBase) -> list[RewardFunction]:
    """The reward functions of a spec (see the module doc), in order; ConfigError names what is wrong."""
    if not isinstance(spec, list) or not spec:
        raise ConfigError("the reward spec must be a non-empty JSON list of objects")
    functions, names = [], set()
    for index, entry in enumerate(spec):
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            raise ConfigError(f"reward spec entry {index} must be an object with a string 'type', got {entry!r}")
        entry = {**entry, "name": str(entry.get("name", entry["type"]))}
        if entry["name"] in names:
            raise ConfigError(f"reward spec entry {index}: name {entry['name']!r} is used twice (give each a 'name')")
        names.add(entry["name"])
        function = _builder_of(entry["type"])(entry, policy_tokenizer)
        function.name = entry["name"]
        functions.append(function)
    return functions


def load_reward_spec(path: str | Path) -> list[dict]:
    """The JSON reward spec file (a list of objects); ConfigError naming the file when it is not one."""
    if not str(path).strip():
        raise ConfigError("no reward spec given")
    try:
        spec = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"reward spec {path}: {error}") from error
    if not isinstance(spec, list) or not spec or not all(isinstance(entry, dict) for entry in spec):
        raise ConfigError(f"reward spec {path}: expected a non-empty JSON list of objects")
    return spec


def check_reward_result(result: RewardResult, token_ids: list[list[int]], name: str) -> RewardResult:
    """The result of reward function `name`, checked against the interface (ValueError naming what is wrong)."""
    rewards, stats = result
    if len(rewards) != len(token_ids):
        raise ValueError(f"reward {name!r} returned {len(rewards)} reward lists for {len(token_ids)} samples")
    for i, (row, ids) in enumerate(zip(rewards, token_ids, strict=True)):
        if len(row) != len(ids):
            raise ValueError(f"reward {name!r}: sample {i} has {len(ids)} tokens but {len(row)} rewards")
    for key, values in stats.items():
        if len(values) != len(token_ids):
            raise ValueError(f"reward {name!r}: statistic {key!r} has {len(values)} values for {len(token_ids)}")
    return RewardResult(rewards, stats)


def segment_end_token_indices(
    policy_tokenizer: PreTrainedTokenizerBase, text: str, ends: list[int], n_tokens: int
) -> list[int]:
    """Policy-token index of each segment end: len(tokenize(text[:end])) - 1, clipped to [0, n_tokens - 1]."""
    return [min(max(len(policy_tokenizer.tokenize(text[:end])) - 1, 0), n_tokens - 1) for end in ends]


def place_rewards(n_tokens: int, positions: list[int], values: list[float], overwrite: bool = False) -> list[float]:
    """A reward list of `n_tokens` zeros with `values` placed at `positions`, in order.

    Two segments may end on one token (a generation cut short clips every later end to its last token). By default
    their values add up (detox: the toxicity drops then still sum to -tox(y)); with `overwrite` the later segment's
    value replaces the earlier one, as the original's qa rewards assign `reward[end_idx] = value`
    (tasks/qa_feedback/training/reward.py; docs/methods/fine_grained_rlhf.md)."""
    rewards = [0.0] * n_tokens
    for position, value in zip(positions, values, strict=True):
        rewards[position] = value if overwrite else rewards[position] + value
    return rewards
