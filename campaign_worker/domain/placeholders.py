"""Message texts' placeholders: only ``{attribute}`` (optionally ``!s``/``!r``/``!a``), so
rendering reaches nothing but the recipient's fields."""

from __future__ import annotations

import string


def placeholder_problem(text: str) -> str | None:
    """Why ``text`` is not a valid message text (None: it is). A placeholder is
    ``{attribute}``, optionally with a conversion (``!s``, ``!r``, ``!a``): no attribute or
    index access (``{first_name.__class__}``, ``{attributes[0]}``), no positional field,
    and no format spec (``{name:>99999999}`` pads without bound, and a spec's nested
    ``{...}`` would be looked up too), so rendering reaches nothing but the recipient's
    fields."""
    try:
        fields = [
            (name, spec, conversion)
            for _, name, spec, conversion in string.Formatter().parse(text)
            if name is not None
        ]
    except ValueError as exc:
        return f"bad placeholder syntax: {exc}"
    for name, spec, conversion in fields:
        # "{}" and "{0}" are positional: rendering them would raise at send time.
        if not name.isidentifier():
            return f"placeholder {{{name}}} must be a plain attribute name"
        if conversion not in (None, "r", "s", "a"):
            return f"placeholder {{{name}!{conversion}}}: unknown conversion"
        if spec:
            return f"placeholder {{{name}:...}}: format specs are not supported"
    return None


def check_placeholders(value: str) -> str:
    problem = placeholder_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


__all__ = ["check_placeholders", "placeholder_problem"]
