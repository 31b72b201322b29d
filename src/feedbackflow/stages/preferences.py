"""Raw preference files -> the preference-lists Parquet table (Cheng et al. 2023).

Three raw formats are read, all into rows of `formats.PREFERENCE_LISTS` ({text, score, source, record}):

- "dsp": the Domain-Specific Preference JSON (list of {query, responses: {domain: response}}); for domain D
  each query gives one pair [prompt(D's response), prompt(other response)], scores [1, 0], per other domain.
- "hh": Anthropic HH chosen/rejected JSON lines (plain or gzipped); a line gives [chosen, rejected], [1, 0].
- "text_score": the common format, a JSON list of {text: [str, ...], score: [number, ...]}, read as it is.

Every record is validated before anything is written; bad input raises `DataError` naming the file, the
0-based record index and the field.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from pathlib import Path

from feedbackflow.core.formats import PREFERENCE_LISTS, write_rows
from feedbackflow.core.records import json_kind, load_json_list, read_text, record_object, required_field, string_field
from feedbackflow.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DSP_DOMAINS = ("academy", "business", "entertainment", "literature", "normal")
FORMATS = ("dsp", "hh", "text_score")


def dsp_prompt(query: str, response: str) -> str:
    """Cheng et al. 2023: prompt(r) = "## Human:\\n{query}\\n\\n## Assistant:\\n{r}"."""
    return f"## Human:\n{query}\n\n## Assistant:\n{response}"


# --- reading and checking -------------------------------------------------------------------------


def _score(value, path: Path, index: int, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(path, index, field, f"expected a number, got a JSON {json_kind(value)}")
    score = float(value)
    if not math.isfinite(score):
        raise DataError(path, index, field, f"expected a finite number, got {value!r}")
    return score


def _non_empty(rows: list[dict], path: Path) -> list[dict]:
    if not rows:
        raise DataError(path, None, None, "the file has no records")
    return rows


# --- the three formats ----------------------------------------------------------------------------


def _dsp_record_rows(record, path: Path, index: int, domain: str) -> list[dict]:
    """DSP (Cheng et al. 2023): one query -> [prompt(D), prompt(other)], scores [1, 0], per other domain."""
    record = record_object(record, path, index)
    query = string_field(required_field(record, "query", path, index), path, index, "query")
    responses = required_field(record, "responses", path, index)
    if not isinstance(responses, dict):
        raise DataError(path, index, "responses", f"expected a JSON object, got a JSON {json_kind(responses)}")
    if domain not in responses:
        raise DataError(
            path,
            index,
            f"responses.{domain}",
            f"no response for domain {domain!r}; domains: {list(responses)}",
        )
    chosen = dsp_prompt(query, string_field(responses[domain], path, index, f"responses.{domain}"))
    others = [name for name in responses if name != domain]
    if not others:
        raise DataError(path, index, "responses", f"only domain {domain!r} is present: nothing to compare with")
    source = str(path)
    return [
        {
            "text": [chosen, dsp_prompt(query, string_field(responses[other], path, index, f"responses.{other}"))],
            "score": [1.0, 0.0],
            "source": source,
            "record": index,
        }
        for other in others
    ]


def read_dsp_pairs(path: str | os.PathLike, domain: str) -> list[dict]:
    """Cheng et al. 2023 DSP conversion for `domain`: one pair per (query, other domain).

    The domains are those of each record's `responses` (so custom DSP-format files with other domain names
    work); the other domains come in the record's key order (academy, business, entertainment, literature,
    normal in the public file). `record` is the 0-based index of the query in the file.
    """
    path = Path(path)
    rows: list[dict] = []
    for index, record in enumerate(load_json_list(path)):
        rows.extend(_dsp_record_rows(record, path, index, domain))
    return _non_empty(rows, path)


def _hh_line_row(line: str, path: Path, index: int) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(path, index, None, f"not valid JSON: {error}") from error
    record = record_object(record, path, index)
    chosen = string_field(required_field(record, "chosen", path, index), path, index, "chosen")
    rejected = string_field(required_field(record, "rejected", path, index), path, index, "rejected")
    return {"text": [chosen, rejected], "score": [1.0, 0.0], "source": str(path), "record": index}


def read_hh_pairs(path: str | os.PathLike) -> list[dict]:
    """Cheng et al. 2023 helpful/harmless: HH JSON lines {chosen, rejected} -> [chosen, rejected], scores [1, 0].

    Plain `.jsonl` or gzipped (`.jsonl.gz`, found by the gzip magic bytes). Texts are kept in their
    "\\n\\nHuman: ...\\n\\nAssistant: ..." form. `record` is the 0-based line number; blank lines are skipped.
    """
    path = Path(path)
    rows = [_hh_line_row(line, path, index) for index, line in enumerate(read_text(path).split("\n")) if line.strip()]
    return _non_empty(rows, path)


def _text_score_row(record, path: Path, index: int) -> dict:
    record = record_object(record, path, index)
    texts = required_field(record, "text", path, index)
    scores = required_field(record, "score", path, index)
    if not isinstance(texts, list):
        raise DataError(path, index, "text", f"expected a list of strings, got a JSON {json_kind(texts)}")
    if not isinstance(scores, list):
        raise DataError(path, index, "score", f"expected a list of numbers, got a JSON {json_kind(scores)}")
    if len(texts) < 2:
        raise DataError(path, index, "text", f"{len(texts)} text(s): a preference list needs at least 2")
    if len(scores) != len(texts):
        raise DataError(path, index, "score", f"{len(scores)} scores for {len(texts)} texts")
    return {
        "text": [string_field(text, path, index, f"text[{k}]") for k, text in enumerate(texts)],
        "score": [_score(score, path, index, f"score[{k}]") for k, score in enumerate(scores)],
        "source": str(path),
        "record": index,
    }


def read_text_score(path: str | os.PathLike) -> list[dict]:
    """Cheng et al. 2023 text-score format: a JSON list of {text: [str, ...], score: [number, ...]}, read as it is.

    Ties and any finite scores (such as webgpt's [1.5, 0.5]) are kept; other keys of a record are ignored.
    """
    path = Path(path)
    rows = [_text_score_row(record, path, index) for index, record in enumerate(load_json_list(path))]
    return _non_empty(rows, path)


def read_preferences(path: str | os.PathLike, format: str, domain: str | None = None) -> list[dict]:
    """Read a raw preference file of `format` ("dsp", "hh" or "text_score"); `domain` is needed iff "dsp"."""
    if format not in FORMATS:
        raise ConfigError(f"unknown preference format {format!r}; known formats: {list(FORMATS)}")
    if format == "dsp":
        if not domain:
            raise ConfigError(f"format 'dsp' needs a domain (such as one of {list(DSP_DOMAINS)})")
        return read_dsp_pairs(path, domain)
    if domain is not None:
        raise ConfigError(f"a domain ({domain!r}) is only for format 'dsp', not {format!r}")
    if format == "hh":
        return read_hh_pairs(path)
    return read_text_score(path)


def count_pairs(rows: list[dict]) -> int:
    """The number of pairs with different scores in the lists (the pairs the DSP loss and accuracy use)."""
    total = 0
    for row in rows:
        scores = row["score"]
        total += sum(1 for i, a in enumerate(scores) for b in scores[i + 1 :] if a != b)
    return total


def convert_preferences(
    path: str | os.PathLike, format: str, output: str | os.PathLike, domain: str | None = None
) -> list[dict]:
    """Read and validate every record of `path`, then write the preference-lists Parquet `output` atomically.

    On any error nothing is written, and an `output` left by an earlier run is removed, so a failed conversion
    leaves nothing that looks finished. Returns the rows written.
    """
    output = Path(output)
    if output.resolve() == Path(path).resolve():
        raise ConfigError(f"the output {str(output)!r} is the input file")
    try:
        rows = read_preferences(path, format, domain)
        write_rows(rows, output, PREFERENCE_LISTS)
    except BaseException:
        output.unlink(missing_ok=True)
        raise
    return rows


# --- command line ---------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    """Flags of the `convert-preferences` stage."""
    parser.add_argument("--input", required=True, help="the raw preference file")
    parser.add_argument("--format", required=True, choices=FORMATS, help="the raw file's format")
    parser.add_argument(
        "--domain",
        default=None,
        help=f"for --format dsp: the preferred domain (such as {', '.join(DSP_DOMAINS)})",
    )
    parser.add_argument("--output", required=True, help="the preference-lists Parquet file to write")


def main(args: argparse.Namespace) -> None:
    """Run the conversion and log what was written."""
    rows = convert_preferences(args.input, args.format, args.output, domain=args.domain)
    log.info(
        "wrote %d preference lists (%d pairs with different scores) from %s to %s",
        len(rows),
        count_pairs(rows),
        args.input,
        args.output,
    )
