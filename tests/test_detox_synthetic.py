"""The tiny synthetic RealToxicityPrompts (Wu et al. 2023, detoxification): the real record format, read by the
converter; the offline scorer (alt-profanity-check) separates the toxic sentences from the clean ones; challenging
prompts are continued more toxically; reproducible with the seed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from profanity_check import predict_prob

from feedbackflow import cli
from feedbackflow.core.formats import DETOX_PROMPTS, read_table
from feedbackflow.errors import ConfigError
from feedbackflow.papers.fgrlhf.detox.data import RTPSelectionConfig, convert_rtp
from feedbackflow.tiny.detox import (
    CORPUS_FILE,
    OTHER_ATTRIBUTES,
    PROMPTS_FILE,
    SyntheticRTPConfig,
    generate_prompts,
    make_synthetic_rtp,
)
from feedbackflow.tiny.synthetic import unescape_corpus_line

SMALL = SyntheticRTPConfig(n_prompts=400, seed=3)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rtp")
    make_synthetic_rtp(out, SMALL)
    return out


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_records_have_the_real_format(small):
    records = load(small / PROMPTS_FILE)
    assert len(records) == SMALL.n_prompts
    corpus = [unescape_corpus_line(line) for line in (small / CORPUS_FILE).read_text(encoding="utf-8").splitlines()]
    assert corpus == [r["prompt"]["text"] + r["continuation"]["text"] for r in records]
    for record, line in zip(records, corpus, strict=True):
        assert set(record) == {"filename", "begin", "end", "challenging", "prompt", "continuation"}
        assert isinstance(record["challenging"], bool)
        assert record["end"] - record["begin"] == len(line)
        for part in ("prompt", "continuation"):
            assert set(record[part]) == {"text", "toxicity", *OTHER_ATTRIBUTES}
            toxicity = record[part]["toxicity"]
            assert 0.0 <= toxicity <= 1.0 and round(toxicity, 4) == toxicity
            assert all(record[part][name] is None for name in OTHER_ATTRIBUTES)
        prompt, continuation = record["prompt"]["text"], record["continuation"]["text"]
        # As in RTP: the continuation finishes the prompt's sentence, so it starts with a space and a lower-case word.
        assert prompt == prompt.strip() and continuation.startswith(" ") and continuation[1].islower()
        assert continuation.endswith(".")
    # the stored toxicities are the scorer's
    sample = records[:20]
    expected = predict_prob([r["prompt"]["text"] for r in sample] + [r["continuation"]["text"] for r in sample])
    stored = [r["prompt"]["toxicity"] for r in sample] + [r["continuation"]["toxicity"] for r in sample]
    assert stored == [round(float(p), 4) for p in expected]


def test_the_converter_reads_it(small, tmp_path):
    records = load(small / PROMPTS_FILE)
    report = convert_rtp(small / PROMPTS_FILE, tmp_path / "all", RTPSelectionConfig(dev_size=50, test_size=50))
    counts = report["counts"]
    assert [counts[k] for k in ("records", "skipped", "train", "dev", "test")] == [400, 0, 300, 50, 50]
    assert counts["sft_train"] == 300 and counts["sft_dev"] == 50  # every continuation is non-empty
    assert sum(counts["challenging"].values()) == sum(r["challenging"] for r in records)
    train = read_table(tmp_path / "all" / "train.parquet", DETOX_PROMPTS).to_pylist()
    assert all(row["continuation"] == records[row["record"]]["continuation"]["text"] for row in train)

    toxic = convert_rtp(
        small / PROMPTS_FILE, tmp_path / "toxic", RTPSelectionConfig(min_prompt_toxicity=0.5, dev_size=0, test_size=0)
    )
    assert toxic["counts"]["selected"] == sum(r["prompt"]["toxicity"] >= 0.5 for r in records) > 0


def test_reproducible_with_the_seed(small, tmp_path):
    make_synthetic_rtp(tmp_path / "same", SMALL)
    make_synthetic_rtp(tmp_path / "other", dataclasses.replace(SMALL, seed=4))
    for name in (PROMPTS_FILE, CORPUS_FILE):
        assert (tmp_path / "same" / name).read_bytes() == (small / name).read_bytes()
        assert (tmp_path / "other" / name).read_bytes() != (small / name).read_bytes()


def test_the_offline_scorer_separates_toxic_and_clean_sentences():
    items = generate_prompts(SyntheticRTPConfig())  # the default 3,000 prompts
    sentences = [(text, toxic) for item in items for text, toxic in zip(item.sentences, item.toxic, strict=True)]
    scores = predict_prob([text for text, _ in sentences])
    toxic = [score for score, (_, flag) in zip(scores, sentences, strict=True) if flag]
    clean = [score for score, (_, flag) in zip(scores, sentences, strict=True) if not flag]
    assert len(toxic) > 1000 and len(clean) > 1000
    assert sum(score >= 0.5 for score in toxic) / len(toxic) >= 0.95
    assert sum(score < 0.5 for score in clean) / len(clean) >= 0.95
    # prompts: only the challenging ones written with an insult score as toxic
    prompt_scores = predict_prob([item.prompt for item in items])
    insulting = [s for s, item in zip(prompt_scores, items, strict=True) if item.prompt_toxic]
    plain = [s for s, item in zip(prompt_scores, items, strict=True) if not item.prompt_toxic]
    assert sum(s >= 0.5 for s in insulting) / len(insulting) >= 0.95
    assert sum(s < 0.5 for s in plain) / len(plain) >= 0.95


def test_challenging_prompts_are_continued_more_toxically(small):
    config = SyntheticRTPConfig()
    items = generate_prompts(config)
    for challenging, rate in ((True, config.challenging_toxic_rate), (False, config.toxic_sentence_rate)):
        flags = [flag for item in items if item.challenging == challenging for flag in item.toxic]
        assert abs(sum(flags) / len(flags) - rate) < 0.05
    assert abs(sum(item.challenging for item in items) / len(items) - config.challenging_fraction) < 0.05
    # in the written file, by the stored continuation toxicity
    records = load(small / PROMPTS_FILE)

    def toxic_share(challenging: bool) -> float:
        scores = [r["continuation"]["toxicity"] for r in records if r["challenging"] == challenging]
        return sum(score >= 0.5 for score in scores) / len(scores)

    assert toxic_share(True) > toxic_share(False) + 0.3


def test_sentence_counts_and_structure():
    config = SyntheticRTPConfig(n_prompts=300, min_sentences=1, max_sentences=4, challenging_fraction=0.5)
    items = generate_prompts(config)
    assert {len(item.sentences) for item in items} == {1, 2, 3, 4}
    for item in items:
        assert len(item.toxic) == len(item.sentences) and item.continuation == "".join(item.sentences)
        assert all(sentence.startswith(" ") and sentence.endswith(".") for sentence in item.sentences)
        assert all(sentence[1].isupper() for sentence in item.sentences[1:])  # later sentences are whole sentences
        assert not item.prompt_toxic or item.challenging


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_prompts": 0}, "n_prompts"),
        ({"challenging_fraction": 1.5}, "challenging_fraction must be in"),
        ({"toxic_sentence_rate": -0.1}, "toxic_sentence_rate must be in"),
        ({"min_sentences": 0}, "min_sentences"),
        ({"min_sentences": 3, "max_sentences": 2}, "min_sentences <= max_sentences"),
    ],
)
def test_bad_config(options, message):
    with pytest.raises(ConfigError, match=message):
        SyntheticRTPConfig(**options)


def test_cli(tmp_path):
    cli.main(["make-synthetic-rtp", "--output-dir", str(tmp_path), "--hparams", '{"n_prompts": 7, "seed": 3}'])
    make_synthetic_rtp(tmp_path / "direct", SyntheticRTPConfig(n_prompts=7, seed=3))
    for name in (PROMPTS_FILE, CORPUS_FILE):
        assert (tmp_path / name).read_bytes() == (tmp_path / "direct" / name).read_bytes()
    assert len(load(tmp_path / PROMPTS_FILE)) == 7
