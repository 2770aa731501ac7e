"""Every public function and class of the six packages has a docstring (issue 11, item 11); read with `ast`.

Public: a top-level or class-level function or class whose name does not start with ``_``
(nested functions and the Alembic migrations do not count). A docstring says in a line what
the object is or does and what it checks or refuses; this test only sees that one is there.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sangsaeng", "coordinator", "client", "models", "privacy", "portal")

_Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _public(node: ast.AST, prefix: str = "") -> Iterator[tuple[str, _Definition]]:
    """(qualified name, node) of each public function and class directly in `node`, and in its classes."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, _Definition) and not child.name.startswith("_"):
            yield prefix + child.name, child
            if isinstance(child, ast.ClassDef):
                yield from _public(child, f"{prefix}{child.name}.")


def undocumented() -> list[str]:
    """``path:line name`` of every public object of the packages without a docstring."""
    missing = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.relative_to(ROOT).parts:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for name, node in _public(tree):
                if not ast.get_docstring(node):
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    return missing


def test_the_scan_reads_every_package() -> None:
    for package in PACKAGES:
        assert any((ROOT / package).rglob("*.py")), f"no Python files under {package}/"


def test_the_scan_finds_an_undocumented_object() -> None:
    tree = ast.parse('class A:\n    """Doc."""\n\n    def b(self):\n        pass\n\n\ndef _c():\n    pass\n')
    assert [name for name, node in _public(tree) if not ast.get_docstring(node)] == ["A.b"]


def test_every_public_object_has_a_docstring() -> None:
    missing = undocumented()
    assert not missing, f"{len(missing)} public object(s) without a docstring:\n" + "\n".join(missing)
