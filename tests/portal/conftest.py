"""Portal test fixtures: every API test runs on SQLite and on the real PostgreSQL.

PostgreSQL: a fresh database per test session on 127.0.0.1:5432 (override with
SANGSAENG_TEST_PG_URL), migrated with Alembic, emptied after each test. Without a reachable
server the PostgreSQL cases skip with the reason; with CI=true they fail instead.
SQLite: one migrated template file, copied for each test.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from portal.core.config import Settings
from portal.core.db import make_engine, migrate
from portal.main import create_app
from tests.portal.factories import PortalFactory

PG_ADMIN_URL = os.environ.get("SANGSAENG_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TABLES = (
    "login_attempt, audit_event, contribution_score, contribution_run, privacy_report, model_release, model_artifact, "
    "training_run, site_credential, invite, api_token, membership, auditor_assignment, federation, user_account, "
    "organisation"
)


def unavailable(reason: str) -> None:
    """Skip with the reason, or fail in CI, where every backend must run."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: this must not be skipped)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str | None]:
    """URL of a fresh, migrated PostgreSQL database for this test session (None if unreachable)."""
    try:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        yield None
        os.environ["_SANGSAENG_PG_REASON"] = f"PostgreSQL not reachable at {PG_ADMIN_URL}: {type(exc).__name__}"
        return
    name = f"sangsaeng_portal_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    migrate(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "portal.db"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def signing_key_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("signing") / "release-signing-key.pem"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Iterator[str]:
    """A migrated, empty database of each backend, isolated per test."""
    if request.param == "sqlite":
        path = tmp_path / "portal.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    url = request.getfixturevalue("pg_database")
    if url is None:
        unavailable(f"PostgreSQL not reachable at {PG_ADMIN_URL}")
    yield url
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def settings(db_url: str, tmp_path: Path, signing_key_path: Path) -> Settings:
    return Settings(
        environment="test",
        secret_key="test-secret-key-not-for-production",
        data_dir=tmp_path / "data",
        database_url=db_url,
        signing_key_path=signing_key_path,
        max_upload_bytes=256 * 1024,
    )


@pytest.fixture
def app(settings: Settings):  # type: ignore[no-untyped-def]
    engine = make_engine(settings.sqlalchemy_url, pool_size=5)
    application = create_app(settings, engine=engine)
    yield application
    engine.dispose()


@pytest.fixture
def client(app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    # Pages in English, the language the tests' assertions are written in; Korean (the default
    # without the header) is tested in test_i18n.py and the browser tests.
    with TestClient(app, headers={"Accept-Language": "en"}) as test_client:
        yield test_client


@pytest.fixture
def portal(app, client: TestClient, tmp_path: Path) -> PortalFactory:  # type: ignore[no-untyped-def]
    return PortalFactory(app, client, tmp_path)


CHROMIUM = Path(os.environ.get("SANGSAENG_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]  # fmt: skip
OUTPUT = Path(os.environ.get("SANGSAENG_TEST_OUTPUT", Path(__file__).resolve().parents[2] / "test-output"))


@pytest.fixture
def live_server(app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The app under test served by a real uvicorn server on a free loopback port."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="session")
def browser():  # type: ignore[no-untyped-def]
    """Headless Debian Chromium driven by Playwright (never a downloaded browser)."""
    if not CHROMIUM.exists():
        unavailable(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def screenshots(request: pytest.FixtureRequest) -> Path:
    path = OUTPUT / "screenshots" / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    path.mkdir(parents=True, exist_ok=True)
    return path
