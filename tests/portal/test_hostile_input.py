"""Input that used to crash the server (500s in the penetration test): each gets a clear 4xx naming the field.

Integers past the database's range, NaN and infinity in JSON numbers, an ``.npy`` header claiming
a huge shape, and an oversized body sent without Content-Length (chunked).
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from portal.artifact import read_artifact
from sangsaeng.errors import ModelArtifactError
from tests.portal.factories import API, model_artifact, network, release_body
from tests.portal.test_web import csrf_of, sign_in

SITES = ["alpha-line-1", "beta-line-1"]


def fields(response) -> set[str]:  # type: ignore[no-untyped-def]
    """The field names a FastAPI 422 body points at."""
    return {str(error["loc"][-1]) for error in response.json()["detail"]}


def test_integers_past_the_database_range_get_422_naming_the_field(portal, client):
    net = network(portal)
    run = portal.run(net.coordinator, net.fid, SITES)
    anchor, coordinator = net.anchor.headers, net.coordinator
    user = {"email": "eve@audit.kr", "password": "long enough pw"}
    attempts = [
        ("POST", "/users", anchor, {**user, "organisation_id": 2**63}, "organisation_id"),
        ("POST", "/users", anchor, {**user, "organisation_id": 2**40}, "organisation_id"),  # int8, not int4
        ("POST", f"/federations/{net.fid}/auditors", anchor, {"organisation_id": 2**63}, "organisation_id"),
        ("POST", f"/federations/{net.fid}/auditors", anchor, {"organisation_id": -(2**63) - 1}, "organisation_id"),
        ("POST", f"/federations/{net.fid}/releases", coordinator, release_body(10**30), "run_id"),
        ("POST", f"/federations/{net.fid}/releases", coordinator, release_body(2**31), "run_id"),
        ("GET", f"/runs/{10**30}", anchor, None, "run_id"),
        ("GET", f"/federations/{2**63}", anchor, None, "federation_id"),
        ("POST", f"/memberships/{2**63}/approve", anchor, None, "membership_id"),
        ("GET", f"/federations/{net.fid}/audit?limit={2**63}", anchor, None, "limit"),
    ]
    for method, path, headers, body, field in attempts:
        response = client.request(method, f"{API}{path}", headers=headers, json=body)
        assert response.status_code == 422, (path, body and str(body)[:80], response.text[:300])
        assert field in fields(response), (path, response.text[:300])
    assert client.get(f"{API}/runs/{run['id']}", headers=anchor).status_code == 200  # in range still works


def test_web_form_integers_past_the_database_range_get_4xx(portal, client):
    net = network(portal)
    sign_in(client, net.anchor.email)
    token = csrf_of(client.get(f"/federations/{net.fid}").text)
    for value in (str(2**63), str(10**30), "-1"):
        response = client.post(f"/federations/{net.fid}/auditors", data={"csrf": token, "organisation_id": value})
        assert 400 <= response.status_code < 500 and "organisation_id" in response.text, value


RUN = '{"run_ref": "r-x", "sites": ["alpha-line-1"], %s}'
ROUND = '"rounds": [{"round": 1, "metrics": {"auc": %s}}]'


@pytest.mark.parametrize(
    ("path_kind", "body", "field"),
    [
        ("runs", RUN % (ROUND % "NaN"), "metrics"),
        ("runs", RUN % (ROUND % "Infinity"), "metrics"),
        ("runs", RUN % (ROUND % "1e400"), "metrics"),  # json.loads reads it as infinity
        ("runs", RUN % '"privacy": {"alpha-line-1": {"epsilon": -Infinity, "budget_epsilon": 8}}', "epsilon"),
        ("federations", '{"name": "NaN fed", "task_name": "predictive-maintenance", "threshold": NaN}', "threshold"),
    ],
    ids=["nan-metric", "inf-metric", "1e400-metric", "-inf-epsilon", "nan-threshold"],
)
def test_nan_and_infinity_get_a_422_that_is_valid_json(portal, client, path_kind, body, field):
    net = network(portal)
    if path_kind == "runs":
        path, headers = f"{API}/federations/{net.fid}/runs", net.coordinator
    else:
        path, headers = f"{API}/federations", net.anchor.headers
    response = client.post(path, headers={**headers, "Content-Type": "application/json"}, content=body)
    assert response.status_code == 422, response.text[:300]
    json.loads(response.text, parse_constant=lambda name: pytest.fail(f"the 422 body holds a bare {name}"))
    assert field in json.dumps(response.json()["detail"])


def hostile_artifact(shape: tuple[int, ...], payload: bytes = b"\0" * 64, descr: str = "<f8") -> bytes:
    """The test artifact with its first weight replaced by an ``.npy`` header claiming `shape`."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": shape})
    original = zipfile.ZipFile(io.BytesIO(model_artifact()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for info in original.infolist():
            content = original.read(info)
            if info.filename == "weights/w000.npy":
                content = header.getvalue() + payload
            archive.writestr(info, content)
    return out.getvalue()


@pytest.mark.parametrize(
    "shape", [(10**6, 10**6), (2**40,), (2**62, 2**62), (3, 4)], ids=["8TB", "8TiB-1d", "overflow", "too-few-bytes"]
)
def test_npy_header_claiming_more_than_its_bytes_is_refused_before_allocating(shape):
    with pytest.raises(ModelArtifactError, match=r"weights/w000\.npy.*shape"):
        read_artifact(hostile_artifact(shape))


def test_npy_header_claiming_fewer_bytes_than_present_is_refused():
    with pytest.raises(ModelArtifactError, match=r"weights/w000\.npy"):
        read_artifact(hostile_artifact((2,), payload=b"\0" * 4096))


def test_hostile_npy_upload_gets_422_naming_the_file(portal, client):
    net = network(portal)
    run = portal.run(net.coordinator, net.fid, SITES)
    response = client.post(
        f"{API}/federations/{net.fid}/releases",
        headers=net.coordinator,
        json=release_body(run["id"], data=hostile_artifact((10**6, 10**6))),
    )
    assert response.status_code == 422 and "weights/w000.npy" in response.json()["detail"], response.text


def test_oversized_chunked_body_gets_413(portal, client):
    net = network(portal)

    def chunks():  # a generator: httpx sends it chunked, without Content-Length
        for _ in range(2048):
            yield b" " * 1024

    form = {"Content-Type": "application/x-www-form-urlencoded"}
    json_body = {**net.coordinator, "Content-Type": "application/json"}
    for path, headers in ((f"{API}/federations/{net.fid}/runs", json_body), ("/login", form)):
        response = client.post(path, headers=headers, content=chunks())
        assert response.status_code == 413, (path, response.text[:200])
        assert "larger than the limit" in response.json()["detail"]
