"""The optional extras of the ``sangsaeng`` package, and the one install command a missing one needs.

``pip install sangsaeng`` is what a supplier site runs (``client enrol | validate | start |
pull-model | predict`` and its ClientApp: plain Flower, torch, opacus, pandas). The other roles
add extras (pyproject.toml; tests/test_packaging.py keeps this table and it in step)::

    coordinator   Flower's simulation engine (Ray: `demo`, `simulate`), plots, the deployment's TOML
    portal        the portal server: FastAPI app, SQL models and migrations, password hashing
    parquet       Parquet exports (pyarrow); CSV needs nothing more
    vision        image tasks: Pillow, the ELPV solar-cell images
    all           every extra above: the README's one command for the demo and the whole network

A command that needs an extra calls `require` first, so that a light install says which
command to run instead of failing deep inside a library with ``No module named 'ray'``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

from sangsaeng.errors import MissingExtraError

__all__ = ["EXTRAS", "install_hint", "missing_modules", "require"]

# extra -> {requirement name as pyproject.toml spells it: the module it makes importable}
EXTRAS: dict[str, dict[str, str]] = {
    "coordinator": {"flwr[simulation]": "ray", "matplotlib": "matplotlib", "tomli-w": "tomli_w"},
    "portal": {
        "fastapi": "fastapi",
        "sqlmodel": "sqlmodel",
        "uvicorn[standard]": "uvicorn",
        "alembic": "alembic",
        "argon2-cffi": "argon2",
        "psycopg[binary]": "psycopg",
        "pydantic-settings": "pydantic_settings",
        "jinja2": "jinja2",
        "babel": "babel",
        "python-multipart": "python_multipart",
    },
    "parquet": {"pyarrow": "pyarrow"},
    "vision": {"elpv-dataset": "elpv_dataset", "pillow": "PIL"},
}


def install_hint(extra: str) -> str:
    """The command that installs `extra`.

    >>> install_hint("coordinator")
    'pip install "sangsaeng[coordinator]"'
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra '{extra}' (known: {', '.join(sorted(EXTRAS))})")
    return f'pip install "sangsaeng[{extra}]"'


def missing_modules(modules: Iterable[str]) -> list[str]:
    """The top-level modules of `modules` that cannot be imported here (found without importing them)."""
    return [module for module in modules if importlib.util.find_spec(module) is None]


def require(extra: str, needed_for: str, *, modules: Iterable[str] | None = None) -> None:
    """Raise `MissingExtraError` naming the install command when `extra` (or its `modules`) is missing.

    `needed_for` says what the user asked for, e.g. ``"Flower's simulation engine (sangsaeng demo)"``;
    `modules` narrows the check to the modules that command imports (default: all of the extra's).
    """
    hint = install_hint(extra)
    absent = missing_modules(EXTRAS[extra].values() if modules is None else modules)
    if absent:
        raise MissingExtraError(
            f"{needed_for} needs {', '.join(absent)} from the optional extra [{extra}], which is not installed: {hint}"
        )
