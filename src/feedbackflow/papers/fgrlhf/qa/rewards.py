"""The qa-feedback rewards of Fine-Grained RLHF for PPO (Wu et al. 2023, "Reward assignment during PPO").

Each is a `rl.rewards.RewardFunction` (prompts, responses, generated token ids -> one reward per token):

- `qa_relevance` (R1): the response is cut into sub-sentences; the token classifier reads
  "question: <q> answer: </s> seg1 </s> seg2 ..." and labels each separator O or NF-ERR; +positive (0.3) or
  negative (-0.3) is placed on the policy token that ends the segment.
- `qa_factuality` (R2): the same on sentences, with the prompt (passages included) as prefix:
  "<prompt> answer: </s> sent1 ..."; +0.5 / -0.5.
- `qa_completeness` (R3) and `preference` (holistic): a sequence RM scores "<prompt> answer: <response>";
  ((score - mean) / std) * scale + bias on the last token (mean/std from `reward-mean-std`, or given).

Placement (the original's rule, tasks/qa_feedback/training/reward.py): the reward of a segment ending at character e
goes to token index len(policy_tokenizer.tokenize(response[:e])) - 1, clipped to the last generated token; when two
segments of one RM land on the same token, the later one's reward replaces the earlier one's (the original assigns,
it does not add). The responses are the decoded samples with the spaces before punctuation removed, as the original
decodes them (`rl.ppo`'s `clean_up_tokenization_spaces`; `evaluation` decodes so too).

A segment that does not fit the RM's `max_length` gets no prediction and no reward, and counts in neither statistic;
the others keep theirs (`reward_models.encode_segments`; the original reads a wrong separator's logits there and
then fails). Statistics per sample: the number of judged segments and of those judged without error (relevance /
factuality ratio = their quotient), and the raw and normalised sequence scores. docs/methods/fine_grained_rlhf.md
has the whole method and every difference from the original code.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from transformers import PreTrainedTokenizerBase

from feedbackflow.errors import ConfigError
from feedbackflow.papers.fgrlhf.qa.data import grounded_prefix, relevance_prefix, response_text
from feedbackflow.papers.fgrlhf.qa.reward_models import (
    DEFAULT_SEPARATOR,
    encode_segments,
    load_fg_reward_model_for_inference,
    read_mean_std,
    segment_error_predictions,
    sequence_scores,
)
from feedbackflow.rl.rewards import RewardResult, check_spec_keys, place_rewards, segment_end_token_indices
from feedbackflow.text.segmentation import Span, sentence_spans, sub_sentence_spans

_QUESTION = re.compile(r"^\s*question:\s*(.*?)(?:\s+context:.*)?$", re.DOTALL)


def question_of_prompt(prompt: str) -> str:
    """The question of a qa-feedback prompt "question: <q> context: ..." (ConfigError when it has no "question:")."""
    match = _QUESTION.match(prompt)
    if match is None:
        raise ConfigError(f"not a qa-feedback prompt (no leading 'question:'): {prompt[:80]!r}")
    return match.group(1).strip()


class SegmentErrorReward:
    """R1 / R2: a token-classifier RM judges every segment; a reward at each segment's last policy token."""

    def __init__(
        self,
        name: str,
        model_path: str,
        policy_tokenizer: PreTrainedTokenizerBase,
        segmenter: Callable[[str], list[Span]],
        prefix_of: Callable[[str], str],
        positive: float,
        negative: float,
        max_length: int = 2048,
        batch_size: int = 16,
        separator: str = DEFAULT_SEPARATOR,
        device: str | None = None,
        dtype: str | None = None,
    ):
        self.name = name
        self.policy_tokenizer = policy_tokenizer
        self.segmenter, self.prefix_of = segmenter, prefix_of
        self.positive, self.negative = positive, negative
        self.max_length, self.batch_size, self.separator = max_length, batch_size, separator
        self.model, self.tokenizer = load_fg_reward_model_for_inference(model_path, "token", device, dtype)

    def judge(self, prompts: list[str], responses: list[str]) -> tuple[list[list[Span]], list[list[int]]]:
        """Segments of each response and the RM's label (1 = error) of each kept segment."""
        spans = [self.segmenter(response) for response in responses]
        inputs = [
            encode_segments(
                self.tokenizer, self.prefix_of(prompt), [response[a:b] for a, b in s], self.max_length, self.separator
            )
            for prompt, response, s in zip(prompts, responses, spans, strict=True)
        ]
        return spans, segment_error_predictions(self.model, self.tokenizer, inputs, self.batch_size)

    def frozen_models(self) -> list:
        """The RM, for PPO to put in its mixed-precision dtype (`rl.rewards` interface)."""
        return [self.model]

    def __call__(self, prompts: list[str], responses: list[str], token_ids: list[list[int]]) -> RewardResult:
        spans, labels = self.judge(prompts, responses)
        rewards, n_segments, n_correct = [], [], []
        for response, s, predicted, ids in zip(responses, spans, labels, token_ids, strict=True):
            kept = s[: len(predicted)]
            positions = segment_end_token_indices(self.policy_tokenizer, response, [b for _, b in kept], len(ids))
            values = [self.negative if label else self.positive for label in predicted]
            rewards.append(place_rewards(len(ids), positions, values, overwrite=True) if ids else [])
            n_segments.append(float(len(predicted)))
            n_correct.append(float(sum(1 for label in predicted if not label)))
        return RewardResult(rewards, {"n_segments": n_segments, "n_correct": n_correct})


class SequenceReward:
    """R3 / holistic preference: ((score - mean) / std) * scale + bias on the last generated token."""

    def __init__(
        self,
        name: str,
        model_path: str,
        mean: float,
        std: float,
        scale: float,
        bias: float = 0.0,
        max_length: int = 2048,
        batch_size: int = 16,
        device: str | None = None,
        dtype: str | None = None,
    ):
        if not std > 0:
            raise ConfigError(f"reward {name!r}: std must be positive, got {std}")
        self.name = name
        self.mean, self.std, self.scale, self.bias = mean, std, scale, bias
        self.max_length, self.batch_size = max_length, batch_size
        self.model, self.tokenizer = load_fg_reward_model_for_inference(model_path, "sequence", device, dtype)

    def normalised(self, prompts: list[str], responses: list[str]) -> tuple[list[float], list[float]]:
        texts = [response_text(p, r) for p, r in zip(prompts, responses, strict=True)]
        raw = sequence_scores(self.model, self.tokenizer, texts, self.max_length, self.batch_size)
        return raw, [(score - self.mean) / self.std for score in raw]

    def frozen_models(self) -> list:
        """The RM, for PPO to put in its mixed-precision dtype (`rl.rewards` interface)."""
        return [self.model]

    def __call__(self, prompts: list[str], responses: list[str], token_ids: list[list[int]]) -> RewardResult:
        raw, normalised = self.normalised(prompts, responses)
        rewards = [
            place_rewards(len(ids), [len(ids) - 1], [z * self.scale + self.bias]) if ids else []
            for ids, z in zip(token_ids, normalised, strict=True)
        ]
        return RewardResult(rewards, {"score": raw, "normalised": normalised})


def _segment_reward(spec: dict, policy_tokenizer, segmenter, prefix_of, positive: float, negative: float):
    optional = {"positive", "negative", "max_length", "batch_size", "separator", "device", "dtype"}
    check_spec_keys(spec, {"model"}, optional)
    return SegmentErrorReward(
        spec["name"],
        spec["model"],
        policy_tokenizer,
        segmenter,
        prefix_of,
        float(spec.get("positive", positive)),
        float(spec.get("negative", negative)),
        int(spec.get("max_length", 2048)),
        int(spec.get("batch_size", 16)),
        str(spec.get("separator", DEFAULT_SEPARATOR)),
        spec.get("device"),
        spec.get("dtype"),
    )


def build_relevance_reward(spec: dict, policy_tokenizer) -> SegmentErrorReward:
    """{"type": "qa_relevance", "model": dir, "positive": 0.3, "negative": -0.3, ...}: R1 on sub-sentences."""
    return _segment_reward(
        spec, policy_tokenizer, sub_sentence_spans, lambda p: relevance_prefix(question_of_prompt(p)), 0.3, -0.3
    )


def build_factuality_reward(spec: dict, policy_tokenizer) -> SegmentErrorReward:
    """{"type": "qa_factuality", "model": dir, "positive": 0.5, "negative": -0.5, ...}: R2 on sentences."""
    return _segment_reward(spec, policy_tokenizer, sentence_spans, grounded_prefix, 0.5, -0.5)


def build_sequence_reward(spec: dict, policy_tokenizer) -> SequenceReward:
    """{"type": "qa_completeness" | "preference", "model": dir, "mean_std": json (or "mean" and "std"), "scale",
    "bias"}: R3 (scale 0.3) or the holistic preference reward (scale 1.0)."""
    optional = {"mean_std", "mean", "std", "scale", "bias", "max_length", "batch_size", "device", "dtype"}
    check_spec_keys(spec, {"model"}, optional)
    if "mean_std" in spec:
        mean, std = read_mean_std(spec["mean_std"])
    elif "mean" in spec and "std" in spec:
        mean, std = float(spec["mean"]), float(spec["std"])
    else:
        raise ConfigError(f"reward {spec['name']!r}: give `mean_std` (a reward-mean-std JSON) or `mean` and `std`")
    default_scale = 0.3 if spec["type"] == "qa_completeness" else 1.0
    return SequenceReward(
        spec["name"],
        spec["model"],
        mean,
        std,
        float(spec.get("scale", default_scale)),
        float(spec.get("bias", 0.0)),
        int(spec.get("max_length", 2048)),
        int(spec.get("batch_size", 16)),
        spec.get("device"),
        spec.get("dtype"),
    )
