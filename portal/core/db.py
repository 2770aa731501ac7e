"""Engine, sessions and migrations.

`DATABASE_URL` selects the database: a SQLite file in the data directory by default,
PostgreSQL in production (``postgresql+psycopg://user:password@host/db``). The schema is
created and upgraded only by Alembic (`migrate`), never by ``create_all``.

Each worker process keeps a pool of `pool_size` connections (and as many again in overflow for
bursts of writes); the API's read routes never hold more than `pool_size` at once
(`portal.api.deps.read_json`), so they never open and close overflow connections under load. A
connection idle for `PING_AFTER_IDLE_S` or more is pinged before use (a dropped one is replaced
transparently); one in steady use is not, which saves a round trip per request.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, event, exc
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import Session, create_engine

__all__ = ["make_engine", "session_scope", "alembic_config", "migrate", "MIGRATIONS", "PING_AFTER_IDLE_S"]

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
PING_AFTER_IDLE_S = 10.0
"""A pooled connection idle this long is pinged before it is handed out (it may have been dropped)."""


def make_engine(url: str, *, pool_size: int = 20) -> Engine:
    """An engine for `url` with a pool of `pool_size` (+ as many overflow) connections.

    SQLite gets foreign keys, WAL and a busy timeout on every connection. A connection that sat
    idle in the pool for `PING_AFTER_IDLE_S` is pinged on checkout and replaced if the database
    dropped it (what ``pool_pre_ping`` does, without its round trip on every request).
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        pool: dict[str, Any] = {}
        if path and path != ":memory:" and "mode=memory" not in path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            pool = {"pool_size": pool_size, "max_overflow": pool_size}
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size)
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Ping a connection on checkout if it sat in the pool for `PING_AFTER_IDLE_S` or more."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry, _proxy: object) -> None:
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            # The pool discards this connection and checks out another (a fresh one if need be).
            raise exc.DisconnectionError(f"pooled connection was dropped by the database: {error}") from error


def session_scope(engine: Engine) -> Iterator[Session]:
    """One session per request; closed afterwards (uncommitted work is rolled back)."""
    with Session(engine, expire_on_commit=False) as session:
        yield session


def alembic_config(url: str) -> Config:
    """Alembic's configuration for the portal's migrations against `url` (``%`` escaped for its parser)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Bring the database at `url` up to `revision` (creating it if it is a new SQLite file)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)
