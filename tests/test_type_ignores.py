"""Every `# type: ignore` left in the six packages names its error code and says why (issue 11)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sangsaeng", "coordinator", "client", "models", "privacy", "portal")
IGNORE = re.compile(r"#\s*type:\s*ignore")
EXPLAINED = re.compile(r"#\s*type:\s*ignore\[[a-z0-9_,-]+\]\s+#\s*\S")


def unexplained(text: str) -> list[int]:
    """Line numbers of `type: ignore` comments without an error code and a reason after them."""
    return [n for n, line in enumerate(text.splitlines(), 1) if IGNORE.search(line) and not EXPLAINED.search(line)]


def test_every_type_ignore_names_its_code_and_why():
    bad = [
        f"{path.relative_to(ROOT)}:{n}"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for n in unexplained(path.read_text(encoding="utf-8"))
    ]
    assert not bad, "type: ignore without [code] and a reason: " + ", ".join(bad)


def test_the_scan_tells_an_explained_ignore_from_a_bare_one():
    assert unexplained("x = f()  # type: ignore[arg-type]  # Flower's stub is too narrow\n") == []
    assert unexplained("x = f()  # type: ignore[arg-type]\ny = g()  # type: ignore\n") == [1, 2]
