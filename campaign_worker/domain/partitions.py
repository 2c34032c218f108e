"""Partitions of a campaign's conversations: what keeps processing workers apart.

Every conversation carries a fixed ``partition`` bucket in ``[0, PARTITIONS)``, a hash of
its id written when it is created. A processing task works on one range of buckets
(``partition`` ``i`` of ``partitions`` equal ranges), so tasks on different ranges never
read the same documents. Two tasks on the same range (a doubled beat) may: then the
version compare-and-set lets one write land and the other count conflicts.

Documents written before partitions existed have no bucket: they belong to the first
range of any split, so they are still processed (and get their bucket on their next
write).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from campaign_worker.domain.errors import InvalidInputError

# Fixed forever: a stored bucket must mean the same range to every release. 2^10 buckets
# allow up to 1,024 parallel ranges per campaign.
PARTITIONS = 1024


def partition_of(conversation_id: str) -> int:
    """The bucket of a conversation (stable across processes, unlike ``hash``)."""
    return zlib.crc32(conversation_id.encode()) % PARTITIONS


@dataclass(frozen=True)
class PartitionRange:
    """Range ``index`` of ``count`` equal ranges of buckets: ``[low, high)``."""

    index: int = 0
    count: int = 1

    @classmethod
    def of(cls, partition: object = None, partitions: object = None) -> PartitionRange:
        """The range named by task arguments; both None is the whole set. Anything else
        malformed is an ``InvalidInputError`` saying what is expected."""
        if partition is None and partitions is None:
            return cls()
        if partition is None or partitions is None:
            raise InvalidInputError("give partition and partitions together, or neither")
        for name, value in (("partition", partition), ("partitions", partitions)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInputError(f"{name} must be an integer, got {type(value).__name__}")
        assert isinstance(partition, int) and isinstance(partitions, int)
        if not 1 <= partitions <= PARTITIONS:
            raise InvalidInputError(f"partitions must be between 1 and {PARTITIONS}")
        if not 0 <= partition < partitions:
            raise InvalidInputError(f"partition must be between 0 and {partitions - 1}")
        return cls(partition, partitions)

    @property
    def low(self) -> int:
        return self.index * PARTITIONS // self.count

    @property
    def high(self) -> int:
        return (self.index + 1) * PARTITIONS // self.count

    @property
    def whole(self) -> bool:
        return self.count == 1

    @property
    def key(self) -> str:
        """A name for the range (a field name in the metrics document's markers)."""
        return f"{self.index}of{self.count}"

    def split(self) -> tuple[PartitionRange, PartitionRange]:
        """Its two halves (they cover exactly this range)."""
        return (
            PartitionRange(2 * self.index, 2 * self.count),
            PartitionRange(2 * self.index + 1, 2 * self.count),
        )

    def as_kwargs(self) -> dict[str, int]:
        return {} if self.whole else {"partition": self.index, "partitions": self.count}


__all__ = ["PARTITIONS", "PartitionRange", "partition_of"]
