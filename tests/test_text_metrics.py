"""rougeLsum and distinct-n (Wu et al. 2023) against values counted by hand on literal strings.

rouge-score tokenises by lower-casing and keeping runs of [a-z0-9]; rougeLsum's LCS is the summary-level union LCS
over newline-separated sentences: for each reference sentence, the union of its LCS hits with every predicted
sentence; P = hits / predicted tokens, R = hits / reference tokens, F = 2PR / (P + R). The tests pass an explicit
splitter so they do not depend on `feedbackflow.text.segmentation`.
"""

from __future__ import annotations

import sys
import types

import pytest

from feedbackflow.text.metrics import (
    default_sentence_splitter,
    distinct_n,
    exact_match,
    mean_rouge_lsum,
    rouge_lsum,
    split_on_terminal_punctuation,
)


def split_at_periods(text: str) -> list[str]:
    """The simplest splitter: a sentence ends at each '.'."""
    return [piece.strip() + "." for piece in text.split(".") if piece.strip()]


def no_split(text: str) -> list[str]:
    return [text]


def test_lcs_counted_by_hand():
    # pred: the cat sat on the mat (6 tokens); ref: the cat lay on the mat (6 tokens)
    # LCS = the cat on the mat = 5 -> P = R = 5/6 -> F = 5/6 = 83.33
    score = rouge_lsum("the cat sat on the mat", ["the cat lay on the mat"], split_at_periods)
    assert score == pytest.approx(100 * 5 / 6)


def test_precision_and_recall_differ():
    # pred: the cat (2 tokens), ref: the cat sat down (4): LCS 2, P = 2/2 = 1, R = 2/4 = 1/2
    # F = 2 * 1 * 1/2 / (1 + 1/2) = 2/3
    assert rouge_lsum("the cat", ["the cat sat down"], split_at_periods) == pytest.approx(100 * 2 / 3)


def test_stemming_case_and_punctuation():
    # Porter stems: cats -> cat, running -> run, runs -> run (tokens of 3 characters or fewer are not stemmed);
    # upper case and punctuation are dropped by the tokenizer: every token matches, F = 100. Unstemmed, "cats" !=
    # "cat" and "running" != "runs": F would be 0.
    assert rouge_lsum("Cats, RUNNING!", ["cat runs"], split_at_periods) == pytest.approx(100.0)


def test_summary_level_union_lcs():
    # ref (1 sentence): alpha beta gamma delta kappa (5 tokens)
    # pred sentences: "alpha beta omega." | "gamma delta sigma." (6 tokens)
    # union LCS of the ref sentence: {alpha, beta} from the first, {gamma, delta} from the second = 4 hits
    # P = 4/6, R = 4/5, F = 2 (4/6)(4/5) / (4/6 + 4/5) = (16/15) / (22/15) = 8/11
    score = rouge_lsum("alpha beta omega. gamma delta sigma.", ["alpha beta gamma delta kappa."], split_at_periods)
    assert score == pytest.approx(100 * 8 / 11)


def test_sentences_are_split_before_scoring():
    # pred = ref's two sentences swapped. Split: each ref sentence meets its twin, union LCS 3 + 3 = 6 of 6 -> 100.
    # Not split (one "sentence" each): LCS(alpha beta gamma delta kappa omega, delta kappa omega alpha beta gamma)
    # = 3 -> P = R = 3/6 -> F = 50.
    prediction, reference = "delta kappa omega. alpha beta gamma.", "alpha beta gamma. delta kappa omega."
    assert rouge_lsum(prediction, [reference], split_at_periods) == pytest.approx(100.0)
    assert rouge_lsum(prediction, [reference], no_split) == pytest.approx(50.0)


def test_max_over_references():
    # pred: the cat sat (3). vs "the cat": P = 2/3, R = 1 -> F = 2 (2/3) / (5/3) = 4/5
    # vs "the cat sat on the mat": P = 1, R = 3/6 -> F = 2/3. vs "a dog barked": 0. The max is 4/5.
    references = ["a dog barked", "the cat sat on the mat", "the cat"]
    assert rouge_lsum("the cat sat", references, split_at_periods) == pytest.approx(80.0)
    assert rouge_lsum("the cat sat", references[:1], split_at_periods) == 0.0
    assert rouge_lsum("", references, split_at_periods) == 0.0


def test_mean_over_examples():
    # 5/6 (first test) and 2/3 (second test): mean = (5/6 + 2/3) / 2 = 3/4
    score = mean_rouge_lsum(
        ["the cat sat on the mat", "the cat"], [["the cat lay on the mat"], ["the cat sat down"]], split_at_periods
    )
    assert score == pytest.approx(75.0)
    with pytest.raises(ValueError, match="2 predictions for 1 reference lists"):
        mean_rouge_lsum(["a", "b"], [["a"]], split_at_periods)
    with pytest.raises(ValueError, match="at least one reference"):
        rouge_lsum("a", [], split_at_periods)
    with pytest.raises(TypeError):
        rouge_lsum("a", "a", split_at_periods)


def test_default_splitter_is_the_segmentation_module_when_it_exists(monkeypatch):
    calls = []

    def fake_split(text: str) -> list[str]:
        calls.append(text)
        return text.split("|")

    fake = types.SimpleNamespace(split_sentences=fake_split)
    monkeypatch.setitem(sys.modules, "feedbackflow.text.segmentation", fake)
    assert default_sentence_splitter() is fake_split
    # With "|" as the boundary the swapped sentences score 100, as in test_sentences_are_split_before_scoring.
    assert rouge_lsum("delta kappa omega|alpha beta gamma", ["alpha beta gamma|delta kappa omega"]) == 100.0
    assert calls == ["delta kappa omega|alpha beta gamma", "alpha beta gamma|delta kappa omega"]

    monkeypatch.setitem(sys.modules, "feedbackflow.text.segmentation", None)  # the module is absent: the fallback
    assert default_sentence_splitter() is split_on_terminal_punctuation
    assert split_on_terminal_punctuation(" One. Two? Three!  Four ") == ["One.", "Two?", "Three!", "Four"]
    assert split_on_terminal_punctuation("3.5 apples") == ["3.5 apples"]


def test_exact_match_is_whole_answers_up_to_whitespace():
    assert exact_match(" Yes ", ["Yes"]) == 100.0
    assert exact_match("the  cat\tsat", ["a dog", "the cat sat"]) == 100.0  # any reference
    assert exact_match("Yes.", ["Yes"]) == 0.0 and exact_match("yes", ["Yes"]) == 0.0  # punctuation and case count
    assert exact_match("Yes No", ["Yes"]) == 0.0
    with pytest.raises(ValueError):
        exact_match("a", [])
    with pytest.raises(TypeError):
        exact_match("a", "a")


def test_distinct_n_counted_by_hand():
    # words: "a a a a" 4 + "a b" 2 = 6
    # unigrams {a, b} = 2 -> 2/6; bigrams {a a, a b} = 2 -> 2/6; trigrams {a a a} = 1 -> 1/6
    texts = ["a a a a", "a b"]
    assert distinct_n(texts, 1) == pytest.approx(2 / 6)
    assert distinct_n(texts, 2) == pytest.approx(2 / 6)
    assert distinct_n(texts, 3) == pytest.approx(1 / 6)


def test_distinct_n_does_not_cross_texts_and_splits_on_single_spaces():
    # bigrams of "a b" and "c d": {a b, c d} = 2 over 4 words (no "b c" across the texts)
    assert distinct_n(["a b", "c d"], 2) == pytest.approx(2 / 4)
    # "".split(" ") == [""] and "a  a".split(" ") == ["a", "", "a"]: empty-string words count, as in the paper's
    # code. unigrams {"", a} = 2 over 1 + 3 words
    assert distinct_n(["", "a  a"], 1) == pytest.approx(2 / 4)
    with pytest.raises(ValueError):
        distinct_n(["a"], 0)
    with pytest.raises(ValueError):
        distinct_n([], 1)
