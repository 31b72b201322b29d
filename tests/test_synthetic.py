"""The tiny-scale synthetic raw data: deterministic, in the real formats, and with learnable structure."""

from __future__ import annotations

import gzip
import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest

from feedbackflow import cli
from feedbackflow.tiny.synthetic import (
    CORPUS_FILE,
    DOMAINS,
    DSP_FILES,
    HH_FILES,
    TEXT_SCORE_FILES,
    SyntheticDataConfig,
    escape_corpus_line,
    make_synthetic_data,
    unescape_corpus_line,
)

ALL_FILES = sorted([*DSP_FILES.values(), *HH_FILES.values(), *TEXT_SCORE_FILES.values(), CORPUS_FILE])
SMALL = SyntheticDataConfig(
    seed=3,
    dsp_train_queries=7,
    dsp_test_queries=5,
    hh_train_pairs=11,
    hh_test_pairs=4,
    text_score_train_lists=9,
    text_score_test_lists=6,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The default-sized data set (a fraction of a second to write)."""
    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic_data(out, SyntheticDataConfig())
    return out


def read_dsp(root: Path, split: str) -> list[dict]:
    return json.loads((root / DSP_FILES[split]).read_text())


def read_hh(root: Path, subset: str, split: str) -> list[dict]:
    with gzip.open(root / HH_FILES[(subset, split)], "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def read_text_score(root: Path, split: str) -> list[dict]:
    return json.loads((root / TEXT_SCORE_FILES[split]).read_text())


def split_last_turn(dialogue: str) -> tuple[str, str]:
    prefix, _, last = dialogue.rpartition("\n\nAssistant: ")
    return prefix, last


# -- a multinomial naive Bayes on bags of words: "a small model can learn this" -------------------------------


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+|[!?\[\]()]", text.lower())


class NaiveBayes:
    def __init__(self, examples: list[tuple[str, str]]):
        self.counts: dict[str, Counter] = {}
        for text, label in examples:
            self.counts.setdefault(label, Counter()).update(words(text))
        self.vocab = set().union(*self.counts.values())
        self.totals = {label: sum(c.values()) for label, c in self.counts.items()}

    def log_likelihood(self, text: str, label: str) -> float:
        counts, total, size = self.counts[label], self.totals[label], len(self.vocab) + 1
        return sum(math.log((counts[w] + 1) / (total + size)) for w in words(text))

    def predict(self, text: str) -> str:
        return max(self.counts, key=lambda label: self.log_likelihood(text, label))

    def margin(self, text: str, good: str, bad: str) -> float:
        return self.log_likelihood(text, good) - self.log_likelihood(text, bad)


# -- determinism -------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    first = make_synthetic_data(tmp_path / "a", SMALL)
    second = make_synthetic_data(tmp_path / "b", SMALL)
    other = make_synthetic_data(tmp_path / "c", SyntheticDataConfig(**{**SMALL.__dict__, "seed": 4}))
    assert sorted(first) == ALL_FILES
    for name in ALL_FILES:
        assert first[name].read_bytes() == second[name].read_bytes(), name
        assert first[name].read_bytes() != other[name].read_bytes(), name
    leftovers = [p for p in (tmp_path / "a").rglob("*") if p.name.startswith(".")]
    assert leftovers == []
    assert all(path.stat().st_mode & 0o044 == 0o044 for path in first.values()), "data files should be readable"


def test_gzip_header_has_no_name_or_time(data):
    for name in HH_FILES.values():
        header = (data / name).read_bytes()[:10]
        assert header[:3] == b"\x1f\x8b\x08"
        assert header[3] & 0x08 == 0, "FNAME flag set: the temporary file name would be in the bytes"
        assert header[4:8] == b"\0\0\0\0", "mtime must be 0"


# -- formats and sizes -------------------------------------------------------------------------------------------


def test_sizes_follow_the_config(tmp_path):
    make_synthetic_data(tmp_path, SMALL)
    assert len(read_dsp(tmp_path, "train")) == 7
    assert len(read_dsp(tmp_path, "test")) == 5
    for subset in ("helpful-base", "harmless-base"):
        assert len(read_hh(tmp_path, subset, "train")) == 11
        assert len(read_hh(tmp_path, subset, "test")) == 4
    assert len(read_text_score(tmp_path, "train")) == 9
    assert len(read_text_score(tmp_path, "test")) == 6


def test_dsp_records_have_exactly_the_five_domains(data):
    for split in ("train", "test"):
        for record in read_dsp(data, split):
            assert set(record) == {"query", "responses"}
            assert record["query"].endswith("?")
            assert sorted(record["responses"]) == sorted(DOMAINS)
            for response in record["responses"].values():
                assert 15 <= len(response.split()) <= 45, response
            assert len(set(record["responses"].values())) == 5


def test_dsp_domains_have_similar_lengths(data):
    records = read_dsp(data, "train")
    means = {d: sum(len(r["responses"][d].split()) for r in records) / len(records) for d in DOMAINS}
    assert max(means.values()) - min(means.values()) < 6, means


def test_hh_pairs_share_the_prompt_and_differ_in_the_last_turn(data):
    for (subset, split), _ in HH_FILES.items():
        records = read_hh(data, subset, split)
        n_multi_turn = 0
        for record in records:
            assert set(record) == {"chosen", "rejected"}
            chosen_prefix, chosen_last = split_last_turn(record["chosen"])
            rejected_prefix, rejected_last = split_last_turn(record["rejected"])
            assert record["chosen"].startswith("\n\nHuman: ")
            assert chosen_prefix == rejected_prefix
            assert chosen_last and rejected_last and chosen_last != rejected_last
            assert 10 <= len(record["chosen"].split()) <= 70
            n_multi_turn += record["chosen"].count("\n\nHuman: ") >= 2
        assert 0 < n_multi_turn < len(records), (subset, split)


def test_text_score_lists(data):
    n_ties = 0
    for split in ("train", "test"):
        for record in read_text_score(data, split):
            assert set(record) == {"text", "score"}
            assert len(record["text"]) == len(record["score"]) in (2, 3)
            assert all(isinstance(s, float) for s in record["score"])
            assert all(t.startswith("\n\nHuman: ") and "\n\nAssistant: " in t for t in record["text"])
            n_ties += len(set(record["score"])) < len(record["score"])
    assert n_ties > 0


def test_corpus_holds_every_text_once(data):
    lines = (data / CORPUS_FILE).read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(set(lines))
    assert all("\n" not in line for line in lines)
    texts = set(map(unescape_corpus_line, lines))
    for record in read_dsp(data, "test"):
        assert record["query"] in texts
        assert set(record["responses"].values()) <= texts
    for record in read_hh(data, "harmless-base", "test"):
        assert {record["chosen"], record["rejected"]} <= texts
    for record in read_text_score(data, "test"):
        assert set(record["text"]) <= texts


@pytest.mark.parametrize("text", ["plain", "\n\nHuman: hi\n\nAssistant: yo", "a\\nb", "back\\\\slash\n", "\r\n\\"])
def test_corpus_escaping_roundtrips(text):
    line = escape_corpus_line(text)
    assert "\n" not in line and "\r" not in line
    assert unescape_corpus_line(line) == text


# -- learnable structure -----------------------------------------------------------------------------------------


def test_dsp_domains_are_separable(data):
    """A bag-of-words classifier trained on the train split names the domain of test responses."""
    train = [(r["responses"][d], d) for r in read_dsp(data, "train") for d in DOMAINS]
    test = [(r["responses"][d], d) for r in read_dsp(data, "test") for d in DOMAINS]
    model = NaiveBayes(train)
    accuracy = sum(model.predict(text) == label for text, label in test) / len(test)
    assert accuracy >= 0.97


def test_hh_chosen_and_rejected_are_learnable(data):
    """A bag-of-words model of the final turns separates chosen from rejected on the test split (5% noise)."""
    for subset in ("helpful-base", "harmless-base"):
        train = []
        for record in read_hh(data, subset, "train"):
            train += [(split_last_turn(record["chosen"])[1], "good"), (split_last_turn(record["rejected"])[1], "bad")]
        model = NaiveBayes(train)
        test = read_hh(data, subset, "test")
        correct = sum(
            model.margin(split_last_turn(r["chosen"])[1], "good", "bad")
            > model.margin(split_last_turn(r["rejected"])[1], "good", "bad")
            for r in test
        )
        assert correct / len(test) >= 0.85, subset


def test_general_preference_does_not_solve_the_dsp_domains(data):
    """The HH "good answer" cues are not any DSP domain's style: a bag-of-words preference model trained on HH
    prefers no domain over most of the others, while the DSP train pairs of a domain do teach it."""
    general = []
    for subset in ("helpful-base", "harmless-base"):
        for record in read_hh(data, subset, "train"):
            general += [(split_last_turn(record["chosen"])[1], "good"), (split_last_turn(record["rejected"])[1], "bad")]
    model = NaiveBayes(general)
    test = read_dsp(data, "test")
    for domain in DOMAINS:
        pairs = [(r["responses"][domain], r["responses"][o]) for r in test for o in DOMAINS if o != domain]
        accuracy = sum(model.margin(a, "good", "bad") > model.margin(b, "good", "bad") for a, b in pairs)
        assert accuracy / len(pairs) < 0.8, domain

        custom = [
            (r["responses"][d], "good" if d == domain else "bad") for r in read_dsp(data, "train") for d in DOMAINS
        ]
        tuned = NaiveBayes(general + custom)
        accuracy = sum(tuned.margin(a, "good", "bad") > tuned.margin(b, "good", "bad") for a, b in pairs)
        assert accuracy / len(pairs) >= 0.95, domain


def test_label_noise_flips_that_fraction(tmp_path):
    """Without noise every harmless chosen answer refuses; with noise 0.2 about a fifth of the pairs are flipped."""

    def refuses(dialogue: str) -> bool:
        return bool(re.search(r"can't|won't", split_last_turn(dialogue)[1]))

    config = SyntheticDataConfig(hh_train_pairs=600, label_noise=0.0)
    make_synthetic_data(tmp_path / "clean", config)
    clean = read_hh(tmp_path / "clean", "harmless-base", "train")
    assert all(refuses(r["chosen"]) and not refuses(r["rejected"]) for r in clean)

    make_synthetic_data(tmp_path / "noisy", SyntheticDataConfig(hh_train_pairs=600, label_noise=0.2))
    noisy = read_hh(tmp_path / "noisy", "harmless-base", "train")
    flipped = sum(refuses(r["rejected"]) for r in noisy) / len(noisy)
    assert 0.14 <= flipped <= 0.26


def test_text_score_quality_is_learnable(data):
    """Higher-scored answers are the more informative ones: a bag-of-words model ranks test pairs well."""
    examples = []
    for record in read_text_score(data, "train"):
        for text, score in zip(record["text"], record["score"], strict=True):
            examples.append((split_last_turn(text)[1], "good" if score > 0 else "bad"))
    model = NaiveBayes(examples)
    correct = total = 0
    for record in read_text_score(data, "test"):
        margins = [model.margin(split_last_turn(t)[1], "good", "bad") for t in record["text"]]
        scores = record["score"]
        for i in range(len(scores)):
            for j in range(i + 1, len(scores)):
                if scores[i] != scores[j]:
                    total += 1
                    correct += (margins[i] > margins[j]) == (scores[i] > scores[j])
    assert correct / total >= 0.8


def test_invalid_config_is_refused():
    with pytest.raises(ValueError, match="label_noise"):
        SyntheticDataConfig(label_noise=1.5)
    with pytest.raises(ValueError, match="hh_test_pairs"):
        SyntheticDataConfig(hh_test_pairs=-1)


def test_command_line(tmp_path):
    cli.main(
        [
            "make-synthetic-data",
            "--output-dir",
            str(tmp_path),
            "--dsp-train-queries",
            "3",
            "--hparams",
            json.dumps({"dsp_test_queries": 2, "hh_train_pairs": 5, "seed": 7}),
        ]
    )
    assert len(read_dsp(tmp_path, "train")) == 3
    assert len(read_dsp(tmp_path, "test")) == 2
    assert len(read_hh(tmp_path, "helpful-base", "train")) == 5
    assert len(read_hh(tmp_path, "helpful-base", "test")) == SyntheticDataConfig().hh_test_pairs
    reference = make_synthetic_data(
        tmp_path / "ref", SyntheticDataConfig(seed=7, dsp_train_queries=3, dsp_test_queries=2, hh_train_pairs=5)
    )
    assert (tmp_path / CORPUS_FILE).read_bytes() == reference[CORPUS_FILE].read_bytes()
