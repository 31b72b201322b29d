"""The tiny synthetic qa-feedback data (Wu et al. 2023): the real file names and formats, annotations that agree
with the text, corrections that the completeness rule can match, preferences that follow the errors, determinism."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from difflib import SequenceMatcher
from pathlib import Path

import pytest
import spacy

from feedbackflow import cli
from feedbackflow.tiny.models import train_tokenizer
from feedbackflow.tiny.qa import (
    F_ERRORS,
    FEEDBACK_FILES,
    MISSING_TYPES,
    NF_ERRORS,
    QA_CORPUS_FILE,
    QA_FILES,
    UNSUPPORTED_CITIES,
    UNSUPPORTED_COMPANY_WORDS,
    UNSUPPORTED_FIRST_NAMES,
    UNSUPPORTED_LAST_NAMES,
    UNSUPPORTED_YEARS,
    QAFeedbackConfig,
    build_items,
    make_synthetic_qa_feedback,
)
from feedbackflow.tiny.synthetic import unescape_corpus_line

# The file names of FineGrainedRLHF's tasks/qa_feedback/data/.
REAL_NAMES = {"train.json", "train_1k.json", "dev.json", "test.json", "train_feedback.json", "dev_feedback.json"}
CONFIG = QAFeedbackConfig()
NO_NOISE = dataclasses.replace(CONFIG, preference_noise=0.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qa")
    make_synthetic_qa_feedback(out, CONFIG)
    return out


@pytest.fixture(scope="module")
def sentencizer():
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    return nlp


def load(root: Path, name: str) -> list[dict]:
    return json.loads((root / name).read_text(encoding="utf-8"))


def passage_sentences(record: dict) -> dict[tuple[int, int], str]:
    """(passage_id, sentence_id) -> sentence, 1-based as in missing-info (index 0 of a passage is its title)."""
    return {(i + 1, j): s for i, p in enumerate(record["passages"]) for j, s in enumerate(p) if j > 0}


def sentences_of(text: str, nlp) -> list[str]:
    return [s.text for s in nlp(text).sents]


# -- formats -----------------------------------------------------------------------------------------------------


def check_feedback_record(record: dict) -> None:
    """The original's feedback format (applied to the real sample too, so it describes the real files)."""
    assert set(record) == {"question", "passages", "gold", "feedback", "preference"} | {
        f"prediction {k}" for k in range(1, 5)
    }
    assert all(isinstance(record[key], str) for key in ["question", "gold"] + [f"prediction {k}" for k in (1, 2, 3, 4)])
    # (2 of the 500 real records have no passage at all.)
    assert isinstance(record["passages"], list) and all(
        isinstance(p, list) and len(p) >= 2 and all(isinstance(s, str) for s in p) for p in record["passages"]
    )
    assert set(record["feedback"]) == {"errors", "missing-info", "corrected-prediction"}
    assert isinstance(record["feedback"]["corrected-prediction"], str)
    for error in record["feedback"]["errors"]:
        assert set(error) == {"error type", "explanation", "start", "end"}
        assert error["error type"] in NF_ERRORS + F_ERRORS
        assert (
            isinstance(error["start"], int) and isinstance(error["end"], int) and isinstance(error["explanation"], str)
        )
    for missing in record["feedback"]["missing-info"]:
        assert set(missing) == {"error type", "passage_id", "sentence_id"}
        assert missing["error type"] in MISSING_TYPES
        assert isinstance(missing["passage_id"], int) and all(isinstance(i, int) for i in missing["sentence_id"])
        # 1-based ids into the passages (index 0 is the title: 3 of the 842 real ids point at it).
        assert 1 <= missing["passage_id"] <= len(record["passages"])
        assert all(0 <= i < len(record["passages"][missing["passage_id"] - 1]) for i in missing["sentence_id"])
    assert len(record["preference"]) == 6 and set(record["preference"]) <= {0, 1, 2}


def test_file_names_and_formats(data):
    assert {p.name for p in data.iterdir()} == REAL_NAMES | {QA_CORPUS_FILE}
    assert set(QA_FILES.values()) | set(FEEDBACK_FILES.values()) == REAL_NAMES
    for name in QA_FILES.values():
        for record in load(data, name):
            assert set(record) == {"text", "answer", "passages", "question"}
            assert record["answer"] and all(isinstance(a, str) and a for a in record["answer"])
            assert all(set(p) == {"wikipage", "content"} for p in record["passages"])
            context = " | ".join(f"wikipage: {p['wikipage']} text: {p['content']}" for p in record["passages"])
            assert record["text"] == f"question: {record['question']} context: {context}"
    for name in FEEDBACK_FILES.values():
        for record in load(data, name):
            check_feedback_record(record)
            assert 1 <= len(record["passages"]) <= 3
            assert all(i >= 1 for m in record["feedback"]["missing-info"] for i in m["sentence_id"])


def test_validator_matches_the_real_sample(shared_data):
    real = json.loads((shared_data / "qa_feedback" / "dev_feedback.json").read_text(encoding="utf-8"))
    for record in real:
        check_feedback_record(record)


def test_splits(data):
    train_1k, train = load(data, "train_1k.json"), load(data, "train.json")
    train_feedback, dev, dev_feedback = (
        load(data, "train_feedback.json"),
        load(data, "dev.json"),
        load(data, "dev_feedback.json"),
    )
    assert (len(train_1k), len(train_feedback), len(dev), len(load(data, "test.json"))) == (300, 400, 100, 100)
    # train = the SFT examples, then the questions with feedback (as in the paper: 3,853 = 1,000 + 2,853).
    assert train[:300] == train_1k
    assert [r["question"] for r in train[300:]] == [r["question"] for r in train_feedback]
    assert [r["answer"] for r in train[300:]] == [[r["gold"]] for r in train_feedback]
    # dev_feedback has the dev questions, with the same passages.
    for qa, feedback in zip(dev, dev_feedback, strict=True):
        assert qa["question"] == feedback["question"] and qa["answer"][0] == feedback["gold"]
        assert [(p["wikipage"], p["content"]) for p in qa["passages"]] == [
            (p[0], " ".join(p[1:])) for p in feedback["passages"]
        ]


def test_passage_sentences_are_single_segments(data):
    """At least 6 words and no , ; ! ? : each sentence is one sub-sentence and no span is dropped (< 5 words)."""
    for record in load(data, "train_feedback.json"):
        for sentence in passage_sentences(record).values():
            assert len(sentence.split()) >= 6 and not set(sentence) & set(",;!?"), sentence


# -- annotations -------------------------------------------------------------------------------------------------


def feedback_records_with_items(root: Path, config: QAFeedbackConfig = CONFIG) -> list[tuple[dict, object]]:
    """Every train/dev feedback record beside the world item (QAItem) it was made from."""
    items = build_items(config)
    records = load(root, "train_feedback.json") + load(root, "dev_feedback.json")
    return list(zip(records, items["train_feedback"] + items["dev"], strict=True))


def test_error_spans_index_the_erroneous_sentences(data, sentencizer):
    counts = Counter()
    for record, item in feedback_records_with_items(data):
        text = record["prediction 1"]
        sentences = passage_sentences(record)
        known = set(sentences.values())
        gold = set(sentences_of(record["gold"], sentencizer))
        boundaries = {(s.start_char, s.end_char) for s in sentencizer(text).sents}
        previous_end = 0
        for error in sorted(record["feedback"]["errors"], key=lambda e: e["start"]):
            start, end, kind = error["start"], error["end"], error["error type"]
            span = text[start:end]
            counts[kind] += 1
            # Word-aligned, non-overlapping, one whole sentence of at least five words.
            assert previous_end <= start < end <= len(text)
            assert (start == 0 or text[start - 1] == " ") and (end == len(text) or text[end] == " ")
            assert (start, end) in boundaries and len(span.split()) >= 5
            previous_end = end
            if kind == "Irrelevant":  # an irrelevant passage sentence or an off-topic remark
                assert span not in gold and (span in known) != (span in item.off_topic)
            elif kind == "Redundant":
                assert span == error["explanation"] and text.index(span) < start
            elif kind == "Incoherent":  # four words reversed, or the start of an ideal sentence cut off at the end
                assert span not in known
                shuffled = any(sorted(span.split()) == sorted(s.split()) for s in known)
                cut = end == len(text) and any(s.startswith(span + " ") for s in gold)
                assert shuffled != cut, span
                counts["cut"] += cut
            elif kind == "Unverifiable":
                assert span not in known
            else:  # Wrong-Grounding: the explanation points at the right sentence about the same work
                pointer = json.loads(error["explanation"])
                right = sentences[(pointer["passage_id"], pointer["sentence_id"][0])]
                assert span not in known and right in gold and span != right
                assert span.split()[:4] == right.split()[:4]
            if kind != "Redundant":
                assert error["explanation"] == "" or kind == "Wrong-Grounding"
    assert all(counts[kind] > 0 for kind in (*NF_ERRORS, *F_ERRORS, "cut")), counts


def test_asides_end_predictions_and_off_topic_remarks_are_sometimes_annotated_unverifiable(data, tmp_path):
    config = dataclasses.replace(
        CONFIG, aside_rate=1.0, truncated_rate=0.0, off_topic_unverifiable_share=0.5, feedback_examples=300
    )
    make_synthetic_qa_feedback(tmp_path, config)
    labels = Counter()
    for record, item in feedback_records_with_items(tmp_path, config):
        for k in range(1, 5):  # the habit is the simulated policy's, so every prediction has it
            ends_in_aside = any(record[f"prediction {k}"].endswith(" " + aside) for aside in item.asides)
            assert ends_in_aside == bool(item.asides)
        text = record["prediction 1"]
        for error in record["feedback"]["errors"]:
            span = text[error["start"] : error["end"]]
            if span in item.off_topic or span in item.asides:
                assert error["error type"] in ("Irrelevant", "Unverifiable")
                labels[error["error type"]] += 1
            elif span in item.irrelevant:  # a true passage sentence is only irrelevant
                assert error["error type"] == "Irrelevant"
    assert 0.4 <= labels["Unverifiable"] / sum(labels.values()) <= 0.6, labels
    # The defaults (rates 0): no prediction ends in an aside, every off-topic remark is Irrelevant.
    for record, item in feedback_records_with_items(data):
        assert not any(aside in record[f"prediction {k}"] for aside in item.asides for k in range(1, 5))
        text = record["prediction 1"]
        spans = {text[e["start"] : e["end"]]: e["error type"] for e in record["feedback"]["errors"]}
        assert all(kind == "Irrelevant" for span, kind in spans.items() if span in item.off_topic)


UNSUPPORTED_WORDS = set(
    UNSUPPORTED_FIRST_NAMES + UNSUPPORTED_LAST_NAMES + UNSUPPORTED_CITIES + UNSUPPORTED_COMPANY_WORDS
) | {str(year) for year in UNSUPPORTED_YEARS}


def test_unsupported_claims_use_words_no_passage_uses(data):
    """Wrong values, unverifiable attributes and off-topic remarks draw on the UNSUPPORTED_* lists, which no passage
    uses; awards and adaptations are unsupported by their very subject (module docstring, "Unsupported values")."""
    counts = Counter()
    for record, item in feedback_records_with_items(data):
        passage_words = {w.strip(".") for p in record["passages"] for s in p for w in s.split()}
        assert not passage_words & UNSUPPORTED_WORDS
        for error in record["feedback"]["errors"]:
            span = record["prediction 1"][error["start"] : error["end"]]
            words = {w.strip(".") for w in span.split()}
            kind = error["error type"]
            if kind == "Wrong-Grounding" or (kind == "Irrelevant" and span in item.off_topic):
                assert words & UNSUPPORTED_WORDS, span
            elif kind == "Unverifiable":
                assert words & UNSUPPORTED_WORDS or " award in " in span, span
            counts[kind, bool(words & UNSUPPORTED_WORDS)] += 1
    # Both kinds of irrelevant sentence occur, off-topic remarks (unsupported words) the more often.
    assert counts["Irrelevant", True] > counts["Irrelevant", False] > 0, counts


def test_missing_info_and_corrections(data, sentencizer):
    for record in load(data, "train_feedback.json"):
        sentences = passage_sentences(record)
        feedback = record["feedback"]
        prediction = sentences_of(record["prediction 1"], sentencizer)
        corrected = sentences_of(feedback["corrected-prediction"], sentencizer)
        gold = sentences_of(record["gold"], sentencizer)
        flagged = {(e["start"], e["end"]) for e in feedback["errors"]}
        clean = {s.text for s in sentencizer(record["prediction 1"]).sents if (s.start_char, s.end_char) not in flagged}
        fixed = {
            sentences[(p["passage_id"], p["sentence_id"][0])]
            for p in (json.loads(e["explanation"]) for e in feedback["errors"] if e["error type"] == "Wrong-Grounding")
        }
        # The correction keeps the clean sentences, fixes the wrong ones, adds what is missing; nothing else.
        assert set(corrected) == clean | fixed | {
            sentences[(m["passage_id"], i)] for m in feedback["missing-info"] for i in m["sentence_id"]
        }
        assert set(gold) <= set(corrected) and set(corrected) <= set(sentences.values())
        for missing in feedback["missing-info"]:
            (sentence_id,) = missing["sentence_id"]
            sentence = sentences[(missing["passage_id"], sentence_id)]
            assert sentence not in prediction
            assert (sentence in gold) == (missing["error type"] != "Missing-Minor-Auxiliary")
        # Every gold sentence is stated, fixed or reported missing.
        assert set(gold) <= clean | fixed | set(corrected)


def approximate_match(context: str, target: str) -> float:
    """The paper's `_find_approximate_matching_sequence`: best difflib quick_ratio of `target` against the word
    n-grams of `context` (n = words of target + 5%), 1.0 if `target` is a substring."""
    if target in context:
        return 1.0
    size = len(target.split()) + int(0.05 * len(target.split()))
    words = context.split()
    matcher = SequenceMatcher()
    matcher.set_seq2(target)
    best = 0.0
    for i in range(len(words) - size + 1):
        matcher.set_seq1(" ".join(words[i : i + size]))
        best = max(best, matcher.quick_ratio())
    return best


def test_corrected_predictions_match_passage_sentences(data, sentencizer):
    """R3's rule (Wu et al. 2023) finds an info id (quick_ratio >= 0.85) for every sentence of every correction."""
    n_info = []
    for record in load(data, "dev_feedback.json"):
        sentences = passage_sentences(record)
        info_ids = set()
        for sub_sentence in sentences_of(record["feedback"]["corrected-prediction"], sentencizer):
            assert not set(sub_sentence) & set(",;!?")  # a sentence is one sub-sentence here
            scores = {
                i: approximate_match(s + " #" * len(sub_sentence.split()), sub_sentence) for i, s in sentences.items()
            }
            best = max(scores, key=scores.get)
            assert scores[best] >= 0.85
            info_ids.add(best)
        minor_only = {
            (m["passage_id"], i)
            for m in record["feedback"]["missing-info"]
            if m["error type"] == "Missing-Minor-Auxiliary"
            for i in m["sentence_id"]
        }
        n_info.append(len(info_ids - minor_only))
    assert min(n_info) >= 2  # every question has at least its answer and the identity sentence of one work


def prediction_quality(prediction: str, item, nlp) -> int:
    """Independent reading of a prediction against the world: 2 per answer sentence, 1 per identity sentence,
    -2 per sentence that is a repeat, not a passage fact of the question's works, or irrelevant; minor facts 0."""
    answers = {item.sentence(i) for i in item.answers}
    identities = {item.sentence(i) for i in item.identities}
    minors = {item.sentence(i) for i in item.minors}
    seen, score = set(), 0
    for sentence in sentences_of(prediction, nlp):
        if sentence in seen or sentence not in answers | identities | minors:
            score -= 2
        elif sentence in answers:
            score += 2
        elif sentence in identities:
            score += 1
        seen.add(sentence)
    return score


def test_preferences_follow_the_errors(tmp_path, sentencizer):
    small = dataclasses.replace(NO_NOISE, sft_examples=0, feedback_examples=150, dev_examples=0, test_examples=0)
    make_synthetic_qa_feedback(tmp_path, small)
    items = build_items(small)["train_feedback"]
    labels = Counter()
    for record, item in zip(load(tmp_path, "train_feedback.json"), items, strict=True):
        assert record["question"] == item.question
        quality = [prediction_quality(record[f"prediction {k}"], item, sentencizer) for k in range(1, 5)]
        expected = [
            1 if quality[a] > quality[b] else 2 if quality[a] < quality[b] else 0
            for a, b in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
        ]
        assert record["preference"] == expected
        labels.update(expected)
        # The annotated errors of prediction 1 are exactly its penalised sentences.
        penalised = sum(
            s in item.irrelevant or s not in {item.sentence(i) for i in item.ideal() + item.minors}
            for s in sentences_of(record["prediction 1"], sentencizer)
        )
        repeats = len(sentences_of(record["prediction 1"], sentencizer)) - len(
            set(sentences_of(record["prediction 1"], sentencizer))
        )
        assert len(record["feedback"]["errors"]) == penalised + repeats
    assert labels[0] > 0 and labels[1] > 0 and labels[2] > 0  # ties happen, both directions happen


def test_preference_noise_is_small(data, sentencizer):
    items = build_items(CONFIG)["dev"]
    agree = total = 0
    for record, item in zip(load(data, "dev_feedback.json"), items, strict=True):
        quality = [prediction_quality(record[f"prediction {k}"], item, sentencizer) for k in range(1, 5)]
        for label, (a, b) in zip(record["preference"], [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)], strict=True):
            agree += label == (1 if quality[a] > quality[b] else 2 if quality[a] < quality[b] else 0)
            total += 1
    assert 0.9 <= agree / total < 1.0  # 5% of the labels are redrawn, a third of those by chance the same


# -- SFT references ----------------------------------------------------------------------------------------------


def test_references_are_mostly_good(data, sentencizer):
    items = build_items(CONFIG)
    with_error = missing = 0
    for record, item in zip(load(data, "train_1k.json"), items["train_1k"], strict=True):
        (reference,) = record["answer"]
        sentences = sentences_of(reference, sentencizer)
        ideal = [item.sentence(i) for i in item.ideal()]
        extra = [s for s in sentences if s not in ideal]
        assert len(extra) <= 1 and all(s in item.irrelevant + item.off_topic + item.unverifiable for s in extra)
        with_error += bool(extra)
        missing += [s for s in sentences if s in ideal] != ideal
    # 300 references: error rate 0.25 and missing rate 0.15 give these counts give or take sampling noise.
    assert 50 <= with_error <= 100 and 25 <= missing <= 65
    for name in ("dev.json", "test.json"):
        for record, item in zip(load(data, name), items[name.removesuffix(".json")], strict=True):
            allowed = {item.sentence(i) for i in item.ideal() + item.minors}
            assert all(set(sentences_of(a, sentencizer)) <= allowed for a in record["answer"])
            assert record["answer"][0] == " ".join(item.sentence(i) for i in item.ideal())


def test_aside_habit_ends_references_with_a_remark_about_the_distractor_person(data, tmp_path, sentencizer):
    config = dataclasses.replace(CONFIG, sft_examples=200, reference_aside_rate=1.0, reference_error_rate=0.0)
    make_synthetic_qa_feedback(tmp_path, config)
    with_page = 0
    for record, item in zip(load(tmp_path, "train_1k.json"), build_items(config)["train_1k"], strict=True):
        (reference,) = record["answer"]
        last = sentences_of(reference, sentencizer)[-1]
        works = len(item.answers)
        if len(item.passages) == works:  # no distractor page: no aside
            assert not item.asides and last in {item.sentence(i) for i in item.ideal()}
            continue
        with_page += 1
        person = item.passages[works][0]
        words = {w.strip(".") for w in last.split()}
        assert last in item.asides and last.startswith(person + " ") and words & UNSUPPORTED_WORDS, last
    assert 100 <= with_page <= 180  # distractor_rate 0.7 of 200
    # The default (rate 0) has no asides.
    default = zip(load(data, "train_1k.json"), build_items(CONFIG)["train_1k"], strict=True)
    assert not any(aside in record["answer"][0] for record, item in default for aside in item.asides)


def test_prompts_fit_the_tiny_models(data):
    tokenizer = train_tokenizer([data / QA_CORPUS_FILE], 2000)
    prompts = [r["text"] for r in load(data, "train.json") + load(data, "dev.json") + load(data, "test.json")]
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    assert max(lengths) <= 200
    answers = [r["gold"] for r in load(data, "train_feedback.json")]
    assert max(len(ids) for ids in tokenizer(answers)["input_ids"]) <= 100


def test_corpus(data):
    lines = (data / QA_CORPUS_FILE).read_text(encoding="utf-8").splitlines()
    texts = [unescape_corpus_line(line) for line in lines]
    assert len(texts) == len(set(texts))
    expected = {r["text"] for r in load(data, "train.json")} | {
        r[f"prediction {k}"] for r in load(data, "dev_feedback.json") for k in range(1, 5)
    }
    assert expected <= set(texts)


# -- determinism, command line, config -------------------------------------------------------------------------


def test_deterministic_from_the_seed(data, tmp_path):
    again = tmp_path / "again"
    make_synthetic_qa_feedback(again, CONFIG)
    for name in REAL_NAMES | {QA_CORPUS_FILE}:
        assert (again / name).read_bytes() == (data / name).read_bytes(), name
    other = tmp_path / "other"
    make_synthetic_qa_feedback(other, dataclasses.replace(CONFIG, seed=CONFIG.seed + 1))
    assert (other / "train_feedback.json").read_bytes() != (data / "train_feedback.json").read_bytes()


def test_command_line(tmp_path):
    out = tmp_path / "cli"
    cli.main(
        ["make-synthetic-qa-feedback", "--output-dir", str(out), "--sft-examples", "4", "--feedback-examples", "3"]
        + ["--hparams", json.dumps({"dev_examples": 2, "test_examples": 1, "seed": 7})]
    )
    sizes = {name: len(load(out, name)) for name in REAL_NAMES}
    assert sizes == {
        "train_1k.json": 4,
        "train.json": 7,
        "train_feedback.json": 3,
        "dev.json": 2,
        "dev_feedback.json": 2,
        "test.json": 1,
    }


def test_invalid_config_is_refused():
    with pytest.raises(ValueError, match="sft_examples"):
        QAFeedbackConfig(sft_examples=-1)
    with pytest.raises(ValueError, match="irrelevant_rate"):
        QAFeedbackConfig(irrelevant_rate=1.5)
