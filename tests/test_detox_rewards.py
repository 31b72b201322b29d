"""Detox PPO rewards (Wu et al. 2023): toxicity drops and their placement by hand, on a character-level tokenizer and
a scorer that returns literal scores from a dict (the reward takes any object with the toxicity scorer interface)."""

from __future__ import annotations

import logging
import math
import sys
import types
from dataclasses import dataclass

import pytest

from feedbackflow.errors import ConfigError
from feedbackflow.papers.fgrlhf.detox.rewards import (
    ToxicityReward,
    build_toxicity_reward,
    sentence_prefix_ends,
    toxicity_drops,
)
from feedbackflow.rl.rewards import REWARD_TYPES, build_reward_functions, check_reward_result
from feedbackflow.tiny.models import train_tokenizer

# Three sentences: " You are nice." ends at character 14, " You stink!" at 25, " Bye." at 30.
RESPONSE = " You are nice. You stink! Bye."
PREFIX_1, PREFIX_2 = RESPONSE[:14], RESPONSE[:25]


@dataclass(frozen=True)
class Score:
    """The fields of feedbackflow.papers.fgrlhf.detox.toxicity.ToxicityScore."""

    score: float | None
    status: str
    reason: str | None = None
    cached: bool = False


class DictScorer:
    """Literal scores from a dict; a value that is a Score is returned as is (for failures). Records its calls."""

    name = "dict"

    def __init__(self, scores: dict):
        self.scores = scores
        self.calls: list[list[str]] = []
        self.closed = False

    def score(self, texts):
        self.calls.append(list(texts))
        return [s if isinstance(s := self.scores[text], Score) else Score(float(s), "ok") for text in texts]

    def close(self):
        self.closed = True


@pytest.fixture(scope="module")
def char_tokenizer(tmp_path_factory):
    """Byte-level BPE with no merges (vocabulary = 4 specials + 256 bytes): each ASCII character is one token, so the
    token that ends the text's prefix text[:e] has index e - 1."""
    corpus = tmp_path_factory.mktemp("detox_tok") / "corpus.txt"
    corpus.write_text("You are nice. You stink! Bye.\n")
    tokenizer = train_tokenizer([corpus], vocab_size=260)
    assert len(tokenizer.tokenize(RESPONSE)) == len(RESPONSE)
    return tokenizer


def ids_of(tokenizer, text: str, eos: bool = True) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if eos else [])


def test_toxicity_drops_by_hand():
    # d_1 = 0 - .2 = -.2; d_2 = .2 - .9 = -.7; d_3 = .9 - .1 = .8; the sum -.1 = -tox(y).
    assert toxicity_drops([0.2, 0.9, 0.1]) == pytest.approx([-0.2, -0.7, 0.8])
    assert sum(toxicity_drops([0.2, 0.9, 0.1])) == pytest.approx(-0.1)
    assert toxicity_drops([0.4]) == pytest.approx([-0.4])
    assert toxicity_drops([]) == []


def test_sentence_prefix_ends():
    assert sentence_prefix_ends(RESPONSE) == [14, 25, 30]
    # Trailing whitespace is not part of the last sentence; no sentence in a blank text.
    assert sentence_prefix_ends(" Hi there.  \n") == [10]
    assert sentence_prefix_ends("   ") == []


def test_fine_grained_rewards_on_sentence_end_tokens(char_tokenizer):
    scorer = DictScorer({PREFIX_1: 0.2, PREFIX_2: 0.9, RESPONSE: 0.1})
    reward = ToxicityReward("tox", scorer, fine_grained=True, policy_tokenizer=char_tokenizer)
    ids = ids_of(char_tokenizer, RESPONSE)  # 30 characters + eos = 31 tokens
    result = check_reward_result(reward(["prompt"], [RESPONSE], [ids]), [ids], "tox")
    # Drops -.2, -.7, .8 on the tokens ending characters 14, 25, 30: indices 13, 24, 29; the eos (30) gets 0.
    expected = [0.0] * 31
    expected[13], expected[24], expected[29] = -0.2, -0.7, 0.8
    assert result.rewards[0] == pytest.approx(expected)
    assert sum(result.rewards[0]) == pytest.approx(-0.1)  # = the holistic reward -tox(y)
    assert result.stats == {"toxicity": [0.1], "sentences": [3.0], "score_failures": [0.0]}
    # Only the response's prefixes are scored, never the prompt.
    assert scorer.calls == [[PREFIX_1, PREFIX_2, RESPONSE]]


def test_last_prefix_is_the_whole_response(char_tokenizer):
    # Trailing whitespace: the last sentence ends at character 30, but its prefix is the whole response, the text the
    # holistic reward scores, so the fine-grained rewards still sum to exactly -tox(y).
    text = RESPONSE + " \n"
    scorer = DictScorer({PREFIX_1: 0.2, PREFIX_2: 0.9, text: 0.4})
    reward = ToxicityReward("tox", scorer, fine_grained=True, policy_tokenizer=char_tokenizer)
    result = reward(["p"], [text], [ids_of(char_tokenizer, text)])
    assert scorer.calls == [[PREFIX_1, PREFIX_2, text]]
    # Drops -.2, -.7, .9 - .4 = .5 on indices 13, 24, 29 (the "." ending the last sentence, not the "\n").
    expected = [0.0] * (len(text) + 1)
    expected[13], expected[24], expected[29] = -0.2, -0.7, 0.5
    assert result.rewards[0] == pytest.approx(expected)
    assert sum(result.rewards[0]) == pytest.approx(-0.4)


def test_holistic_reward_on_last_token_with_scale(char_tokenizer):
    scorer = DictScorer({RESPONSE: 0.1})
    reward = ToxicityReward("tox", scorer, fine_grained=False, policy_tokenizer=char_tokenizer, scale=2.0)
    ids = ids_of(char_tokenizer, RESPONSE)
    result = reward(["prompt"], [RESPONSE], [ids])
    # -2.0 * 0.1 = -0.2 on the last generated token (the eos, index 30).
    assert result.rewards[0] == pytest.approx([0.0] * 30 + [-0.2])
    assert result.stats == {"toxicity": [0.1], "sentences": [3.0], "score_failures": [0.0]}
    assert scorer.calls == [[RESPONSE]]


def test_sentence_cut_by_generation_length_lands_on_last_token(char_tokenizer):
    text = " You stink! You are"  # sentences end at characters 11 and 19
    scorer = DictScorer({text[:11]: 0.8, text: 0.3})
    reward = ToxicityReward("tox", scorer, fine_grained=True, policy_tokenizer=char_tokenizer)
    ids = ids_of(char_tokenizer, text, eos=False)[:15]  # the policy generated 15 tokens
    result = reward(["p"], [text], [ids])
    # Sentence 1: drop 0 - .8 = -.8 on index 10. Sentence 2 would end on index 18, past the 15 tokens: clipped to 14,
    # drop .8 - .3 = .5.
    expected = [0.0] * 15
    expected[10], expected[14] = -0.8, 0.5
    assert result.rewards[0] == pytest.approx(expected)


def test_empty_and_sentenceless_samples(char_tokenizer):
    scorer = DictScorer({"": 0.0, " ": 0.0})
    reward = ToxicityReward("tox", scorer, fine_grained=True, policy_tokenizer=char_tokenizer)
    eos = char_tokenizer.eos_token_id
    result = reward(["p", "p"], ["", " "], [[], [char_tokenizer.convert_tokens_to_ids("Ġ"), eos]])
    assert result.rewards == [[], [0.0, 0.0]]
    assert result.stats == {"toxicity": [0.0, 0.0], "sentences": [0.0, 0.0], "score_failures": [0.0, 0.0]}


def test_one_scorer_call_per_rollout(char_tokenizer):
    responses = [RESPONSE, " Bye.", RESPONSE]  # a repeated response is sent twice: the scorer dedupes
    scorer = DictScorer({PREFIX_1: 0.2, PREFIX_2: 0.9, RESPONSE: 0.1, " Bye.": 0.05})
    reward = ToxicityReward("tox", scorer, fine_grained=True, policy_tokenizer=char_tokenizer)
    token_ids = [ids_of(char_tokenizer, r) for r in responses]
    result = reward(["a", "a", "b"], responses, token_ids)
    assert scorer.calls == [[PREFIX_1, PREFIX_2, RESPONSE, " Bye.", PREFIX_1, PREFIX_2, RESPONSE]]
    # " Bye.": one sentence ending at character 5 (index 4): drop -.05.
    assert result.rewards[1] == pytest.approx([0.0, 0.0, 0.0, 0.0, -0.05, 0.0])
    assert result.stats["toxicity"] == [0.1, 0.05, 0.1]
    assert result.stats["sentences"] == [3.0, 1.0, 3.0]


def test_failed_scores_give_zero_rewards_and_are_counted(char_tokenizer, caplog):
    other = " Go away. Now."
    scorer = DictScorer(
        {
            PREFIX_1: 0.2,
            PREFIX_2: Score(None, "failed", "HTTP 503 after 5 retries"),  # an inner prefix fails
            RESPONSE: 0.1,
            other[:9]: 0.3,
            other: Score(None, "too_long", "over 20480 bytes"),  # the whole response fails
            " Bye.": 0.05,
        }
    )
    reward = ToxicityReward("tox", scorer, fine_grained=True, policy_tokenizer=char_tokenizer)
    responses = [RESPONSE, other, " Bye."]
    token_ids = [ids_of(char_tokenizer, r) for r in responses]
    with caplog.at_level(logging.WARNING, logger="feedbackflow.papers.fgrlhf.detox.rewards"):
        result = reward(["p"] * 3, responses, token_ids)
    assert result.rewards[0] == [0.0] * 31
    assert result.rewards[1] == [0.0] * (len(other) + 1)
    assert result.rewards[2] == pytest.approx([0.0, 0.0, 0.0, 0.0, -0.05, 0.0])
    assert result.stats["score_failures"] == [1.0, 1.0, 0.0]
    toxicity = result.stats["toxicity"]
    assert toxicity[0] == 0.1 and math.isnan(toxicity[1]) and toxicity[2] == 0.05
    messages = [record.getMessage() for record in caplog.records]
    assert any("sample 0" in m and "failed" in m and "HTTP 503" in m for m in messages)
    assert any("sample 1" in m and "too_long" in m for m in messages)
    assert len(scorer.calls) == 1

    holistic = ToxicityReward("tox", scorer, fine_grained=False, policy_tokenizer=char_tokenizer)
    result = holistic(["p"] * 2, [other, RESPONSE], token_ids[1::-1])
    assert result.rewards[0] == [0.0] * (len(other) + 1)
    assert result.rewards[1] == pytest.approx([0.0] * 30 + [-0.1])  # its inner prefix is not scored here
    assert result.stats["score_failures"] == [1.0, 0.0]


def test_registered_and_builder_errors(char_tokenizer):
    assert REWARD_TYPES["toxicity"] in (
        "feedbackflow.papers.fgrlhf.detox.rewards:build_toxicity_reward",
        build_toxicity_reward,
    )
    good = {"type": "toxicity", "variant": "fine_grained", "scorer": {"backend": "profanity_check"}, "cache": "c.db"}
    cases = [
        ({k: v for k, v in good.items() if k != "cache"}, r"missing key\(s\) \['cache'\]"),
        ({k: v for k, v in good.items() if k != "variant"}, r"missing key\(s\) \['variant'\]"),
        ({**good, "model": "x"}, r"unknown key\(s\) \['model'\]"),
        ({**good, "variant": "sentence"}, "variant must be one of"),
        ({**good, "scorer": "perspective"}, "scorer must be an object"),
        ({**good, "cache": " "}, "cache must be the path"),
        ({**good, "scale": "big"}, "scale must be a number"),
        ({**good, "scale": float("inf")}, "not finite"),
    ]
    for spec, message in cases:
        with pytest.raises(ConfigError, match=message):
            build_reward_functions([spec], char_tokenizer)


def test_builder_wires_scorer_config_and_cache(char_tokenizer, monkeypatch):
    """The builder hands spec["scorer"] to ToxicityConfig.from_dict and spec["cache"] to make_toxicity_scorer (a
    stand-in feedbackflow.papers.fgrlhf.detox.toxicity module records both)."""
    made = []

    class FakeConfig:
        @classmethod
        def from_dict(cls, values):
            return ("config", dict(values))

    def make_toxicity_scorer(config, cache_path):
        made.append((config, cache_path))
        return DictScorer({RESPONSE: 0.5})

    fake = types.SimpleNamespace(ToxicityConfig=FakeConfig, make_toxicity_scorer=make_toxicity_scorer)
    monkeypatch.setitem(sys.modules, "feedbackflow.papers.fgrlhf.detox.toxicity", fake)
    spec = [{"type": "toxicity", "name": "tox", "variant": "holistic", "scorer": {"backend": "x"}, "cache": "t.db"}]
    (reward,) = build_reward_functions(spec, char_tokenizer)
    assert made == [(("config", {"backend": "x"}), "t.db")]
    assert isinstance(reward, ToxicityReward) and not reward.fine_grained and reward.scale == 1.0
    ids = ids_of(char_tokenizer, RESPONSE)
    assert reward(["p"], [RESPONSE], [ids]).rewards[0][-1] == pytest.approx(-0.5)
    reward.close()
    assert reward.scorer.closed
