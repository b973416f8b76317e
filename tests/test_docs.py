"""The documentation stays product documentation: a short README, no development history or outside paths in the
tracked files users read, and no broken relative links."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()

# Built from pieces so that this file does not match its own patterns.
FORBIDDEN = {
    "a path outside the repository": re.compile(re.escape("../" + "shared")),
    "a paper named by its file number": re.compile("seed" + r" 00\d|" + "seed" + r"s 00", re.IGNORECASE),
    "development history": re.compile("sess" + r"ion\s+\d", re.IGNORECASE),
}
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def _tracked_files() -> list[Path]:
    """Files tracked by git, outside research/ (experiment history may name what it likes)."""
    try:
        listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    paths = [ROOT / name for name in listing.decode().split("\0") if name]
    return [p for p in paths if p.is_file() and not p.relative_to(ROOT).parts[0] == "research" and p != THIS]


def _text(path: Path) -> str | None:
    """The file's text, or None for a binary file."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _user_pages() -> list[Path]:
    """README, docs pages, model cards and the research overview."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("models/*/MODEL_CARD.md"))]
    research = ROOT / "research" / "README.md"
    return pages + ([research] if research.exists() else [])


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    """README.md has at most 200 lines, and its first fenced block holds `make demo` and `make test`."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    first = FENCE.search(text)
    assert first is not None, "README.md has no fenced block"
    assert "make demo" in first.group(0) and "make test" in first.group(0)


def test_tracked_files_name_no_outside_paths_paper_numbers_or_history() -> None:
    """No tracked file outside research/ refers to paths outside the repository, papers by file number or
    development history."""
    problems = []
    for path in _tracked_files():
        text = _text(path)
        if text is None:
            continue
        for what, pattern in FORBIDDEN.items():
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                problems.append(f"{path.relative_to(ROOT)}:{line}: {what}: {match.group(0)!r}")
    assert not problems, "\n".join(problems)


def test_relative_links_point_to_existing_files() -> None:
    """Every relative Markdown link in the user pages points to a file or folder in the repository."""
    broken = []
    for page in _user_pages():
        text = FENCE.sub("", page.read_text(encoding="utf-8"))
        for target in LINK.findall(text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
                continue
            path = target.split("#", 1)[0]
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "\n".join(broken)
