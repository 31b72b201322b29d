"""SLF5K -> ILF tables (SPEC section 3): posts, language feedback and comparisons of each split.

Input: a directory with `train.jsonl`, `development.jsonl`, `validation.jsonl`, `test.jsonl` (or `.jsonl.gz`) in
SLF5K's format, or the hub id `JeremyAlain/SLF5K` (read with `datasets.load_dataset`; never at test time). Fields:
id, subreddit, title, post, tldr_human_reference_summary, summary_prompt, generated_summary_for_comparison_A / _B,
comparison_preference ("Summary A" / "Summary B"), generated_summary_for_feedback, feedback, ideal_human_summary.

Output directory, per split: `{split}_posts.parquet` (SLF5K_POSTS: every post), `{split}_feedback.parquet`
(SLF5K_FEEDBACK: the posts with non-empty feedback on a non-empty summary), `{split}_comparisons.parquet`
(SLF5K_COMPARISONS: the posts with both comparison summaries and a preference), and `conversion.json`: per split the
records read, rows written, and the ids of the posts without feedback, without a comparison and without a reference
summary (a recorded outcome per post, not an error). `train_size` (the paper's 100 / 1K / 5K axis) keeps a seeded
subset of the training posts, the same one for the three train tables; `max_posts_per_split` bounds the others.
Everything is written at once (`atomic_directory`): a bad record leaves nothing behind.

Bad input is a DataError naming the file, record and field: a missing or empty id, title or post; an id seen twice
in a split; a field that is not a string; a preference other than "Summary A" / "Summary B" where both comparison
summaries are present.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from feedbackflow.errors import ConfigError, DataError
from feedbackflow.formats import (
    SLF5K_COMPARISONS,
    SLF5K_FEEDBACK,
    SLF5K_POSTS,
    atomic_directory,
    write_json,
    write_rows,
)
from feedbackflow.stage_args import add_dataclass_arguments, dataclass_from_args

log = logging.getLogger(__name__)

SPLITS = ("train", "development", "validation", "test")
TEXT_FIELDS = (
    "id", "subreddit", "title", "post", "tldr_human_reference_summary", "summary_prompt",
    "generated_summary_for_comparison_A", "generated_summary_for_comparison_B", "comparison_preference",
    "generated_summary_for_feedback", "feedback", "ideal_human_summary",
)  # fmt: skip
PREFERENCES = {"Summary A": "A", "Summary B": "B"}


@dataclass
class SLF5KConversionConfig:
    seed: int = 42
    train_size: int | None = field(default=None, metadata={"help": "training posts kept (seeded); null = all"})
    max_posts_per_split: int | None = field(default=None, metadata={"help": "first N posts of the other splits"})

    def __post_init__(self) -> None:
        for name in ("train_size", "max_posts_per_split"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name}: must be at least 1 when set, got {value}")


def _text(value) -> str:
    return value.strip() if isinstance(value, str) else ""


def split_file(directory: Path, split: str) -> Path:
    for name in (f"{split}.jsonl", f"{split}.jsonl.gz"):
        if (directory / name).exists():
            return directory / name
    raise DataError(directory, None, None, f"no {split}.jsonl or {split}.jsonl.gz")


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    records = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(path, len(records), None, f"line {index + 1} is not JSON ({error.msg})") from error
            if not isinstance(record, dict):
                raise DataError(path, len(records), None, "is not a JSON object")
            records.append(record)
    return records


def read_split(source: str, split: str) -> tuple[str, list[dict]]:
    """(the name errors use for the split's file, its records) from a local directory or the hub."""
    path = Path(source)
    if path.is_dir():
        file = split_file(path, split)
        return str(file), read_jsonl(file)
    from datasets import load_dataset

    return f"{source}[{split}]", [dict(row) for row in load_dataset(source, split=split)]


def check_record(record: dict, where: str, index: int) -> None:
    for name in TEXT_FIELDS:
        value = record.get(name)
        if value is not None and not isinstance(value, str):
            raise DataError(where, index, name, f"must be a string, got {type(value).__name__}")
    for name in ("id", "title", "post"):
        if not _text(record.get(name)):
            raise DataError(where, index, name, "is missing or empty")


def convert_split(where: str, records: list[dict], keep: list[int]) -> tuple[list, list, list, dict]:
    """(posts, feedback, comparisons rows, the split's report) of the records at the indices `keep`."""
    posts, feedback, comparisons = [], [], []
    report = {"records": len(records), "no_feedback": [], "no_comparison": [], "no_reference": []}
    seen: set[str] = set()
    for index in keep:
        record = records[index]
        check_record(record, where, index)
        post_id = record["id"].strip()
        if post_id in seen:
            raise DataError(where, index, "id", f"{post_id!r} appears twice in this split")
        seen.add(post_id)
        title, post = record["title"].strip(), record["post"].strip()
        reference = _text(record.get("tldr_human_reference_summary")) or None
        base = {"post_id": post_id, "source": where, "record": index}
        posts.append({**base, "subreddit": record.get("subreddit"), "title": title, "post": post,
                      "reference_summary": reference})  # fmt: skip
        if reference is None:
            report["no_reference"].append(post_id)
        summary, text = _text(record.get("generated_summary_for_feedback")), _text(record.get("feedback"))
        if summary and text:
            feedback.append({**base, "title": title, "post": post, "summary": summary, "feedback": text,
                             "ideal_summary": _text(record.get("ideal_human_summary")) or None})  # fmt: skip
        else:
            report["no_feedback"].append(post_id)
        a = _text(record.get("generated_summary_for_comparison_A"))
        b = _text(record.get("generated_summary_for_comparison_B"))
        preference = record.get("comparison_preference")
        if a and b and preference is not None and preference.strip():
            if preference.strip() not in PREFERENCES:
                raise DataError(where, index, "comparison_preference",
                                f"{preference!r} is not one of {sorted(PREFERENCES)}")  # fmt: skip
            comparisons.append({**base, "title": title, "post": post, "summary_a": a, "summary_b": b,
                                "preferred": PREFERENCES[preference.strip()]})  # fmt: skip
        else:
            report["no_comparison"].append(post_id)
    report.update(posts=len(posts), feedback=len(feedback), comparisons=len(comparisons))
    return posts, feedback, comparisons, report


def kept_indices(split: str, count: int, config: SLF5KConversionConfig) -> list[int]:
    """Train: a seeded subset of `train_size` records (in file order); other splits: the first N."""
    if split == "train":
        if config.train_size is None or config.train_size >= count:
            return list(range(count))
        return sorted(random.Random(config.seed).sample(range(count), config.train_size))
    limit = config.max_posts_per_split
    return list(range(count if limit is None else min(limit, count)))


def convert_slf5k(source: str, output_dir: str | os.PathLike, config: SLF5KConversionConfig) -> dict:
    """Convert every split (see the module doc); return the report written as conversion.json."""
    tables, report = {}, {"source": source, "train_size": config.train_size, "splits": {}}
    for split in SPLITS:
        where, records = read_split(source, split)
        posts, feedback, comparisons, split_report = convert_split(
            where, records, kept_indices(split, len(records), config)
        )
        tables[split] = (posts, feedback, comparisons)
        report["splits"][split] = split_report
    with atomic_directory(output_dir) as tmp:
        for split, (posts, feedback, comparisons) in tables.items():
            write_rows(posts, tmp / f"{split}_posts.parquet", SLF5K_POSTS)
            write_rows(feedback, tmp / f"{split}_feedback.parquet", SLF5K_FEEDBACK)
            write_rows(comparisons, tmp / f"{split}_comparisons.parquet", SLF5K_COMPARISONS)
        write_json(report, tmp / "conversion.json")
    for split, part in report["splits"].items():
        log.info("%s: %d posts, %d with feedback, %d comparisons", split, part["posts"], part["feedback"],
                 part["comparisons"])  # fmt: skip
    return report


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="directory of SLF5K JSONL splits, or the hub id")
    parser.add_argument("--output-dir", required=True, help="directory to write (replaced atomically)")
    add_dataclass_arguments(parser, SLF5KConversionConfig)


def main(args: argparse.Namespace) -> None:
    convert_slf5k(args.input, args.output_dir, dataclass_from_args(SLF5KConversionConfig, args))
