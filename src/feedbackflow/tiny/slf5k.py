"""A tiny synthetic SLF5K in the real record format, with an oracle (Scheurer et al. 2023, ILF).

Files (`--output-dir`):

- `train.jsonl`, `development.jsonl`, `validation.jsonl`, `test.jsonl`: SLF5K records, one per line, with every field
  of the real data set: id, subreddit, title, post, tldr_human_reference_summary, summary_prompt (the ILF summary
  prompt), generated_summary_for_comparison_A / _B, comparison_preference ("Summary A" / "Summary B"),
  generated_summary_for_feedback, feedback, ideal_human_summary. `convert-slf5k` reads them.
- `oracle.jsonl`: per post {"split", "id", "facts": {"name", "item", "outcome"}, "alternatives", "flaw"}: the post's
  key facts, the other values of each kind a summary must not name (`fact_alternatives`: every other person), and
  the flaw of its feedback summary ({"type": "missing_fact" | "wrong_name", "fact", "required", "forbidden",
  "wrong"}, or null when that summary has none and the record has no feedback). ILF's `oracle` module
  (`summary_quality`, `fixes_flaw`, `load_oracle`) scores summaries against it: the evaluation's ground truth.
- Tiny-LM training tables (QA_PROMPTS: prompt, references = [target], passages = [], prompt_id, source, record),
  built from a pool of posts of their own (`lm_train_posts`, `lm_dev_posts`; none of them in an SLF5K split, as the
  paper's LMs had not seen the SLF5K posts):
  * `policy_{train,dev}.parquet`: summary_prompt(title, post) -> an initial-policy summary, drawn like
    generated_summary_for_feedback (flawed with `flawed_rate`). The tiny initial policy is trained on them.
  * One table pair per role of the instruction-following LM (GPT-3 in the paper), each the training and held-out
    selection set of one tiny stand-in (docs/claims.md, "Stand-ins chosen for their role"):
    - `refiner_{train,dev}.parquet`: `refinements_per_post` rows per post, refinement_prompt -> a refinement of an
      always-flawed summary;
    - `instructrm_{train,dev}.parquet`: `instruct_rm_pairs_per_post` pairs of InstructRM questions per post, one
      about a refinement that fixes the named flaw (-> the template's positive word), one about a refinement that
      does not (-> its negative word), each in a random template of the five tiny ones;
    - `judge_{train,dev}.parquet`: `judge_rows_per_post` rows per post, pairwise_prompt of two summaries of
      different quality -> "A" or "B", the better one, each letter half of the time.
    One multitask stand-in trained on all three tables' rows learnt each skill late, at a step that moved with the
    seed and the CPU's float rounding (measured with the default world: InstructRM 65% right on held-out questions
    at step 1,500 for seed 1; refinements with every fact right 20% of the time). One stand-in per role learns its
    skill in a few hundred steps.
- `corpus.txt`: every distinct text (posts, titles, summaries, feedback, refinements, and every prompt and target of
  the tables), one per line, escaped with `synthetic.escape_corpus_line`, for the tiny tokenizer.

The world. A post (25-45 words over a closed vocabulary) tells how the poster lent an item to a person who then did
something to it: "My sister Mara borrowed my camera for a wedding last Monday. ... Then Mara broke it and ...". Its
key facts are the person's name, the item and the outcome (the verb: broke, lost, sold, ...). A summary is one of
four short templates ("My sister Mara broke my camera."); its flaws are a missing item (the template without it:
"My sister Mara broke it.") and a wrong name (a made-up one, MADE_UP_NAMES). `summary_quality` = the fraction of
the three facts stated correctly (the right value present, no other value of that kind; a wrong name counts as
wrong).

- Initial-policy summaries (generated_summary_for_feedback and the policy tables) have one flaw with `flawed_rate`,
  a wrong name with `wrong_name_share` of those, else a missing item. A flawed summary gets feedback naming the flaw
  ("The summary should say that it was the camera." / "The name is wrong: it is Mara."); a correct one gets none
  (an empty feedback: the converter records the post as without feedback).
- The flaw is checkable: `required` words a fixed summary must contain (the item, or the right name) and `forbidden`
  ones it must not (the wrong name). `fixes_flaw` checks exactly that.
- Refinements (refiner targets) keep the template of the summary they refine: with `refinement_fix_rate` they fix
  the flaw (all three facts right); otherwise they make the refiner's own mistake in the same place, never the one
  the summary made: a wrong name becomes another made-up one (REFINER_NAMES); a missing item becomes "stuff", or with
  `refinement_other_error_rate` a made-up item (MADE_UP_ITEMS). So 5 samples of a model that learnt this contain
  both kinds, a refinement that uses the feedback is measurably better (quality 1 against 2/3), and whether one
  fixed the flaw shows in its own words: a tiny stand-in learns InstructRM's answers in a CPU minute or two (a large
  LM answers from the feedback; at tiny scale this is the stand-in's shortcut, and `fixes_flaw` is the ground truth
  the selection is measured with).
- Human reference summaries state all facts, except `reference_missing_rate` of them that miss the item (so a
  perfect policy can beat the reference); ideal_human_summary always states all facts.
- Comparisons: two summaries with different numbers of flaws (0, 1 or 2); the better one is preferred, except with
  `comparison_label_noise`.

Output is byte-identical for a given config: one `random.Random` per stream seeded from (seed, name), fixed
iteration order, JSON with sorted keys.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from feedbackflow.core.formats import QA_PROMPTS, atomic_path, write_rows
from feedbackflow.core.stage_args import add_dataclass_arguments, dataclass_from_args
from feedbackflow.errors import ConfigError
from feedbackflow.papers.ilf.oracle import fixes_flaw
from feedbackflow.papers.ilf.prompts import (
    TINY_INSTRUCT_RM_TEMPLATES,
    instruct_rm_prompt,
    pairwise_prompt,
    refinement_prompt,
    summary_prompt,
)
from feedbackflow.tiny.synthetic import escape_corpus_line

log = logging.getLogger(__name__)

SPLITS = ("train", "development", "validation", "test")
SPLIT_FILES = {split: f"{split}.jsonl" for split in SPLITS}
ORACLE_FILE = "oracle.jsonl"
CORPUS_FILE = "corpus.txt"
LM_POOLS = ("train", "dev")
POLICY_FILES = {pool: f"policy_{pool}.parquet" for pool in LM_POOLS}
REFINER_FILES = {pool: f"refiner_{pool}.parquet" for pool in LM_POOLS}
INSTRUCT_RM_FILES = {pool: f"instructrm_{pool}.parquet" for pool in LM_POOLS}
JUDGE_FILES = {pool: f"judge_{pool}.parquet" for pool in LM_POOLS}
MISSING_FACT, WRONG_NAME = "missing_fact", "wrong_name"


@dataclasses.dataclass
class SyntheticSLF5KConfig:
    train_posts: int = dataclasses.field(default=300, metadata={"help": "records in train.jsonl"})
    development_posts: int = dataclasses.field(default=40, metadata={"help": "records in development.jsonl"})
    validation_posts: int = dataclasses.field(default=60, metadata={"help": "records in validation.jsonl"})
    test_posts: int = dataclasses.field(default=60, metadata={"help": "records in test.jsonl"})
    lm_train_posts: int = dataclasses.field(
        default=600, metadata={"help": "posts (not in any split) behind the stand-ins' training tables"}
    )
    lm_dev_posts: int = dataclasses.field(default=40, metadata={"help": "posts behind the stand-ins' dev tables"})
    flawed_rate: float = dataclasses.field(default=0.7, metadata={"help": "initial-policy summaries with a flaw"})
    wrong_name_share: float = dataclasses.field(
        default=0.5, metadata={"help": "flaws that are a wrong name (the others: the item is missing)"}
    )
    reference_missing_rate: float = dataclasses.field(
        default=0.1, metadata={"help": "human reference summaries that miss the item"}
    )
    comparison_label_noise: float = dataclasses.field(
        default=0.1, metadata={"help": "comparisons whose preference is the worse summary"}
    )
    refinement_fix_rate: float = dataclasses.field(
        default=0.5, metadata={"help": "refiner targets that fix the named flaw"}
    )
    refinement_other_error_rate: float = dataclasses.field(
        default=0.5, metadata={"help": 'of the refinements that keep an item missing: a made-up item, not "stuff"'}
    )
    refinements_per_post: int = dataclasses.field(default=2, metadata={"help": "refiner rows per post"})
    instruct_rm_pairs_per_post: int = dataclasses.field(
        default=2, metadata={"help": "InstructRM rows per post: this many positive and as many negative"}
    )
    judge_rows_per_post: int = dataclasses.field(default=2, metadata={"help": "pairwise-judge rows per post"})
    seed: int = dataclasses.field(default=42, metadata={"help": "random seed; equal seeds give identical files"})

    def __post_init__(self) -> None:
        for name in ("train_posts", "development_posts", "validation_posts", "test_posts", "lm_train_posts",
                     "lm_dev_posts"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("refinements_per_post", "instruct_rm_pairs_per_post", "judge_rows_per_post"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("flawed_rate", "wrong_name_share", "reference_missing_rate", "comparison_label_noise",
                     "refinement_fix_rate", "refinement_other_error_rate"):  # fmt: skip
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value}")

    def split_sizes(self) -> dict[str, int]:
        return {split: getattr(self, f"{split}_posts") for split in SPLITS}


# --------------------------------------------------------------------------------------------------------------
# Word lists and templates
# --------------------------------------------------------------------------------------------------------------

NAMES = "Mara Tomas Lena Oskar Ines Felix Nadia Pavel Greta Hugo Selma Anton".split()
ITEMS = "camera laptop guitar bike car tent drone jacket watch phone speaker kayak".split()
# Names and items that no post contains. Initial summaries make up the first names; a refinement that does not fix
# the flaw makes its own mistakes (the refiner's names, a made-up item, "stuff"), never one the summary made, so
# whether a refinement fixed the flaw shows in its own words (which a tiny LM learns in a minute).
MADE_UP_NAMES = "Clara Emil Rosa Bruno Vera".split()
REFINER_NAMES = "Otto Lotte Jonas Ida".split()
MADE_UP_ITEMS = "umbrella blender lamp".split()
# The outcome is the verb of "{name} {verb} it".
OUTCOMES = "broke lost sold kept scratched painted".split()
RELATIONS = ["sister", "brother", "roommate", "coworker", "neighbor", "cousin", "boyfriend", "girlfriend", "friend"]
EVENTS = ["a camping trip", "a wedding", "a concert", "a road trip", "a party", "a job interview", "a beach weekend"]
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
SUBREDDITS = ["relationships", "Advice", "legaladvice", "roommates", "personalfinance", "AmItheAsshole"]
REFINER_VAGUE_ITEM = "stuff"  # stands for the item in a refinement that keeps it missing
FACT_VALUES: dict[str, Sequence[str]] = {
    "name": NAMES + MADE_UP_NAMES + REFINER_NAMES,
    "item": ITEMS + MADE_UP_ITEMS,
    "outcome": OUTCOMES,
}


def fact_alternatives(facts: Mapping[str, str]) -> dict[str, list[str]]:
    """{kind: the world's other values of that kind} for the oracle: a summary naming one of them gets the fact
    wrong (`oracle.fact_is_stated`)."""
    return {kind: [other for other in FACT_VALUES[kind] if other.lower() != value.lower()]
            for kind, value in facts.items() if kind in FACT_VALUES}  # fmt: skip

POST_TEMPLATES = (
    "My {relation} {name} borrowed my {item} for {event} last {day}. We have been close for {years} years, so I said "
    "yes. Then {name} {verb} it and acted like it was no big deal. How do I bring this up with {name}?",
    "Last {day} I lent my {item} to {name}, my {relation}, for {event}. Today {name} {verb} it and only told me by "
    "text. The {item} cost me {price} dollars. Am I wrong to be this angry?",
    "So {name} ({age}) is my {relation}. A week ago {name} asked for my {item} to take to {event}. I agreed. Now "
    "{name} {verb} it and will not pay me back. What should I do?",
    "I ({age}) lent my {item} to {name}, my {relation}, for {event}. {name} {verb} it. We have known each other for "
    "{years} years and I do not want to lose a friend over a {item}. Any advice?",
)
TITLE_TEMPLATES = (
    "{Relation} {verb} my {item}",
    "My {relation} and my {item}",
    "Lent my {item} to my {relation}, now what?",
    "Need advice about a borrowed {item}",
    "{Relation} {verb} the {item} I lent",
)
SUMMARY_TEMPLATES = (
    "{name} {verb} my {item}.",
    "My {relation} {name} {verb} my {item}.",
    "{name} {verb} the {item} I lent.",
    "Lent my {item} to {name}, who {verb} it.",
)
# The same summaries without the item (an initial summary that misses it says "it" or "what I lent").
SUMMARY_TEMPLATES_WITHOUT_ITEM = (
    "{name} {verb} it.",
    "My {relation} {name} {verb} it.",
    "{name} {verb} what I lent.",
    "Lent it to {name}, who {verb} it.",
)
MISSING_FACT_FEEDBACK = (
    "The summary should say that it was the {item}.",
    "The summary does not say what was lent: it was the {item}.",
    "It should mention the {item}.",
)
WRONG_NAME_FEEDBACK = (
    "The name is wrong: it is {name}.",
    "It was {name} who borrowed it.",
    "Wrong name: the post is about {name}.",
)


# --------------------------------------------------------------------------------------------------------------
# The oracle: pure functions on summaries
# --------------------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------------------
# Posts and summaries
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SyntheticPost:
    post_id: str
    subreddit: str
    title: str
    text: str
    name: str
    relation: str
    item: str
    outcome: str
    event: str

    @property
    def facts(self) -> dict[str, str]:
        return {"name": self.name, "item": self.item, "outcome": self.outcome}


@dataclasses.dataclass(frozen=True)
class Summary:
    """A summary of a post: its template and what it says in the name and item places."""

    text: str
    template: int
    name: str
    item: str | None  # None: the summary does not name the item


def _rng(seed: int, name: str) -> random.Random:
    """An independent, reproducible stream per generator (str seeds are hashed with SHA-512, not hash())."""
    return random.Random(f"feedbackflow-slf5k-synthetic:{seed}:{name}")


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def make_post(post_id: str, rng: random.Random) -> SyntheticPost:
    name, relation, item = rng.choice(NAMES), rng.choice(RELATIONS), rng.choice(ITEMS)
    verb, event = rng.choice(OUTCOMES), rng.choice(EVENTS)
    values = {
        "name": name, "relation": relation, "Relation": _capitalize(relation), "item": item, "verb": verb,
        "event": event, "day": rng.choice(DAYS), "years": str(rng.randint(2, 15)),
        "price": str(rng.randint(3, 20) * 50), "age": str(rng.randint(18, 40)),
    }  # fmt: skip
    text = rng.choice(POST_TEMPLATES).format(**values)
    title = rng.choice(TITLE_TEMPLATES).format(**values)
    return SyntheticPost(post_id, rng.choice(SUBREDDITS), title, text, name, relation, item, verb, event)


def render_summary(
    post: SyntheticPost, template: int, name: str | None = None, item: str | None = None, with_item: bool = True
) -> Summary:
    """The summary of `post` in template `template`, saying `name` and `item` (default: the post's, i.e. correct);
    without the item at all when not `with_item`."""
    name, item = name or post.name, item or post.item
    templates = SUMMARY_TEMPLATES if with_item else SUMMARY_TEMPLATES_WITHOUT_ITEM
    text = templates[template].format(name=name, relation=post.relation, item=item, verb=post.outcome)
    return Summary(text, template, name, item if with_item else None)


def make_flaw(post: SyntheticPost, kind: str, rng: random.Random) -> dict:
    """A flaw of `kind` for the post: what a summary that has it says instead, and what fixes it."""
    if kind == WRONG_NAME:
        wrong = rng.choice(MADE_UP_NAMES)
        return {"type": WRONG_NAME, "fact": "name", "required": [post.name], "forbidden": [wrong], "wrong": wrong}
    return {"type": MISSING_FACT, "fact": "item", "required": [post.item], "forbidden": [], "wrong": None}


def with_flaws(post: SyntheticPost, template: int, flaws: Sequence[dict]) -> Summary:
    """The summary in `template` with every flaw of `flaws` (at most one per fact)."""
    name = next((f["wrong"] for f in flaws if f["fact"] == "name"), None)
    return render_summary(post, template, name, with_item=not any(f["fact"] == "item" for f in flaws))


def policy_summary(
    post: SyntheticPost, rng: random.Random, config: SyntheticSLF5KConfig
) -> tuple[Summary, dict | None]:
    """An initial-policy summary: one flaw with `flawed_rate` (a wrong name with `wrong_name_share`), else correct."""
    template = rng.randrange(len(SUMMARY_TEMPLATES))
    if rng.random() >= config.flawed_rate:
        return render_summary(post, template), None
    return flawed_summary(post, rng, config, template)


def flawed_summary(
    post: SyntheticPost, rng: random.Random, config: SyntheticSLF5KConfig, template: int | None = None
) -> tuple[Summary, dict]:
    """A summary with exactly one flaw, and the flaw."""
    if template is None:
        template = rng.randrange(len(SUMMARY_TEMPLATES))
    kind = WRONG_NAME if rng.random() < config.wrong_name_share else MISSING_FACT
    flaw = make_flaw(post, kind, rng)
    return with_flaws(post, template, [flaw]), flaw


def feedback_text(post: SyntheticPost, flaw: dict, rng: random.Random) -> str:
    """Feedback that names the flaw and what is right."""
    if flaw["type"] == WRONG_NAME:
        return rng.choice(WRONG_NAME_FEEDBACK).format(name=post.name, wrong=flaw["wrong"])
    return rng.choice(MISSING_FACT_FEEDBACK).format(item=post.item)


def refinement(post: SyntheticPost, summary: Summary, flaw: dict, rng: random.Random, fix: bool,
               other_error_rate: float) -> Summary:  # fmt: skip
    """A refinement of a flawed summary in its template: the flaw fixed (`fix`: every fact right), or not, in the
    refiner's own words: a wrong name stays wrong (one of REFINER_NAMES); a missing item stays missing ("stuff") or,
    with `other_error_rate`, becomes a wrong item (one of MADE_UP_ITEMS)."""
    if fix:
        return render_summary(post, summary.template)
    if flaw["fact"] == "name":
        return render_summary(post, summary.template, name=rng.choice(REFINER_NAMES))
    if rng.random() < other_error_rate:
        return render_summary(post, summary.template, item=rng.choice(MADE_UP_ITEMS))
    return render_summary(post, summary.template, item=REFINER_VAGUE_ITEM)


def sample_refinement(
    post: SyntheticPost, summary: Summary, flaw: dict, rng: random.Random, config: SyntheticSLF5KConfig
) -> Summary:
    fix = rng.random() < config.refinement_fix_rate
    return refinement(post, summary, flaw, rng, fix, config.refinement_other_error_rate)


# Summaries for comparisons and judge rows: 0, 1 or 2 flaws (a wrong name and a missing item).
def summary_with_n_flaws(post: SyntheticPost, n_flaws: int, rng: random.Random) -> Summary:
    kinds = rng.sample([WRONG_NAME, MISSING_FACT], n_flaws)
    return with_flaws(post, rng.randrange(len(SUMMARY_TEMPLATES)), [make_flaw(post, kind, rng) for kind in kinds])


def summary_pair(post: SyntheticPost, rng: random.Random) -> tuple[Summary, Summary, str]:
    """Two summaries with different numbers of flaws in a random order, and the letter of the better one."""
    better, worse = sorted(rng.sample([0, 1, 2], 2))
    first, second = summary_with_n_flaws(post, better, rng), summary_with_n_flaws(post, worse, rng)
    if rng.random() < 0.5:
        return first, second, "A"
    return second, first, "B"


# --------------------------------------------------------------------------------------------------------------
# SLF5K records and the oracle
# --------------------------------------------------------------------------------------------------------------


def slf5k_record(post: SyntheticPost, rng: random.Random, config: SyntheticSLF5KConfig) -> tuple[dict, dict | None]:
    """(the SLF5K record of `post`, the flaw of its feedback summary or None)."""
    template = rng.randrange(len(SUMMARY_TEMPLATES))
    missing = [make_flaw(post, MISSING_FACT, rng)] if rng.random() < config.reference_missing_rate else []
    reference = with_flaws(post, template, missing)
    ideal = render_summary(post, rng.randrange(len(SUMMARY_TEMPLATES)))
    summary_a, summary_b, better = summary_pair(post, rng)
    preferred = better if rng.random() >= config.comparison_label_noise else {"A": "B", "B": "A"}[better]
    for_feedback, flaw = policy_summary(post, rng, config)
    record = {
        "id": post.post_id,
        "subreddit": post.subreddit,
        "title": post.title,
        "post": post.text,
        "tldr_human_reference_summary": reference.text,
        "summary_prompt": summary_prompt(post.title, post.text),
        "generated_summary_for_comparison_A": summary_a.text,
        "generated_summary_for_comparison_B": summary_b.text,
        "comparison_preference": f"Summary {preferred}",
        "generated_summary_for_feedback": for_feedback.text,
        "feedback": feedback_text(post, flaw, rng) if flaw is not None else "",
        "ideal_human_summary": ideal.text,
    }
    return record, flaw


def make_posts(prefix: str, n: int, rng: random.Random) -> list[SyntheticPost]:
    return [make_post(f"{prefix}_{k:05d}", rng) for k in range(n)]


def make_split(split: str, config: SyntheticSLF5KConfig) -> tuple[list[dict], list[dict]]:
    """(SLF5K records, oracle entries) of one split."""
    rng = _rng(config.seed, split)
    records, oracle = [], []
    for post in make_posts(split, config.split_sizes()[split], rng):
        record, flaw = slf5k_record(post, rng, config)
        records.append(record)
        oracle.append({"split": split, "id": post.post_id, "facts": post.facts,
                       "alternatives": fact_alternatives(post.facts), "flaw": flaw})  # fmt: skip
    return records, oracle


# --------------------------------------------------------------------------------------------------------------
# Tiny-LM training tables
# --------------------------------------------------------------------------------------------------------------


def _qa_row(prompt_id: str, prompt: str, target: str, source: str, record: int) -> dict:
    return {
        "prompt_id": prompt_id,
        "prompt": prompt,
        "question": prompt,
        "references": [target],
        "passages": [],
        "source": source,
        "record": record,
    }


def policy_rows(
    posts: list[SyntheticPost], rng: random.Random, config: SyntheticSLF5KConfig, source: str
) -> list[dict]:
    """summary_prompt -> an initial-policy summary, one per post."""
    rows = []
    for record, post in enumerate(posts):
        summary, _ = policy_summary(post, rng, config)
        rows.append(_qa_row(f"{post.post_id}:summary", summary_prompt(post.title, post.text), summary.text, source,
                            record))  # fmt: skip
    return rows


def instruct_rm_row(post: SyntheticPost, summary: Summary, feedback: str, refined: Summary, flaw: dict,
                    rng: random.Random) -> tuple[str, str, bool]:  # fmt: skip
    """(prompt, answer word, whether the refinement fixes the flaw) of one InstructRM question in a random template
    of the tiny world's five (`TINY_INSTRUCT_RM_TEMPLATES`). The word is the answer token without its space: SFT
    puts one space before every target, so the stand-in learns the token (" Yes") that InstructRM reads."""
    template = rng.choice(TINY_INSTRUCT_RM_TEMPLATES)
    fixed = fixes_flaw(refined.text, flaw)
    prompt = instruct_rm_prompt(template, post.title, post.text, summary.text, feedback, refined.text)
    return prompt, (template.positive if fixed else template.negative).strip(), fixed


def instruct_rm_table_rows(
    posts: list[SyntheticPost], rng: random.Random, config: SyntheticSLF5KConfig, source: str
) -> list[dict]:
    """InstructRM questions only (a flawed summary, its feedback, refinements that do and do not fix it): the tiny
    InstructRM stand-in's table."""
    rows = []
    for record, post in enumerate(posts):
        summary, flaw = flawed_summary(post, rng, config)
        feedback = feedback_text(post, flaw, rng)
        for k in range(config.instruct_rm_pairs_per_post):
            for fix in (True, False):  # one refinement that fixes the flaw, one that does not
                refined = refinement(post, summary, flaw, rng, fix, config.refinement_other_error_rate)
                question, answer, _ = instruct_rm_row(post, summary, feedback, refined, flaw, rng)
                label = "yes" if fix else "no"
                rows.append(_qa_row(f"{post.post_id}:instruct_rm{k}{label}", question, answer, source, record))
    return rows


def refiner_rows(
    posts: list[SyntheticPost], rng: random.Random, config: SyntheticSLF5KConfig, source: str
) -> list[dict]:
    """`refinements_per_post` refinement rows per post: the refinement prompt of an always-flawed summary and its
    feedback -> a refinement (fixing the flaw with `refinement_fix_rate`, else the refiner's own mistake)."""
    rows = []
    for record, post in enumerate(posts):
        summary, flaw = flawed_summary(post, rng, config)
        feedback = feedback_text(post, flaw, rng)
        prompt = refinement_prompt(post.title, post.text, summary.text, feedback)
        for k in range(config.refinements_per_post):
            refined = sample_refinement(post, summary, flaw, rng, config)
            rows.append(_qa_row(f"{post.post_id}:refine{k}", prompt, refined.text, source, record))
    return rows


def judge_table_rows(
    posts: list[SyntheticPost], rng: random.Random, config: SyntheticSLF5KConfig, source: str
) -> list[dict]:
    """Pairwise judge questions only: the tiny judge stand-in's table."""
    rows = []
    for record, post in enumerate(posts):
        for k in range(config.judge_rows_per_post):
            summary_a, summary_b, better = summary_pair(post, rng)
            question = pairwise_prompt(post.title, post.text, summary_a.text, summary_b.text)
            rows.append(_qa_row(f"{post.post_id}:pairwise{k}", question, better, source, record))
    return rows


# --------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------


def _jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def make_synthetic_slf5k(output_dir: str | os.PathLike, config: SyntheticSLF5KConfig | None = None) -> dict[str, Path]:
    """Write the split files, oracle.jsonl, the tiny-LM tables and corpus.txt under `output_dir`; return
    {file name: path}."""
    config = config or SyntheticSLF5KConfig()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    oracle: list[dict] = []
    corpus: list[str] = []
    for split in SPLITS:
        records, entries = make_split(split, config)
        files[SPLIT_FILES[split]] = _jsonl(records)
        oracle.extend(entries)
        for record in records:
            corpus.extend(value for key, value in record.items() if key not in ("id", "subreddit") and value)
    files[ORACLE_FILE] = _jsonl(oracle)

    tables: dict[str, list[dict]] = {}
    sizes = {"train": config.lm_train_posts, "dev": config.lm_dev_posts}
    for pool in LM_POOLS:
        posts = make_posts(f"lm_{pool}", sizes[pool], _rng(config.seed, f"lm_{pool}_posts"))
        tables[POLICY_FILES[pool]] = policy_rows(
            posts, _rng(config.seed, f"policy_{pool}"), config, f"synthetic-slf5k:policy_{pool}"
        )
        tables[REFINER_FILES[pool]] = refiner_rows(
            posts, _rng(config.seed, f"refiner_{pool}"), config, f"synthetic-slf5k:refiner_{pool}"
        )
        tables[INSTRUCT_RM_FILES[pool]] = instruct_rm_table_rows(
            posts, _rng(config.seed, f"instructrm_{pool}"), config, f"synthetic-slf5k:instructrm_{pool}"
        )
        tables[JUDGE_FILES[pool]] = judge_table_rows(
            posts, _rng(config.seed, f"judge_{pool}"), config, f"synthetic-slf5k:judge_{pool}"
        )
        for post in posts:
            corpus.extend((post.title, post.text))
    for rows in tables.values():
        for row in rows:
            corpus.extend((row["prompt"], row["references"][0]))
    lines = dict.fromkeys(escape_corpus_line(text) for text in corpus)
    files[CORPUS_FILE] = "".join(line + "\n" for line in lines).encode("utf-8")

    written = {}
    for name, rows in tables.items():
        write_rows(rows, out / name, QA_PROMPTS)
        written[name] = out / name
        log.info("wrote %s (%d rows)", out / name, len(rows))
    for name, data in files.items():
        with atomic_path(out / name) as tmp:
            tmp.write_bytes(data)
        written[name] = out / name
        log.info("wrote %s (%d bytes)", out / name, len(data))
    return written


def configure(parser: argparse.ArgumentParser) -> None:
    """Flags of the `make-synthetic-slf5k` stage."""
    parser.add_argument("--output-dir", required=True, help="folder for the SLF5K splits, oracle, tables and corpus")
    add_dataclass_arguments(parser, SyntheticSLF5KConfig)


def main(args: argparse.Namespace) -> None:
    config = dataclass_from_args(SyntheticSLF5KConfig, args)
    make_synthetic_slf5k(args.output_dir, config)
