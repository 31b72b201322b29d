"""DSP reward-model evaluation (Cheng et al. 2023): pair and first-two accuracy counted by hand, and scoring."""

from __future__ import annotations

import pytest
import torch

from feedbackflow.core.formats import PREFERENCE_LISTS, REWARD_METRICS, REWARD_SCORES, read_table, write_rows
from feedbackflow.errors import ConfigError
from feedbackflow.models.reward_model import encode_texts, load_reward_model, score_sequences
from feedbackflow.papers.dsp.reward_evaluation import (
    RewardEvaluationConfig,
    evaluate_reward_model,
    first_two_accuracy,
    pair_accuracy,
    parse_eval_sets,
)
from feedbackflow.text.tokens import pad_id_of
from feedbackflow.tiny.models import TinyModelConfig, build_causal_lm, train_tokenizer

# ---------------------------------------------------------------------------------------------------------------
# pair accuracy


def test_pair_accuracy_three_texts():
    # scores [2, 1, 0], rewards [3, 1, 2]:
    #   (0,1): s 2 > 1, r 3 > 1 right; (0,2): s 2 > 0, r 3 > 2 right; (1,2): s 1 > 0, r 1 < 2 wrong -> 2 of 3
    assert pair_accuracy([[3.0, 1.0, 2.0]], [[2.0, 1.0, 0.0]]) == (2, 3)


def test_pair_accuracy_skips_ties():
    # scores [1, 1, 0], rewards [0, 5, 1]:
    #   (0,1) tied score: skipped; (0,2): s 1 > 0, r 0 < 1 wrong; (1,2): s 1 > 0, r 5 > 1 right -> 1 of 2
    assert pair_accuracy([[0.0, 5.0, 1.0]], [[1.0, 1.0, 0.0]]) == (1, 2)
    # all tied: nothing to count
    assert pair_accuracy([[0.0, 5.0, 1.0]], [[0.5, 0.5, 0.5]]) == (0, 0)


def test_pair_accuracy_equal_rewards_are_wrong():
    assert pair_accuracy([[0.5, 0.5]], [[1.0, 0.0]]) == (0, 1)
    # scores [0, 1, 2], rewards [1, 1, 3]: (0,1) equal rewards wrong; (0,2) 1 < 3 right; (1,2) 1 < 3 right
    assert pair_accuracy([[1.0, 1.0, 3.0]], [[0.0, 1.0, 2.0]]) == (2, 3)


def test_pair_accuracy_sums_over_lists():
    rewards = [[3.0, 1.0, 2.0], [0.0, 5.0, 1.0], [0.2, 0.1], [7.0], []]
    scores = [[2.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.5, 1.5], [1.0], []]
    # (2 of 3) + (1 of 2) + webgpt-style [0.5, 1.5] with r 0.2 > 0.1: wrong (0 of 1) + single and empty lists: none
    assert pair_accuracy(rewards, scores) == (3, 6)


def test_pair_accuracy_length_mismatch():
    with pytest.raises(ValueError):
        pair_accuracy([[1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]])


# ---------------------------------------------------------------------------------------------------------------
# first-two accuracy


def test_first_two_accuracy():
    rewards = [[1.0, 2.0, 3.0], [2.0, 1.0, 0.0], [5.0, 5.0, 0.0], [0.0, 1.0, 9.0], [4.0, 0.0], [1.0]]
    scores = [[1.0, 0.0, 2.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0], [1.0]]
    # list 0: s 1 > 0, r 1 < 2 wrong (the third text is ignored)
    # list 1: first two scores tie: skipped
    # list 2: equal rewards: wrong
    # list 3: s 0 < 1, r 0 < 1 right
    # list 4: s 1 > 0, r 4 > 0 right
    # list 5: one text: skipped
    assert first_two_accuracy(rewards, scores) == (2, 4)


def test_first_two_accuracy_all_skipped():
    assert first_two_accuracy([[1.0, 2.0], [3.0]], [[1.0, 1.0], [0.0]]) == (0, 0)


# ---------------------------------------------------------------------------------------------------------------
# eval sets


def test_parse_eval_sets():
    assert parse_eval_sets(["helpful=a/b.parquet", "dsp=x=y.parquet"]) == {
        "helpful": "a/b.parquet",
        "dsp": "x=y.parquet",
    }
    assert parse_eval_sets([]) == {}


@pytest.mark.parametrize("items", [["helpful"], ["=a.parquet"], ["helpful="], ["a=x.parquet", "a=y.parquet"]])
def test_parse_eval_sets_errors(items):
    with pytest.raises(ConfigError):
        parse_eval_sets(items)


# ---------------------------------------------------------------------------------------------------------------
# scoring with a tiny model

TINY = TinyModelConfig(
    seed=4,
    vocab_size=300,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    max_position_embeddings=64,
)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    corpus = root / "corpus.txt"
    corpus.write_text(
        "\n".join(["the cat sat on the mat", "Human: hello\\n\\nAssistant: hi there", "a b c d e f g"] * 5) + "\n",
        encoding="utf-8",
    )
    tokenizer = train_tokenizer([corpus], vocab_size=TINY.vocab_size, model_max_length=64)
    out = root / "tiny"
    build_causal_lm(tokenizer, TINY).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def alone(model, sequence):
    with torch.no_grad():
        return model(torch.tensor([sequence]), torch.ones(1, len(sequence), dtype=torch.long)).rewards.item()


def test_score_sequences_keeps_input_order(lm_dir):
    model, tokenizer = load_reward_model(str(lm_dir), seed=2)
    texts = ["the cat sat on the mat", "hi", "a b c d e f g", "the mat", "Human: hello"]
    sequences = encode_texts(tokenizer, texts, 32)
    assert len({len(s) for s in sequences}) > 2
    rewards = score_sequences(model, sequences, pad_id_of(tokenizer), batch_size=2)
    assert len(rewards) == len(texts)
    assert not model.training
    for sequence, reward in zip(sequences, rewards, strict=True):
        assert reward == pytest.approx(alone(model, sequence), abs=1e-5)
    # the batch size does not change the rewards
    assert score_sequences(model, sequences, pad_id_of(tokenizer), batch_size=5) == pytest.approx(rewards, abs=1e-5)


def test_evaluate_reward_model_end_to_end(lm_dir, tmp_path):
    eval_path = tmp_path / "set.parquet"
    rows = [
        {"text": ["the cat", "the mat", "a b"], "score": [1.0, 1.0, 0.0], "source": "s", "record": 0},
        {"text": ["hi there", "hello"], "score": [1.5, 0.5], "source": "s", "record": 1},
        {"text": ["a b c", "d e f"], "score": [0.0, 0.0], "source": "s", "record": 2},
    ]
    write_rows(rows, eval_path, PREFERENCE_LISTS)
    config = RewardEvaluationConfig(seed=3, max_length=16, batch_size=3)
    metrics_path, rewards_path = tmp_path / "metrics.parquet", tmp_path / "rewards.parquet"
    metrics = evaluate_reward_model(str(lm_dir), "tiny", {"one": str(eval_path)}, metrics_path, rewards_path, config)
    # pairs with different scores: list 0 -> (0,2), (1,2); list 1 -> (0,1); list 2 -> none: 3 in all.
    # first two: list 0 tie, list 2 tie -> only list 1.
    (row,) = metrics
    assert (row["model"], row["eval_set"]) == ("tiny", "one")
    assert (row["n_pairs"], row["n_first_two"], row["n_lists"]) == (3, 1, 3)
    assert row["accuracy"] in (0.0, 1 / 3, 2 / 3, 1.0)
    assert row["first_two_accuracy"] in (0.0, 1.0)
    assert read_table(metrics_path, REWARD_METRICS).to_pylist() == metrics

    written = read_table(rewards_path, REWARD_SCORES).to_pylist()
    assert [r["record"] for r in written] == [0, 1, 2]
    assert [r["score"] for r in written] == [[1.0, 1.0, 0.0], [1.5, 0.5], [0.0, 0.0]]
    model, tokenizer = load_reward_model(str(lm_dir), seed=3)
    for source, result in zip(rows, written, strict=True):
        expected = [alone(model, seq) for seq in encode_texts(tokenizer, source["text"], 16)]
        assert result["reward"] == pytest.approx(expected, abs=1e-5)
    # the metrics agree with the written rewards, counted with the hand-checked functions above
    correct, total = pair_accuracy([r["reward"] for r in written], [r["score"] for r in written])
    assert row["accuracy"] == pytest.approx(correct / total)
