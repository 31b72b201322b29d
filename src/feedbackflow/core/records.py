"""Reading raw input files record by record, with errors that name the file, record and field.

Gzip or plain text, JSON lists and JSON lines, typed fields, and hub ids told from file names. Every paper's
converter reads its raw files through these.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from pathlib import Path

from feedbackflow.errors import DataError

_GZIP_MAGIC = b"\x1f\x8b"


def read_text(path: Path) -> str:
    """The file's text as UTF-8; gzip (found by its magic bytes, whatever the suffix) is decompressed."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(path, None, None, f"cannot read the file: {error.strerror or error}") from error
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(path, None, None, f"not a valid gzip file: {error}") from error
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(path, None, None, f"not valid UTF-8: {error}") from error


def load_json_list(path: Path) -> list:
    """A whole-file JSON list of records (the DSP and text-score formats)."""
    try:
        records = json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise DataError(path, None, None, f"not valid JSON: {error}") from error
    if not isinstance(records, list):
        raise DataError(path, None, None, f"expected a JSON list of records, got a JSON {json_kind(records)}")
    return records


def json_kind(value) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def record_object(record, path: Path, index: int) -> dict:
    if not isinstance(record, dict):
        raise DataError(path, index, None, f"expected a JSON object, got a JSON {json_kind(record)}")
    return record


def required_field(record: dict, name: str, path: Path, index: int):
    if name not in record:
        raise DataError(path, index, name, f"missing; the record has keys {sorted(record)}")
    return record[name]


def string_field(value, path: Path, index: int, field: str) -> str:
    """A text must be a string that Parquet can store (UTF-8 encodable: no lone surrogates)."""
    if not isinstance(value, str):
        raise DataError(path, index, field, f"expected a string, got a JSON {json_kind(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise DataError(path, index, field, f"not valid Unicode: {error}") from error
    return value


def iter_json_lines(path: Path):
    """(record index, parsed object) for each non-blank line; the index is the 0-based line number."""
    for index, line in enumerate(read_text(path).split("\n")):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(path, index, None, f"not valid JSON: {error}") from error
        yield index, record_object(record, path, index)


def default_source_name(path: str | os.PathLike) -> str:
    """The file name up to its first dot: "harmless-base-test.jsonl.gz" -> "harmless-base-test"."""
    name = Path(path).name
    return name.split(".", 1)[0] or name


_HUB_ID = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")


_FILE_SUFFIXES = (".jsonl", ".json", ".gz", ".parquet", ".txt")


def is_hub_id(name: str) -> bool:
    """True for "owner/name" ids that are not file names (a missing "data/rtp.jsonl" is a missing file)."""
    return bool(_HUB_ID.fullmatch(name)) and not name.lower().endswith(_FILE_SUFFIXES)
