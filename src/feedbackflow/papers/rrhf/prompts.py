"""Prompt sets for generation experiments (Yuan et al. 2023, RRHF): raw files -> PROMPTS and SAMPLES Parquet.

Two raw formats are read:

- "rm_static": `Dahoas/rm-static` rows {prompt, response, chosen, rejected}, from a local Parquet file (the hub's
  format, found by its "PAR1" magic bytes) or JSON lines (plain or gzipped). The prompt is kept as it is (it ends
  with "\\n\\nAssistant:"); the responses are the row's "chosen", "rejected" and "response" fields (in rm-static
  "response" is usually the chosen text again; pass `response_fields=("chosen", "rejected")` for the paper's
  six responses per query).
- "hh": raw Anthropic HH JSON lines {chosen, rejected} (plain or gzipped), each a whole dialogue. The prompt is the
  longest prefix shared by chosen and rejected that ends with "\\n\\nAssistant:" (the last such marker inside their
  common prefix), and each response is the rest of its dialogue, its final assistant turn. Using the common prefix
  (rather than each text's own last marker) keeps the split right for the few HH responses that themselves contain
  "\\n\\nAssistant:"; chosen and rejected that share no such prefix are an error.

Responses are stripped of surrounding whitespace (the leading space after "Assistant:" in particular); the reward
text is rebuilt as prompt + " " + response (see `reward_scoring`). Each kept response is one SAMPLES row with
`origin` = the field it came from and `sample_index` 0.

`prompt_id` is f"{source_name}-{record}": `source_name` defaults to the input file's name up to its first dot
("harmless-base-test" for "harmless-base-test.jsonl.gz") and `record` is the 0-based record index (the line number
in JSON lines, blank lines counted; the row number in Parquet). The id is stable for a given file whatever
`max_prompts` is, and keeps two records with the same prompt text apart.

Every record is validated before anything is written: a malformed JSON line, a missing or non-string field, an
empty prompt or an empty response raises `DataError` naming the file, the record and the field, and no output is
left behind. Empty responses can instead be dropped (`empty_responses="skip"`, counted in the log): the public HH
harmless-base test file has 4 empty chosen responses.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import pyarrow.parquet as pq

from feedbackflow.core.formats import PROMPTS, SAMPLES, write_rows
from feedbackflow.core.records import (
    default_source_name,
    iter_json_lines,
    record_object,
    required_field,
    string_field,
)
from feedbackflow.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PROMPT_FORMATS = ("rm_static", "hh")
RM_STATIC_RESPONSE_FIELDS = ("chosen", "rejected", "response")
EMPTY_RESPONSE_POLICIES = ("error", "skip")
ASSISTANT_MARKER = "\n\nAssistant:"
_PARQUET_MAGIC = b"PAR1"


def split_hh_dialogue(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """(prompt, chosen response, rejected response) of an HH pair, or None when they share no prompt.

    The prompt ends with the last "\\n\\nAssistant:" inside the common prefix of the two dialogues; the responses
    are the rest of each dialogue, stripped of surrounding whitespace.
    """
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(ASSISTANT_MARKER)
    if cut < 0:
        return None
    end = cut + len(ASSISTANT_MARKER)
    return chosen[:end], chosen[end:].strip(), rejected[end:].strip()


# --- reading records ------------------------------------------------------------------------------


def _iter_parquet_rows(path: Path):
    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise DataError(path, None, None, f"cannot read the Parquet file: {error}") from error
    yield from enumerate(table.to_pylist())


def _iter_records(path: Path):
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as error:
        raise DataError(path, None, None, f"cannot read the file: {error.strerror or error}") from error
    return _iter_parquet_rows(path) if magic == _PARQUET_MAGIC else iter_json_lines(path)


# --- the two formats ------------------------------------------------------------------------------


def _non_empty_prompt(prompt: str, path: Path, index: int, field: str) -> str:
    if not prompt.strip():
        raise DataError(path, index, field, "the prompt is empty")
    return prompt


def _rm_static_record(record: dict, path: Path, index: int, response_fields) -> tuple[str, list[tuple[str, str]]]:
    prompt = _non_empty_prompt(
        string_field(required_field(record, "prompt", path, index), path, index, "prompt"), path, index, "prompt"
    )
    responses = [
        (name, string_field(required_field(record, name, path, index), path, index, name).strip())
        for name in response_fields
    ]
    return prompt, responses


def _hh_record(record: dict, path: Path, index: int) -> tuple[str, list[tuple[str, str]]]:
    chosen = string_field(required_field(record, "chosen", path, index), path, index, "chosen")
    rejected = string_field(required_field(record, "rejected", path, index), path, index, "rejected")
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if ASSISTANT_MARKER not in text:
            raise DataError(path, index, name, f"no {ASSISTANT_MARKER!r} turn in the dialogue")
    split = split_hh_dialogue(chosen, rejected)
    if split is None:
        raise DataError(
            path,
            index,
            "rejected",
            f"chosen and rejected share no prompt ending with {ASSISTANT_MARKER!r}: their dialogues differ before "
            "the final assistant turn",
        )
    prompt, chosen_response, rejected_response = split
    _non_empty_prompt(prompt[: -len(ASSISTANT_MARKER)], path, index, "chosen")
    return prompt, [("chosen", chosen_response), ("rejected", rejected_response)]


def read_prompts(
    path: str | os.PathLike,
    format: str,
    max_prompts: int | None = None,
    source_name: str | None = None,
    response_fields: tuple[str, ...] | list[str] | None = None,
    empty_responses: str = "error",
) -> tuple[list[dict], list[dict]]:
    """Read and validate a raw file: (PROMPTS rows, SAMPLES rows of the data set's own responses).

    `max_prompts` keeps the first N records (later records are not read). `response_fields` (rm_static only)
    picks which of chosen / rejected / response become samples. See the module docstring for ids and errors.
    """
    if format not in PROMPT_FORMATS:
        raise ConfigError(f"unknown prompt format {format!r}; known formats: {list(PROMPT_FORMATS)}")
    if empty_responses not in EMPTY_RESPONSE_POLICIES:
        raise ConfigError(f"empty_responses {empty_responses!r} is not one of {list(EMPTY_RESPONSE_POLICIES)}")
    if max_prompts is not None and max_prompts < 1:
        raise ConfigError(f"max_prompts must be at least 1, got {max_prompts}")
    if response_fields is not None and format != "rm_static":
        raise ConfigError("response_fields is only for format 'rm_static'")
    fields = tuple(response_fields) if response_fields is not None else RM_STATIC_RESPONSE_FIELDS
    unknown = [name for name in fields if name not in RM_STATIC_RESPONSE_FIELDS]
    if unknown or not fields:
        raise ConfigError(f"response_fields {list(fields)}: choose from {list(RM_STATIC_RESPONSE_FIELDS)}")

    path = Path(path)
    name = source_name or default_source_name(path)
    prompts: list[dict] = []
    samples: list[dict] = []
    skipped = 0
    for index, record in _iter_records(path):
        if max_prompts is not None and len(prompts) >= max_prompts:
            break
        record = record_object(record, path, index)
        if format == "rm_static":
            prompt, responses = _rm_static_record(record, path, index, fields)
        else:
            prompt, responses = _hh_record(record, path, index)
        prompt_id = f"{name}-{index}"
        for origin, response in responses:
            if not response:
                if empty_responses == "error":
                    raise DataError(
                        path, index, origin, "the response is empty (use empty_responses='skip' to drop it)"
                    )
                skipped += 1
                continue
            samples.append(
                {"prompt_id": prompt_id, "prompt": prompt, "response": response, "origin": origin, "sample_index": 0}
            )
        prompts.append({"prompt_id": prompt_id, "prompt": prompt, "source": str(path), "record": index})
    if not prompts:
        raise DataError(path, None, None, "the file has no records")
    if skipped:
        log.warning("%s: dropped %d empty response(s)", path, skipped)
    return prompts, samples


def convert_prompts(
    path: str | os.PathLike,
    format: str,
    prompts_out: str | os.PathLike,
    responses_out: str | os.PathLike | None = None,
    **options,
) -> tuple[list[dict], list[dict]]:
    """`read_prompts`, then write PROMPTS (and, when `responses_out` is given, SAMPLES) Parquet atomically.

    On any error nothing is written and outputs left by an earlier run are removed.
    """
    outputs = [Path(prompts_out)] + ([Path(responses_out)] if responses_out is not None else [])
    for output in outputs:
        if output.resolve() == Path(path).resolve():
            raise ConfigError(f"the output {str(output)!r} is the input file")
    if len(outputs) == 2 and outputs[0].resolve() == outputs[1].resolve():
        raise ConfigError("the prompts and responses outputs are the same file")
    try:
        prompts, samples = read_prompts(path, format, **options)
        write_rows(prompts, outputs[0], PROMPTS)
        if responses_out is not None:
            write_rows(samples, outputs[1], SAMPLES)
    except BaseException:
        for output in outputs:
            output.unlink(missing_ok=True)
        raise
    return prompts, samples


# --- command line ---------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    """Flags of the `convert-prompts` stage."""
    parser.add_argument("--input", required=True, help="raw file: rm-static Parquet/JSONL(.gz) or HH JSONL(.gz)")
    parser.add_argument("--format", required=True, choices=PROMPT_FORMATS, help="the raw file's format")
    parser.add_argument("--prompts", required=True, help="PROMPTS Parquet to write")
    parser.add_argument("--responses", default=None, help="SAMPLES Parquet of the data set's own responses")
    parser.add_argument("--max-prompts", type=int, default=None, help="keep only the first N records")
    parser.add_argument("--source-name", default=None, help="prompt_id prefix (default: the file name up to a dot)")
    parser.add_argument(
        "--response-fields",
        nargs="+",
        default=None,
        choices=RM_STATIC_RESPONSE_FIELDS,
        help="rm_static: which fields become responses (default: all three)",
    )
    parser.add_argument(
        "--empty-responses",
        default="error",
        choices=EMPTY_RESPONSE_POLICIES,
        help="an empty response is an error (default) or is dropped",
    )


def main(args: argparse.Namespace) -> None:
    prompts, samples = convert_prompts(
        args.input,
        args.format,
        args.prompts,
        args.responses,
        max_prompts=args.max_prompts,
        source_name=args.source_name,
        response_fields=args.response_fields,
        empty_responses=args.empty_responses,
    )
    log.info("wrote %d prompts to %s and %d responses to %s", len(prompts), args.prompts, len(samples), args.responses)
