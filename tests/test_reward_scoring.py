"""Reward scoring of samples (Yuan et al. 2023): prompt + " " + response + eos, read at the eos."""

from __future__ import annotations

import argparse

import pytest
import torch

from feedbackflow.core.formats import SAMPLES, SCORED_SAMPLES, read_table, write_rows
from feedbackflow.errors import DataError
from feedbackflow.models.reward_model import RewardModel, load_reward_model, save_reward_model
from feedbackflow.stages.reward_scoring import RewardScoringConfig, configure, main, sample_texts, score_texts
from feedbackflow.tiny.models import TinyModelConfig, build_causal_lm, train_tokenizer

TINY = TinyModelConfig(
    seed=5,
    vocab_size=300,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    max_position_embeddings=64,
)
CORPUS = [
    "\\n\\nHuman: What is the capital of France?\\n\\nAssistant: Paris is the capital of France.",
    "the quick brown fox jumps over the lazy dog",
    "one two three four five six seven eight nine ten",
]
SAMPLE_ROWS = [
    ("p-0", "\n\nHuman: capital of France?\n\nAssistant:", "Paris.", "chosen", 0),
    ("p-0", "\n\nHuman: capital of France?\n\nAssistant:", "the lazy dog jumps over the quick brown fox", "tiny", 0),
    ("p-1", "one two three", "four", "tiny", 0),
    ("p-1", "one two three", "", "tiny", 1),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm")
    (root / "corpus.txt").write_text("\n".join(CORPUS * 3) + "\n")
    tokenizer = train_tokenizer([root / "corpus.txt"], TINY.vocab_size, TINY.max_position_embeddings)
    model = RewardModel(build_causal_lm(tokenizer, TINY), pooling="last")
    torch.manual_seed(0)
    model.reward_head.weight.data.normal_()
    save_reward_model(model, tokenizer, root / "rm")
    return root / "rm"


def write_samples(path, rows=SAMPLE_ROWS) -> str:
    keys = ("prompt_id", "prompt", "response", "origin", "sample_index")
    write_rows([dict(zip(keys, row, strict=True)) for row in rows], path, SAMPLES)
    return str(path)


def test_score_is_the_reward_at_the_appended_eos(reward_dir):
    model, tokenizer = load_reward_model(str(reward_dir), pooling="eos")
    texts = sample_texts([r[1] for r in SAMPLE_ROWS], [r[2] for r in SAMPLE_ROWS])
    assert texts[0] == "\n\nHuman: capital of France?\n\nAssistant: Paris."
    scores = score_texts(model, tokenizer, texts, RewardScoringConfig(batch_size=3))
    model.eval()
    with torch.no_grad():
        for text, score in zip(texts, scores, strict=True):
            ids = (
                [tokenizer.bos_token_id]
                + tokenizer(text, add_special_tokens=False)["input_ids"]
                + [tokenizer.eos_token_id]
            )
            hidden = model.lm.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
            assert score == pytest.approx(float(hidden @ model.reward_head.weight[0]), abs=1e-5)
    # batch size and order do not change a score
    reversed_scores = score_texts(model, tokenizer, texts[::-1], RewardScoringConfig(batch_size=1))
    assert reversed_scores[::-1] == pytest.approx(scores, abs=1e-5)


def test_long_texts_are_left_truncated(reward_dir):
    model, tokenizer = load_reward_model(str(reward_dir), pooling="eos")
    long_text = "one two three " * 20 + "Paris."
    config = RewardScoringConfig(max_length=10)
    (score,) = score_texts(model, tokenizer, [long_text], config)
    ids = tokenizer(long_text, add_special_tokens=False)["input_ids"]
    (tail_score,) = score_texts(model, tokenizer, [tokenizer.decode(ids[-8:])], config)
    assert score == pytest.approx(tail_score, abs=1e-5)


def test_score_samples_stage(reward_dir, tmp_path):
    first = write_samples(tmp_path / "a.parquet", SAMPLE_ROWS[:2])
    second = write_samples(tmp_path / "b.parquet", SAMPLE_ROWS[2:])
    output = tmp_path / "scored.parquet"
    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(
        ["--samples", first, second, "--model", str(reward_dir), "--output", str(output), "--batch-size", "2"]
        + ["--threads", "1", "--max-length", "64"]
    )
    main(args)
    scored = read_table(output, SCORED_SAMPLES).to_pylist()
    assert [(r["prompt_id"], r["response"]) for r in scored] == [(r[0], r[2]) for r in SAMPLE_ROWS]
    assert {r["status"] for r in scored} == {"ok"} and {r["scorer"] for r in scored} == {f"rm:{reward_dir}"}
    assert all(r["prompt_tokens"] is None and r["completion_tokens"] is None for r in scored)
    model, tokenizer = load_reward_model(str(reward_dir), pooling="eos")
    expected = score_texts(
        model, tokenizer, sample_texts([r[1] for r in SAMPLE_ROWS], [r[2] for r in SAMPLE_ROWS]), RewardScoringConfig()
    )
    assert [r["score"] for r in scored] == pytest.approx(expected, abs=1e-5)


def test_duplicate_samples_are_an_error_and_nothing_is_written(reward_dir, tmp_path):
    first = write_samples(tmp_path / "a.parquet")
    output = tmp_path / "scored.parquet"
    parser = argparse.ArgumentParser()
    configure(parser)
    with pytest.raises(DataError) as caught:
        main(parser.parse_args(["--samples", first, first, "--model", str(reward_dir), "--output", str(output)]))
    assert caught.value.path == first and caught.value.record == 0
    assert not output.exists()
