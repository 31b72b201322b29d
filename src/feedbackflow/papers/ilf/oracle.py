"""The oracle of a synthetic ILF world, and the rules that score summaries against it (tiny scale only).

A world that knows the truth behind each post writes `oracle.jsonl`: per post its key facts ({kind: value}), for a
kind the other values a summary must not name instead (`alternatives`, optional), and the flaw its feedback names
(required and forbidden words, or null). ILF's evaluation reads it for the oracle win rate and the refinements' fix
rate: a summary states a fact when it names the value and none of its alternatives (whole words, any case).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from feedbackflow.errors import DataError

_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _mentions(words: list[str], phrase: str) -> bool:
    """True when the words of `phrase` occur in `words` as a contiguous run (case-insensitive, whole words)."""
    target = _words(phrase)
    n = len(target)
    return n > 0 and any(words[i : i + n] == target for i in range(len(words) - n + 1))


def fact_is_stated(summary: str, value: str, alternatives: Sequence[str] = ()) -> bool:
    """The summary states a fact correctly: it mentions `value` and none of its `alternatives` (a summary naming
    another person, even beside the right one, gets the name wrong). A fact without alternatives only needs `value`
    mentioned."""
    words = _words(summary)
    if not _mentions(words, value):
        return False
    others = [other for other in alternatives if other.lower() != value.lower()]
    return not any(_mentions(words, other) for other in others)


def summary_quality(
    summary: str, facts: Mapping[str, str], alternatives: Mapping[str, Sequence[str]] | None = None
) -> float:
    """The fraction of the key facts ({kind: value}) that the summary states correctly (see `fact_is_stated`), with
    each kind's `alternatives` ({kind: [values]}, as the oracle lists them)."""
    if not facts:
        raise ValueError("summary_quality needs at least one fact")
    alternatives = alternatives or {}
    stated = [fact_is_stated(summary, value, alternatives.get(kind, ())) for kind, value in facts.items()]
    return sum(stated) / len(facts)


def fixes_flaw(summary: str, flaw: Mapping) -> bool:
    """True when the summary contains every `required` word (phrase) of the flaw and none of its `forbidden` ones."""
    words = _words(summary)
    required = all(_mentions(words, word) for word in flaw["required"])
    return required and not any(_mentions(words, word) for word in flaw["forbidden"])


def load_oracle(path: str | os.PathLike) -> dict[tuple[str, str], dict]:
    """oracle.jsonl -> {(split, id): {"facts", "alternatives", "flaw"}}; DataError names the bad line."""
    text = os.fspath(path)
    oracle: dict[tuple[str, str], dict] = {}
    for index, line in enumerate(Path(text).read_text(encoding="utf-8").split("\n")):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(text, index, None, f"not valid JSON: {error}") from error
        if not isinstance(entry, dict):
            raise DataError(text, index, None, "expected a JSON object")
        for name in ("split", "id", "facts", "flaw"):
            if name not in entry:
                raise DataError(text, index, name, "missing")
        if not isinstance(entry["facts"], dict) or not entry["facts"]:
            raise DataError(text, index, "facts", "expected a non-empty object")
        alternatives = entry.get("alternatives", {})
        if not isinstance(alternatives, dict) or not all(
            isinstance(values, list) and all(isinstance(v, str) for v in values) for values in alternatives.values()
        ):
            raise DataError(text, index, "alternatives", "expected an object of string lists")
        flaw = entry["flaw"]
        if flaw is not None and not (isinstance(flaw, dict) and {"type", "required", "forbidden"} <= set(flaw)):
            raise DataError(text, index, "flaw", "expected null or an object with type, required and forbidden")
        key = (entry["split"], entry["id"])
        if key in oracle:
            raise DataError(text, index, "id", f"duplicate post {key}")
        oracle[key] = {"facts": entry["facts"], "alternatives": alternatives, "flaw": flaw}
    return oracle
