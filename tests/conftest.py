"""Shared fixtures: the real datasets and small factories for site files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from sangsaeng import airgap

airgap.apply()

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"


def dataset_path(filename: str) -> Path:
    """The shared copy of a dataset when present (CI, developers), else the embedded one."""
    shared = SHARED / filename
    return shared if shared.exists() else ROOT / "models" / "sample_data" / filename


@pytest.fixture(scope="session")
def ai4i() -> pd.DataFrame:
    return pd.read_csv(dataset_path("ai4i2020.csv"))


@pytest.fixture(scope="session")
def kamp() -> pd.DataFrame:
    return pd.read_csv(dataset_path("kamp_injection_molding.csv"))


DEPLOYMENT_FILES = ("test_deployment.py", "test_deployment_faults.py")  # each starts a network of its own


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist's ``--dist loadfile``, hand out the files in collection order (see below).

    pytest-xdist (3.6 on) reorders the files by their number of tests, largest first, unless told
    not to: the deployment files (few tests, minutes each) would then start after the larger files.
    """
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The multi-process deployment tests first, the rest in their order.

    Under the README's ``-n 2 --dist loadfile`` each worker takes one of the two deployment
    files (minutes each, mostly waiting on Flower's polling intervals) at the start, and both
    share out everything else once done.
    """
    items.sort(key=lambda item: item.path.name not in DEPLOYMENT_FILES)


@pytest.fixture(scope="session", autouse=True)
def one_simulation_engine():
    """Flower's simulation engine (a local Ray cluster) starts once per test session, not once per run.

    Flower starts Ray on a run's first use when none is running, and its backend shuts Ray down
    at the end of every run (`RayBackend.terminate`). Here a run ends its ClientApp actors only,
    so the next run (in this process) reuses the cluster the first one started: seconds saved
    per simulation. Every run still gets fresh actors, a fresh ServerApp and its own state.
    """
    from flwr.server.superlink.fleet.vce.backend import raybackend

    original = raybackend.RayBackend.terminate

    def end_actors_only(self: raybackend.RayBackend) -> None:
        if self.pool:
            self.pool.terminate_all_actors()

    raybackend.RayBackend.terminate = end_actors_only
    try:
        yield
    finally:
        raybackend.RayBackend.terminate = original
        import ray

        if ray.is_initialized():
            ray.shutdown()


def sangsaeng(*args: str):  # -> click.testing.Result
    """Run ``sangsaeng ARGS`` in this process, so its simulation shares the session's engine.

    The result has ``exit_code``, ``stdout``, ``stderr`` and ``output`` (both); ``explain(result)``
    gives what a failed assertion should show, traceback included.
    """
    from typer.testing import CliRunner

    from sangsaeng.cli import app

    return CliRunner().invoke(app, list(args))


def explain(result) -> str:
    """A CLI result's output and, if it raised, the traceback."""
    import traceback

    text = result.output
    if result.exc_info and not isinstance(result.exception, SystemExit):
        text += "".join(traceback.format_exception(*result.exc_info))
    return text
