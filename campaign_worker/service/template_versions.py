"""Which template a campaign or conversation runs on: its pinned version.

``TemplateVersions`` registers a template file's content as a version (at campaign
create, at worker start, or when a migration asks for the current file) and resolves
``(template_id, version)`` to a ``Template``, cached in-process: versions never change.
Without a version (documents from before versions) the template file applies.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from campaign_worker.domain.errors import TemplateNotFoundError
from campaign_worker.domain.templates import CampaignTypeTemplate, Template
from campaign_worker.domain.versions import TemplateVersion
from campaign_worker.service.ports import Clock, TemplateSource, TemplateVersionRepository

Pair = tuple[Template, CampaignTypeTemplate]


def type_of(template: Template, campaign_type: str, label: str) -> CampaignTypeTemplate:
    found = template.for_type(campaign_type)
    if found is None:
        raise TemplateNotFoundError(
            f"template {label} has no campaign_type {campaign_type!r}; "
            f"known: {sorted(template.campaign_types)}"
        )
    return found


class TemplateVersions:
    """Stored template versions over a repository, with an in-process cache."""

    def __init__(
        self, repository: TemplateVersionRepository, files: TemplateSource, clock: Clock
    ) -> None:
        self.repository = repository
        self._files = files
        self._clock = clock
        self._lock = threading.Lock()
        self._versions: dict[tuple[str, int], tuple[TemplateVersion, Template]] = {}
        # The version each loaded file template was registered as (by object: a reload
        # loads new objects, which are registered again; unchanged content finds its own).
        self._registered: dict[int, tuple[Template, TemplateVersion]] = {}

    def current(self, template_id: str) -> TemplateVersion:
        """The version of the template file as loaded now, registered if new."""
        template = self._files.get_template(template_id)
        known = self._registered.get(id(template))
        if known is not None and known[0] is template:
            return known[1]
        stored = self.repository.register(template, self._clock.now(), source="file")
        with self._lock:
            self._registered[id(template)] = (template, stored)
            self._versions.setdefault((template_id, stored.version), (stored, template))
        return stored

    def get(self, template_id: str, version: int) -> tuple[TemplateVersion, Template]:
        """A stored version and its template; TemplateNotFoundError if there is none."""
        cached = self._versions.get((template_id, version))
        if cached is not None:
            return cached
        stored = self.repository.get(template_id, version)
        if stored is None:
            raise TemplateNotFoundError(f"template {template_id!r} has no version {version}")
        entry = (stored, stored.template())
        with self._lock:
            return self._versions.setdefault((template_id, version), entry)

    def template(self, template_id: str, version: int | None) -> Template:
        if version is None:
            return self._files.get_template(template_id)
        return self.get(template_id, version)[1]

    def list(self, template_id: str) -> list[TemplateVersion]:
        return self.repository.list(template_id)


@dataclass(frozen=True)
class CampaignTemplates:
    """A campaign's template and campaign type at its pin, and a conversation's own
    version when it has another (half way through a migration)."""

    pinned: Pair
    version: int | None
    resolve: Callable[[int], Pair]

    def __call__(self, version: int | None) -> Pair:
        if version is None or version == self.version:
            return self.pinned
        return self.resolve(version)


__all__ = ["CampaignTemplates", "Pair", "TemplateVersions", "type_of"]
