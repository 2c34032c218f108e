"""Import an audience into a recipients collection in batches (never all in memory).

The caller reads the file and hands over ``(line, row)`` pairs, ``row`` being a mapping
or, for a row that could not even be parsed, the reason. Each valid row becomes a
``Recipient`` document tagged with the ``import_id``; invalid ones are skipped and
reported with their line number.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import ValidationError

from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.campaign_documents import Recipient

Row = tuple[int, Doc | str]
MAX_REPORTED = 20


class RecipientSink(Protocol):
    def insert_batch(self, docs: Sequence[Doc]) -> int: ...


@dataclass
class ImportResult:
    import_id: str
    imported: int = 0
    skipped: int = 0
    # (line, reason) of the first MAX_REPORTED skipped rows.
    errors: list[tuple[int, str]] = field(default_factory=list)

    def skip(self, line: int, reason: str) -> None:
        self.skipped += 1
        if len(self.errors) < MAX_REPORTED:
            self.errors.append((line, reason))


def _reason(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'row'}: {error['msg']}"
        for error in exc.errors()
    )


def import_recipients(
    rows: Iterable[Row],
    sink: RecipientSink,
    import_id: str,
    batch_size: int = 1000,
    on_batch: Callable[[ImportResult], None] | None = None,
) -> ImportResult:
    """Validate and write ``rows`` in batches of ``batch_size``; ``on_batch`` after each."""
    result = ImportResult(import_id)
    batch: list[Doc] = []
    for line, row in rows:
        if isinstance(row, str):
            result.skip(line, row)
            continue
        try:
            recipient = Recipient.model_validate(row)
        except ValidationError as exc:
            result.skip(line, _reason(exc))
            continue
        # The line number in the _id keeps file order and makes a re-run a no-op.
        batch.append({"_id": f"{import_id}:{line:012d}", "import_id": import_id,
                      **recipient.model_dump()})  # fmt: skip
        if len(batch) >= batch_size:
            _flush(batch, sink, result, on_batch)
    _flush(batch, sink, result, on_batch)
    return result


def _flush(
    batch: list[Doc],
    sink: RecipientSink,
    result: ImportResult,
    on_batch: Callable[[ImportResult], None] | None,
) -> None:
    if batch:
        sink.insert_batch(batch)
        result.imported += len(batch)
        batch.clear()
    if on_batch is not None:
        on_batch(result)
