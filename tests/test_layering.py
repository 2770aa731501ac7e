"""Imports point downward (docs/architecture.md, "Import direction"); every module's imports are read with `ast`.

Function-level imports count too: a lazy import still pulls the package onto the machine
that runs it, and a supplier's PC has no portal server or coordinator to import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("coordinator", "client", "models", "privacy", "portal")
# Modules of portal/ that the supplier reads too: the wire format and the artifact format.
PORTAL_SHARED = ("portal.protocol", "portal.artifact")
SERVER_LIBRARIES = ("fastapi", "starlette", "sqlmodel", "sqlalchemy", "alembic", "uvicorn", "jinja2", "argon2")


def _top(name: str, *roots: str) -> bool:
    return any(name == root or name.startswith(f"{root}.") for root in roots)


def _portal_server(name: str) -> bool:
    return _top(name, "portal") and name != "portal" and not _top(name, *PORTAL_SHARED)


# package -> (why, is this imported name forbidden?)
RULES = {
    "sangsaeng": (
        "the neutral package imports no role package and none of their heavy dependencies",
        lambda name: _top(name, *ROLES, "flwr", "torch", "opacus", *SERVER_LIBRARIES),
    ),
    "models": (
        "models/ imports no Flower and no other role",
        lambda name: _top(name, "flwr", *set(ROLES) - {"models"}),
    ),
    "client": (
        "client/ imports neither the coordinator nor the portal server",
        lambda name: _top(name, "coordinator", *SERVER_LIBRARIES) or _portal_server(name),
    ),
    "coordinator": ("coordinator/ does not import the supplier's client/", lambda name: _top(name, "client")),
    "privacy": (
        "privacy/ imports no coordinator, client or portal",
        lambda name: _top(name, "coordinator", "client", "portal"),
    ),
    **{
        shared: (
            f"{shared} is read on suppliers' PCs: it imports no portal server module",
            lambda name: _portal_server(name) or _top(name, *SERVER_LIBRARIES),
        )
        for shared in PORTAL_SHARED
    },
}


# Known exceptions, each for one file and one imported package, with the reason.
ALLOWED = {
    **{
        ("sangsaeng/cli.py", role): "the root `sangsaeng` command mounts every role's command group"
        for role in ("coordinator", "client", "portal", "privacy")
    },
    (
        "coordinator/simulation.py",
        "client",
    ): "the one-machine simulation runs the suppliers' ClientApp as virtual SuperNodes",
}


def imported_names(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in `path`, at any depth (`from a import b` gives a.b and a)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append((node.lineno, node.module))
            names += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return names


def violations(root: Path = ROOT) -> list[str]:
    """'file:line imports name (why)' for every import against a rule."""
    found = []
    for package, (why, forbidden) in RULES.items():
        base = root.joinpath(*package.split("."))
        paths = sorted(base.rglob("*.py")) if base.is_dir() else [p for p in [base.with_suffix(".py")] if p.exists()]
        for path in paths:
            if "migrations" in path.parts:
                continue
            relative = path.relative_to(root).as_posix()
            flagged: set[int] = set()  # one entry per import statement
            for line, name in imported_names(path):
                if line not in flagged and forbidden(name) and (relative, name.split(".")[0]) not in ALLOWED:
                    flagged.add(line)
                    found.append(f"{relative}:{line} imports {name} ({why})")
    return found


def test_imports_point_downward():
    assert violations() == []


@pytest.mark.parametrize(
    ("path", "source", "bad"),
    [
        ("sangsaeng/x.py", "from models.errors import SiteDataError\n", "models.errors"),
        ("sangsaeng/x.py", "def f():\n    import fastapi\n", "fastapi"),
        ("models/x.py", "from flwr.app import Message\n", "flwr.app"),
        ("client/x.py", "from coordinator.deploy import APP_ID\n", "coordinator.deploy"),
        ("client/x.py", "from portal.core.errors import ArtifactError\n", "portal.core.errors"),
        ("coordinator/x.py", "import client.protocol\n", "client.protocol"),
        ("privacy/x.py", "from portal import artifact\n", "portal"),
        ("portal/artifact.py", "from portal.core.errors import ArtifactError\n", "portal.core.errors"),
    ],
)
def test_a_forbidden_import_is_named(tmp_path, path, source, bad):
    (tmp_path / path).parent.mkdir(parents=True)
    (tmp_path / path).write_text(source, encoding="utf-8")
    assert any(f"{path}:" in v and f"imports {bad} " in v for v in violations(tmp_path)), violations(tmp_path)


def test_allowed_imports_pass(tmp_path):
    for path, source in {
        "client/x.py": "from portal.protocol import API_PREFIX\nfrom portal.artifact import read_artifact\n",
        "coordinator/x.py": "from portal.protocol import API_PREFIX\nfrom privacy.keys import PUBLIC_NAME\n",
        "sangsaeng/x.py": "import httpx\nimport numpy\nfrom sangsaeng.errors import SangsaengError\n",
    }.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(source, encoding="utf-8")
    assert violations(tmp_path) == []


# What a supplier's PC imports: the root command line (`sangsaeng --help`, `sangsaeng client ...`) and
# the ClientApp its SuperNode runs. None of the anchor's simulation engine, the portal server or plots.
SUPPLIER_ENTRY_POINTS = ("sangsaeng.cli", "client.cli", "client.node", "client.portal_commands", "client.client_app")
NOT_IMPORTED_ON_A_SITE = (
    "ray", "psycopg", "alembic", "uvicorn", "sqlmodel", "sqlalchemy", "fastapi", "starlette", "argon2", "jinja2",
    "pydantic_settings", "matplotlib", "PIL",
)  # fmt: skip


def test_the_supplier_commands_and_client_app_import_no_server_library():
    import subprocess
    import sys

    script = (
        f"import sys\nfor m in {SUPPLIER_ENTRY_POINTS!r}: __import__(m)\n"
        f"print(sorted(m for m in {NOT_IMPORTED_ON_A_SITE!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
