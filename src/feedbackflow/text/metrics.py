"""Text metrics of the papers' evaluations: rougeLsum (qa-feedback, Wu et al. 2023) and distinct-n (detoxification).

rougeLsum follows the Fine-Grained RLHF code (`sft/run_sft.py` and `fgrlhf/evaluators.py` of allenai/FineGrainedRLHF):
the `rouge-score` package's rougeLsum with the Porter stemmer, F-measure x 100, prediction and reference stripped and
split into sentences that are joined with newlines (rougeLsum is the summary-level, union LCS over newline-separated
sentences), and the maximum F over the references of an example (`evaluators.get_rouge_scores`; with one reference
this is the score against it). The paper split sentences with `nltk.sent_tokenize` (punkt); here the default splitter
is `feedbackflow.text.segmentation.split_sentences` (spaCy, Wu et al. 2023 "Segmentation"), looked up when first needed,
and callers may pass any splitter. Sentence boundaries only matter for multi-sentence texts.

distinct-n follows the detoxification evaluation code the paper took from Quark (`distinctness`): texts are split on
single spaces (`text.split(" ")`, so an empty text or a double space contributes an empty-string word), n-grams do not
cross texts, and the ratio is the number of DISTINCT n-grams over the number of WORDS (not of n-grams) of the texts;
the published dist-n is this ratio over one prompt's samples, averaged over prompts.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Callable, Sequence

log = logging.getLogger("feedbackflow.text.metrics")

SentenceSplitter = Callable[[str], list[str]]

_TERMINAL_PUNCTUATION = re.compile(r"(?<=[.!?])\s+")


def split_on_terminal_punctuation(text: str) -> list[str]:
    """Sentences cut after `.`, `!` or `?` followed by whitespace: the fallback when no segmentation module exists."""
    return [piece for piece in _TERMINAL_PUNCTUATION.split(text.strip()) if piece]


@functools.cache
def _fallback_warning() -> None:
    log.warning(
        "feedbackflow.text.segmentation is not available: rougeLsum splits sentences at . ! ? followed by whitespace"
    )


def default_sentence_splitter() -> SentenceSplitter:
    """`text.segmentation.split_sentences` when that module exists, else `split_on_terminal_punctuation`."""
    try:
        from feedbackflow.text.segmentation import split_sentences
    except ModuleNotFoundError as error:
        if error.name != "feedbackflow.text.segmentation":
            raise
        _fallback_warning()
        return split_on_terminal_punctuation
    return split_sentences


@functools.cache
def _rouge_lsum_scorer():
    from rouge_score import rouge_scorer  # imported when first needed: it loads nltk (most of a second)

    # split_summaries=False: rouge-score then takes sentences from newlines, which we insert ourselves.
    return rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True)


def sentences_on_lines(text: str, split_sentences: SentenceSplitter) -> str:
    """`text` stripped, split into sentences, one per line (the input rougeLsum expects)."""
    return "\n".join(sentence.strip() for sentence in split_sentences(text.strip()))


def rouge_lsum(prediction: str, references: Sequence[str], split_sentences: SentenceSplitter | None = None) -> float:
    """rougeLsum F-measure x 100 of `prediction`, the best over `references` (stemming; see the module doc)."""
    if isinstance(references, str):
        raise TypeError("references must be a sequence of strings, not one string")
    if len(references) == 0:
        raise ValueError("rouge_lsum needs at least one reference")
    splitter = split_sentences or default_sentence_splitter()
    scorer = _rouge_lsum_scorer()
    candidate = sentences_on_lines(prediction, splitter)
    best = max(scorer.score(sentences_on_lines(ref, splitter), candidate)["rougeLsum"].fmeasure for ref in references)
    return 100.0 * best


def mean_rouge_lsum(
    predictions: Sequence[str],
    references_lists: Sequence[Sequence[str]],
    split_sentences: SentenceSplitter | None = None,
) -> float:
    """The mean over examples of `rouge_lsum(prediction, references)` (the paper's corpus figure)."""
    if len(predictions) != len(references_lists):
        raise ValueError(f"{len(predictions)} predictions for {len(references_lists)} reference lists")
    if not predictions:
        raise ValueError("mean_rouge_lsum needs at least one prediction")
    splitter = split_sentences or default_sentence_splitter()
    scores = [rouge_lsum(p, refs, splitter) for p, refs in zip(predictions, references_lists, strict=True)]
    return math.fsum(scores) / len(scores)


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """100 when `prediction` equals one of `references` once runs of whitespace are one space and the ends are stripped,
    else 0: the accuracy of a short answer (a stand-in's "Yes" / "No"), where rougeLsum would mostly score wording."""
    if isinstance(references, str):
        raise TypeError("references must be a sequence of strings, not one string")
    if len(references) == 0:
        raise ValueError("exact_match needs at least one reference")
    normal = " ".join(prediction.split())
    return 100.0 if any(normal == " ".join(ref.split()) for ref in references) else 0.0


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams of `texts` over their number of words (space-split), as the paper's detox evaluation."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    if not texts:
        raise ValueError("distinct_n needs at least one text")
    ngrams: set[tuple[str, ...]] = set()
    words = 0
    for text in texts:
        tokens = text.split(" ")
        words += len(tokens)
        ngrams.update(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return len(ngrams) / words
