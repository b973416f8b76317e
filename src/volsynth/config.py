"""Settings blocks from recipes: dataclasses built from dicts, unknown keys rejected by name."""

from __future__ import annotations

from typing import TypeVar

from volsynth.errors import ConfigError

T = TypeVar("T")


def settings_from_dict(cls: type[T], data: dict | None, what: str) -> T:
    """``cls(**data)`` for a dataclass, with a clear error that lists unknown and known keys."""
    data = dict(data or {})
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(None, f"unknown {what} setting(s): {', '.join(unknown)}",
                          f"known: {', '.join(sorted(known))}")
    return cls(**data)
