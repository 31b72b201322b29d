"""qa-feedback (Wu et al. 2023): raw JSON files -> prompts, reward-model data and a per-record feedback table.

Two raw formats:

- "prompts": `train.json` / `dev.json` / `test.json`, a list of {text, answer, passages: [{wikipage, content}],
  question} -> `formats.QA_PROMPTS` rows. `prompt` is `text` as it is; `prompt_id` is f"{source_name}-{record}"
  (`source_name` defaults to the file name up to its first dot: "dev" for dev.json).
- "feedback": `*_feedback.json`, a list of {question, passages: [[title, sentence, ...], ...], gold,
  prediction 1..4, feedback: {errors, missing-info, corrected-prediction}, preference} ->
  * R1 (relevance, NF-ERR, sub-sentences) and R2 (factuality, F-ERR, sentences): `formats.SEGMENT_LABELS` rows;
  * R3 (information completeness) pairs and holistic preference pairs: `formats.PREFERENCE_LISTS` rows, each two
    texts, the preferred one first;
  * one `formats.QA_FEEDBACK` row per record (the parsed feedback and R3's completeness scores, for evaluation).

The rules follow the paper's scripts (allenai/FineGrainedRLHF, tasks/qa_feedback/reward_modeling/
create_rel_fact_rm_files.py for R1/R2, create_comp_rm_files.py for R3, reward_modeling/run_pref_rm.py for the
preference pairs), with these decisions, each noted at its function:

- Reward-model inputs (our reading of the paper): R1 prefix "question: <q> answer:" (no passages, the paper's
  --ignore_context);
  R2 prefix and pair texts use the prompt built like train.json's `text` ("question: <q> context: wikipage: <t>
  text: <passage> | wikipage: ..."), whitespace-normalised, + " answer:", which is exactly what the paper's PPO
  rewards feed the models (`f"{' '.join(prompt.split())} answer: {response}"`). The paper's RM-training scripts
  joined passages without the " | " separator; using the PPO form keeps training and PPO inputs the same.
- Error spans shorter than 5 words are dropped for the NON-factual types only (the paper: "this only applies to
  irrelevance / redundant / incoherence errors", Appendix D), in R1 and in R2's ignore rule.
- R2: a sentence that overlaps a factual span is F-ERR even when it also holds a non-factual span (the paper checks
  F-ERR first); otherwise it is ignored (-100) when it overlaps a kept non-factual span, else O. A row whose
  sentences are all ignored is left out, as the paper leaves such examples out.
- "Overlap" is character-level: a segment overlaps a span when some non-whitespace character lies in both (the
  paper labels the non-whitespace characters of the span and then each word). The paper assumes spans never
  overlap each other; here a segment simply takes every span it overlaps into account.
- R3 (the paper's code decides): the paper drops every passage sentence named in ANY
  Missing-Minor-Auxiliary entry (its comment "do not count sentences with minor info only" is where the paper's "ids
  that appear only in Missing-Minor-Auxiliary entries" comes from), except when the corrected sub-sentence matched to
  it appears verbatim (case-insensitively) in `prediction 1`. On the public dev file the two readings differ for 17
  records: 1,107 R3 pairs here against 1,101 with a literal reading of the paper. Records without info ids give no
  pairs.
- Segment texts are whitespace-normalised (the paper feeds the token-classification models word lists).

Every record is validated before anything is written; bad input raises `DataError` naming the file, the 0-based
record and the field (span offsets outside `prediction 1` or start > end, unknown error types, a `preference` that
is not 6 values in {0, 1, 2}, missing or mistyped fields). On any error no output is left behind.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from feedbackflow.core.formats import PREFERENCE_LISTS, QA_FEEDBACK, QA_PROMPTS, SEGMENT_LABELS, write_rows
from feedbackflow.core.records import json_kind, load_json_list, record_object, required_field, string_field
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.text.segmentation import sentence_spans, sub_sentence_spans

log = logging.getLogger(__name__)

NON_FACTUAL_ERRORS = ("Irrelevant", "Redundant", "Incoherent")  # NF-ERR
FACTUAL_ERRORS = ("Wrong-Grounding", "Unverifiable")  # F-ERR ("Wrong-Grounding" is the paper's "inconsistent fact")
ERROR_TYPES = NON_FACTUAL_ERRORS + FACTUAL_ERRORS
MISSING_INFO_TYPES = ("Missing-Answer", "Missing-Major-Auxiliary", "Missing-Minor-Auxiliary")
MINOR_INFO_TYPE = "Missing-Minor-Auxiliary"

MIN_ERROR_SPAN_WORDS = 5  # the paper's --min_span_len
MIN_MATCH_SIMILARITY = 0.85  # the paper's MIN_SIM_SCORE

ERROR_LABEL = 1
NO_ERROR_LABEL = 0
IGNORE_LABEL = -100

N_PREDICTIONS = 4
# `preference[k]` compares predictions PREFERENCE_PAIRS[k] (0-based): 1v2, 1v3, 1v4, 2v3, 2v4, 3v4.
PREFERENCE_PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
PREFERENCE_VALUES = (0, 1, 2)  # 0 tie, 1 first better, 2 second better

FORMATS = ("prompts", "feedback")


@dataclass(frozen=True)
class ErrorSpan:
    error_type: str
    start: int
    end: int

    @property
    def factual(self) -> bool:
        return self.error_type in FACTUAL_ERRORS


@dataclass(frozen=True)
class MissingInfo:
    error_type: str
    passage_id: int
    sentence_ids: tuple[int, ...]


@dataclass(frozen=True)
class FeedbackRecord:
    """One validated record of a `*_feedback.json` file."""

    record: int
    question: str
    passages: tuple[tuple[str, tuple[str, ...]], ...]  # (title, sentences)
    gold: str
    predictions: tuple[str, ...]  # prediction 1..4
    errors: tuple[ErrorSpan, ...]  # character spans into predictions[0]
    missing_info: tuple[MissingInfo, ...]
    corrected: str
    preference: tuple[int, ...]


# --- prompts ----------------------------------------------------------------------------------------


def _normalise(text: str) -> str:
    return " ".join(text.split())


def qa_prompt(question: str, passages: list[tuple[str, str]]) -> str:
    """The policy prompt, as train.json's `text`: "question: <q> context: wikipage: <t> text: <c> | wikipage: ...".

    `passages` are (title, content); whitespace is normalised. With no passage there is no "context:" (as in the
    paper's run_pref_rm.py, which adds "context:" before the first passage only).
    """
    prompt = f"question: {question}"
    if passages:
        prompt += " context: " + " | ".join(f"wikipage: {title} text: {content}" for title, content in passages)
    return _normalise(prompt)


def feedback_passages(record: FeedbackRecord) -> list[tuple[str, str]]:
    """(title, content) of a feedback record's passages, content = its sentences joined (as in train.json)."""
    return [(title, _normalise(" ".join(sentences))) for title, sentences in record.passages]


def relevance_prefix(question: str) -> str:
    """R1's input before the segments: "question: <q> answer:" (no passages: the paper's PPO R1 input)."""
    return f"question: {_normalise(question)} answer:"


def grounded_prefix(prompt: str) -> str:
    """R2's prefix, and the prompt part of R3 / preference texts: the normalised prompt + " answer:" (Wu et al.
    2023)."""
    return f"{_normalise(prompt)} answer:"


def response_text(prompt: str, response: str) -> str:
    """R3 / holistic preference input: `grounded_prefix(prompt) + " " + response` (the paper's PPO input)."""
    return f"{grounded_prefix(prompt)} {response}"


def _prompt_source_name(path: Path, source_name: str | None) -> str:
    return source_name if source_name else path.name.split(".")[0]


def _string_list(value, path: Path, index: int, field: str) -> list[str]:
    if not isinstance(value, list):
        raise DataError(path, index, field, f"expected a list of strings, got a JSON {json_kind(value)}")
    return [string_field(item, path, index, f"{field}[{k}]") for k, item in enumerate(value)]


def _integer(value, path: Path, index: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(path, index, field, f"expected an integer, got a JSON {json_kind(value)}")
    return value


def _list(value, path: Path, index: int, field: str) -> list:
    if not isinstance(value, list):
        raise DataError(path, index, field, f"expected a list, got a JSON {json_kind(value)}")
    return value


def _object(value, path: Path, index: int, field: str) -> dict:
    if not isinstance(value, dict):
        raise DataError(path, index, field, f"expected a JSON object, got a JSON {json_kind(value)}")
    return value


def _member(container: dict, name: str, path: Path, index: int, field: str):
    if name not in container:
        raise DataError(path, index, field, f"missing; it has keys {sorted(container)}")
    return container[name]


def _qa_prompt_row(record, path: Path, index: int, source_name: str) -> dict:
    record = record_object(record, path, index)
    passages = []
    for k, passage in enumerate(_list(required_field(record, "passages", path, index), path, index, "passages")):
        where = f"passages[{k}]"
        passage = _object(passage, path, index, where)
        title = string_field(
            _member(passage, "wikipage", path, index, f"{where}.wikipage"), path, index, f"{where}.wikipage"
        )
        where_content = f"{where}.content"
        content = string_field(_member(passage, "content", path, index, where_content), path, index, where_content)
        passages.append({"title": title, "content": content})
    return {
        "prompt_id": f"{source_name}-{index}",
        "prompt": string_field(required_field(record, "text", path, index), path, index, "text"),
        "question": string_field(required_field(record, "question", path, index), path, index, "question"),
        "references": _string_list(required_field(record, "answer", path, index), path, index, "answer"),
        "passages": passages,
        "source": str(path),
        "record": index,
    }


def read_qa_prompts(path: str | os.PathLike, source_name: str | None = None) -> list[dict]:
    """`train.json` / `dev.json` / `test.json` -> QA_PROMPTS rows (prompt = `text`, references = `answer`)."""
    path = Path(path)
    name = _prompt_source_name(path, source_name)
    rows = [_qa_prompt_row(record, path, index, name) for index, record in enumerate(load_json_list(path))]
    if not rows:
        raise DataError(path, None, None, "the file has no records")
    return rows


# --- reading feedback -------------------------------------------------------------------------------


def _error_span(value, path: Path, index: int, field: str, prediction: str) -> ErrorSpan:
    value = _object(value, path, index, field)
    error_type = string_field(
        _member(value, "error type", path, index, f"{field}.error type"), path, index, f"{field}.error type"
    )
    if error_type not in ERROR_TYPES:
        raise DataError(path, index, f"{field}.error type", f"unknown error type {error_type!r}; known: {ERROR_TYPES}")
    start = _integer(_member(value, "start", path, index, f"{field}.start"), path, index, f"{field}.start")
    end = _integer(_member(value, "end", path, index, f"{field}.end"), path, index, f"{field}.end")
    if not 0 <= start <= len(prediction):
        raise DataError(path, index, f"{field}.start", f"{start} is outside 'prediction 1' ({len(prediction)} chars)")
    if not 0 <= end <= len(prediction):
        raise DataError(path, index, f"{field}.end", f"{end} is outside 'prediction 1' ({len(prediction)} chars)")
    if start > end:
        raise DataError(path, index, f"{field}.start", f"start {start} is after end {end}")
    return ErrorSpan(error_type, start, end)


def _missing_info(value, path: Path, index: int, field: str) -> MissingInfo:
    value = _object(value, path, index, field)
    error_type = string_field(
        _member(value, "error type", path, index, f"{field}.error type"), path, index, f"{field}.error type"
    )
    if error_type not in MISSING_INFO_TYPES:
        raise DataError(
            path, index, f"{field}.error type", f"unknown missing-info type {error_type!r}; known: {MISSING_INFO_TYPES}"
        )
    passage_id = _integer(
        _member(value, "passage_id", path, index, f"{field}.passage_id"), path, index, f"{field}.passage_id"
    )
    sentence_ids = _list(
        _member(value, "sentence_id", path, index, f"{field}.sentence_id"), path, index, f"{field}.sentence_id"
    )
    ids = tuple(_integer(s, path, index, f"{field}.sentence_id[{k}]") for k, s in enumerate(sentence_ids))
    return MissingInfo(error_type, passage_id, ids)


def _preference(value, path: Path, index: int) -> tuple[int, ...]:
    values = _list(value, path, index, "preference")
    if len(values) != len(PREFERENCE_PAIRS):
        raise DataError(path, index, "preference", f"{len(values)} values; expected {len(PREFERENCE_PAIRS)}")
    out = []
    for k, item in enumerate(values):
        item = _integer(item, path, index, f"preference[{k}]")
        if item not in PREFERENCE_VALUES:
            raise DataError(path, index, f"preference[{k}]", f"{item} is not one of {PREFERENCE_VALUES}")
        out.append(item)
    return tuple(out)


def _passages(value, path: Path, index: int) -> tuple[tuple[str, tuple[str, ...]], ...]:
    passages = []
    for k, passage in enumerate(_list(value, path, index, "passages")):
        strings = _string_list(passage, path, index, f"passages[{k}]")
        if not strings:
            raise DataError(path, index, f"passages[{k}]", "empty: expected [title, sentence, ...]")
        passages.append((strings[0], tuple(strings[1:])))
    return tuple(passages)


def _feedback_record(record, path: Path, index: int) -> FeedbackRecord:
    record = record_object(record, path, index)
    question = string_field(required_field(record, "question", path, index), path, index, "question")
    passages = _passages(required_field(record, "passages", path, index), path, index)
    gold = string_field(required_field(record, "gold", path, index), path, index, "gold")
    predictions = tuple(
        string_field(required_field(record, f"prediction {k}", path, index), path, index, f"prediction {k}")
        for k in range(1, N_PREDICTIONS + 1)
    )
    feedback = _object(required_field(record, "feedback", path, index), path, index, "feedback")
    errors = tuple(
        _error_span(span, path, index, f"feedback.errors[{k}]", predictions[0])
        for k, span in enumerate(
            _list(_member(feedback, "errors", path, index, "feedback.errors"), path, index, "feedback.errors")
        )
    )
    missing = tuple(
        _missing_info(item, path, index, f"feedback.missing-info[{k}]")
        for k, item in enumerate(
            _list(
                _member(feedback, "missing-info", path, index, "feedback.missing-info"),
                path,
                index,
                "feedback.missing-info",
            )
        )
    )
    corrected = string_field(
        _member(feedback, "corrected-prediction", path, index, "feedback.corrected-prediction"),
        path,
        index,
        "feedback.corrected-prediction",
    )
    preference = _preference(required_field(record, "preference", path, index), path, index)
    return FeedbackRecord(index, question, passages, gold, predictions, errors, missing, corrected, preference)


def read_feedback(path: str | os.PathLike) -> list[FeedbackRecord]:
    """Read and validate every record of a `*_feedback.json` file."""
    path = Path(path)
    records = [_feedback_record(record, path, index) for index, record in enumerate(load_json_list(path))]
    if not records:
        raise DataError(path, None, None, "the file has no records")
    return records


# --- R1 and R2: segment labels ---------------------------------------------------------------------------


def kept_error_spans(text: str, errors: tuple[ErrorSpan, ...] | list[ErrorSpan]) -> list[ErrorSpan]:
    """The spans the paper trains on: non-factual spans of fewer than 5 words are dropped; factual ones all kept."""
    return [e for e in errors if e.factual or len(text[e.start : e.end].split()) >= MIN_ERROR_SPAN_WORDS]


def overlaps(text: str, segment: tuple[int, int], span: ErrorSpan) -> bool:
    """True when some non-whitespace character of `text` lies both in `segment` and in `span`."""
    low, high = max(segment[0], span.start), min(segment[1], span.end)
    return low < high and not text[low:high].isspace()


def relevance_labels(text: str, segments: list[tuple[int, int]], errors) -> list[int]:
    """R1: per segment, 1 (NF-ERR) if it overlaps a kept Irrelevant / Redundant / Incoherent span, else 0 (O)."""
    non_factual = [e for e in kept_error_spans(text, errors) if not e.factual]
    return [ERROR_LABEL if any(overlaps(text, s, e) for e in non_factual) else NO_ERROR_LABEL for s in segments]


def factuality_labels(text: str, segments: list[tuple[int, int]], errors) -> list[int]:
    """R2: per segment, 1 (F-ERR) if it overlaps a Wrong-Grounding / Unverifiable span; else -100 (ignored) if it
    overlaps a kept non-factual span; else 0 (O). F-ERR is checked first, as in the paper's `_get_sent_label`."""
    kept = kept_error_spans(text, errors)
    labels = []
    for segment in segments:
        hit = [e for e in kept if overlaps(text, segment, e)]
        if any(e.factual for e in hit):
            labels.append(ERROR_LABEL)
        elif hit:
            labels.append(IGNORE_LABEL)
        else:
            labels.append(NO_ERROR_LABEL)
    return labels


def _segments_text(text: str, spans: list[tuple[int, int]]) -> list[str]:
    # The paper feeds the reward model words (`is_split_into_words`), so whitespace inside a segment is normalised.
    return [_normalise(text[start:end]) for start, end in spans]


def relevance_row(record: FeedbackRecord, source: str) -> dict | None:
    """R1 row of a record: sub-sentences of `prediction 1` with NF-ERR / O labels (None if it has no words)."""
    text = record.predictions[0]
    spans = sub_sentence_spans(text)
    if not spans:
        return None
    return {
        "prefix": relevance_prefix(record.question),
        "segments": _segments_text(text, spans),
        "labels": relevance_labels(text, spans, record.errors),
        "source": source,
        "record": record.record,
    }


def factuality_row(record: FeedbackRecord, source: str) -> dict | None:
    """R2 row of a record: sentences of `prediction 1` with F-ERR / O / ignored labels (None if all are ignored)."""
    text = record.predictions[0]
    spans = sentence_spans(text)
    labels = factuality_labels(text, spans, record.errors)
    if all(label == IGNORE_LABEL for label in labels):
        return None
    return {
        "prefix": grounded_prefix(qa_prompt(record.question, feedback_passages(record))),
        "segments": _segments_text(text, spans),
        "labels": labels,
        "source": source,
        "record": record.record,
    }


# --- R3: information completeness ------------------------------------------------------------------------

InfoId = tuple[int, int]  # (1-based passage, 1-based sentence after the title), as in the paper and `missing-info`


def passage_sentences(record: FeedbackRecord) -> dict[InfoId, str]:
    """Every passage sentence (the title excluded) by (passage, sentence), 1-based, whitespace-normalised."""
    return {
        (i + 1, j + 1): _normalise(sentence)
        for i, (_title, sentences) in enumerate(record.passages)
        for j, sentence in enumerate(sentences)
    }


def approximate_match_similarity(context: str, target: str) -> float:
    """The paper's `_find_approximate_matching_sequence` score (from apple/ml-qrecc), with difflib: 1.0 if `target`
    is a substring of `context`, else the best `SequenceMatcher.quick_ratio` between `target` and the word n-grams
    of `context`, n = len(target words) + int(0.05 * len(target words)); 0.0 if `context` has fewer than n words.

    This is the plain one-pair form; `PassageMatcher` computes the same numbers for all passage sentences at once.
    """
    if target in context:
        return 1.0
    target_length = len(target.split())
    n = target_length + int(0.05 * target_length)
    words = context.split()
    matcher = difflib.SequenceMatcher()
    matcher.set_seq2(target)
    best = 0.0
    for k in range(len(words) - n + 1):
        matcher.set_seq1(" ".join(words[k : k + n]))
        similarity = matcher.quick_ratio()
        best = max(best, similarity)
        if similarity == 1.0:  # the paper stops here; the maximum is the same
            break
    return best


def padded_passage_sentence(sentence: str, target: str) -> str:
    """The paper's padding in `find_best_p_sents`: a sentence of L words gets n - L + 1 " #" words when that is
    positive (n = the target's n-gram length), so that it yields n-grams at all."""
    length = len(target.split())
    padding = length + int(0.05 * length) - len(sentence.split()) + 1
    return sentence + " #" * padding if padding > 0 else sentence


class PassageMatcher:
    """`approximate_match_similarity(padded_passage_sentence(s, target), target)` for every passage sentence s.

    difflib's quick_ratio(a, b) is 2 * M / (len(a) + len(b)), M the number of characters a and b share as
    multisets (the sum over characters of the smaller count). Here the character counts of every n-gram window of
    every sentence come from prefix sums over the words, so one call scores all windows with numpy: the same
    numbers as difflib (the same float division; checked against plain difflib on every record of the public dev
    file, and in the tests on 40 of them), about an order of magnitude faster than a window-by-window loop.
    """

    def __init__(self, sentences: dict[InfoId, str]):
        self.ids = list(sentences)
        self.texts = list(sentences.values())
        words_by_sentence = [text.split() for text in self.texts]
        words = [word for sentence in words_by_sentence for word in sentence]
        self.lengths = np.array([len(sentence) for sentence in words_by_sentence], dtype=np.int64)
        self.offsets = np.cumsum(self.lengths) - self.lengths
        self.columns = {char: k for k, char in enumerate(sorted(set("".join(words)) | {" ", "#"}))}
        counts = np.zeros((len(words) + 1, len(self.columns)), dtype=np.int64)
        for row, word in enumerate(words, start=1):
            for char, count in Counter(word).items():
                counts[row, self.columns[char]] = count
        self.count_prefix = counts.cumsum(axis=0)
        self.char_prefix = np.concatenate([[0], np.cumsum([len(word) for word in words], dtype=np.int64)])

    def similarities(self, target: str) -> np.ndarray:
        """Per passage sentence (in order), its similarity to `target` (a non-empty sub-sentence)."""
        if not self.texts:
            return np.zeros(0)
        target_words = len(target.split())
        n = target_words + int(0.05 * target_words)
        lengths = self.lengths
        # A padded sentence has n + 1 words, so 2 windows; an unpadded one (L >= n + 1) has L - n + 1.
        windows = np.maximum(lengths, n + 1) - n + 1
        first = np.cumsum(windows) - windows
        sentence = np.repeat(np.arange(len(lengths)), windows)
        k = np.arange(int(windows.sum())) - first[sentence]
        low = self.offsets[sentence] + np.minimum(k, lengths[sentence])
        high = self.offsets[sentence] + np.minimum(k + n, lengths[sentence])
        pads = n - (high - low)  # "#" words of the padding inside the window
        counts = self.count_prefix[high] - self.count_prefix[low]
        counts[:, self.columns["#"]] += pads
        counts[:, self.columns[" "]] += n - 1
        wanted = np.zeros(len(self.columns), dtype=np.int64)
        for char, count in Counter(target).items():
            if char in self.columns:
                wanted[self.columns[char]] = count
        shared = np.minimum(counts, wanted).sum(axis=1)
        window_chars = self.char_prefix[high] - self.char_prefix[low] + pads + (n - 1)
        ratios = (2.0 * shared) / (window_chars + len(target))
        best = np.maximum.reduceat(ratios, first)
        for index, text in enumerate(self.texts):
            if target in padded_passage_sentence(text, target):
                best[index] = 1.0
        return best


def best_passage_sentences(text: str, matcher: PassageMatcher) -> list[tuple[str, InfoId, float]]:
    """The paper's `find_best_p_sents`: for each sub-sentence of `text` (whitespace-normalised first), the passage
    sentence most similar to it (padded as the paper pads): (sub-sentence, its id, similarity); ties go to the first
    sentence in passage order; (-1, -1) and -1.0 when there is no passage sentence."""
    text = _normalise(text)
    matches = []
    for start, end in sub_sentence_spans(text):
        sub_sentence = text[start:end]
        similarities = matcher.similarities(sub_sentence)
        if len(similarities) == 0:
            matches.append((sub_sentence, (-1, -1), -1.0))
            continue
        best = int(np.argmax(similarities))  # the first maximum, as the paper's strict `>` scan
        matches.append((sub_sentence, matcher.ids[best], float(similarities[best])))
    return matches


def matched_info_ids(text: str, matcher: PassageMatcher) -> set[InfoId]:
    """Ids of the passage sentences that some sub-sentence of `text` matches with similarity >= 0.85."""
    return {
        info_id
        for _, info_id, similarity in best_passage_sentences(text, matcher)
        if similarity >= MIN_MATCH_SIMILARITY
    }


def info_ids(record: FeedbackRecord, matcher: PassageMatcher | None = None) -> set[InfoId]:
    """The passage sentences that hold the answer's information (the paper's `all_info_ids`).

    Sub-sentences of `corrected-prediction` matched with similarity >= 0.85; an id named in a Missing-Minor-
    Auxiliary entry is dropped, unless the sub-sentence that matched it appears in `prediction 1`
    (case-insensitively). As in the paper, the sub-sentences are taken in order and the last one matching an id
    decides.
    """
    matcher = PassageMatcher(passage_sentences(record)) if matcher is None else matcher
    minor = {(m.passage_id, s) for m in record.missing_info if m.error_type == MINOR_INFO_TYPE for s in m.sentence_ids}
    found: set[InfoId] = set()
    minor_only: set[InfoId] = set()
    prediction = record.predictions[0].lower()
    for sub_sentence, info_id, similarity in best_passage_sentences(record.corrected, matcher):
        if similarity < MIN_MATCH_SIMILARITY:
            continue
        found.add(info_id)
        if info_id in minor:
            minor_only.add(info_id)
            if sub_sentence.lower() in prediction:
                minor_only.discard(info_id)
    return found - minor_only


def completeness_scores(record: FeedbackRecord) -> list[float] | None:
    """R3 score of each prediction: |its matched ids & info ids| / |info ids|; None when there is no info id."""
    matcher = PassageMatcher(passage_sentences(record))
    ids = info_ids(record, matcher)
    if not ids:
        return None
    return [len(matched_info_ids(p, matcher) & ids) / len(ids) for p in record.predictions]


def _pair_rows(record: FeedbackRecord, prompt: str, scores: list[float], source: str) -> list[dict]:
    rows = []
    for i, j in PREFERENCE_PAIRS:
        if scores[i] == scores[j]:
            continue
        better, worse = (i, j) if scores[i] > scores[j] else (j, i)
        rows.append(
            {
                "text": [
                    response_text(prompt, record.predictions[better]),
                    response_text(prompt, record.predictions[worse]),
                ],
                "score": [float(scores[better]), float(scores[worse])],
                "source": source,
                "record": record.record,
            }
        )
    return rows


def completeness_pair_rows(record: FeedbackRecord, source: str, scores: list[float] | None = None) -> list[dict]:
    """R3 pairs: every pair of predictions with different completeness scores, [better, worse], their scores."""
    scores = completeness_scores(record) if scores is None else scores
    if scores is None:
        return []
    return _pair_rows(record, qa_prompt(record.question, feedback_passages(record)), scores, source)


def preference_pair_rows(record: FeedbackRecord, source: str) -> list[dict]:
    """Holistic preference pairs from `preference` (ties skipped): [preferred, other], scores [1, 0]."""
    rows = []
    prompt = qa_prompt(record.question, feedback_passages(record))
    for (i, j), preference in zip(PREFERENCE_PAIRS, record.preference, strict=True):
        if preference == 0:
            continue
        better, worse = (i, j) if preference == 1 else (j, i)
        rows.append(
            {
                "text": [
                    response_text(prompt, record.predictions[better]),
                    response_text(prompt, record.predictions[worse]),
                ],
                "score": [1.0, 0.0],
                "source": source,
                "record": record.record,
            }
        )
    return rows


def feedback_row(record: FeedbackRecord, source: str, source_name: str, scores: list[float] | None) -> dict:
    """QA_FEEDBACK row: the parsed record, its prompt, and R3's completeness scores (null without info ids)."""
    passages = feedback_passages(record)
    return {
        "prompt_id": f"{source_name}-{record.record}",
        "prompt": qa_prompt(record.question, passages),
        "question": record.question,
        "references": [record.gold],
        "passages": [{"title": title, "content": content} for title, content in passages],
        "predictions": list(record.predictions),
        "errors": [{"error_type": e.error_type, "start": e.start, "end": e.end} for e in record.errors],
        "corrected": record.corrected,
        "preference": list(record.preference),
        "completeness": scores,
        "source": source,
        "record": record.record,
    }


@dataclass
class FeedbackTables:
    relevance: list[dict]  # R1, SEGMENT_LABELS
    factuality: list[dict]  # R2, SEGMENT_LABELS
    completeness: list[dict]  # R3 pairs, PREFERENCE_LISTS
    preference: list[dict]  # holistic pairs, PREFERENCE_LISTS
    feedback: list[dict]  # QA_FEEDBACK


def build_feedback_tables(path: str | os.PathLike, source_name: str | None = None) -> FeedbackTables:
    """Read and validate a `*_feedback.json` file, then build every table from it."""
    path = Path(path)
    records = read_feedback(path)
    source, name = str(path), _prompt_source_name(path, source_name)
    tables = FeedbackTables([], [], [], [], [])
    for record in records:
        for rows, row in (
            (tables.relevance, relevance_row(record, source)),
            (tables.factuality, factuality_row(record, source)),
        ):
            if row is not None:
                rows.append(row)
        scores = completeness_scores(record)
        tables.completeness.extend(completeness_pair_rows(record, source, scores))
        tables.preference.extend(preference_pair_rows(record, source))
        tables.feedback.append(feedback_row(record, source, name, scores))
    return tables


def label_counts(rows: list[dict]) -> Counter:
    """How many segments carry each label (1, 0, -100) in SEGMENT_LABELS rows."""
    return Counter(label for row in rows for label in row["labels"])


# --- writing ------------------------------------------------------------------------------------------


def _check_outputs(path: Path, outputs: list[Path]) -> None:
    if not outputs:
        raise ConfigError("no output requested")
    resolved = [output.resolve() for output in outputs]
    if Path(path).resolve() in resolved:
        raise ConfigError(f"an output is the input file {str(path)!r}")
    if len(set(resolved)) != len(resolved):
        raise ConfigError("two outputs are the same file")


def _write_outputs(
    path: Path, outputs: dict[str, tuple[Path, pa.Schema]], build: Callable[[], dict[str, list[dict]]]
) -> dict[str, list[dict]]:
    """Build the tables, then write each requested one (name -> (output, schema)) atomically.

    On any error every requested output is removed, an earlier run's included, so nothing looks finished.
    """
    paths = [output for output, _ in outputs.values()]
    _check_outputs(path, paths)
    try:
        tables = build()
        for name, (output, schema) in outputs.items():
            write_rows(tables[name], output, schema)
    except BaseException:
        for output in paths:
            output.unlink(missing_ok=True)
        raise
    return tables


def convert_qa_prompts(
    path: str | os.PathLike, output: str | os.PathLike, source_name: str | None = None
) -> list[dict]:
    """`read_qa_prompts`, then write QA_PROMPTS Parquet atomically (nothing is left on error)."""
    tables = _write_outputs(
        Path(path),
        {"prompts": (Path(output), QA_PROMPTS)},
        lambda: {"prompts": read_qa_prompts(path, source_name)},
    )
    return tables["prompts"]


def convert_qa_feedback(
    path: str | os.PathLike,
    relevance: str | os.PathLike | None = None,
    factuality: str | os.PathLike | None = None,
    completeness: str | os.PathLike | None = None,
    preference: str | os.PathLike | None = None,
    feedback: str | os.PathLike | None = None,
    source_name: str | None = None,
) -> FeedbackTables:
    """`build_feedback_tables`, then write the requested tables atomically (on any error none is left)."""
    requested = {
        "relevance": (relevance, SEGMENT_LABELS),
        "factuality": (factuality, SEGMENT_LABELS),
        "completeness": (completeness, PREFERENCE_LISTS),
        "preference": (preference, PREFERENCE_LISTS),
        "feedback": (feedback, QA_FEEDBACK),
    }
    outputs = {name: (Path(out), schema) for name, (out, schema) in requested.items() if out is not None}
    tables = _write_outputs(Path(path), outputs, lambda: vars(build_feedback_tables(path, source_name)))
    return FeedbackTables(**tables)


# --- command line ---------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    """Flags of the `convert-qa-feedback` stage."""
    parser.add_argument("--input", required=True, help="train/dev/test.json (prompts) or *_feedback.json")
    parser.add_argument("--format", required=True, choices=FORMATS, help="the raw file's kind")
    parser.add_argument("--source-name", default=None, help="prompt_id prefix (default: the file name up to a dot)")
    parser.add_argument("--prompts", default=None, help="prompts: QA_PROMPTS Parquet to write")
    parser.add_argument("--relevance", default=None, help="feedback: R1 (NF-ERR, sub-sentence) SEGMENT_LABELS Parquet")
    parser.add_argument("--factuality", default=None, help="feedback: R2 (F-ERR, sentence) SEGMENT_LABELS Parquet")
    parser.add_argument("--completeness", default=None, help="feedback: R3 pairs, PREFERENCE_LISTS Parquet")
    parser.add_argument("--preference", default=None, help="feedback: holistic preference pairs, PREFERENCE_LISTS")
    parser.add_argument("--feedback-table", default=None, help="feedback: per-record QA_FEEDBACK Parquet")


def main(args: argparse.Namespace) -> None:
    feedback_outputs = [args.relevance, args.factuality, args.completeness, args.preference, args.feedback_table]
    if args.format == "prompts":
        if args.prompts is None or any(out is not None for out in feedback_outputs):
            raise ConfigError("--format prompts writes --prompts only (and needs it)")
        rows = convert_qa_prompts(args.input, args.prompts, args.source_name)
        log.info("wrote %d prompts from %s to %s", len(rows), args.input, args.prompts)
        return
    if args.prompts is not None:
        raise ConfigError("--prompts is for --format prompts; feedback files write --relevance ... --feedback-table")
    tables = convert_qa_feedback(
        args.input,
        relevance=args.relevance,
        factuality=args.factuality,
        completeness=args.completeness,
        preference=args.preference,
        feedback=args.feedback_table,
        source_name=args.source_name,
    )
    r1, r2 = label_counts(tables.relevance), label_counts(tables.factuality)
    log.info(
        "%s: %d records; R1 %d rows (NF-ERR %d, O %d); R2 %d rows (F-ERR %d, O %d, ignored %d); "
        "R3 %d pairs; preference %d pairs",
        args.input,
        len(tables.feedback),
        len(tables.relevance),
        r1[ERROR_LABEL],
        r1[NO_ERROR_LABEL],
        len(tables.factuality),
        r2[ERROR_LABEL],
        r2[NO_ERROR_LABEL],
        r2[IGNORE_LABEL],
        len(tables.completeness),
        len(tables.preference),
    )
