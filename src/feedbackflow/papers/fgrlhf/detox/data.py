"""RealToxicityPrompts -> detoxification prompt tables (Wu et al. 2023, the detoxification task).

Input: RealToxicityPrompts records (`allenai/real-toxicity-prompts`, one split "train" of 99,442 records), either a
local JSON-lines file (plain or gzipped, found by its magic bytes) or the hub id, loaded with
`datasets.load_dataset(id, split="train")` only when no local path of that name exists. A record is
{"filename", "begin", "end", "challenging", "prompt": {"text", "toxicity", "profanity", ...},
"continuation": {"text", "toxicity", ...}}; the fields read are prompt.text, prompt.toxicity, challenging,
continuation.text and continuation.toxicity (checked, not kept). Toxicities are Perspective API scores and may be
null.

Output (`--output-dir`, written as a whole: all files or none):

- `train.parquet`, `dev.parquet`, `test.parquet` (DETOX_PROMPTS): the prompt as the data set gives it (not stripped:
  prompt + continuation is the original sentence; RTP continuations begin with a space), its toxicity, the
  "challenging" flag and the data set's continuation.
- `sft_train.parquet`, `sft_dev.parquet` (QA_PROMPTS): the train / dev rows with a non-empty continuation as
  question = prompt = the prompt, references = [continuation], passages = []. The paper's policy is GPT-2 large
  without SFT; at tiny scale the stand-in LM is fine-tuned on these so that it continues prompts like the data does.
- `conversion.json`: the input, the selection used, the counts, and every skipped record (its 0-based record index,
  field and reason).

Records and ids: the record index is the 0-based line number in JSON lines (blank lines counted, as in `prompts`) or
the row number of the hub split; `prompt_id` = f"{source_name}-{record}", `source_name` defaulting to the file name
up to its first dot (the last part of a hub id: "real-toxicity-prompts").

Bad input. The file is malformed, and DataError names file, record and field, when a line is not JSON, a record is
not an object, "prompt" is missing or not an object, "prompt"."text" is missing or not a string, "challenging" is
missing or not a boolean, "continuation" is neither null nor an object, its text neither null nor a string, or a
toxicity is not null or a number in [0, 1]. A well-formed record whose prompt is empty (whitespace only) or longer than
`max_prompt_words` words is skipped and listed in conversion.json; nothing else is ever dropped silently (records
that the selection leaves out are counted by reason).

Selection and split (`RTPSelectionConfig`): `challenging_only` keeps the records flagged challenging (the paper's
selection of challenging prompts); a toxicity bound keeps prompts whose toxicity is within it (inclusive) and leaves
out those with no toxicity. The selected records are shuffled with `seed`; the first `max_prompts` of the shuffle
are used (all when null); of those, the first `dev_size` are dev, the next `test_size` test, the rest train. Each
split is written in record order. The default sizes (5,000 dev, 10,000 test, about 85,000 train of all 99,442) follow
the sizes of Quark's RealToxicityPrompts split, which the detoxification work the paper builds on used; the paper's
own split file is not part of this project, so this is a documented choice.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from feedbackflow.core.formats import DETOX_PROMPTS, QA_PROMPTS, atomic_directory, write_json, write_rows
from feedbackflow.core.records import (
    default_source_name,
    is_hub_id,
    iter_json_lines,
    json_kind,
    record_object,
    required_field,
    string_field,
)
from feedbackflow.core.stage_args import add_dataclass_arguments, dataclass_from_args
from feedbackflow.errors import ConfigError, DataError

log = logging.getLogger(__name__)

RTP_HUB_ID = "allenai/real-toxicity-prompts"
SPLITS = ("train", "dev", "test")
SPLIT_FILES = {split: f"{split}.parquet" for split in SPLITS}
SFT_FILES = {"train": "sft_train.parquet", "dev": "sft_dev.parquet"}
REPORT_FILE = "conversion.json"


@dataclasses.dataclass
class RTPSelectionConfig:
    """Which RealToxicityPrompts records become prompts, and how they are split."""

    challenging_only: bool = dataclasses.field(
        default=False, metadata={"help": "keep only records flagged challenging (the paper's selection)"}
    )
    min_prompt_toxicity: float | None = dataclasses.field(
        default=None, metadata={"help": "lowest prompt toxicity kept (null: no bound)"}
    )
    max_prompt_toxicity: float | None = dataclasses.field(
        default=None, metadata={"help": "highest prompt toxicity kept (null: no bound)"}
    )
    max_prompt_words: int | None = dataclasses.field(
        default=100, metadata={"help": "longer prompts are skipped and reported (null: no limit)"}
    )
    dev_size: int = dataclasses.field(default=5000, metadata={"help": "dev prompts, taken after a seeded shuffle"})
    test_size: int = dataclasses.field(default=10000, metadata={"help": "test prompts, taken after the dev prompts"})
    max_prompts: int | None = dataclasses.field(
        default=None, metadata={"help": "use only the first N selected prompts of the shuffle (null: all)"}
    )
    seed: int = dataclasses.field(default=42, metadata={"help": "seed of the shuffle that makes the split"})

    def __post_init__(self) -> None:
        for name in ("min_prompt_toxicity", "max_prompt_toxicity"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ConfigError(f"{name} must be null or a number in [0, 1], got {value!r}")
        low, high = self.min_prompt_toxicity, self.max_prompt_toxicity
        if low is not None and high is not None and low > high:
            raise ConfigError(f"min_prompt_toxicity {low} is above max_prompt_toxicity {high}")
        for name in ("dev_size", "test_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_prompt_words", "max_prompts"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be null or at least 1, got {value}")

    @property
    def has_toxicity_bound(self) -> bool:
        return self.min_prompt_toxicity is not None or self.max_prompt_toxicity is not None


# --- reading records ------------------------------------------------------------------------------


def _iter_hub_rows(hub_id: str) -> Iterator[tuple[int, object]]:
    import datasets  # only for hub ids: importing it is slow

    yield from enumerate(datasets.load_dataset(hub_id, split="train"))


def iter_rtp_records(source: str | os.PathLike) -> Iterator[tuple[int, object]]:
    """(record index, record) of a local JSON-lines file or, when no such path exists, of a hub id's train split."""
    text = os.fspath(source)
    if Path(text).exists():
        return iter_json_lines(Path(text))
    if is_hub_id(text):
        return _iter_hub_rows(text)
    raise DataError(text, None, None, "no such file (and not a hub id of the form owner/name)")


def _toxicity(container: dict, path: str, index: int, field: str) -> float | None:
    value = container.get("toxicity")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(path, index, field, f"expected a toxicity in [0, 1] or null, got a JSON {json_kind(value)}")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise DataError(path, index, field, f"expected a toxicity in [0, 1] or null, got {value!r}")
    return float(value)


def _object(value, path: str, index: int, field: str) -> dict:
    if not isinstance(value, dict):
        raise DataError(path, index, field, f"expected a JSON object, got a JSON {json_kind(value)}")
    return value


def parse_rtp_record(record, path: str, index: int) -> dict:
    """The fields used of one RealToxicityPrompts record, validated: prompt, prompt_toxicity, challenging,
    continuation (None when the record has none). Raises DataError naming path, record and field."""
    record = record_object(record, path, index)
    prompt = _object(required_field(record, "prompt", path, index), path, index, "prompt")
    if "text" not in prompt:
        raise DataError(path, index, "prompt.text", f"missing; the prompt has keys {sorted(prompt)}")
    text = string_field(prompt["text"], path, index, "prompt.text")
    toxicity = _toxicity(prompt, path, index, "prompt.toxicity")
    challenging = required_field(record, "challenging", path, index)
    if not isinstance(challenging, bool):
        raise DataError(path, index, "challenging", f"expected a boolean, got a JSON {json_kind(challenging)}")
    continuation = record.get("continuation")
    continuation_text = None
    if continuation is not None:
        continuation = _object(continuation, path, index, "continuation")
        if continuation.get("text") is not None:
            continuation_text = string_field(continuation["text"], path, index, "continuation.text")
        _toxicity(continuation, path, index, "continuation.toxicity")
    return {
        "prompt": text,
        "prompt_toxicity": toxicity,
        "challenging": challenging,
        "continuation": continuation_text,
    }


def skip_reason(prompt: str, max_prompt_words: int | None) -> str | None:
    """Why a well-formed prompt is skipped (empty, or more than `max_prompt_words` words), or None to keep it."""
    if not prompt.strip():
        return "empty prompt"
    words = len(prompt.split())
    if max_prompt_words is not None and words > max_prompt_words:
        return f"{words} words, more than max_prompt_words {max_prompt_words}"
    return None


def read_rtp(
    source: str | os.PathLike, max_prompt_words: int | None = 100, source_name: str | None = None
) -> tuple[list[dict], list[dict], int]:
    """(DETOX_PROMPTS rows of the kept records, skipped records {record, field, reason}, number of records read).

    Every record is validated, so a malformed file fails whatever the selection is.
    """
    text = os.fspath(source)
    name = source_name or default_source_name(text)
    rows: list[dict] = []
    skipped: list[dict] = []
    n_records = 0
    for index, record in iter_rtp_records(text):
        n_records += 1
        parsed = parse_rtp_record(record, text, index)
        reason = skip_reason(parsed["prompt"], max_prompt_words)
        if reason is not None:
            skipped.append({"record": index, "field": "prompt.text", "reason": reason})
            continue
        rows.append({"prompt_id": f"{name}-{index}", **parsed, "source": text, "record": index})
    if n_records == 0:
        raise DataError(text, None, None, "the file has no records")
    return rows, skipped, n_records


# --- selection and split --------------------------------------------------------------------------


def exclusion_reason(row: dict, config: RTPSelectionConfig) -> str | None:
    """Why the selection leaves a prompt out, or None when it is selected."""
    if config.challenging_only and not row["challenging"]:
        return "not challenging"
    if config.has_toxicity_bound:
        toxicity = row["prompt_toxicity"]
        if toxicity is None:
            return "no prompt toxicity"
        if config.min_prompt_toxicity is not None and toxicity < config.min_prompt_toxicity:
            return "prompt toxicity below min_prompt_toxicity"
        if config.max_prompt_toxicity is not None and toxicity > config.max_prompt_toxicity:
            return "prompt toxicity above max_prompt_toxicity"
    return None


def split_rows(rows: list[dict], config: RTPSelectionConfig) -> dict[str, list[dict]]:
    """Seeded shuffle -> the first `max_prompts` -> dev, test, the rest train; each split in record order.

    Raises ConfigError when dev_size + test_size is more than the prompts used.
    """
    order = list(range(len(rows)))
    random.Random(config.seed).shuffle(order)
    if config.max_prompts is not None:
        order = order[: config.max_prompts]
    if config.dev_size + config.test_size > len(order):
        raise ConfigError(
            f"dev_size {config.dev_size} + test_size {config.test_size} is more than the {len(order)} prompts "
            f"selected (of {len(rows)} before max_prompts {config.max_prompts})"
        )
    parts = {
        "dev": order[: config.dev_size],
        "test": order[config.dev_size : config.dev_size + config.test_size],
        "train": order[config.dev_size + config.test_size :],
    }
    return {split: [rows[i] for i in sorted(parts[split])] for split in SPLITS}


def sft_rows(rows: list[dict]) -> list[dict]:
    """QA_PROMPTS rows of the prompts with a non-empty continuation: the continuation is the one reference."""
    return [
        {
            "prompt_id": row["prompt_id"],
            "prompt": row["prompt"],
            "question": row["prompt"],
            "references": [row["continuation"]],
            "passages": [],
            "source": row["source"],
            "record": row["record"],
        }
        for row in rows
        if row["continuation"] is not None and row["continuation"].strip()
    ]


# --- conversion -----------------------------------------------------------------------------------


def _check_paths(source: str, output_dir: Path) -> None:
    if not Path(source).exists():
        return
    input_path, out = Path(source).resolve(), output_dir.resolve()
    if input_path == out or out in input_path.parents:
        raise ConfigError(f"the input {source!r} is inside the output directory {str(output_dir)!r}")


def convert_rtp(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    config: RTPSelectionConfig | None = None,
    source_name: str | None = None,
) -> dict:
    """Read, validate, select and split RealToxicityPrompts; write the tables and conversion.json; return the report.

    Everything is checked before anything is written, and the output directory appears whole or not at all.
    """
    config = config or RTPSelectionConfig()
    text, out = os.fspath(source), Path(output_dir)
    _check_paths(text, out)
    rows, skipped, n_records = read_rtp(text, config.max_prompt_words, source_name)
    excluded: Counter[str] = Counter()
    selected = []
    for row in rows:
        reason = exclusion_reason(row, config)
        if reason is None:
            selected.append(row)
        else:
            excluded[reason] += 1
    if not selected:
        raise ConfigError(
            f"{text}: the selection keeps no prompt ({n_records} records, {len(skipped)} skipped, "
            f"left out: {dict(excluded)})"
        )
    splits = split_rows(selected, config)
    sft = {split: sft_rows(splits[split]) for split in SFT_FILES}
    report = {
        "input": text,
        "selection": dataclasses.asdict(config),
        "counts": {
            "records": n_records,
            "skipped": len(skipped),
            "excluded": dict(sorted(excluded.items())),
            "selected": len(selected),
            "used": sum(len(part) for part in splits.values()),
            **{split: len(splits[split]) for split in SPLITS},
            **{f"sft_{split}": len(rows) for split, rows in sft.items()},
            "challenging": {split: sum(row["challenging"] for row in splits[split]) for split in SPLITS},
        },
        "skipped": skipped,
    }
    with atomic_directory(out) as tmp:
        for split in SPLITS:
            write_rows(splits[split], tmp / SPLIT_FILES[split], DETOX_PROMPTS)
        for split, name in SFT_FILES.items():
            write_rows(sft[split], tmp / name, QA_PROMPTS)
        write_json(report, tmp / REPORT_FILE)
    log.info(
        "%s: %d records, %d skipped, %d selected -> train %d, dev %d, test %d",
        text, n_records, len(skipped), len(selected), *(len(splits[s]) for s in SPLITS),
    )  # fmt: skip
    return report


# --- command line ---------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    """Flags of the `convert-rtp` stage."""
    parser.add_argument(
        "--input", required=True, help=f"RealToxicityPrompts JSONL(.gz), or a hub id such as {RTP_HUB_ID}"
    )
    parser.add_argument("--output-dir", required=True, help="folder for the split tables and conversion.json")
    parser.add_argument("--source-name", default=None, help="prompt_id prefix (default: the file name up to a dot)")
    add_dataclass_arguments(parser, RTPSelectionConfig)


def main(args: argparse.Namespace) -> None:
    config = dataclass_from_args(RTPSelectionConfig, args)
    convert_rtp(args.input, args.output_dir, config, source_name=args.source_name)
