"""Settings blocks from recipes: dataclasses built from dicts, unknown keys rejected by name."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml

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


def parse_floats(text: str | None, what: str, count: int | None = None) -> list[float] | None:
    """``"1.5"`` or ``"1,2,3"`` -> floats; one value is repeated to ``count``; None stays None."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise ConfigError(None, f"{what} must be comma-separated numbers, got '{text}'") from exc
    if count is not None and len(values) == 1:
        values = values * count
    if count is not None and len(values) != count:
        raise ConfigError(None, f"{what} needs 1 or {count} values, got '{text}'")
    return values


def read_yaml(path: str | Path, what: str) -> object:
    """The parsed contents of a YAML file (None when empty); a missing, unreadable or invalid file is one ConfigError
    naming it (``what``: e.g. "recipe", "study file")."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, f"{what} not found")
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, f"cannot read {what} ({getattr(exc, 'strerror', None) or exc})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(path, f"invalid YAML ({' '.join(str(exc).split())})") from exc
