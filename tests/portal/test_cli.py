"""The `sangsaeng portal` CLI: migrate, create-admin, and the anchor's scripted flows against a live server."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from coordinator.cli import app as sangsaeng
from tests.portal.test_site_client import make_run_dir

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def test_migrations_and_models_agree(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine
    from sqlmodel import SQLModel

    engine = create_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    engine.dispose()
    assert diff == []


def test_cli_scripts_the_anchor_flows(live_server, settings, monkeypatch, tmp_path):
    runner = CliRunner()
    env = {
        "DATABASE_URL": settings.sqlalchemy_url,
        "SANGSAENG_PORTAL_ENVIRONMENT": "test",
        "SANGSAENG_PORTAL_SECRET_KEY": settings.secret_key,
        "SANGSAENG_PORTAL_DATA_DIR": str(settings.data_dir),
        "SANGSAENG_PORTAL_URL": live_server,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("portal.cli.TOKEN_FILE", tmp_path / "portal-token")

    def run(*args: str, input: str | None = None) -> str:
        result = runner.invoke(sangsaeng, ["portal", *args], input=input)
        assert result.exit_code == 0, result.output
        return result.output

    assert "latest schema" in run("migrate")
    run("create-admin", "--email", "ceo@anchor.kr", "--org", "Anchor Motors", "--password", "s3cret-pass!")
    dup = runner.invoke(
        sangsaeng,
        ["portal", "create-admin", "--email", "ceo@anchor.kr", "--org", "Anchor Motors", "--password", "s3cret-pass!"],
    )
    assert dup.exit_code == 2 and "already exists" in dup.output
    run("login", "--email", "ceo@anchor.kr", "--password", "s3cret-pass!")
    assert (tmp_path / "portal-token").stat().st_mode & 0o777 == 0o600
    assert '"id": 1' in run(
        "create-federation", "--name", "Line Quality", "--task", "predictive-maintenance", "--threshold", "0.5"
    )
    tokens = {}
    for org, site in (("Alpha", "alpha-line-1"), ("Beta", "beta-line-1")):
        tokens[site] = run("invite", "--federation", "1", "--org", org, "--site", site).strip().splitlines()[-1]
    from client import portal_commands as pc

    for site in tokens:
        pc.enroll(live_server, tokens[site], tmp_path / site)
    assert "approved" in run("approve", "1")
    assert "approved" in run("approve", "2")
    again = runner.invoke(sangsaeng, ["portal", "approve", "1"])
    assert again.exit_code == 2 and "already approved" in again.output
    coordinator = run("coordinator-token", "--federation", "1").strip()
    run_dir, _ = make_run_dir(tmp_path)
    out = run("upload-run", str(run_dir), "--federation", "1", "--version", "1.0.0", "--token", coordinator)
    assert "uploaded as draft" in out
    assert "approved" in run("release", "approve", "1")
    assert "published" in run("release", "publish", "1")
    assert "2 key(s)" in run("site-keys", "--federation", "1", "--out", str(tmp_path / "keys"))
    assert "revoked" in run("revoke", "2", "--reason", "contract ended")
    assert "1 key(s)" in run("site-keys", "--federation", "1", "--out", str(tmp_path / "keys2"))
    pulled = runner.invoke(sangsaeng, ["client", "pull-model", "--site-dir", str(tmp_path / "alpha-line-1")])
    assert pulled.exit_code == 0 and "verified and saved" in pulled.output, pulled.output
    revoked = runner.invoke(sangsaeng, ["client", "pull-model", "--site-dir", str(tmp_path / "beta-line-1")])
    assert revoked.exit_code == 2 and "401" in revoked.output
