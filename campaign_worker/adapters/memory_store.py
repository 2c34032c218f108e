"""An in-memory document store: the storage of the in-memory adapters (``memory_*.py``).

Like dramatiq's ``StubBroker``, it stands in for the real thing in unit tests and dry
runs: the in-memory repositories implement the same ports as the MongoDB ones, with the
same results for the same calls (``tests/contract`` runs one suite against both), each
operation atomic under one lock, documents copied in and out as a database would.

``MemoryDatabase[name]`` (or ``.name``) is a collection with a small pymongo-like surface
for tests that look at or plant raw documents: equality filters on (dotted) fields, and
``$set`` / ``$inc`` / ``$unset`` / ``$push`` updates. The repositories do not use it:
they work on the documents directly.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from campaign_worker.domain.aliases import Doc

_MISSING = object()


def get_path(doc: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (``a.b``, ``stages.0.name``); ``_MISSING`` if absent."""
    value: Any = doc
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def set_path(doc: Doc, path: str, value: Any) -> None:
    """Set a dotted path, creating documents on the way."""
    *parents, last = path.split(".")
    target: Any = doc
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value


def unset_path(doc: Doc, path: str) -> None:
    *parents, last = path.split(".")
    parent = get_path(doc, ".".join(parents)) if parents else doc
    if isinstance(parent, dict):
        parent.pop(last, None)


def matches(doc: Mapping[str, Any], query: Mapping[str, Any]) -> bool:
    """Equality on each (dotted) field; a list field matches if an element is equal."""
    for path, wanted in query.items():
        if isinstance(wanted, Mapping) and any(str(key).startswith("$") for key in wanted):
            raise NotImplementedError(f"the memory store filters by equality only: {path}")
        found = get_path(doc, path)
        if found is _MISSING:
            found = None
        if found != wanted and not (isinstance(found, list) and wanted in found):
            return False
    return True


def apply_update(doc: Doc, update: Mapping[str, Mapping[str, Any]]) -> None:
    for operator, fields in update.items():
        for path, value in fields.items():
            if operator == "$set":
                set_path(doc, path, copy.deepcopy(value))
            elif operator == "$unset":
                unset_path(doc, path)
            elif operator == "$inc":
                current = get_path(doc, path)
                set_path(doc, path, (0 if current is _MISSING else current) + value)
            elif operator == "$push":
                _push(doc, path, value)
            else:
                raise NotImplementedError(f"the memory store cannot update with {operator}")


def _push(doc: Doc, path: str, value: Any) -> None:
    """``$push`` of one value, or of ``{"$each": [...], "$slice": -n}``."""
    current = get_path(doc, path)
    items = [] if current is _MISSING or current is None else list(current)
    if isinstance(value, Mapping) and "$each" in value:
        items += copy.deepcopy(list(value["$each"]))
        keep = value.get("$slice")
        if keep is not None:
            items = items[keep:] if keep < 0 else items[:keep]
    else:
        items.append(copy.deepcopy(value))
    set_path(doc, path, items)


class MemoryCollection:
    """One collection: documents by ``_id``, in insertion order."""

    def __init__(self, store: MemoryDatabase, name: str) -> None:
        self._store = store
        self.name = name

    @property
    def docs(self) -> dict[Any, Doc]:
        """The stored documents themselves (hold ``lock`` while using them)."""
        return self._store.documents(self.name)

    # ------------------------------------------------------------ a pymongo-like surface

    def find(self, query: Mapping[str, Any] | None = None) -> list[Doc]:
        with self._store.lock:
            return [copy.deepcopy(d) for d in self.docs.values() if matches(d, query or {})]

    def find_one(self, query: Mapping[str, Any] | None = None) -> Doc | None:
        found = self.find(query)
        return found[0] if found else None

    def count_documents(self, query: Mapping[str, Any]) -> int:
        return len(self.find(query))

    def insert_one(self, doc: Mapping[str, Any]) -> None:
        self.insert_many([doc])

    def insert_many(self, docs: Iterable[Mapping[str, Any]]) -> None:
        with self._store.lock:
            for doc in docs:
                if doc["_id"] in self.docs:
                    raise KeyError(f"duplicate _id {doc['_id']!r} in {self.name}")
                self.docs[doc["_id"]] = copy.deepcopy(dict(doc))

    def update_one(self, query: Mapping[str, Any], update: Mapping[str, Any]) -> int:
        return self._update(query, update, many=False)

    def update_many(self, query: Mapping[str, Any], update: Mapping[str, Any]) -> int:
        return self._update(query, update, many=True)

    def delete_one(self, query: Mapping[str, Any]) -> int:
        with self._store.lock:
            for key, doc in self.docs.items():
                if matches(doc, query):
                    del self.docs[key]
                    return 1
        return 0

    def drop_index(self, name: str) -> None:
        """Nothing to drop: raw inserts check ``_id`` only (uniqueness beyond it is each
        repository's own, as ``insert_states``' on (campaign, user))."""
        return None

    def _update(self, query: Mapping[str, Any], update: Mapping[str, Any], *, many: bool) -> int:
        updated = 0
        with self._store.lock:
            for doc in self.docs.values():
                if matches(doc, query):
                    apply_update(doc, update)
                    updated += 1
                    if not many:
                        break
        return updated

    def __iter__(self) -> Iterator[Doc]:
        return iter(self.find())


class MemoryDatabase:
    """Collections by name, behind one lock (each repository operation holds it)."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.lock = threading.RLock()
        self._collections: dict[str, dict[Any, Doc]] = {}

    def documents(self, collection: str) -> dict[Any, Doc]:
        return self._collections.setdefault(collection, {})

    def __getitem__(self, collection: str) -> MemoryCollection:
        return MemoryCollection(self, collection)

    def __getattr__(self, collection: str) -> MemoryCollection:
        if collection.startswith("_"):
            raise AttributeError(collection)
        return MemoryCollection(self, collection)


__all__ = [
    "MemoryCollection",
    "MemoryDatabase",
    "apply_update",
    "get_path",
    "matches",
    "set_path",
    "unset_path",
]
