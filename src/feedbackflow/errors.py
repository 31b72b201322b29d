"""Errors that name the file, record and field of bad input."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data: names the file, the record index (0-based) and the field at fault."""

    def __init__(self, path: str, record: int | None, field: str | None, message: str):
        self.path = str(path)
        self.record = record
        self.field = field
        self.message = message
        where = [self.path]
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{': '.join(where)}: {message}")


class ConfigError(ValueError):
    """Bad configuration: names the key at fault."""
