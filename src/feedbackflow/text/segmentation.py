"""Sentence and sub-sentence segmentation of responses (Wu et al. 2023, "Segmentation").

Both levels return CHARACTER spans `(start, end)` into the text (end exclusive), trimmed of surrounding whitespace:
the reward of a segment is placed during PPO on the policy token that ends it, found from `text[:end]`.

Sentences: spaCy sentence boundaries. The paper used `en_core_web_sm` (a parser); it is used here when installed,
and otherwise (the offline default) a blank English pipeline with the rule-based sentencizer. The pipeline is built
once per process (`sentence_pipeline`). Whitespace-only sentences are dropped, as the paper's
`split_text_to_sentences` drops them (fgrlhf/reward_utils.py).

Sub-sentences: the paper's `get_subsentence_starts` (tasks/qa_feedback/reward_modeling/create_rel_fact_rm_files.py,
and the same rule in fgrlhf/reward_utils.py used in PPO), ported exactly. Inside each sentence the words are the
whitespace-separated pieces of the sentence's text. A sub-sentence may start at word k (k > 0) when word k-1 ends in
one of `, ; ! ?` (its last character) and more than 5 words remain from word k (`k + 5 < n`, so the last piece has at
least 6 words). If the piece that would end there has fewer than 5 words, it is merged: into the piece before it
(the previous start moves to k) unless it is the sentence's first piece, which is instead merged into the next
one (no start at k).

Where the spans differ from the paper's code: the paper's PPO reward ends sentence i at spaCy's `end_char` and
sub-sentence i at the start of sub-sentence i+1 (so including the whitespace between them). Here every span ends at
its last non-whitespace character. For T5's SentencePiece tokenizer, which drops trailing whitespace, the token that
ends a segment is the same; for byte-level BPE tokenizers (GPT-2) the trimmed end is the one that names the
segment's last real token rather than a lone-space token.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import spacy

# The paper's MIN_SUBSENT_WORDS.
MIN_SUB_SENTENCE_WORDS = 5
# A word ending in one of these may end a sub-sentence (the paper's re.match('[,;!?]', tok[-1])).
SUB_SENTENCE_END_CHARS = ",;!?"
# The paper's spaCy model; used when installed.
SPACY_MODEL = "en_core_web_sm"
BLANK_PIPELINE = "blank:en+sentencizer"

Span = tuple[int, int]

_WORD = re.compile(r"\S+")


def sentence_pipeline_name() -> str:
    """The pipeline `sentence_pipeline` builds: "en_core_web_sm" when installed, else "blank:en+sentencizer"."""
    return SPACY_MODEL if importlib.util.find_spec(SPACY_MODEL) is not None else BLANK_PIPELINE


@functools.cache
def sentence_pipeline() -> spacy.Language:
    """The spaCy pipeline that finds sentence boundaries, built once per process. spaCy is imported here, on first
    use: through thinc it imports torch (seconds), which a stage that never splits text should not pay."""
    import spacy

    if sentence_pipeline_name() == SPACY_MODEL:
        # Named-entity recognition and lemmas play no part in sentence boundaries (the parser sets them).
        return spacy.load(SPACY_MODEL, exclude=["ner", "lemmatizer"])
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    return nlp


def _trimmed(text: str, start: int, end: int) -> Span:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def sentence_spans(text: str) -> list[Span]:
    """(start, end) of each sentence of `text`, trimmed of whitespace; whitespace-only sentences are dropped."""
    spans = []
    for sentence in sentence_pipeline()(text).sents:
        start, end = _trimmed(text, sentence.start_char, sentence.end_char)
        if start < end:
            spans.append((start, end))
    return spans


def sub_sentence_starts(words: list[str], min_words: int = MIN_SUB_SENTENCE_WORDS) -> list[bool]:
    """For each word of one sentence, whether a sub-sentence starts at it (the paper's `get_subsentence_starts`).

    The first word always starts one. Word k may start one when word k-1 ends in `, ; ! ?` and k + min_words < n;
    a piece shorter than `min_words` words that would end at k is merged into the piece before it (the previous
    start moves to k), or, when it is the first piece, into the next one (no start at k).
    """
    if not words:
        return []
    starts = [True] + [False] * (len(words) - 1)
    current_start = 0
    for k in range(1, len(words)):
        if words[k - 1][-1] not in SUB_SENTENCE_END_CHARS or k + min_words >= len(words):
            continue
        if k - current_start >= min_words:
            starts[k] = True
            current_start = k
        elif current_start > 0:
            starts[current_start] = False
            starts[k] = True
            current_start = k
    return starts


def sub_sentence_spans(text: str) -> list[Span]:
    """(start, end) of each sub-sentence of `text`: each sentence split by `sub_sentence_starts` on its words."""
    spans = []
    for sentence_start, sentence_end in sentence_spans(text):
        words = [(m.start(), m.end()) for m in _WORD.finditer(text, sentence_start, sentence_end)]
        starts = sub_sentence_starts([text[a:b] for a, b in words])
        first_words = [k for k, is_start in enumerate(starts) if is_start]
        for piece, first in enumerate(first_words):
            last = first_words[piece + 1] - 1 if piece + 1 < len(first_words) else len(words) - 1
            spans.append((words[first][0], words[last][1]))
    return spans


def split_sentences(text: str) -> list[str]:
    """The sentences of `text` (see `sentence_spans`)."""
    return [text[start:end] for start, end in sentence_spans(text)]


def split_sub_sentences(text: str) -> list[str]:
    """The sub-sentences of `text` (see `sub_sentence_spans`)."""
    return [text[start:end] for start, end in sub_sentence_spans(text)]
