"""The detoxification rewards of Fine-Grained RLHF for PPO (Wu et al. 2023, "Tasks": detoxification).

A toxicity scorer (`toxicity` here: the Perspective API, as the paper, or an offline classifier) gives each
text a toxicity tox(.) in [0, 1]. Only the response (the continuation) is scored, never the prompt, as in the
RealToxicityPrompts evaluation.

- holistic: -tox(y) on the last generated token.
- fine-grained: the response is cut into sentences (`segmentation.sentence_spans`, the same segmentation as
  qa-feedback); after sentence j the reward is the drop in toxicity that sentence caused,
  d_j = tox(y_1..j-1) - tox(y_1..j), with tox(empty prefix) = 0, placed on the policy token that ends sentence j
  (`rl.rewards.segment_end_token_indices`: len(tokenize(response[:end])) - 1, clipped to the generation
  length). The prefix y_1..J of the last sentence is the whole response (any trailing whitespace included), so the
  drops sum to exactly -tox(y): the fine-grained rewards of a response add up to its holistic reward.

Every reward is multiplied by `scale` (1.0 by default). The texts of all samples of a rollout go to the scorer in
one `score` call (the scorer dedupes and caches them). A sample whose texts are not all scored ("ok") gets no reward
(all 0.0): the failure is logged and counted in the statistic "score_failures".
"""

from __future__ import annotations

import logging
import math

from transformers import PreTrainedTokenizerBase

from feedbackflow.errors import ConfigError
from feedbackflow.rl.rewards import RewardResult, check_spec_keys, place_rewards, segment_end_token_indices
from feedbackflow.text.segmentation import sentence_spans

log = logging.getLogger("feedbackflow.papers.fgrlhf.detox.rewards")

VARIANTS = ("holistic", "fine_grained")


def sentence_prefix_ends(response: str) -> list[int]:
    """The end character (exclusive, trailing whitespace trimmed) of each sentence of `response` (Wu et al. 2023)."""
    return [end for _, end in sentence_spans(response)]


def toxicity_drops(prefix_scores: list[float]) -> list[float]:
    """d_j = tox(y_1..j-1) - tox(y_1..j) for the toxicities of the prefixes y_1..1, ..., y_1..J, tox(empty) = 0.

    The fine-grained detox reward of sentence j (Wu et al. 2023). The drops telescope: their sum is -tox(y_1..J),
    the holistic reward of the whole response.
    """
    previous = [0.0, *prefix_scores][: len(prefix_scores)]
    return [before - after for before, after in zip(previous, prefix_scores, strict=True)]


class ToxicityReward:
    """Holistic (-tox(y) on the last token) or fine-grained (each sentence's toxicity drop on its last token) reward.

    `scorer` is any object with `score(texts) -> list[ToxicityScore]` (the `toxicity` module's interface).
    Statistics per sample: "toxicity" (tox of the whole response, NaN when it was not scored), "sentences" (the
    number of sentences) and "score_failures" (1.0 when a text of the sample was not scored, and its rewards are 0).
    """

    def __init__(
        self,
        name: str,
        scorer,
        fine_grained: bool,
        policy_tokenizer: PreTrainedTokenizerBase,
        scale: float = 1.0,
    ):
        self.name = name
        self.scorer = scorer
        self.fine_grained = fine_grained
        self.policy_tokenizer = policy_tokenizer
        self.scale = scale

    def texts_to_score(self, response: str, ends: list[int]) -> list[str]:
        """The prefixes to score: y_1..j for every sentence j but the last, then the whole response."""
        if not self.fine_grained:
            return [response]
        return [response[:end] for end in ends[:-1]] + [response]

    def __call__(self, prompts: list[str], responses: list[str], token_ids: list[list[int]]) -> RewardResult:
        ends = [sentence_prefix_ends(response) for response in responses]
        texts = [self.texts_to_score(response, e) for response, e in zip(responses, ends, strict=True)]
        flat = [text for sample in texts for text in sample]
        scores = self.scorer.score(flat) if flat else []
        if len(scores) != len(flat):
            raise RuntimeError(f"toxicity scorer returned {len(scores)} scores for {len(flat)} texts")
        rewards, toxicity, n_sentences, failures = [], [], [], []
        offset = 0
        for i, (sample_texts, sample_ends, ids) in enumerate(zip(texts, ends, token_ids, strict=True)):
            sample_scores = scores[offset : offset + len(sample_texts)]
            offset += len(sample_texts)
            whole = sample_scores[-1]
            toxicity.append(float(whole.score) if whole.status == "ok" else math.nan)
            n_sentences.append(float(len(sample_ends)))
            failed = [s for s in sample_scores if s.status != "ok"]
            failures.append(1.0 if failed else 0.0)
            if failed:
                log.warning(
                    "reward %r: sample %d gets no reward: %d of its %d texts were not scored (%s: %s)",
                    self.name,
                    i,
                    len(failed),
                    len(sample_scores),
                    failed[0].status,
                    failed[0].reason,
                )
            if not ids or failed:
                rewards.append([0.0] * len(ids))
                continue
            if self.fine_grained:
                drops = toxicity_drops([float(s.score) for s in sample_scores])[: len(sample_ends)]
                positions = segment_end_token_indices(self.policy_tokenizer, responses[i], sample_ends, len(ids))
                rewards.append(place_rewards(len(ids), positions, [self.scale * d for d in drops]))
            else:
                rewards.append(place_rewards(len(ids), [len(ids) - 1], [-self.scale * float(whole.score)]))
        return RewardResult(rewards, {"toxicity": toxicity, "sentences": n_sentences, "score_failures": failures})

    def close(self) -> None:
        """Close the scorer (its cache and connections)."""
        self.scorer.close()


def build_toxicity_reward(spec: dict, policy_tokenizer: PreTrainedTokenizerBase) -> ToxicityReward:
    """{"type": "toxicity", "variant": "holistic" | "fine_grained", "scorer": {"backend": ..., ...},
    "cache": "<SQLite path>", "scale": 1.0}: the detox reward of Wu et al. 2023 (see the module doc)."""
    check_spec_keys(spec, {"variant", "scorer", "cache"}, {"scale"})
    name = spec["name"]
    if spec["variant"] not in VARIANTS:
        raise ConfigError(f"reward {name!r}: variant must be one of {list(VARIANTS)}, got {spec['variant']!r}")
    if not isinstance(spec["scorer"], dict):
        raise ConfigError(f'reward {name!r}: scorer must be an object such as {{"backend": ...}}')
    if not isinstance(spec["cache"], str) or not spec["cache"].strip():
        raise ConfigError(f"reward {name!r}: cache must be the path of the SQLite score cache")
    try:
        scale = float(spec.get("scale", 1.0))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"reward {name!r}: scale must be a number, got {spec['scale']!r}") from error
    if not math.isfinite(scale):
        raise ConfigError(f"reward {name!r}: scale {scale} is not finite")
    from feedbackflow.papers.fgrlhf.detox.toxicity import (  # heavy backends: imported when used
        ToxicityConfig,
        make_toxicity_scorer,
    )

    scorer = make_toxicity_scorer(ToxicityConfig.from_dict(spec["scorer"]), spec["cache"])
    return ToxicityReward(name, scorer, spec["variant"] == "fine_grained", policy_tokenizer, scale)
