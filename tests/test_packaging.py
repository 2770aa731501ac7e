"""The light supplier install (issue 17, item 6): what ``pip install sangsaeng`` brings, and the extras.

The base install is what a supplier site runs; the anchor's simulation engine, the portal
server, Parquet and image tasks are extras, and `sangsaeng.extras` names their install
commands. The packages a base install pulls are read from the metadata of the installed
distributions (no download); `bench/install.py` installs it for real into a fresh venv.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from sangsaeng.errors import MissingExtraError
from sangsaeng.extras import EXTRAS, install_hint, require

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
OPTIONAL = PROJECT["optional-dependencies"]
# Distributions a supplier's PC must not get from the base install.
NOT_ON_A_SUPPLIER_PC = {
    "ray",  # the simulation engine: [coordinator]
    "psycopg", "psycopg-binary", "argon2-cffi", "sqlmodel", "pydantic-settings", "python-multipart",  # [portal]
    "matplotlib", "pyarrow", "pillow", "elpv-dataset",  # [coordinator], [parquet], [vision]
    "pytest", "pytest-xdist", "pytest-timeout", "hypothesis", "schemathesis", "playwright", "mypy", "ruff",  # [dev]
}  # fmt: skip


def _name(requirement: str | Requirement) -> str:
    """The normalised distribution name (PEP 503) of a requirement."""
    name = requirement.name if isinstance(requirement, Requirement) else Requirement(requirement).name
    return re.sub(r"[-_.]+", "-", name).lower()


def _applies(requirement: Requirement, extras: frozenset[str]) -> bool:
    """Whether `requirement` (one line of a distribution's Requires-Dist) is needed with `extras` asked for."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in extras or {""})


def installed_closure(requirements: list[str]) -> set[str]:
    """Every distribution `requirements` pull, transitively, read from the installed distributions' metadata."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        key = (_name(requirement), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        for line in metadata.requires(key[0]) or []:
            dependency = Requirement(line)
            if _applies(dependency, key[1]):
                todo.append(dependency)
    return {name for name, _ in seen}


def test_all_is_every_extra_but_the_dev_tools() -> None:
    runtime = {extra: set(reqs) for extra, reqs in OPTIONAL.items() if extra not in ("all", "dev")}
    assert set(OPTIONAL["all"]) == set().union(*runtime.values())
    assert not set(OPTIONAL["all"]) & set(OPTIONAL["dev"])
    assert len(OPTIONAL["all"]) == len(set(OPTIONAL["all"]))  # each once


def test_the_extras_table_names_what_pyproject_installs() -> None:
    """`sangsaeng.extras.EXTRAS` (what `require` checks) lists exactly each extra's requirements."""
    assert set(EXTRAS) == set(OPTIONAL) - {"all", "dev"}
    for extra, modules in EXTRAS.items():
        declared = {_name(r) + "".join(f"[{e}]" for e in sorted(Requirement(r).extras)) for r in OPTIONAL[extra]}
        assert declared == set(modules), extra


def test_the_base_install_brings_no_ray_no_portal_server_and_no_test_tools() -> None:
    base = installed_closure(PROJECT["dependencies"])
    assert {"torch", "flwr", "opacus", "pandas", "httpx"} <= base  # the closure is really walked
    assert not base & NOT_ON_A_SUPPLIER_PC, sorted(base & NOT_ON_A_SUPPLIER_PC)
    assert {"ray", "psycopg", "matplotlib"} <= installed_closure(OPTIONAL["all"])  # the same walk finds them


def test_require_names_the_one_install_command() -> None:
    require("coordinator", "the demo", modules=["json"])  # present: nothing happens
    with pytest.raises(MissingExtraError) as raised:
        require("portal", "sangsaeng portal serve", modules=["json", "no_such_module_sangsaeng"])
    assert str(raised.value) == (
        "sangsaeng portal serve needs no_such_module_sangsaeng from the optional extra [portal], which is not "
        'installed: pip install "sangsaeng[portal]"'
    )
    assert install_hint("vision") == 'pip install "sangsaeng[vision]"'
    with pytest.raises(ValueError, match="unknown extra 'gpu'"):
        install_hint("gpu")


# A light install, imitated in a child process: these modules cannot be imported there
# (`sys.modules[name] = None` makes `import` fail and `find_spec` answer None, as when absent).
ABSENT = (
    "ray", "matplotlib", "tomli_w", "pyarrow", "PIL", "elpv_dataset",
    "sqlmodel", "psycopg", "argon2", "pydantic_settings", "python_multipart", "multipart", "jinja2",
)  # fmt: skip

LIGHT_SITE = textwrap.dedent(
    """
    import sys
    for name in {absent!r}:
        sys.modules[name] = None
    from typer.testing import CliRunner
    from sangsaeng.cli import app
    import client.client_app  # the ClientApp a SuperNode runs

    def run(*args):
        done = CliRunner().invoke(app, list(args))
        print(f"--- {{' '.join(args[:2])}} exit={{done.exit_code}}")
        print(" ".join(done.output.split()))

    run("--help")
    run("client", "validate", "--task", "predictive-maintenance", "--data", {csv!r})
    run("client", "validate", "--task", "predictive-maintenance", "--data", {parquet!r})
    run("demo", "--rounds", "1", "--out", {out!r})
    run("portal", "serve")
    """
)


def test_a_light_install_runs_the_site_and_names_the_extra_a_command_needs(tmp_path, ai4i) -> None:
    csv, parquet = tmp_path / "line.csv", tmp_path / "line.parquet"
    ai4i.head(40).to_csv(csv, index=False)
    ai4i.head(40).to_parquet(parquet)
    script = LIGHT_SITE.format(absent=ABSENT, csv=str(csv), parquet=str(parquet), out=str(tmp_path / "demo"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    said = dict(part.split("\n", 1) for part in done.stdout.split("--- ")[1:])
    assert "Supplier site commands." in said["--help exit=0"]
    assert "ok: " in said["client validate exit=0"] and "40 rows fit task 'predictive-maintenance'" in done.stdout
    not_installed = 'from the optional extra [{0}], which is not installed: pip install "sangsaeng[{0}]"'
    assert "reading Parquet needs pyarrow " + not_installed.format("parquet") in said["client validate exit=2"]
    assert "needs ray, matplotlib " + not_installed.format("coordinator") in said["demo --rounds exit=2"]
    assert 'pip install "sangsaeng[portal]"' in said["portal serve exit=2"]
    assert not (tmp_path / "demo").exists()  # refused before any file is written


def test_client_start_checks_the_client_app_imports_in_a_child_process(tmp_path, monkeypatch) -> None:
    """`client start` stays light until its first task, yet a broken install still fails at start."""
    from client.errors import NodeError
    from client.node import check_client_app_imports

    check_client_app_imports()  # this install's ClientApp imports
    broken = tmp_path / "client"  # a child started here finds this `client` package first
    broken.mkdir()
    (broken / "__init__.py").write_text("")
    (broken / "client_app.py").write_text("import torch_that_is_not_installed\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NodeError, match="ClientApp cannot be imported .*torch_that_is_not_installed.*reinstall"):
        check_client_app_imports()
