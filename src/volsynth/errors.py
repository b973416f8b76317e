"""One exception hierarchy: every error a user can cause names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class VolsynthError(Exception):
    """Base class; the CLI prints ``error: <file>: <problem> (<hint>)`` and exits with code 2."""

    def __init__(self, path: str | Path | None, problem: str, hint: str | None = None) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """The message as one line: ``<file>: <problem> (<hint>)``."""
        text = f"{self.path}: {self.problem}" if self.path else self.problem
        if self.hint:
            text += f" ({self.hint})"
        return " ".join(text.split())


class ReadError(VolsynthError):
    """A file is missing, unreadable, truncated or of an unknown format."""


class WriteError(VolsynthError):
    """An output could not be written, or would overwrite something it must not."""


class GeometryError(VolsynthError):
    """An affine, spacing or orientation is unusable."""


class DatasetError(VolsynthError):
    """A dataset folder breaks the dataset contract."""


class PlanError(VolsynthError):
    """A preprocessing plan is missing, invalid, or does not fit the data."""


class ConfigError(VolsynthError):
    """A command-line option or configuration value is invalid."""
