"""AdmissionSync: the SuperLink's registered keys follow the portal, and survive a portal outage.

The Flower side is a recording stand-in here (the seam is `FlowerControl`); the real SuperLink
and portal are exercised in tests/test_deployment.py (a revocation mid-run in tests/test_deployment_faults.py).
"""

from __future__ import annotations

from pathlib import Path

from coordinator.deploy import AdmissionSync, DeploymentLayout, SiteKey
from coordinator.errors import DeploymentError


class RecordingControl:
    def __init__(self) -> None:
        self.registered: dict[int, str] = {}
        self.next_id = 100

    def register(self, public_key_file: Path, name: str) -> int:
        self.next_id += 1
        self.registered[self.next_id] = public_key_file.read_text().strip()
        return self.next_id

    def unregister(self, node_id: int) -> None:
        del self.registered[node_id]


def key(site: str) -> SiteKey:
    return SiteKey(site=site, fingerprint=f"SHA256:{site}", public_key=f"ecdsa-sha2-nistp384 AAAA{site}")


def test_sync_admits_removes_and_keeps_the_last_set_when_the_portal_is_down(tmp_path: Path) -> None:
    layout = DeploymentLayout(tmp_path)
    portal: list = [[key("h"), key("l")]]
    events: list[str] = []

    def fetch() -> list[SiteKey]:
        if isinstance(portal[0], Exception):
            raise portal[0]
        return portal[0]

    control = RecordingControl()
    sync = AdmissionSync(layout, control, fetch=fetch, on_event=events.append)  # type: ignore[arg-type]
    assert sync.sync_once()
    assert sorted(control.registered.values()) == ["ecdsa-sha2-nistp384 AAAAh", "ecdsa-sha2-nistp384 AAAAl"]

    portal[0] = DeploymentError("portal http://portal unreachable: connection refused")
    assert not sync.sync_once()
    assert len(control.registered) == 2  # last known set kept
    assert "portal unreachable, keeping the 2 admitted site(s) known" in events[-1]

    portal[0] = [key("h")]  # l revoked
    assert sync.sync_once()
    assert list(control.registered.values()) == ["ecdsa-sha2-nistp384 AAAAh"]
    assert "removed site 'l'" in events[-1]

    restarted = AdmissionSync(layout, control, fetch=fetch, on_event=events.append)  # type: ignore[arg-type]
    assert restarted.sync_once() and len(control.registered) == 1  # state survives a restart: no re-registration


def test_a_portal_refusal_of_the_key_list_keeps_the_last_set(tmp_path: Path) -> None:
    import httpx

    from coordinator.deploy import portal_site_keys

    answers = [
        httpx.Response(200, json=[{"site_name": "h", "fingerprint": "SHA256:h", "public_key": "ecdsa AAAAh"}]),
        httpx.Response(401, json={"detail": "token revoked"}),
    ]
    seen: list[httpx.Request] = []

    def portal(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    http = httpx.Client(base_url="http://portal", transport=httpx.MockTransport(portal))
    events: list[str] = []
    control = RecordingControl()

    def fetch() -> list[SiteKey]:
        return portal_site_keys("http://portal", "tok", 7, http=http)

    sync = AdmissionSync(DeploymentLayout(tmp_path), control, fetch=fetch, on_event=events.append)  # type: ignore[arg-type]
    assert sync.sync_once() and len(control.registered) == 1
    assert seen[0].url.path == "/api/v1/federations/7/site-keys" and seen[0].headers["Authorization"] == "Bearer tok"
    assert not sync.sync_once() and len(control.registered) == 1
    assert events[-1] == (
        "portal unreachable, keeping the 1 admitted site(s) known: listing the admitted site keys: "
        "portal answered 401 to GET http://portal/api/v1/federations/7/site-keys: token revoked"
    )
