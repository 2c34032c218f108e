"""Template versions (collection ``template_versions``): one document per content of a
template, ``_id`` ``<template_id>@<hash>``, numbered 1, 2, ... per template by a unique
index, so concurrent registrations of one content make one version."""

from __future__ import annotations

from datetime import datetime

from pymongo import ASCENDING, DESCENDING
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from campaign_worker.adapters.mongo import translate_errors
from campaign_worker.domain.aliases import Doc
from campaign_worker.domain.errors import ConcurrencyConflictError
from campaign_worker.domain.templates import Template
from campaign_worker.domain.versions import TemplateVersion, new_version, version_id

TEMPLATE_VERSIONS = "template_versions"
_ATTEMPTS = 16


class MongoTemplateVersionRepository:
    def __init__(self, db: Database[Doc]) -> None:
        self._collection: Collection[Doc] = db[TEMPLATE_VERSIONS]

    @translate_errors
    def initialize(self) -> None:
        self._collection.create_index(
            [("template_id", ASCENDING), ("version", ASCENDING)],
            name="template_version",
            unique=True,
        )

    @translate_errors
    def register(self, template: Template, now: datetime, source: str = "") -> TemplateVersion:
        """The stored version of ``template``'s content, registered with the next number
        if new. Two writers racing: the same content wins once (same ``_id``); different
        contents each get their own number (the unique index refuses a taken one)."""
        probe = new_version(template, 1, now, source)
        for _ in range(_ATTEMPTS):
            found = self._collection.find_one({"_id": probe.id})
            if found is not None:
                return TemplateVersion.model_validate(found)
            last = self._collection.find_one(
                {"template_id": template.template_id},
                {"version": 1},
                sort=[("version", DESCENDING)],
            )
            number = 1 if last is None else int(last["version"]) + 1
            candidate = probe.model_copy(update={"version": number})
            try:
                self._collection.insert_one(candidate.to_mongo())
            except DuplicateKeyError:
                continue  # this content, or this number, was taken meanwhile: look again
            return candidate
        raise ConcurrencyConflictError(
            f"template {template.template_id!r}: could not register its version; try again"
        )

    @translate_errors
    def get(self, template_id: str, version: int) -> TemplateVersion | None:
        doc = self._collection.find_one({"template_id": template_id, "version": version})
        return None if doc is None else TemplateVersion.model_validate(doc)

    @translate_errors
    def by_hash(self, template_id: str, digest: str) -> TemplateVersion | None:
        doc = self._collection.find_one({"_id": version_id(template_id, digest)})
        return None if doc is None else TemplateVersion.model_validate(doc)

    @translate_errors
    def list(self, template_id: str) -> list[TemplateVersion]:
        cursor = self._collection.find({"template_id": template_id}).sort("version", ASCENDING)
        return [TemplateVersion.model_validate(doc) for doc in cursor]


__all__ = ["TEMPLATE_VERSIONS", "MongoTemplateVersionRepository"]
