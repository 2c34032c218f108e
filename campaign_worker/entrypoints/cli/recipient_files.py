"""Read an audience file row by row: CSV (``user_id``, ``timezone``, other columns become
attributes) or JSON Lines (one ``Recipient`` object a line). Yields ``(line, row)``, the
row being the reason when it could not be parsed; never reads the whole file."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

Row = tuple[int, dict[str, Any] | str]
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
RESERVED = ("user_id", "timezone")


def counted(handle: TextIO, on_bytes: Callable[[int], None]) -> Iterator[str]:
    """The lines of ``handle``, reporting each one's size (for a progress bar)."""
    for line in handle:
        on_bytes(len(line.encode("utf-8")))
        yield line


def read_csv(lines: Iterator[str]) -> Iterator[Row]:
    reader = csv.DictReader(lines, strict=True)
    try:
        fieldnames = reader.fieldnames
    except csv.Error as exc:
        yield 1, f"the header is not valid CSV: {exc}"
        return
    if fieldnames is None or "user_id" not in fieldnames:
        yield 1, "the header has no user_id column"
        return
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, f"not valid CSV: {exc}"
            continue
        yield reader.line_num, _csv_row(record)


def _csv_row(record: dict[str | Any, Any]) -> dict[str, Any] | str:
    if None in record:  # more cells than the header has columns
        return f"{len(record) - 1 + len(record[None])} cells, the header has {len(record) - 1}"
    if any(value is None for value in record.values()):
        return "fewer cells than the header has columns"
    row: dict[str, Any] = {"user_id": record["user_id"]}
    if record.get("timezone"):
        row["timezone"] = record["timezone"]
    row["attributes"] = {key: value for key, value in record.items() if key not in RESERVED}
    return row


def read_jsonl(lines: Iterator[str]) -> Iterator[Row]:
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield number, f"not JSON: {exc}"
            continue
        yield number, value if isinstance(value, dict) else "not a JSON object"


def read_rows(path: Path, handle: TextIO, on_bytes: Callable[[int], None]) -> Iterator[Row]:
    """Rows of ``handle`` (opened from ``path``) by the file's suffix."""
    lines = counted(handle, on_bytes)
    if FORMATS[path.suffix.lower()] == "csv":
        return read_csv(lines)
    return read_jsonl(lines)
