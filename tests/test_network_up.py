"""`sangsaeng network up` runs the whole network here with real processes; `network down` leaves none behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
    pytest.skip("nginx is not installed (the fleet gateway; .ci/run installs it)", allow_module_level=True)

pytestmark = pytest.mark.slow


def _processes_naming(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in command:
                found.append(f"{entry.name}: {command[:200]}")
    return found


def test_network_up_walks_the_lifecycle_and_down_stops_everything(tmp_path: Path) -> None:
    root = tmp_path / "network"
    env = {**os.environ, "PATH": f"{os.environ['PATH']}:/usr/sbin"}
    env.pop("DATABASE_URL", None)
    up = subprocess.run([sys.executable, "-m", "sangsaeng", "network", "up", "--dir", str(root), "--rounds", "1"],
                        env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]
        state = json.loads((root / "network.json").read_text())
        assert (root / "network.json").stat().st_mode & 0o777 == 0o600  # it holds the logins
        for role in ("anchor", "supplier", "auditor"):
            assert state["logins"][role]["email"] in up.stdout and state["logins"][role]["password"] in up.stdout
        assert state["portal"] in up.stdout

        # The portal shows the run (recorded by the run itself) and the published release.
        anchor = state["logins"]["anchor"]
        login = {"username": anchor["email"], "password": anchor["password"]}
        token = httpx.post(f"{state['portal']}/api/v1/login/access-token", data=login).json()["access_token"]
        api = httpx.Client(base_url=f"{state['portal']}/api/v1", headers={"Authorization": f"Bearer {token}"})
        runs = api.get(f"/federations/{state['federation']}/runs").json()
        assert [r["run_ref"] for r in runs] == [state["run"]["run_id"]] and runs[0]["status"] == "completed"
        assert sorted(runs[0]["sites"]) == sorted(state["sites"])
        releases = api.get(f"/federations/{state['federation']}/releases").json()
        assert [(r["version"], r["status"]) for r in releases] == [("1.0.0", "published")]
        report = api.get(f"/runs/{runs[0]['id']}/privacy-report")
        assert report.status_code == 200 and report.json()["verified_with_pinned_key"] is True
        # Each site scored its own file with the release it pulled and verified.
        for site, facts in state["sites"].items():
            scores = Path(facts["predictions"])
            assert scores.exists() and len(scores.read_text().splitlines()) > 100, site
            assert list(Path(facts["dir"], "models").glob("*.release.json")), site
        assert _processes_naming(str(root)), "the network should still be running after `up` returned"
    finally:
        down = subprocess.run([sys.executable, "-m", "sangsaeng", "network", "down", "--dir", str(root)],
                              env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert down.returncode == 0, down.stdout + down.stderr
    assert _processes_naming(str(root)) == []
    assert not (root / "network.json").exists() and (root / "network.stopped.json").exists()
