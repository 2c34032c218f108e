"""Type aliases shared across the layers, defined once.

``Doc`` is a document as MongoDB stores it or as a JSON interface carries it: the seed's
``Dict`` parameters and results (``CampaignManager``'s public methods, the conversation
repository's seed methods), task results, and what the adapters read and write. Ports do
not take or return it: they speak the domain's models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Any: a document's values are whatever BSON or JSON holds (nested documents, lists,
# dates, numbers); its shape is checked where it is parsed into a domain model.
Doc = dict[str, Any]

# Recipient attributes (placeholders, addresses): free-form values from the audience.
Attributes = Mapping[str, object]

__all__ = ["Attributes", "Doc"]
