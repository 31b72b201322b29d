"""Fine-Grained RLHF reward models: input encoding, losses on literal logits, and real training of tiny Longformers."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from transformers import LongformerConfig, LongformerModel

from feedbackflow.core.formats import PREFERENCE_LISTS, SEGMENT_LABELS, write_rows
from feedbackflow.papers.fgrlhf.qa.reward_models import encode_segments, load_fg_reward_model, sequence_scores
from feedbackflow.papers.fgrlhf.qa.reward_training import (
    FGRewardTrainingConfig,
    freeze_global_attention,
    pair_loss_sum,
    reward_mean_std,
    token_loss_sum,
    train_fg_reward_model,
)
from feedbackflow.tiny.models import train_tokenizer

WORDS = "the river star train music garden clock bridge apple old new blue green is was near far".split()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    root = tmp_path_factory.mktemp("fg_tok")
    corpus = root / "corpus.txt"
    rng = random.Random(0)
    lines = [
        " ".join(rng.choice(WORDS + ["wrong", "good", "question:", "answer:"]) for _ in range(12)) for _ in range(200)
    ]
    corpus.write_text("\n".join(lines))
    return train_tokenizer([corpus], vocab_size=300, model_max_length=512)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny Longformer encoder (the paper's RM architecture) with the tiny tokenizer."""
    config = LongformerConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        attention_window=16,
        max_position_embeddings=256 + 2,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        sep_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("fg_enc") / "longformer"
    LongformerModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_encode_segments_layout_and_truncation(tokenizer):
    bos, eos, sep = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("</s>")
    prefix, segs = "question: old river answer:", ["the star is near.", "a clock was blue."]
    got = encode_segments(tokenizer, prefix, segs, max_length=100)
    p, s1, s2 = ids(tokenizer, prefix), ids(tokenizer, " " + segs[0]), ids(tokenizer, " " + segs[1])
    assert got.input_ids == [bos, *p, sep, *s1, sep, *s2, eos]
    assert got.separator_positions == [1 + len(p), 1 + len(p) + 1 + len(s1)]
    assert not got.prefix_truncated

    # Too long by 3: the prefix loses its last 3 tokens; every segment keeps its separator.
    full = len(got.input_ids)
    cut = encode_segments(tokenizer, prefix, segs, max_length=full - 3)
    assert cut.input_ids == [bos, *p[:-3], sep, *s1, sep, *s2, eos] and cut.prefix_truncated
    assert cut.separator_positions == [1 + len(p) - 3, 1 + len(p) - 3 + 1 + len(s1)]

    # Room for no prefix and one segment only: the second segment is dropped (no separator for it).
    one = encode_segments(tokenizer, prefix, segs, max_length=2 + 1 + len(s1))
    assert one.input_ids == [bos, sep, *s1, eos] and one.separator_positions == [1]


class FixedLogits(torch.nn.Module):
    """Stands in for a model so the losses are checked on literal logits (no real model has chosen outputs)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.logits)


def test_token_loss_is_cross_entropy_on_separators_only():
    # 2 sequences x 3 positions x 2 labels. Labelled: (0, 1) -> label 1, (1, 0) -> label 0, (1, 2) -> label 1.
    logits = [[[9.0, 9.0], [0.0, 2.0], [5.0, -5.0]], [[1.0, 0.0], [3.0, 3.0], [0.0, 0.0]]]
    items = [([1, 2, 3], [(1, 1)]), ([1, 2, 3], [(0, 0), (2, 1)])]
    loss = token_loss_sum(FixedLogits(logits), items, pad=0, device="cpu")
    # CE = -log softmax: (0,1): -log(e^2/(1+e^2)) = log(1+e^-2); (1,0): log(1+e^-1); (1,2): log 2.
    expected = math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1)) + math.log(2)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_pair_loss_is_minus_log_sigmoid_of_the_gap():
    # Scores of (preferred, other) per pair: (2.0, 0.5) and (-1.0, 1.0).
    logits = [[2.0], [0.5], [-1.0], [1.0]]
    items = [([1], [2]), ([3], [4])]
    loss = pair_loss_sum(FixedLogits(logits), items, pad=0, device="cpu")
    # -log sigmoid(1.5) - log sigmoid(-2.0) = log(1+e^-1.5) + log(1+e^2)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1.5)) + math.log(1 + math.exp(2.0)), rel=1e-6)


def sentence(rng, n=4):
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "."


def test_token_reward_model_learns_to_flag_segments(tmp_path, encoder_dir):
    rng = random.Random(1)

    def rows(n):
        out = []
        for i in range(n):
            segments, labels = [], []
            for _ in range(rng.randint(2, 4)):
                wrong = rng.random() < 0.4
                segments.append(("wrong " if wrong else "") + sentence(rng))
                labels.append(int(wrong))
            labels[0] = -100 if rng.random() < 0.2 else labels[0]  # ignored segments carry no loss
            out.append(
                {
                    "prefix": "question: " + sentence(rng) + " answer:",
                    "segments": segments,
                    "labels": labels,
                    "source": "test",
                    "record": i,
                }
            )
        return out

    write_rows(rows(160), tmp_path / "train.parquet", SEGMENT_LABELS)
    write_rows(rows(60), tmp_path / "dev.parquet", SEGMENT_LABELS)
    config = FGRewardTrainingConfig(
        kind="token",
        max_length=128,
        num_epochs=6,
        batch_size=16,
        micro_batch_size=8,
        learning_rate=3e-3,
        weight_decay=0.0,
        warmup_ratio=0.05,
        seed=3,
    )
    meta = train_fg_reward_model(
        str(tmp_path / "train.parquet"),
        str(encoder_dir),
        str(tmp_path / "r1"),
        str(tmp_path / "work"),
        config,
        eval_path=str(tmp_path / "dev.parquet"),
    )
    assert meta["eval"]["accuracy"] > 0.9 and meta["eval"]["error_f1"] > 0.85, meta["eval"]
    saved = json.loads((tmp_path / "r1" / "fg_reward_model.json").read_text())
    assert saved["kind"] == "token" and saved["eval"] == meta["eval"]
    model, _ = load_fg_reward_model(tmp_path / "r1", "token")
    assert model.config.id2label == {0: "O", 1: "ERR"}
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())


def test_sequence_reward_model_and_mean_std(tmp_path, encoder_dir):
    rng = random.Random(2)

    def rows(n):
        out = []
        for i in range(n):
            good, bad = "good " + sentence(rng), sentence(rng)
            texts, scores = ([good, bad], [1.0, 0.0]) if rng.random() < 0.5 else ([bad, good], [0.0, 1.0])
            out.append(
                {"text": [f"question: x answer: {t}" for t in texts], "score": scores, "source": "t", "record": i}
            )
        return out

    write_rows(rows(128), tmp_path / "train.parquet", PREFERENCE_LISTS)
    write_rows(rows(40), tmp_path / "dev.parquet", PREFERENCE_LISTS)
    config = FGRewardTrainingConfig(
        kind="sequence",
        max_length=64,
        num_epochs=4,
        batch_size=16,
        micro_batch_size=16,
        learning_rate=3e-3,
        weight_decay=0.0,
        warmup_ratio=0.05,
        seed=3,
    )
    meta = train_fg_reward_model(
        str(tmp_path / "train.parquet"),
        str(encoder_dir),
        str(tmp_path / "r3"),
        str(tmp_path / "work"),
        config,
        eval_path=str(tmp_path / "dev.parquet"),
    )
    assert meta["eval"]["n_pairs"] == 40 and meta["eval"]["accuracy"] > 0.9, meta["eval"]

    stats = reward_mean_std(str(tmp_path / "r3"), str(tmp_path / "train.parquet"), max_length=64, seed=7)
    # By hand: the same random side per pair, scored one at a time, population std.
    model, tokenizer = load_fg_reward_model(tmp_path / "r3", "sequence")
    model.eval()
    picker = random.Random(7)
    texts = [r["text"][picker.randrange(2)] for r in rows_from(tmp_path / "train.parquet")]
    scores = [sequence_scores(model, tokenizer, [t], 64)[0] for t in texts]
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
    assert stats["n"] == 128
    assert stats["mean"] == pytest.approx(mean, abs=1e-5) and stats["std"] == pytest.approx(std, abs=1e-5)


def rows_from(path):
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def test_token_model_after_freezing_has_a_gradient_on_every_trained_parameter(encoder_dir, tokenizer):
    """DDP (find_unused_parameters off) needs a gradient on every trained parameter at every step. Without global
    attention the token classifier leaves Longformer's query/key/value_global without one: those are frozen."""
    torch.manual_seed(0)
    model, _ = load_fg_reward_model(encoder_dir, "token")
    encoded = encode_segments(tokenizer, "question: old river answer:", ["the star is near.", "a clock."], 64)
    items = [(encoded.input_ids, [(p, 1) for p in encoded.separator_positions])]
    token_loss_sum(model, items, tokenizer.pad_token_id, "cpu").backward()
    no_gradient = sorted(n for n, p in model.named_parameters() if p.requires_grad and p.grad is None)
    assert len(no_gradient) == 2 * 3 * 2  # 2 layers x query/key/value_global x weight/bias
    frozen = freeze_global_attention(model)
    assert sorted(frozen) == no_gradient
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert freeze_global_attention(torch.nn.Linear(2, 2)) == []


def test_token_reward_model_trains_under_ddp(tmp_path, encoder_dir, repo_root):
    """2 CPU processes (DDP over gloo, through `launch`), 4 optimiser steps of a tiny Longformer token RM.

    Without global attention the token classifier never uses Longformer's query/key/value_global projections; DDP
    then waits for their gradients and stops at the second step ("Expected to have finished reduction in the prior
    iteration"). Those projections are frozen for the token kind, as the original leaves them untouched.
    """
    rng = random.Random(5)
    rows = [
        {"prefix": "question: " + sentence(rng) + " answer:", "segments": [sentence(rng), "wrong " + sentence(rng)],
         "labels": [0, 1], "source": "test", "record": i}
        for i in range(8)
    ]  # fmt: skip
    write_rows(rows, tmp_path / "train.parquet", SEGMENT_LABELS)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(
        [sys.executable, "-m", "feedbackflow", "launch", "--processes", "2", "--", "train-fg-reward-model",
         "--train", str(tmp_path / "train.parquet"), "--model", str(encoder_dir), "--output", str(tmp_path / "r1"),
         "--work-dir", str(tmp_path / "work"), "--kind", "token", "--max-length", "64", "--batch-size", "2",
         "--micro-batch-size", "1", "--max-steps", "4", "--threads", "1"],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    log = pd.read_parquet(tmp_path / "r1" / "training_log.parquet")
    assert log["step"].tolist() == [1, 2, 3, 4] and log["loss"].notna().all()
    trained, _ = load_fg_reward_model(tmp_path / "r1", "token")
    initial = LongformerModel.from_pretrained(encoder_dir).state_dict()
    for name, value in trained.longformer.state_dict().items():
        if "_global" in name:  # unused without global attention: left as they were loaded
            assert torch.equal(value, initial[name]), name
        elif name.endswith("attention.self.query.weight"):
            assert not torch.equal(value, initial[name]), name  # the rest trained
