"""import_recipients: batches, skipped rows by line, and streaming (no whole-file lists)."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import Any

from campaign_worker.entrypoints.cli.recipient_files import read_csv
from campaign_worker.service.recipient_import import MAX_REPORTED, Row, import_recipients


class Sink:
    def __init__(self) -> None:
        self.batches: list[int] = []

    def insert_batch(self, docs: Sequence[dict[str, Any]]) -> int:
        self.batches.append(len(docs))
        return len(docs)


def test_writes_in_batches_while_reading() -> None:
    sink = Sink()
    read = 0

    def rows() -> Iterator[Row]:
        nonlocal read
        for line in range(2, 25_002):
            read += 1
            # Never more than one batch ahead of what was written.
            assert read - sum(sink.batches) <= 1_000
            yield line, {"user_id": f"u-{line}"}

    result = import_recipients(rows(), sink, "imp", batch_size=1_000)
    assert result.imported == 25_000 and result.skipped == 0
    assert sink.batches == [1_000] * 25


def test_invalid_rows_are_reported_with_their_line() -> None:
    csv_text = "user_id,timezone,plan\nu-1,UTC,pro\n,UTC,x\nu-3,Nowhere/Land,y\n" + "".join(
        f",UTC,{i}\n" for i in range(30)
    )
    result = import_recipients(read_csv(iter(io.StringIO(csv_text))), Sink(), "imp")
    assert result.imported == 1 and result.skipped == 32
    assert result.errors[0][0] == 3 and "user_id" in result.errors[0][1]
    assert result.errors[1][0] == 4 and "timezone" in result.errors[1][1]
    assert len(result.errors) == MAX_REPORTED  # the count stays exact beyond the samples
