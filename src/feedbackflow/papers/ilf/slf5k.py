"""SLF5K -> the ILF tables (Scheurer et al. 2023): posts, language feedback and comparisons per split.

Input: SLF5K (`JeremyAlain/SLF5K`; splits train 5,000, development 200, validation 500, test 698), either a directory
holding `train.jsonl`, `development.jsonl`, `validation.jsonl` and `test.jsonl` (each may be `.jsonl.gz` instead; gzip
is found by its magic bytes), or a hub id, loaded with `datasets.load_dataset(id, split=name)` per split only when no
local path of that name exists. A record has the fields id, subreddit, title, post, tldr_human_reference_summary,
summary_prompt, generated_summary_for_comparison_A / _B, comparison_preference ("Summary A" / "Summary B"),
generated_summary_for_feedback, feedback and ideal_human_summary; all but id, title and post may be missing, null or
empty (whitespace only), which means "absent".

Output (`--output-dir`, written as a whole: all files or none), for each split:

- `{split}_posts.parquet` (SLF5K_POSTS): every post (of the selection below), with its human reference summary
  (null when absent).
- `{split}_feedback.parquet` (SLF5K_FEEDBACK): the posts with a non-empty feedback AND a non-empty
  generated_summary_for_feedback: the summary, the feedback and the ideal human summary (null when absent).
- `{split}_comparisons.parquet` (SLF5K_COMPARISONS): the posts with both comparison summaries and a preference;
  `preferred` is "A" or "B".
- `conversion.json`: the input, the config and, per split, the records read, the posts kept (and how many the size
  selection left out), the feedback and comparison rows, and the ids of the kept posts without feedback
  (`no_feedback`), without a comparison (`no_comparison`) and without a reference summary (`no_reference`): a
  recorded outcome per post, not an error.

Texts are stripped of surrounding whitespace. `record` is the 0-based line number of the JSON-lines file (blank lines
counted) or the row number of the hub split; `source` the file path or "hub id:split".

Selection (`SLF5KConversionConfig`): `train_size` keeps a seeded random subset of that many train posts (the paper's
100 / 1K / 5K axis), the same posts in the three train tables; `max_posts_per_split` does the same for development,
validation and test. Kept posts are written in record order. A size above the posts of the split is a ConfigError.

Bad input is a DataError naming file, record and field: a line that is not a JSON object, a missing id, an id that is
not a non-empty string, a duplicate id within a split, a missing or empty title or post, a field that is neither a
string nor null, and a comparison_preference other than "Summary A" / "Summary B" when both comparison summaries are
present (a preference that is absent there means the post has no comparison). Everything is checked before anything
is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path

from feedbackflow.core.formats import (
    SLF5K_COMPARISONS,
    SLF5K_FEEDBACK,
    SLF5K_POSTS,
    atomic_directory,
    write_json,
    write_rows,
)
from feedbackflow.core.records import is_hub_id, iter_json_lines, json_kind
from feedbackflow.core.stage_args import add_dataclass_arguments, dataclass_from_args
from feedbackflow.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SLF5K_HUB_ID = "JeremyAlain/SLF5K"
SPLITS = ("train", "development", "validation", "test")
TABLES = ("posts", "feedback", "comparisons")
REPORT_FILE = "conversion.json"
TEXT_FIELDS = (
    "id",
    "subreddit",
    "title",
    "post",
    "tldr_human_reference_summary",
    "summary_prompt",
    "generated_summary_for_comparison_A",
    "generated_summary_for_comparison_B",
    "comparison_preference",
    "generated_summary_for_feedback",
    "feedback",
    "ideal_human_summary",
)
PREFERENCES = {"Summary A": "A", "Summary B": "B"}


def table_file(split: str, table: str) -> str:
    """The output file name of one table of one split: "train_posts.parquet"."""
    return f"{split}_{table}.parquet"


@dataclasses.dataclass
class SLF5KConversionConfig:
    """Which posts of each split are converted."""

    train_size: int | None = dataclasses.field(
        default=None, metadata={"help": "a seeded subset of this many train posts (null: all; the paper: 100/1K/5K)"}
    )
    max_posts_per_split: int | None = dataclasses.field(
        default=None, metadata={"help": "a seeded subset of at most this many development/validation/test posts"}
    )
    seed: int = dataclasses.field(default=42, metadata={"help": "seed of the subsets"})

    def __post_init__(self) -> None:
        for name in ("train_size", "max_posts_per_split"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be null or an integer >= 1, got {value!r}")


# --- reading records ------------------------------------------------------------------------------


def split_path(directory: Path, split: str) -> Path:
    """`{split}.jsonl` or `{split}.jsonl.gz` in `directory`; DataError when neither or both exist."""
    plain, packed = directory / f"{split}.jsonl", directory / f"{split}.jsonl.gz"
    found = [path for path in (plain, packed) if path.is_file()]
    if not found:
        raise DataError(str(plain), None, None, f"missing split file (expected {plain.name} or {packed.name})")
    if len(found) == 2:
        raise DataError(str(directory), None, None, f"both {plain.name} and {packed.name} exist: keep one")
    return found[0]


def _iter_hub_split(hub_id: str, split: str) -> Iterator[tuple[int, object]]:
    import datasets  # only for hub ids: importing it is slow

    yield from enumerate(datasets.load_dataset(hub_id, split=split))


def iter_split_records(source: str | os.PathLike, split: str) -> tuple[str, Iterator[tuple[int, object]]]:
    """(where the records come from, (record index, record) pairs) of one split of a directory or a hub id."""
    text = os.fspath(source)
    if Path(text).exists():
        if not Path(text).is_dir():
            raise DataError(text, None, None, "expected a directory holding the SLF5K split files")
        path = split_path(Path(text), split)
        return str(path), iter_json_lines(path)
    if is_hub_id(text):
        return f"{text}:{split}", _iter_hub_split(text, split)
    raise DataError(text, None, None, "no such directory (and not a hub id of the form owner/name)")


def _text(record: dict, name: str, path: str, index: int) -> str | None:
    """The stripped text of a field, or None when it is missing, null or empty; DataError for a non-string."""
    value = record.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(path, index, name, f"must be a string or null, got a JSON {json_kind(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise DataError(path, index, name, f"not valid Unicode: {error}") from error
    return value.strip() or None


def parse_slf5k_record(record, path: str, index: int) -> dict:
    """The fields of one SLF5K record, validated and stripped ({field: text or None}); `preferred` is "A", "B" or
    None. Raises DataError naming path, record and field."""
    if not isinstance(record, dict):
        raise DataError(path, index, None, f"expected a JSON object, got a JSON {json_kind(record)}")
    if record.get("id") is None:
        raise DataError(path, index, "id", "missing")
    fields = {name: _text(record, name, path, index) for name in TEXT_FIELDS}
    if fields["id"] is None:
        raise DataError(path, index, "id", "is empty")
    for name in ("title", "post"):
        if fields[name] is None:
            raise DataError(path, index, name, "missing or empty")
    preference = fields["comparison_preference"]
    both = fields["generated_summary_for_comparison_A"] is not None and (
        fields["generated_summary_for_comparison_B"] is not None
    )
    fields["preferred"] = None
    if both and preference is not None:
        if preference not in PREFERENCES:
            raise DataError(path, index, "comparison_preference", f"{preference!r} is not one of {sorted(PREFERENCES)}")
        fields["preferred"] = PREFERENCES[preference]
    return fields


def read_split(source: str | os.PathLike, split: str) -> tuple[str, list[dict]]:
    """(where, parsed records with their "record" index) of one split; DataError on a duplicate id or no record."""
    where, records = iter_split_records(source, split)
    parsed: list[dict] = []
    seen: dict[str, int] = {}
    for index, record in records:
        fields = parse_slf5k_record(record, where, index)
        first = seen.get(fields["id"])
        if first is not None:
            raise DataError(where, index, "id", f"{fields['id']!r} appears twice (first at record {first})")
        seen[fields["id"]] = index
        parsed.append({**fields, "record": index})
    if not parsed:
        raise DataError(where, None, None, "the split has no records")
    return where, parsed


# --- selection and tables -------------------------------------------------------------------------


def select_posts(records: list[dict], size: int | None, seed: int, split: str) -> list[dict]:
    """A seeded random subset of `size` records (all when None), in record order; ConfigError when too few."""
    if size is None:
        return records
    if size > len(records):
        raise ConfigError(f"{split}: asked for {size} posts, the split has {len(records)}")
    chosen = sorted(random.Random(f"slf5k:{seed}:{split}").sample(range(len(records)), size))
    return [records[i] for i in chosen]


def post_row(fields: dict, source: str) -> dict:
    return {
        "post_id": fields["id"],
        "subreddit": fields["subreddit"],
        "title": fields["title"],
        "post": fields["post"],
        "reference_summary": fields["tldr_human_reference_summary"],
        "source": source,
        "record": fields["record"],
    }


def feedback_row(fields: dict, source: str) -> dict | None:
    """The SLF5K_FEEDBACK row, or None without a feedback or without the summary it is about."""
    if fields["feedback"] is None or fields["generated_summary_for_feedback"] is None:
        return None
    return {
        "post_id": fields["id"],
        "title": fields["title"],
        "post": fields["post"],
        "summary": fields["generated_summary_for_feedback"],
        "feedback": fields["feedback"],
        "ideal_summary": fields["ideal_human_summary"],
        "source": source,
        "record": fields["record"],
    }


def comparison_row(fields: dict, source: str) -> dict | None:
    """The SLF5K_COMPARISONS row, or None without both summaries and a preference."""
    if fields["preferred"] is None:
        return None
    return {
        "post_id": fields["id"],
        "title": fields["title"],
        "post": fields["post"],
        "summary_a": fields["generated_summary_for_comparison_A"],
        "summary_b": fields["generated_summary_for_comparison_B"],
        "preferred": fields["preferred"],
        "source": source,
        "record": fields["record"],
    }


def split_tables(records: list[dict], source: str) -> tuple[dict[str, list[dict]], dict]:
    """({table: rows}, the split's report entries other than counts of records read)."""
    tables = {"posts": [], "feedback": [], "comparisons": []}
    report = {"no_feedback": [], "no_comparison": [], "no_reference": []}
    for fields in records:
        tables["posts"].append(post_row(fields, source))
        feedback = feedback_row(fields, source)
        comparison = comparison_row(fields, source)
        if feedback is None:
            report["no_feedback"].append(fields["id"])
        else:
            tables["feedback"].append(feedback)
        if comparison is None:
            report["no_comparison"].append(fields["id"])
        else:
            tables["comparisons"].append(comparison)
        if fields["tldr_human_reference_summary"] is None:
            report["no_reference"].append(fields["id"])
    return tables, report


# --- conversion -----------------------------------------------------------------------------------


def _check_paths(source: str, output_dir: Path) -> None:
    if not Path(source).exists():
        return
    input_path, out = Path(source).resolve(), output_dir.resolve()
    if input_path == out or out in input_path.parents:
        raise ConfigError(f"the input {source!r} is inside the output directory {str(output_dir)!r}")


def convert_slf5k(
    source: str | os.PathLike, output_dir: str | os.PathLike, config: SLF5KConversionConfig | None = None
) -> dict:
    """Read and check every split, select the posts, write the tables and conversion.json; return the report.

    Everything is checked before anything is written, and the output directory appears whole or not at all.
    """
    config = config or SLF5KConversionConfig()
    text, out = os.fspath(source), Path(output_dir)
    _check_paths(text, out)
    tables: dict[str, dict[str, list[dict]]] = {}
    report: dict = {"input": text, "config": dataclasses.asdict(config), "splits": {}}
    for split in SPLITS:
        where, records = read_split(text, split)
        size = config.train_size if split == "train" else config.max_posts_per_split
        kept = select_posts(records, size, config.seed, split)
        tables[split], entries = split_tables(kept, where)
        report["splits"][split] = {
            "source": where,
            "records": len(records),
            "posts": len(kept),
            "left_out_by_size": len(records) - len(kept),
            "feedback": len(tables[split]["feedback"]),
            "comparisons": len(tables[split]["comparisons"]),
            **entries,
        }
    schemas = {"posts": SLF5K_POSTS, "feedback": SLF5K_FEEDBACK, "comparisons": SLF5K_COMPARISONS}
    with atomic_directory(out) as tmp:
        for split in SPLITS:
            for table in TABLES:
                write_rows(tables[split][table], tmp / table_file(split, table), schemas[table])
        write_json(report, tmp / REPORT_FILE)
    for split in SPLITS:
        counts = report["splits"][split]
        log.info(
            "%s: %d records, %d posts, %d feedback, %d comparisons",
            split, counts["records"], counts["posts"], counts["feedback"], counts["comparisons"],
        )  # fmt: skip
    return report


# --- command line ---------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    """Flags of the `convert-slf5k` stage."""
    parser.add_argument(
        "--input", required=True, help=f"directory of {{split}}.jsonl(.gz) files, or a hub id such as {SLF5K_HUB_ID}"
    )
    parser.add_argument("--output-dir", required=True, help="folder for the tables and conversion.json")
    add_dataclass_arguments(parser, SLF5KConversionConfig)


def main(args: argparse.Namespace) -> None:
    config = dataclass_from_args(SLF5KConversionConfig, args)
    convert_slf5k(args.input, args.output_dir, config)
