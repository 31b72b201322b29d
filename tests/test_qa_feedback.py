"""qa-feedback conversion (Wu et al. 2023): R1 / R2 segment labels, R3 and preference pairs, prompts, bad input.

Labels: 1 = error (NF-ERR in R1, F-ERR in R2), 0 = O, -100 = ignored.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from feedbackflow.cli import main as cli_main
from feedbackflow.core.formats import PREFERENCE_LISTS, QA_FEEDBACK, QA_PROMPTS, SEGMENT_LABELS
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.papers.fgrlhf.qa.data import (
    PassageMatcher,
    approximate_match_similarity,
    best_passage_sentences,
    build_feedback_tables,
    completeness_scores,
    convert_qa_feedback,
    convert_qa_prompts,
    grounded_prefix,
    info_ids,
    label_counts,
    passage_sentences,
    qa_prompt,
    read_feedback,
    read_qa_prompts,
    relevance_prefix,
    response_text,
)
from feedbackflow.text.segmentation import sentence_spans, sub_sentence_spans

IGNORED = -100

# --- a small record written by hand ---------------------------------------------------------------------------

HAMLET_PASSAGE = [
    "Hamlet",
    "Hamlet is a tragedy by William Shakespeare.",
    "It was written around 1600.",
    "The play is set in Denmark.",
]
# chars 0..43 "Hamlet is a tragedy by William Shakespeare." | 44..67 "I do not know the year," |
# 68..111 "but the play is surely very old and famous."
P1 = "Hamlet is a tragedy by William Shakespeare. I do not know the year, but the play is surely very old and famous."
HAMLET_PROMPT = (
    "question: Who wrote Hamlet? context: wikipage: Hamlet text: Hamlet is a tragedy by William Shakespeare. "
    "It was written around 1600. The play is set in Denmark."
)


def hamlet_record() -> dict:
    return {
        "question": "Who wrote Hamlet?",
        "passages": [list(HAMLET_PASSAGE)],
        "gold": "William Shakespeare wrote Hamlet around 1600.",
        "prediction 1": P1,
        "prediction 2": "Hamlet is a tragedy by William Shakespeare. It was written around 1600.",
        "prediction 3": "I do not know.",
        "prediction 4": "It was written around 1600.",
        "feedback": {
            "errors": [
                {"error type": "Unverifiable", "explanation": "", "start": 31, "end": 43},  # "Shakespeare."
                {"error type": "Redundant", "explanation": "", "start": 44, "end": 57},  # "I do not know"
                {"error type": "Irrelevant", "explanation": "", "start": 68, "end": 111},  # "but the ... famous."
            ],
            "missing-info": [
                {"error type": "Missing-Answer", "passage_id": 1, "sentence_id": [1]},
                {"error type": "Missing-Minor-Auxiliary", "passage_id": 1, "sentence_id": [2]},
            ],
            "corrected-prediction": "Hamlet is a tragedy by William Shakespeare. It was written around 1600.",
        },
        "preference": [1, 1, 1, 0, 2, 2],
    }


def _write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_hand_record_offsets_are_what_the_comments_say():
    assert len(P1) == 111
    assert (P1[31:43], P1[44:57], P1[68:111]) == (
        "Shakespeare.",
        "I do not know",
        "but the play is surely very old and famous.",
    )
    assert sub_sentence_spans(P1) == [(0, 43), (44, 67), (68, 111)]
    assert sentence_spans(P1) == [(0, 43), (44, 111)]


def test_hand_record_tables(tmp_path: Path):
    path = _write_json(tmp_path / "x_feedback.json", [hamlet_record()])
    tables = build_feedback_tables(path)
    source = str(path)
    # R1: sub-sentence 0 overlaps only the factual "Shakespeare." span -> O; sub-sentence 1 overlaps "I do not know"
    # (Redundant, 4 < 5 words: dropped) -> O; sub-sentence 2 is inside the 9-word Irrelevant span -> NF-ERR.
    assert tables.relevance == [
        {
            "prefix": "question: Who wrote Hamlet? answer:",
            "segments": [
                "Hamlet is a tragedy by William Shakespeare.",
                "I do not know the year,",
                "but the play is surely very old and famous.",
            ],
            "labels": [0, 0, 1],
            "source": source,
            "record": 0,
        }
    ]
    # R2: sentence 0 overlaps the Unverifiable span -> F-ERR; sentence 1 overlaps the kept Irrelevant span -> ignored.
    assert tables.factuality == [
        {
            "prefix": HAMLET_PROMPT + " answer:",
            "segments": [
                "Hamlet is a tragedy by William Shakespeare.",
                "I do not know the year, but the play is surely very old and famous.",
            ],
            "labels": [1, IGNORED],
            "source": source,
            "record": 0,
        }
    ]
    # R3: the corrected prediction's two sentences are passage sentences (1,1) and (1,2) verbatim; (1,2) is named
    # in a Missing-Minor-Auxiliary entry and "it was written around 1600." is not in prediction 1 -> dropped.
    # Info ids {(1,1)}: prediction 1 and 2 start with sentence (1,1) -> 1.0; prediction 3 matches nothing;
    # prediction 4 is (1,2) only -> 0.0. Pairs with different scores: 1>3, 1>4, 2>3, 2>4.
    texts = [response_text(HAMLET_PROMPT, p) for p in (P1, *(hamlet_record()[f"prediction {k}"] for k in (2, 3, 4)))]
    assert [(row["text"], row["score"]) for row in tables.completeness] == [
        ([texts[0], texts[2]], [1.0, 0.0]),
        ([texts[0], texts[3]], [1.0, 0.0]),
        ([texts[1], texts[2]], [1.0, 0.0]),
        ([texts[1], texts[3]], [1.0, 0.0]),
    ]
    # preference [1, 1, 1, 0, 2, 2]: 1>2, 1>3, 1>4, (2 v 3 tie skipped), 4>2, 4>3.
    assert [row["text"] for row in tables.preference] == [
        [texts[0], texts[1]],
        [texts[0], texts[2]],
        [texts[0], texts[3]],
        [texts[3], texts[1]],
        [texts[3], texts[2]],
    ]
    assert all(row["score"] == [1.0, 0.0] for row in tables.preference)
    assert texts[0] == HAMLET_PROMPT + " answer: " + P1
    (feedback,) = tables.feedback
    assert feedback["prompt_id"] == "x_feedback-0"
    assert feedback["prompt"] == HAMLET_PROMPT
    assert feedback["completeness"] == [1.0, 1.0, 0.0, 0.0]
    assert feedback["errors"][0] == {"error_type": "Unverifiable", "start": 31, "end": 43}


def test_minor_info_is_kept_when_its_sentence_is_in_prediction_1(tmp_path: Path):
    record = hamlet_record()
    record["prediction 1"] = P1 + " It was written around 1600."  # spans keep their offsets
    (parsed,) = read_feedback(_write_json(tmp_path / "f.json", [record]))
    # now "it was written around 1600." is in prediction 1 -> (1,2) stays: info ids {(1,1), (1,2)};
    # scores: p1 both -> 1.0, p2 both -> 1.0, p3 none -> 0.0, p4 (1,2) -> 0.5.
    assert info_ids(parsed) == {(1, 1), (1, 2)}
    assert completeness_scores(parsed) == [1.0, 1.0, 0.0, 0.5]


def test_prompt_prefixes():
    assert (
        qa_prompt("Q?", [("T1", "c1"), ("T2", "c2  x\n")])
        == "question: Q? context: wikipage: T1 text: c1 | wikipage: T2 text: c2 x"
    )
    assert qa_prompt("Q?", []) == "question: Q?"
    assert relevance_prefix(" Who\nwrote it? ") == "question: Who wrote it? answer:"
    assert grounded_prefix("question: Q? context:  x") == "question: Q? context: x answer:"
    assert response_text("question: Q?", "An answer.") == "question: Q? answer: An answer."


# --- difflib matching (R3), by hand --------------------------------------------------------------------------


def test_approximate_match_similarity_by_hand():
    # target "ab cd" has 2 words -> 2-grams of the context: "ab ce" and "ce xy".
    # quick_ratio("ab ce", "ab cd"): shared characters a, b, " ", c = 4 -> 2 * 4 / (5 + 5) = 0.8
    # quick_ratio("ce xy", "ab cd"): shared " ", c = 2 -> 0.4. The best is 0.8.
    assert approximate_match_similarity("ab ce xy", "ab cd") == pytest.approx(0.8)
    assert approximate_match_similarity("xx ab cd yy", "ab cd") == 1.0  # a substring
    assert approximate_match_similarity("ab", "ab cd ef") == 0.0  # fewer words than the n-gram


def test_passage_matcher_pads_short_sentences_like_the_paper():
    matcher = PassageMatcher({(1, 1): "ab ce xy", (1, 2): "ab"})
    # (1,1) has 3 >= n + 1 words: no padding -> 0.8 as above.
    # (1,2) has 1 word: padded with n - 1 + 1 = 2 " #" -> "ab # #", 2-grams "ab #" and "# #":
    # quick_ratio("ab #", "ab cd") = 2 * 3 / 9 (a, b, " "); quick_ratio("# #", "ab cd") = 2 * 1 / 8.
    similarities = matcher.similarities("ab cd")
    assert similarities.tolist() == pytest.approx([0.8, 2 / 3])
    assert best_passage_sentences("ab  cd", matcher) == [("ab cd", (1, 1), pytest.approx(0.8))]
    assert best_passage_sentences("ab cd", PassageMatcher({})) == [("ab cd", (-1, -1), -1.0)]


# --- the real dev_feedback.json ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def feedback_file(shared_data: Path) -> Path:
    return shared_data / "qa_feedback" / "dev_feedback.json"


@pytest.fixture(scope="module")
def raw(feedback_file: Path) -> list[dict]:
    return json.loads(feedback_file.read_text())


@pytest.fixture(scope="module")
def converted(feedback_file: Path, tmp_path_factory):
    """The real file converted once through `convert_qa_feedback` (all five outputs)."""
    out = tmp_path_factory.mktemp("qa_feedback")
    paths = {name: out / f"{name}.parquet" for name in ("relevance", "factuality", "completeness", "preference")}
    paths["feedback"] = out / "feedback.parquet"
    tables = convert_qa_feedback(feedback_file, **paths)
    return tables, paths


NON_FACTUAL = {"Irrelevant", "Redundant", "Incoherent"}


def _straightforward_labels(record: dict, spans: list[tuple[int, int]], level: str) -> list[int]:
    """An independent count: mark each non-whitespace character with the categories of the spans covering it (the
    paper drops non-factual spans of < 5 words), then read each segment's characters."""
    text = record["prediction 1"]
    marks: list[set] = [set() for _ in text]
    for error in record["feedback"]["errors"]:
        category = "NF" if error["error type"] in NON_FACTUAL else "F"
        if category == "NF" and len(text[error["start"] : error["end"]].split()) < 5:
            continue
        for position in range(error["start"], error["end"]):
            if not text[position].isspace():
                marks[position].add(category)
    labels = []
    for start, end in spans:
        seen = set().union(*marks[start:end])
        if level == "R1":
            labels.append(1 if "NF" in seen else 0)
        else:
            labels.append(1 if "F" in seen else (IGNORED if "NF" in seen else 0))
    return labels


def test_real_r1_counts(converted, raw):
    tables, _ = converted
    expected = Counter()
    for record in raw:
        expected.update(_straightforward_labels(record, sub_sentence_spans(record["prediction 1"]), "R1"))
    counts = label_counts(tables.relevance)
    assert counts == expected
    # measured: 500 rows (every record), 2,703 sub-sentences: 1,362 NF-ERR, 1,341 O, none ignored
    assert len(tables.relevance) == 500
    assert (counts[1], counts[0], counts[IGNORED]) == (1362, 1341, 0)


def test_real_r2_counts(converted, raw):
    tables, _ = converted
    expected, kept = Counter(), 0
    for record in raw:
        labels = _straightforward_labels(record, sentence_spans(record["prediction 1"]), "R2")
        if any(label != IGNORED for label in labels):  # rows with every sentence ignored are left out
            expected.update(labels)
            kept += 1
    counts = label_counts(tables.factuality)
    assert counts == expected
    assert len(tables.factuality) == kept == 435
    assert (counts[1], counts[0], counts[IGNORED]) == (280, 527, 621)


def test_real_preference_pairs(converted, raw):
    tables, _ = converted
    # an independent count: the non-zero entries of every `preference` list (1,577 ones + 1,039 twos)
    assert len(tables.preference) == sum(1 for record in raw for value in record["preference"] if value != 0) == 2616
    first = [row for row in tables.preference if row["record"] == 0]
    # record 0: preference [0, 1, 2, 1, 0, 2] -> 1>3, 4>1, 2>3, 4>3
    prompt = qa_prompt(raw[0]["question"], [(p[0], " ".join(p[1:])) for p in raw[0]["passages"]])
    order = [(1, 3), (4, 1), (2, 3), (4, 3)]
    assert [row["text"] for row in first] == [
        [response_text(prompt, raw[0][f"prediction {a}"]), response_text(prompt, raw[0][f"prediction {b}"])]
        for a, b in order
    ]


def test_real_r3_pair_count_follows_the_scores(converted):
    tables, _ = converted
    with_ids = [row for row in tables.feedback if row["completeness"] is not None]
    pairs = sum(
        1
        for row in with_ids
        for i in range(4)
        for j in range(i + 1, 4)
        if row["completeness"][i] != row["completeness"][j]
    )
    # measured: 441 records with info ids (59 without), 1,107 pairs
    assert (len(with_ids), len(tables.feedback) - len(with_ids)) == (441, 59)
    assert len(tables.completeness) == pairs == 1107
    assert all(row["score"][0] > row["score"][1] for row in tables.completeness)


def _paper_completeness(e: dict) -> list[float] | None:
    """tasks/qa_feedback/reward_modeling/create_comp_rm_files.py (allenai/FineGrainedRLHF) with plain difflib, as an
    independent check of `completeness_scores` (sub-sentences come from the segmentation module, tested apart)."""

    def find(context, target):
        if target in context:
            return 1.0
        length = len(target.split())
        words = context.split()
        n = length + int(0.05 * length)
        best = 0
        matcher = difflib.SequenceMatcher()
        matcher.set_seq2(target)
        for k in range(len(words) - n + 1):
            matcher.set_seq1(" ".join(words[k : k + n]))
            best = max(best, matcher.quick_ratio())
        return best

    def best_sents(text, sents):
        text = " ".join(text.strip().split())
        out = []
        for start, end in sub_sentence_spans(text):
            sub = text[start:end]
            best, best_id = -1, (-1, -1)
            for sid, sent in sents.items():
                length = len(sub.split())
                diff = length + int(0.05 * length) - len(sent.split()) + 1
                sim = find(sent + " #" * diff, sub) if diff > 0 else find(sent, sub)
                if sim > best:
                    best, best_id = sim, sid
            out.append((sub, best_id, best))
        return out

    sents = {(i + 1, j + 1): " ".join(s.split()) for i, p in enumerate(e["passages"]) for j, s in enumerate(p[1:])}
    minor = {
        (m["passage_id"], s)
        for m in e["feedback"]["missing-info"]
        if m["error type"] == "Missing-Minor-Auxiliary"
        for s in m["sentence_id"]
    }
    all_ids, minus = set(), set()
    for sub, sid, sim in best_sents(e["feedback"]["corrected-prediction"], sents):
        if sim < 0.85:
            continue
        all_ids.add(sid)
        if sid in minor:
            minus.add(sid)
            if sub.lower() in e["prediction 1"].lower():
                minus.discard(sid)
    all_ids -= minus
    if not all_ids:
        return None
    scores = []
    for k in range(1, 5):
        ids = {sid for _, sid, sim in best_sents(e[f"prediction {k}"], sents) if sim >= 0.85}
        scores.append(len(ids & all_ids) / len(all_ids))
    return scores


def test_real_completeness_scores_match_plain_difflib(converted, raw):
    # The first 40 records (the plain loop is slow; the whole file was checked the same way when this was written).
    tables, _ = converted
    for row in tables.feedback[:40]:
        assert row["completeness"] == _paper_completeness(raw[row["record"]]), row["record"]


def test_real_outputs_on_disk(converted, feedback_file: Path):
    tables, paths = converted
    schemas = {
        "relevance": SEGMENT_LABELS,
        "factuality": SEGMENT_LABELS,
        "completeness": PREFERENCE_LISTS,
        "preference": PREFERENCE_LISTS,
        "feedback": QA_FEEDBACK,
    }
    for name, schema in schemas.items():
        table = pq.read_table(paths[name])
        assert table.schema.names == schema.names
        assert table.to_pylist() == getattr(tables, name), name
    assert not [p.name for p in paths["feedback"].parent.iterdir() if p.name.startswith(".")]  # no temp files
    row = tables.relevance[0]
    assert row["prefix"] == "question: When does bloom by troye sivan come out? answer:"
    assert row["source"] == str(feedback_file)
    factuality_prefix = tables.factuality[0]["prefix"]
    assert factuality_prefix.startswith(
        "question: When does bloom by troye sivan come out? context: wikipage: Bloom (Troye Sivan album) text: "
        "Bloom (Troye Sivan album) Bloom is the second studio album"
    )
    assert " | wikipage: Bloom (Troye Sivan album) text: was released as the lead single" in factuality_prefix
    assert factuality_prefix.endswith(" answer:")


# --- three records checked by hand ------------------------------------------------------------------------------


def _rows(tables, record: int):
    relevance = [row for row in tables.relevance if row["record"] == record]
    factuality = [row for row in tables.factuality if row["record"] == record]
    return relevance, factuality


def _pairs(rows: list[dict], record: int, raw_record: dict) -> list[tuple[int, int]]:
    """(better, worse) prediction numbers of a record's pairs, found back from the texts."""
    prompt = qa_prompt(raw_record["question"], [(p[0], " ".join(p[1:])) for p in raw_record["passages"]])
    number = {response_text(prompt, raw_record[f"prediction {k}"]): k for k in range(1, 5)}
    return [(number[row["text"][0]], number[row["text"][1]]) for row in rows if row["record"] == record]


def test_record_109_by_hand(converted, raw):
    # "The Washington Redskins have won five NFL Championships. They last won the Super Bowl in 2010. They last
    # won it in 2014." -- three sentences without commas, so sub-sentences = sentences: (0,56) (57,94) (95,120).
    # Spans: Irrelevant 0-56 (the whole first sentence, 8 words: kept), Unverifiable 86-94 "in 2010." (factual:
    # kept whatever its length), Redundant 112-120 "in 2014." (2 words < 5: dropped).
    tables, _ = converted
    record = raw[109]
    assert [(e["error type"], e["start"], e["end"]) for e in record["feedback"]["errors"]] == [
        ("Irrelevant", 0, 56),
        ("Unverifiable", 86, 94),
        ("Redundant", 112, 120),
    ]
    (r1,), (r2,) = _rows(tables, 109)
    assert r1["segments"] == [
        "The Washington Redskins have won five NFL Championships.",
        "They last won the Super Bowl in 2010.",
        "They last won it in 2014.",
    ]
    # R1: sentence 1 is Irrelevant -> NF-ERR; sentence 2 holds only a factual span -> O; sentence 3's Redundant
    # span was dropped -> O.
    assert r1["labels"] == [1, 0, 0]
    # R2: sentence 1 holds a kept NF span and no F span -> ignored; sentence 2 Unverifiable -> F-ERR; sentence 3
    # -> O (the dropped Redundant span does not make it ignored).
    assert r2["labels"] == [IGNORED, 1, 0]
    # preference [2, 2, 2, 1, 1, 1]: 2>1, 3>1, 4>1, 2>3, 2>4, 3>4
    assert _pairs(tables.preference, 109, record) == [(2, 1), (3, 1), (4, 1), (2, 3), (2, 4), (3, 4)]
    # R3: the corrected prediction's first two sentences are passage 2's sentences 1 and 2 verbatim (similarity
    # 1.0); its last, "They last won Super Bowl XXVI.", matches nothing >= 0.85. The missing-info entries are all
    # Major, so info ids = {(2,1), (2,2)}. Predictions 2, 3, 4 open with passage sentence (2,1) verbatim -> 1/2;
    # prediction 1's best match is (2,5) ("...have won five NFL Championships...") -> 0/2.
    feedback = tables.feedback[109]
    assert feedback["completeness"] == [0.0, 0.5, 0.5, 0.5]
    passage_2 = [" ".join(s.split()) for s in record["passages"][1][1:3]]
    assert "The Washington Redskins are a professional American football team based in the Washington " in passage_2[0]
    for k in (2, 3, 4):
        assert record[f"prediction {k}"].startswith(
            "The Washington Redskins are a professional American football team based in the Washington "
            "metropolitan area."
        )
    assert _pairs(tables.completeness, 109, record) == [(2, 1), (3, 1), (4, 1)]


def test_record_209_by_hand(converted, raw):
    # "The record for cycling from Land's End to John o' Groats is 1266 miles. The record ... is 1262 miles."
    # Two sentences (0,71) (72,143), no commas. Spans: Wrong-Grounding 60-64 "1266" (1 word, factual: kept),
    # Redundant 72-131 (12 words: kept), Incoherent 132-136 "1262" (1 word: dropped).
    tables, _ = converted
    record = raw[209]
    assert [(e["error type"], e["start"], e["end"]) for e in record["feedback"]["errors"]] == [
        ("Wrong-Grounding", 60, 64),
        ("Redundant", 72, 131),
        ("Incoherent", 132, 136),
    ]
    assert record["prediction 1"][60:64] == "1266"
    (r1,), (r2,) = _rows(tables, 209)
    assert len(r1["segments"]) == len(r2["segments"]) == 2
    # R1: sentence 1 has only a factual span -> O; sentence 2 is covered by the 12-word Redundant span -> NF-ERR.
    assert r1["labels"] == [0, 1]
    # R2: sentence 1 Wrong-Grounding -> F-ERR; sentence 2 holds the kept Redundant span, no factual one -> ignored.
    assert r2["labels"] == [1, IGNORED]
    # preference [2, 2, 2, 2, 1, 1]: 2>1, 3>1, 4>1, 3>2, 2>4, 3>4
    assert _pairs(tables.preference, 209, record) == [(2, 1), (3, 1), (4, 1), (3, 2), (2, 4), (3, 4)]
    # R3: every sub-sentence of the correction matches passage sentence (1,6) (the Alfred Nixon sentence; e.g. "who
    # in 1882 made “the first, and at present only," is a substring of it) -> info ids {(1,6)}. Predictions 2-4
    # contain that sentence's words; prediction 1 (about 1266 / 1262 miles) does not -> scores [0, 1, 1, 1].
    assert tables.feedback[209]["completeness"] == [0.0, 1.0, 1.0, 1.0]
    assert _pairs(tables.completeness, 209, record) == [(2, 1), (3, 1), (4, 1)]


def test_record_202_by_hand(converted, raw, feedback_file: Path):
    # "The Miami Dolphins were last in the playoffs on October 15, 2008, and on November 13, 2008. The last time
    # they were in the playoffs on October 15, 2008, was January 8, 2007."
    # Sentence 1 (0,91) has 17 words; after "15," (word 10) a start at 11 is allowed (11 + 5 < 17, 11 words
    # before it); after "2008," (word 11) and "13," (word 15) too few words remain. -> sub-sentences (0,59) (60,91).
    # Sentence 2 (92,173) has 16 words; after "15,", "2008," and "8," too few words remain -> one sub-sentence.
    # Spans: Unverifiable 24-65 and 66-91 (factual), Redundant 92-152 (12 words: kept), Incoherent 153-173
    # "was January 8, 2007." (4 words: dropped).
    tables, _ = converted
    record = raw[202]
    assert [(e["error type"], e["start"], e["end"]) for e in record["feedback"]["errors"]] == [
        ("Unverifiable", 24, 65),
        ("Unverifiable", 66, 91),
        ("Redundant", 92, 152),
        ("Incoherent", 153, 173),
    ]
    assert sub_sentence_spans(record["prediction 1"]) == [(0, 59), (60, 91), (92, 173)]
    (r1,), (r2,) = _rows(tables, 202)
    # R1: sub-sentences 1 and 2 hold only factual spans -> O; sub-sentence 3 overlaps the kept Redundant -> NF-ERR.
    assert r1["labels"] == [0, 0, 1]
    # R2: sentence 1 Unverifiable -> F-ERR; sentence 2 overlaps the kept Redundant span and no factual one ->
    # ignored (the Incoherent span was dropped; it would not change this).
    assert r2["labels"] == [1, IGNORED]
    # preference [2, 2, 1, 1, 1, 1]: 2>1, 3>1, 1>4, 2>3, 2>4, 3>4
    assert _pairs(tables.preference, 202, record) == [(2, 1), (3, 1), (1, 4), (2, 3), (2, 4), (3, 4)]
    # R3: the correction is one sub-sentence ("It is unclear; however, ..." -- both marks fall in the first 5
    # words) whose best passage match is below 0.85 -> no info ids -> no R3 pairs, completeness null.
    (parsed,) = [r for r in read_feedback(feedback_file) if r.record == 202]
    matches = best_passage_sentences(parsed.corrected, PassageMatcher(passage_sentences(parsed)))
    assert len(matches) == 1 and matches[0][2] < 0.85
    assert tables.feedback[202]["completeness"] is None
    assert _pairs(tables.completeness, 202, record) == []


def test_record_71_factual_error_wins_over_a_non_factual_one(converted, raw):
    # Sentence 2 (178..352) holds Unverifiable 249-266 and Incoherent 280-352 (12 words, kept): the paper checks
    # F-ERR first, so the sentence is F-ERR, not ignored.
    tables, _ = converted
    assert sentence_spans(raw[71]["prediction 1"])[1] == (178, 352)
    (r2,) = _rows(tables, 71)[1]
    assert r2["labels"][1] == 1


# --- prompts files -----------------------------------------------------------------------------------------------


def _prompt_record(k: int) -> dict:
    return {
        "text": f"question: Q{k}? context: wikipage: T text: C{k}",
        "answer": [f"A{k}", f"B{k}"],
        "passages": [{"wikipage": "T", "content": f"C{k}"}],
        "question": f"Q{k}?",
    }


def test_prompts_file(tmp_path: Path):
    path = _write_json(tmp_path / "train.json", [_prompt_record(0), _prompt_record(1)])
    output = tmp_path / "prompts.parquet"
    rows = convert_qa_prompts(path, output)
    assert rows[1] == {
        "prompt_id": "train-1",
        "prompt": "question: Q1? context: wikipage: T text: C1",
        "question": "Q1?",
        "references": ["A1", "B1"],
        "passages": [{"title": "T", "content": "C1"}],
        "source": str(path),
        "record": 1,
    }
    assert pq.read_table(output).to_pylist() == rows
    assert pq.read_table(output).schema.names == QA_PROMPTS.names
    assert read_qa_prompts(path, source_name="sft")[0]["prompt_id"] == "sft-0"


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r.pop("answer"), "answer"),
        (lambda r: r.update(answer="A"), "answer"),
        (lambda r: r["passages"][0].pop("content"), "passages[0].content"),
        (lambda r: r.update(text=None), "text"),
    ],
)
def test_bad_prompts_file(tmp_path: Path, mutate, field: str):
    record = _prompt_record(1)
    mutate(record)
    path = _write_json(tmp_path / "dev.json", [_prompt_record(0), record])
    output = tmp_path / "prompts.parquet"
    output.write_text("from an earlier run")
    with pytest.raises(DataError) as caught:
        convert_qa_prompts(path, output)
    _assert_names(caught.value, path, 1, field)
    assert not output.exists()


# --- bad feedback files ------------------------------------------------------------------------------------------


def _assert_names(error: DataError, path: Path, record: int, field: str) -> None:
    text = str(error)
    assert str(path) in text and f"record {record}" in text and field in text
    assert (error.path, error.record, error.field) == (str(path), record, field)


def _set_error(k: int, key: str, value):
    return lambda r: r["feedback"]["errors"][k].__setitem__(key, value)


BAD_FEEDBACK = [
    (_set_error(0, "end", 112), "feedback.errors[0].end", "outside 'prediction 1'"),  # len(P1) == 111
    (_set_error(0, "start", 200), "feedback.errors[0].start", "outside 'prediction 1'"),
    (_set_error(0, "start", -1), "feedback.errors[0].start", "outside 'prediction 1'"),
    (lambda r: r["feedback"]["errors"][2].update(start=100, end=90), "feedback.errors[2].start", "after end"),
    (_set_error(1, "error type", "Misspelled"), "feedback.errors[1].error type", "unknown error type"),
    (_set_error(0, "start", "31"), "feedback.errors[0].start", "expected an integer"),
    (lambda r: r["feedback"]["errors"][0].pop("end"), "feedback.errors[0].end", "missing"),
    (
        lambda r: r["feedback"]["missing-info"][0].update({"error type": "Missing-Everything"}),
        "feedback.missing-info[0].error type",
        "unknown missing-info type",
    ),
    (lambda r: r.update(preference=[1, 1, 1, 0, 2]), "preference", "5 values"),
    (lambda r: r.update(preference=[1, 1, 1, 3, 2, 2]), "preference[3]", "not one of"),
    (lambda r: r.update(preference=[True, 1, 1, 0, 2, 2]), "preference[0]", "expected an integer"),
    (lambda r: r.pop("preference"), "preference", "missing"),
    (lambda r: r.pop("prediction 3"), "prediction 3", "missing"),
    (lambda r: r["feedback"].pop("corrected-prediction"), "feedback.corrected-prediction", "missing"),
    (lambda r: r.update(passages=[["Hamlet", 3]]), "passages[0][1]", "expected a string"),
]


@pytest.mark.parametrize(("mutate", "field", "message"), BAD_FEEDBACK)
def test_bad_feedback_file(tmp_path: Path, mutate, field: str, message: str):
    record = copy.deepcopy(hamlet_record())
    mutate(record)
    path = _write_json(tmp_path / "dev_feedback.json", [hamlet_record(), record])
    outputs = {name: tmp_path / f"{name}.parquet" for name in ("relevance", "factuality", "completeness")}
    outputs["relevance"].write_text("from an earlier run")
    with pytest.raises(DataError) as caught:
        convert_qa_feedback(path, **outputs)
    _assert_names(caught.value, path, 1, field)
    assert message in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev_feedback.json"]


def test_not_a_list_of_records(tmp_path: Path):
    path = _write_json(tmp_path / "f.json", {"question": "?"})
    with pytest.raises(DataError, match="expected a JSON list"):
        read_feedback(path)
    path = _write_json(tmp_path / "g.json", [hamlet_record(), "text"])
    with pytest.raises(DataError) as caught:
        read_feedback(path)
    assert caught.value.record == 1


def test_outputs_must_differ_from_each_other_and_the_input(tmp_path: Path):
    path = _write_json(tmp_path / "f.json", [hamlet_record()])
    with pytest.raises(ConfigError):
        convert_qa_feedback(path, relevance=tmp_path / "a.parquet", factuality=tmp_path / "a.parquet")
    with pytest.raises(ConfigError):
        convert_qa_feedback(path, relevance=path)
    with pytest.raises(ConfigError):
        convert_qa_feedback(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


# --- the stage --------------------------------------------------------------------------------------------------


def test_stage_writes_every_table(tmp_path: Path):
    path = _write_json(tmp_path / "train_feedback.json", [hamlet_record(), hamlet_record()])
    out = {name: tmp_path / f"{name}.parquet" for name in ("r1", "r2", "r3", "pref", "fb")}
    cli_main(
        ["convert-qa-feedback", "--input", str(path), "--format", "feedback", "--relevance", str(out["r1"]),
         "--factuality", str(out["r2"]), "--completeness", str(out["r3"]), "--preference", str(out["pref"]),
         "--feedback-table", str(out["fb"])]
    )  # fmt: skip
    assert pq.read_table(out["r1"]).column("labels").to_pylist() == [[0, 0, 1], [0, 0, 1]]
    assert pq.read_table(out["r2"]).column("labels").to_pylist() == [[1, IGNORED], [1, IGNORED]]
    assert pq.read_table(out["r3"]).num_rows == 8
    assert pq.read_table(out["pref"]).num_rows == 10
    assert pq.read_table(out["fb"]).column("prompt_id").to_pylist() == ["train_feedback-0", "train_feedback-1"]


def test_stage_prompts_and_a_config_error(tmp_path: Path):
    path = _write_json(tmp_path / "test.json", [_prompt_record(0)])
    output = tmp_path / "p.parquet"
    cli_main(["convert-qa-feedback", "--input", str(path), "--format", "prompts", "--prompts", str(output)])
    assert pq.read_table(output).column("prompt_id").to_pylist() == ["test-0"]
    with pytest.raises(SystemExit, match="--prompts"):
        cli_main(["convert-qa-feedback", "--input", str(path), "--format", "feedback", "--prompts", str(output)])
