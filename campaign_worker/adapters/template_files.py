"""The campaign templates, loaded from YAML/JSON files: the packaged defaults plus a
directory (``CAMPAIGN_TEMPLATES_DIR``). ``TemplateFiles`` is the seed's ``ConfigManager``
(the manager's ``config_manager``), and still answers to that name."""

from __future__ import annotations

import json
import threading
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from campaign_worker.domain.errors import InvalidTemplateError, TemplateNotFoundError
from campaign_worker.domain.templates import CampaignTypeTemplate, Template

_SUFFIXES = {".yaml", ".yml", ".json"}


def _describe(exc: ValidationError, raw: Any, source: str) -> str:
    problems = []
    for error in exc.errors():
        loc = list(error["loc"])
        where = ".".join(str(part) for part in loc) or "<root>"
        stage_label = ""
        # loc looks like ("campaign_types", "sales", "stages", 0, "advance_when", ...)
        if len(loc) >= 4 and loc[0] == "campaign_types" and loc[2] == "stages":
            try:
                stage_name = raw["campaign_types"][loc[1]]["stages"][loc[3]].get("name", "?")
            except (KeyError, IndexError, TypeError, AttributeError):
                stage_name = "?"
            stage_label = f"stage {stage_name!r} "
        problems.append(f"{stage_label}field {where}: {error['msg']}")
    return f"invalid template {source}: " + "; ".join(problems)


def parse_template(text: str, source: str) -> Template:
    """Parse one template file's text; errors name the file, stage and field."""
    try:
        raw = json.loads(text) if source.endswith(".json") else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise InvalidTemplateError(f"invalid template {source}: not parseable: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidTemplateError(f"invalid template {source}: top level must be a mapping")
    try:
        return Template.model_validate(raw)
    except ValidationError as exc:
        raise InvalidTemplateError(_describe(exc, raw, source)) from exc


class TemplateFiles:
    """Template lookup by id. Thread-safe; templates are immutable once loaded."""

    def __init__(self, templates_dir: Path | None = None, *, include_packaged: bool = True):
        self._dir = templates_dir
        self._include_packaged = include_packaged
        self._lock = threading.Lock()
        self._templates: dict[str, Template] = {}
        self.reload()

    def reload(self) -> None:
        """(Re)load every template; on any invalid file raise and keep the old set."""
        loaded: dict[str, Template] = {}
        if self._include_packaged:
            package = resources.files("campaign_worker") / "templates"
            for entry in sorted(package.iterdir(), key=lambda item: item.name):
                if Path(entry.name).suffix in _SUFFIXES:
                    template = parse_template(entry.read_text("utf-8"), f"<packaged>/{entry.name}")
                    loaded[template.template_id] = template
        if self._dir is not None:
            if not self._dir.is_dir():
                raise InvalidTemplateError(f"templates directory not found: {self._dir}")
            seen: dict[str, Path] = {}
            for path in sorted(self._dir.iterdir()):
                if path.suffix not in _SUFFIXES or not path.is_file():
                    continue
                template = parse_template(path.read_text("utf-8"), str(path))
                if template.template_id in seen:
                    raise InvalidTemplateError(
                        f"invalid template {path}: template_id {template.template_id!r} "
                        f"already defined in {seen[template.template_id]}"
                    )
                seen[template.template_id] = path
                loaded[template.template_id] = template
        with self._lock:
            self._templates = loaded

    def add_template(self, template: Template) -> None:
        """Register a template built in code (tests, embedding)."""
        with self._lock:
            self._templates = {**self._templates, template.template_id: template}

    def template_ids(self) -> list[str]:
        return sorted(self._templates)

    def get_template(self, template_id: str) -> Template:
        try:
            return self._templates[template_id]
        except KeyError:
            raise TemplateNotFoundError(
                f"unknown template_id {template_id!r}; known: {self.template_ids()}"
            ) from None

    def get_campaign_type(self, template_id: str, campaign_type: str) -> CampaignTypeTemplate:
        template = self.get_template(template_id)
        found = template.for_type(campaign_type)
        if found is None:
            raise TemplateNotFoundError(
                f"template {template_id!r} has no campaign_type {campaign_type!r}; "
                f"known: {sorted(template.campaign_types)}"
            )
        return found


#: The seed's name for it (``CampaignManager.config_manager: ConfigManager``).
ConfigManager = TemplateFiles

__all__ = ["ConfigManager", "TemplateFiles", "parse_template"]
