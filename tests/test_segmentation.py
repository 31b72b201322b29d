"""Sentence / sub-sentence segmentation (Wu et al. 2023): literal texts by hand, and the paper's rule on the
real qa-feedback predictions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from feedbackflow.text.segmentation import (
    BLANK_PIPELINE,
    SPACY_MODEL,
    sentence_pipeline,
    sentence_pipeline_name,
    sentence_spans,
    split_sentences,
    split_sub_sentences,
    sub_sentence_spans,
    sub_sentence_starts,
)

# --- the pipeline ------------------------------------------------------------------------------------------


def test_pipeline_is_built_once_and_named_by_what_is_installed():
    import importlib.util

    assert sentence_pipeline() is sentence_pipeline()
    expected = SPACY_MODEL if importlib.util.find_spec(SPACY_MODEL) is not None else BLANK_PIPELINE
    assert sentence_pipeline_name() == expected
    if expected == BLANK_PIPELINE:
        assert sentence_pipeline().pipe_names == ["sentencizer"]


# --- sentences ---------------------------------------------------------------------------------------------


def test_sentence_spans_are_character_offsets():
    text = "Hello there. How are you? Fine."
    # "Hello there." = chars 0..12, a space, "How are you?" = 13..25, a space, "Fine." = 26..31.
    assert sentence_spans(text) == [(0, 12), (13, 25), (26, 31)]
    assert split_sentences(text) == ["Hello there.", "How are you?", "Fine."]


def test_sentence_spans_are_trimmed_of_whitespace():
    text = "  First one here.\n\nSecond one.  "
    # two leading spaces: "First one here." starts at 2 and has 15 chars -> (2, 17); "\n\n" at 17, 18;
    # "Second one." starts at 19, 11 chars -> (19, 30); the two trailing spaces belong to neither.
    assert sentence_spans(text) == [(2, 17), (19, 30)]


@pytest.mark.parametrize("text", ["", "   \n "])
def test_no_words_no_segments(text: str):
    assert sentence_spans(text) == []
    assert sub_sentence_spans(text) == []
    assert split_sub_sentences(text) == []


# --- the sub-sentence rule on word lists --------------------------------------------------------------------


def _starts(words: list[str]) -> list[int]:
    return [k for k, start in enumerate(sub_sentence_starts(words)) if start]


def test_split_after_a_comma_when_both_pieces_are_long_enough():
    words = "w0 w1 w2 w3 w4 w5, w6 w7 w8 w9 w10 w11".split()
    # k = 6 follows "w5,"; 6 + 5 < 12 words and the piece w0..w5 has 6 >= 5 words -> a start at 6.
    assert _starts(words) == [0, 6]


def test_the_last_piece_needs_more_than_five_words():
    # k = 5 follows "w4,": 5 + 5 < 10 is false (only 5 words would remain) -> no split.
    assert _starts("w0 w1 w2 w3 w4, w5 w6 w7 w8 w9".split()) == [0]
    # one more word: 5 + 5 < 11 -> split at 5 (the first piece has exactly 5 words).
    assert _starts("w0 w1 w2 w3 w4, w5 w6 w7 w8 w9 w10".split()) == [0, 5]


def test_a_short_first_piece_merges_into_the_next():
    # "a," ends at word 0: k = 1, 1 + 5 < 7, but the first piece would have 1 < 5 words and it is the first
    # piece -> no start at 1.
    assert _starts("a, b c d e f g".split()) == [0]


def test_a_short_middle_piece_merges_into_the_one_before():
    words = "w0 w1 w2 w3 w4, b0 b1, c0 c1 c2 c3 c4 c5".split()
    # k = 5 (after "w4,"): 5 + 5 < 13 and 5 - 0 >= 5 -> start at 5.
    # k = 7 (after "b1,"): 7 + 5 < 13 and 7 - 5 = 2 < 5 -> the start at 5 is removed and one is put at 7:
    # pieces w0..b1 (7 words) and c0..c5 (6 words).
    assert _starts(words) == [0, 7]


@pytest.mark.parametrize("mark", [",", ";", "!", "?"])
def test_each_sub_sentence_mark_splits(mark: str):
    assert _starts(f"w0 w1 w2 w3 w4{mark} w5 w6 w7 w8 w9 w10".split()) == [0, 5]


@pytest.mark.parametrize("mark", [":", ".", "-", ")"])
def test_other_marks_do_not_split(mark: str):
    assert _starts(f"w0 w1 w2 w3 w4{mark} w5 w6 w7 w8 w9 w10".split()) == [0]


def test_empty_word_list():
    assert sub_sentence_starts([]) == []


# --- sub-sentences of texts -----------------------------------------------------------------------------------


def test_sub_sentence_spans_of_a_sentence_with_several_commas():
    text = "In 1990, the team, which was then new, won the cup, beating every rival in the league that year."
    # words: 0 In, 1 "1990,", 2 the, 3 "team,", 4 which, 5 was, 6 then, 7 "new,", 8 won, 9 the, 10 "cup,",
    # 11 beating ... 18 "year." (19 words).
    # k=2 and k=4: the first piece would have 2 / 4 < 5 words -> no start. k=8: 8 words -> start at 8.
    # k=11: piece 8..10 has 3 < 5 words -> start moves from 8 to 11. So: words 0..10 | 11..18.
    # "cup," ends at char 51; "beating" starts at 52; the text has 96 chars.
    assert sub_sentence_spans(text) == [(0, 51), (52, 96)]
    assert split_sub_sentences(text) == [
        "In 1990, the team, which was then new, won the cup,",
        "beating every rival in the league that year.",
    ]


def test_commas_inside_words_and_colons_do_not_split():
    assert split_sub_sentences("Alpha beta gamma delta 1,000 zeta eta theta iota kappa lambda.") == [
        "Alpha beta gamma delta 1,000 zeta eta theta iota kappa lambda."
    ]
    assert len(split_sub_sentences("Alpha beta gamma delta epsilon: zeta eta theta iota kappa lambda.")) == 1
    # ";" splits: "Alpha beta gamma delta epsilon;" is 31 chars, then a space, then 33 chars.
    text = "Alpha beta gamma delta epsilon; zeta eta theta iota kappa lambda."
    assert sub_sentence_spans(text) == [(0, 31), (32, 65)]


def test_sub_sentences_never_cross_sentences():
    text = "One two three four five six, seven. Eight nine ten eleven twelve thirteen."
    # Sentence 1 has 7 words: after "six," (k = 6) 6 + 5 < 7 is false -> one piece. Sentence 2 has no comma.
    assert split_sub_sentences(text) == [
        "One two three four five six, seven.",
        "Eight nine ten eleven twelve thirteen.",
    ]


# --- the real predictions: the paper's own algorithm as an independent check ---------------------------------


def _paper_sub_sentence_char_starts(long_text: str) -> list[int]:
    """fgrlhf/reward_utils.py `split_text_to_subsentences` (allenai/FineGrainedRLHF), written out again here."""

    def get_sub_sentence_starts(tokens, min_subsent_words=5):
        is_subsent_starts = [True]
        prev_tok = tokens[0]
        prev_subsent_start_idx = 0
        for i, tok in enumerate(tokens[1:]):
            tok_id = i + 1
            if re.match("[,;!?]", prev_tok[-1]) is not None and tok_id + min_subsent_words < len(tokens):
                if tok_id - prev_subsent_start_idx < min_subsent_words:
                    if prev_subsent_start_idx > 0:
                        is_subsent_starts += [True]
                        is_subsent_starts[prev_subsent_start_idx] = False
                        prev_subsent_start_idx = tok_id
                    else:
                        is_subsent_starts += [False]
                else:
                    is_subsent_starts += [True]
                    prev_subsent_start_idx = tok_id
            else:
                is_subsent_starts += [False]
            prev_tok = tok
        return is_subsent_starts

    doc = sentence_pipeline()(long_text)
    bounds = [0] + [sent.end_char for sent in doc.sents if len(str(sent).strip()) > 0]
    char_starts = []
    for k, begin in enumerate(bounds[:-1]):
        sentence = long_text[begin : bounds[k + 1]]
        tokens, positions, current = sentence.split(), [], 0
        for token in tokens:
            positions.append(sentence.find(token, current))
            current = positions[-1] + len(token)
        for position, is_start in zip(positions, get_sub_sentence_starts(tokens), strict=True):
            if is_start:
                char_starts.append(begin + position)
    return char_starts


@pytest.fixture(scope="module")
def predictions(shared_data: Path) -> list[str]:
    records = json.loads((shared_data / "qa_feedback" / "dev_feedback.json").read_text())
    return [record[f"prediction {k}"] for record in records for k in range(1, 5)]


def test_real_predictions_match_the_papers_sub_sentence_starts(predictions: list[str]):
    assert len(predictions) == 2000
    total = 0
    for text in predictions:
        spans = sub_sentence_spans(text)
        assert [start for start, _ in spans] == _paper_sub_sentence_char_starts(text)
        total += len(spans)
    assert total > 2000  # the rule does split (most predictions have several sub-sentences)


def test_real_segments_partition_the_words(predictions: list[str]):
    for text in predictions:
        sentences, subs = sentence_spans(text), sub_sentence_spans(text)
        # each sentence starts a sub-sentence; spans are ordered, disjoint and trimmed; only whitespace between
        assert {start for start, _ in sentences} <= {start for start, _ in subs}
        ends = [0] + [end for _, end in subs]
        for (start, end), previous_end in zip(subs, ends, strict=False):
            assert previous_end <= start < end
            assert text[previous_end:start].strip() == ""
            assert text[start:end] == text[start:end].strip()
        assert text[ends[-1] :].strip() == ""
        # every non-whitespace character is in exactly one segment (a sentence boundary may fall inside a
        # whitespace-free run such as `Taiwan. "Dangal"`, where spaCy keeps the opening quote with "Taiwan.")
        assert "".join("".join(split_sub_sentences(text)).split()) == "".join(text.split())
