"""JSON documents: read with one-line errors naming the file, written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from volsynth.errors import ReadError, VolsynthError
from volsynth.io.atomic import atomic_output


def read_json(path: str | Path, name: str | None = None, error: type[VolsynthError] = ReadError,
              missing: str = "not found", hint: str | None = None, kind: type | None = dict) -> Any:
    """The JSON document at ``path`` (or ``path/name`` when ``path`` is a folder).

    A missing file raises ``error(path, missing, hint)``; invalid JSON, or a document that is not of ``kind``
    (a JSON object by default; None accepts any), raises ``error`` naming the file.
    """
    path = Path(path)
    if name is not None and path.is_dir():
        path = path / name
    if not path.is_file():
        raise error(path, missing, hint)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(path, f"invalid JSON ({exc})") from exc
    if kind is not None and not isinstance(data, kind):
        raise error(path, f"expected a JSON {'object' if kind is dict else kind.__name__}")
    return data


def write_json(path: str | Path, data: Any) -> Path:
    """Write a JSON document atomically (indented, keys in insertion order)."""
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    return path
