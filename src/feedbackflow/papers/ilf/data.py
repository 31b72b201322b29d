"""ILF's derived tables (Scheurer et al. 2023): the prompts given to the language models and the fine-tuning sets.

Stage `ilf-prompts`: from a posts table (SLF5K_POSTS), the initial-summary prompts; from a feedback table
(SLF5K_FEEDBACK), the refinement prompts (`--refinement`; `use_feedback: false` is the direct-refinement ablation).
Both are PROMPTS tables with prompt_id = post_id, so every generated text joins back to its post.

Stage `ilf-sft-data`: QA_PROMPTS rows for `train-sft` (prompt = the summary prompt, references = [target]):
- `human`: the feedback posts with a human summary as the target: the annotator's `ideal_human_summary` (the
  default, `human_summary: ideal`) or the post's TL;DR reference (`reference`); a post without it is left out.
- `initial`: the feedback posts with the policy's own initial summary (`sample_index` 0 of the initial-summary
  SAMPLES) as the target: the baseline that controls for training on model-written text.
- `reference`: every post of a split with its reference summary (the dev set of the fine-tuning runs).
`--same-posts-as` restricts a set to the posts of another QA_PROMPTS table (the ILF set, which leaves out posts
without a valid refinement), so that the baselines are fine-tuned on the same posts and number of examples as ILF
(the paper's "same budget"). Empty targets are left out and counted in the report.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field

from feedbackflow.core.formats import (
    PROMPTS,
    QA_PROMPTS,
    SAMPLES,
    SLF5K_FEEDBACK,
    SLF5K_POSTS,
    read_table,
    write_json,
    write_rows,
)
from feedbackflow.core.stage_args import add_dataclass_arguments, dataclass_from_args
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.papers.ilf.prompts import refinement_prompt, summary_prompt

log = logging.getLogger(__name__)

SFT_SOURCES = ("human", "initial", "reference")
HUMAN_SUMMARY_FIELDS = ("ideal", "reference")


@dataclass
class ILFDataConfig:
    use_feedback: bool = field(default=True, metadata={"help": "refinement prompt with the feedback (false: ablation)"})
    human_summary: str = field(default="ideal", metadata={"help": "human targets: ideal (annotator) or reference"})

    def __post_init__(self) -> None:
        if self.human_summary not in HUMAN_SUMMARY_FIELDS:
            raise ConfigError(f"human_summary: {self.human_summary!r} is not one of {list(HUMAN_SUMMARY_FIELDS)}")


def summary_prompt_rows(posts_path: str | os.PathLike) -> list[dict]:
    """PROMPTS rows: one initial-summary prompt per post."""
    table = read_table(posts_path, SLF5K_POSTS)
    return [
        {"prompt_id": row["post_id"], "prompt": summary_prompt(row["title"], row["post"]), "source": str(posts_path),
         "record": record}
        for record, row in enumerate(table.to_pylist())
    ]


def refinement_prompt_rows(feedback_path: str | os.PathLike, use_feedback: bool = True) -> list[dict]:
    """PROMPTS rows: one refinement prompt per (post, summary, feedback)."""
    table = read_table(feedback_path, SLF5K_FEEDBACK)
    return [
        {
            "prompt_id": row["post_id"],
            "prompt": refinement_prompt(row["title"], row["post"], row["summary"], row["feedback"], use_feedback),
            "source": str(feedback_path),
            "record": record,
        }
        for record, row in enumerate(table.to_pylist())
    ]


def _sft_row(post_id: str, title: str, post: str, target: str, source: str, record: int) -> dict:
    return {
        "prompt_id": post_id,
        "prompt": summary_prompt(title, post),
        "question": title,
        "references": [target.strip()],
        "passages": [],
        "source": source,
        "record": record,
    }


def human_sft_rows(feedback_path, posts_path, human_summary: str = "ideal") -> tuple[list[dict], list[str]]:
    """(rows, post ids left out for want of a human summary) for the fine-tune-on-human-summaries baseline."""
    references = {}
    if human_summary == "reference":
        references = {r["post_id"]: r["reference_summary"] for r in read_table(posts_path, SLF5K_POSTS).to_pylist()}
    rows, missing = [], []
    for record, row in enumerate(read_table(feedback_path, SLF5K_FEEDBACK).to_pylist()):
        target = row["ideal_summary"] if human_summary == "ideal" else references.get(row["post_id"])
        if target is None or not target.strip():
            missing.append(row["post_id"])
            continue
        rows.append(_sft_row(row["post_id"], row["title"], row["post"], target, str(feedback_path), record))
    return rows, missing


def initial_sft_rows(feedback_path, samples_path) -> tuple[list[dict], list[str]]:
    """(rows, post ids left out) for the fine-tune-on-initial-summaries baseline: sample 0 of each feedback post."""
    first: dict[str, str] = {}
    for record, row in enumerate(read_table(samples_path, SAMPLES).to_pylist()):
        if row["sample_index"] == 0:
            if row["prompt_id"] in first:
                raise DataError(samples_path, record, "prompt_id", f"{row['prompt_id']!r} has two samples with index 0")
            first[row["prompt_id"]] = row["response"]
    rows, missing = [], []
    for record, row in enumerate(read_table(feedback_path, SLF5K_FEEDBACK).to_pylist()):
        target = first.get(row["post_id"])
        if target is None or not target.strip():
            missing.append(row["post_id"])
            continue
        rows.append(_sft_row(row["post_id"], row["title"], row["post"], target, str(feedback_path), record))
    return rows, missing


def reference_sft_rows(posts_path) -> tuple[list[dict], list[str]]:
    """(rows, post ids without a reference summary): every post of a split with its TL;DR reference."""
    rows, missing = [], []
    for record, row in enumerate(read_table(posts_path, SLF5K_POSTS).to_pylist()):
        target = row["reference_summary"]
        if target is None or not target.strip():
            missing.append(row["post_id"])
            continue
        rows.append(_sft_row(row["post_id"], row["title"], row["post"], target, str(posts_path), record))
    return rows, missing


def restrict_to_posts(rows: list[dict], reference_path) -> tuple[list[dict], list[str]]:
    """Keep the rows whose post is in the QA_PROMPTS table at `reference_path`; (kept, ids of that table not found)."""
    wanted = read_table(reference_path, QA_PROMPTS).column("prompt_id").to_pylist()
    by_id = {row["prompt_id"]: row for row in rows}
    kept = [by_id[post_id] for post_id in wanted if post_id in by_id]
    return kept, [post_id for post_id in wanted if post_id not in by_id]


def _empty_restriction(source: str, selection: list[str]) -> str:
    """Why `--same-posts-as` left no example: the selection itself is empty (an upstream stage kept no post, e.g.
    every refinement rejected) or none of its posts has a `source` example."""
    if not selection:
        return f"no {source} fine-tuning examples: this selection (--same-posts-as) has no post"
    shown = ", ".join(selection[:5]) + (", ..." if len(selection) > 5 else "")
    return f"no {source} fine-tuning examples: none of this selection's {len(selection)} posts ({shown}) has one"


# --- stages -----------------------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--posts", help="SLF5K_POSTS Parquet: one initial-summary prompt per post")
    source.add_argument("--refinement", metavar="FEEDBACK", help="SLF5K_FEEDBACK Parquet: one refinement prompt each")
    parser.add_argument("--output", required=True, help="PROMPTS Parquet to write")
    add_dataclass_arguments(parser, ILFDataConfig)


def main(args: argparse.Namespace) -> None:
    config = dataclass_from_args(ILFDataConfig, args)
    if args.posts:
        rows = summary_prompt_rows(args.posts)
    else:
        rows = refinement_prompt_rows(args.refinement, config.use_feedback)
    write_rows(rows, args.output, PROMPTS)
    log.info("wrote %d prompts to %s", len(rows), args.output)


def configure_sft(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, choices=SFT_SOURCES, help="which targets")
    parser.add_argument("--feedback", help="SLF5K_FEEDBACK Parquet (human, initial)")
    parser.add_argument("--posts", help="SLF5K_POSTS Parquet (reference; human with human_summary reference)")
    parser.add_argument("--samples", help="initial-summary SAMPLES Parquet (initial)")
    parser.add_argument("--same-posts-as", help="QA_PROMPTS Parquet: keep only its posts, in its order")
    parser.add_argument("--output", required=True, help="QA_PROMPTS Parquet to write")
    parser.add_argument("--report", help="JSON with the counts and the posts left out")
    add_dataclass_arguments(parser, ILFDataConfig)


def _require(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if not getattr(args, name):
            raise ConfigError(f"--source {args.source} needs --{name.replace('_', '-')}")


def main_sft(args: argparse.Namespace) -> None:
    config = dataclass_from_args(ILFDataConfig, args)
    if args.source == "human":
        _require(args, "feedback", *(("posts",) if config.human_summary == "reference" else ()))
        rows, missing = human_sft_rows(args.feedback, args.posts, config.human_summary)
    elif args.source == "initial":
        _require(args, "feedback", "samples")
        rows, missing = initial_sft_rows(args.feedback, args.samples)
    else:
        _require(args, "posts")
        rows, missing = reference_sft_rows(args.posts)
    if not rows:
        raise DataError(args.feedback or args.posts, None, None, f"no {args.source} fine-tuning examples")
    not_found: list[str] = []
    if args.same_posts_as:
        rows, not_found = restrict_to_posts(rows, args.same_posts_as)
        if not rows:
            raise DataError(args.same_posts_as, None, "prompt_id", _empty_restriction(args.source, not_found))
    write_rows(rows, args.output, QA_PROMPTS)
    report = {
        "source": args.source,
        "examples": len(rows),
        "left_out_without_target": missing,
        "same_posts_not_found": not_found,
    }
    if args.report:
        write_json(report, args.report)
    log.info("%s: %d fine-tuning examples -> %s (%d without a target)", args.source, len(rows), args.output,
             len(missing))


def reference_sample_rows(posts_path) -> list[dict]:
    """SAMPLES rows of the human reference summaries (origin "reference"), so they are scored like a policy's; the
    posts without one are left out (logged)."""
    rows, missing = reference_sft_rows(posts_path)
    if missing:
        log.info("%s: %d posts without a reference summary left out: %s", posts_path, len(missing), missing[:10])
    return [
        {"prompt_id": row["prompt_id"], "prompt": row["prompt"], "response": row["references"][0],
         "origin": "reference", "sample_index": 0}
        for row in rows
    ]


def configure_reference(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--posts", required=True, help="SLF5K_POSTS Parquet")
    parser.add_argument("--output", required=True, help="SAMPLES Parquet of the reference summaries")


def main_reference(args: argparse.Namespace) -> None:
    rows = reference_sample_rows(args.posts)
    write_rows(rows, args.output, SAMPLES)
    log.info("wrote %d reference summaries to %s", len(rows), args.output)
