"""Template versions: a template's content, its hash and the version number it got.

A version is immutable: its content is the template as validated (a canonical JSON
form), so the same file formatted differently is the same version. Ids are
``<template_id>@<hash prefix>``: two workers registering the same content compute the
same id, and a unique index on (template_id, version) gives each content one number.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from campaign_worker.domain.documents import UtcDatetime
from campaign_worker.domain.templates import Template

HASH_PREFIX = 16  # hex characters of the content hash in a version's id


def content_of(template: Template) -> dict[str, Any]:
    """The template as JSON-ready data that validates back to an equal template."""
    return template.model_dump(mode="json", exclude_none=True)


def content_hash(template: Template) -> str:
    """sha256 of the canonical JSON of the template's content."""
    encoded = json.dumps(content_of(template), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).hexdigest()


def version_id(template_id: str, digest: str) -> str:
    return f"{template_id}@{digest[:HASH_PREFIX]}"


class TemplateVersion(BaseModel):
    """One stored version (collection ``template_versions``)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    id: str = Field(alias="_id")
    template_id: str
    version: int = Field(ge=1)
    content_hash: str
    content: dict[str, Any]
    created_at: UtcDatetime
    # Where the content came from when it was registered (a file path, "<packaged>/...").
    source: str = ""

    def template(self) -> Template:
        return Template.model_validate(self.content)

    def to_mongo(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="python")

    @property
    def label(self) -> str:
        return f"{self.template_id}@{self.version}"


def new_version(
    template: Template, version: int, now: datetime, source: str = ""
) -> TemplateVersion:
    digest = content_hash(template)
    return TemplateVersion(
        id=version_id(template.template_id, digest),
        template_id=template.template_id,
        version=version,
        content_hash=digest,
        content=content_of(template),
        created_at=now,
        source=source,
    )


__all__ = ["TemplateVersion", "content_hash", "content_of", "new_version", "version_id"]
