"""``sangsaeng portal``: run the portal, and script the anchor's flows against it.

Local (on the portal host, using DATABASE_URL / SANGSAENG_PORTAL_* settings):
    serve, migrate, create-admin
Remote (any machine; --portal URL and a token from `login` or SANGSAENG_PORTAL_TOKEN):
    login, create-federation, invite, approve / reject / suspend / reinstate / revoke,
    coordinator-token, site-keys, upload-run (coordinator token), release approve|publish|withdraw,
    privacy-report (auditor or anchor: a run's signed privacy report, checked and written byte-exact),
    ledger (a federation's or release's contribution ledger, JSON or CSV), contribution-policy (anchor)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from sangsaeng.console import fail
from sangsaeng.paths import PORTAL_TOKEN_FILE

__all__ = ["app"]

app = typer.Typer(help="The membership and release portal (server and anchor scripting).", no_args_is_help=True)

TOKEN_FILE = Path(os.environ.get("SANGSAENG_PORTAL_TOKEN_FILE", PORTAL_TOKEN_FILE))
PortalUrl = Annotated[str, typer.Option("--portal", envvar="SANGSAENG_PORTAL_URL", help="Portal base URL.")]
Token = Annotated[
    str | None, typer.Option("--token", envvar="SANGSAENG_PORTAL_TOKEN", help="API token (default: from `login`).")
]
DEFAULT_URL = "http://127.0.0.1:8000"


def _http(portal: str, token: str | None) -> Any:
    """The portal as the signed-in user (`--token`, or the token stored by `login`)."""
    from sangsaeng.portal_api import PortalAPI

    if token is None and TOKEN_FILE.exists():
        token = TOKEN_FILE.read_text(encoding="utf-8").strip()
    if not token:
        fail("no token: run `sangsaeng portal login` or set SANGSAENG_PORTAL_TOKEN")
    return PortalAPI(portal, token, timeout=120.0)  # an upload-run carries a model of a few MiB


def _call(portal: str, token: str | None, method: str, path: str, **kwargs: Any) -> Any:
    """One API request (`path` below the API prefix); the answer's JSON, or exit naming the refusal."""
    from portal.protocol import API_PREFIX
    from sangsaeng.errors import PortalRequestError

    try:
        with _http(portal, token) as api:
            return api.request(method, f"{API_PREFIX}{path}", **kwargs).json()
    except PortalRequestError as exc:
        fail(str(exc))


def _show(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


# -- local ------------------------------------------------------------------------------------
def _server_installed(command: str) -> None:
    """Exit naming the install command when the portal server's extra is missing (a supplier's light install)."""
    from sangsaeng.errors import MissingExtraError
    from sangsaeng.extras import require

    try:
        require("portal", f"sangsaeng portal {command} (the portal server)")
    except MissingExtraError as exc:
        fail(exc)


@app.command()
def migrate() -> None:
    """Create or upgrade the portal database (DATABASE_URL; default SQLite in the data directory)."""
    _server_installed("migrate")
    from portal.core.config import Settings
    from portal.core.db import migrate as run_migrations

    settings = Settings()
    run_migrations(settings.sqlalchemy_url)
    typer.echo(f"database is at the latest schema: {settings.sqlalchemy_url.split('@')[-1]}")


WORKER_HEALTHCHECK_S = 60
"""Seconds a worker of ``portal serve --workers N`` may take to answer uvicorn's health check."""


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Migrate the database, then serve the portal (API under /api/v1, web pages under /).

    On a non-loopback address the environment defaults to ``production`` (no default secret,
    Secure cookies); on loopback the public URL defaults to ``http://HOST:PORT``.
    """
    _server_installed("serve")
    import ipaddress

    import uvicorn
    from pydantic import ValidationError

    from portal.core.config import Settings

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it is reachable from elsewhere
        loopback = False
    # The workers build the app from the environment, so the defaults go there.
    if not loopback:
        os.environ.setdefault("SANGSAENG_PORTAL_ENVIRONMENT", "production")
    elif not os.environ.get("SANGSAENG_PORTAL_PUBLIC_URL"):
        address = f"[{host}]" if ":" in host else host
        os.environ["SANGSAENG_PORTAL_PUBLIC_URL"] = f"http://{address}:{port}"
    try:
        settings = Settings()
    except ValidationError as exc:
        fail("; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors()))
    if settings.public_url is None:
        typer.secho(
            "warning: SANGSAENG_PORTAL_PUBLIC_URL is not set; invitation pages cannot show the address "
            "suppliers enrol at (set it to the portal's https:// address)",
            fg=typer.colors.YELLOW,
            err=True,
        )
    migrate()
    uvicorn.run(
        "portal.main:app",
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        proxy_headers=False,
        # uvicorn restarts a worker that does not answer its supervisor's ping within this; its 5 s
        # default killed busy, healthy workers on a loaded 2-core machine (each start took minutes).
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
    )


@app.command("create-admin")
def create_admin(
    email: Annotated[str, typer.Option(help="The admin's e-mail (login).")],
    org: Annotated[str, typer.Option(help="The anchor organisation (created if new).")],
    password: Annotated[str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True,
                                          envvar="SANGSAENG_PORTAL_ADMIN_PASSWORD")],
) -> None:  # fmt: skip
    """Create an anchor admin account directly in the database (migrating it first)."""
    _server_installed("create-admin")
    from pydantic import ValidationError
    from sqlmodel import Session

    from portal import audit, crud
    from portal.core.config import Settings
    from portal.core.db import make_engine
    from portal.core.db import migrate as run_migrations
    from portal.models import OrgKind, UserCreate

    settings = Settings()
    try:
        UserCreate(email=email, password=password, organisation_id=1)
    except ValidationError as exc:
        fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    run_migrations(settings.sqlalchemy_url)
    engine = make_engine(settings.sqlalchemy_url)
    with Session(engine) as session:
        organisation = crud.get_org_by_name(session, org)
        if organisation is None:
            organisation = crud.create_org(session, org, OrgKind.anchor)
        elif organisation.kind != OrgKind.anchor:
            fail(f"organisation '{org}' is a {organisation.kind}, not an anchor")
        if crud.get_user_by_email(session, email) is not None:
            fail(f"a user with e-mail '{email}' already exists")
        user = crud.create_user(session, email=email, password=password, organisation_id=organisation.id)  # type: ignore[arg-type]  # SQLModel ids are Optional until flushed
        audit.record(session, actor="sangsaeng portal create-admin", action="user.created", target=f"user {user.id}",
                     detail={"email": user.email, "organisation": organisation.name, "kind": "anchor"})  # fmt: skip
        session.commit()
    typer.echo(f"anchor admin {email} created in '{org}'")


# -- remote -----------------------------------------------------------------------------------
@app.command()
def login(
    email: Annotated[str, typer.Option(help="Your e-mail.")],
    password: Annotated[str, typer.Option(prompt=True, hide_input=True, envvar="SANGSAENG_PORTAL_PASSWORD")],
    portal: PortalUrl = DEFAULT_URL,
) -> None:
    """Sign in; the session token is stored (mode 0600) for the other commands."""
    from portal.protocol import API_PREFIX
    from sangsaeng.errors import PortalRequestError
    from sangsaeng.files import write_private
    from sangsaeng.portal_api import PortalAPI

    try:
        with PortalAPI(portal, timeout=60) as api:
            answer = api.post(f"{API_PREFIX}/login/access-token", data={"username": email, "password": password}).json()
    except PortalRequestError as exc:
        fail(str(exc) if exc.status is None else f"login refused ({exc.status}): {exc.detail}")
        return
    write_private(TOKEN_FILE, answer["access_token"].encode("utf-8"))
    typer.echo(f"signed in; token stored in {TOKEN_FILE}")


@app.command("create-federation")
def create_federation(
    name: Annotated[str, typer.Option(help="Federation name.")],
    task: Annotated[str, typer.Option(help="Built-in task.")],
    threshold: Annotated[float, typer.Option(help="Release threshold on the metric.")],
    metric: Annotated[str | None, typer.Option(help="Metric (default: the task's primary).")] = None,
    portal: PortalUrl = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Create a federation (anchor admin)."""
    _show(_call(portal, token, "POST", "/federations",
                json={"name": name, "task_name": task, "threshold": threshold, "metric": metric}))  # fmt: skip


@app.command()
def invite(
    federation: Annotated[int, typer.Option(help="Federation id.")],
    org: Annotated[str, typer.Option(help="Supplier organisation (created if new).")],
    site: Annotated[str, typer.Option(help="Site name in the federation.")],
    hours: Annotated[int, typer.Option(help="Hours until the invite expires.")] = 72,
    portal: PortalUrl = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Invite a supplier site; prints the single-use invitation code (token#CA-fingerprint) to send to the supplier."""
    answer = _call(portal, token, "POST", f"/federations/{federation}/invites",
                   json={"organisation_name": org, "site_name": site, "expires_hours": hours})  # fmt: skip
    what = "invitation code" if answer.get("network_ca_fingerprint") else "token (no network CA set yet)"
    typer.echo(f"membership {answer['membership']['id']} invited; {what} (single use, expires {answer['expires_at']}):")
    typer.echo(answer.get("invitation") or answer["token"])


def _transition(action: str) -> Callable[..., None]:
    def command(
        membership: Annotated[int, typer.Argument(help="Membership id.")],
        reason: Annotated[str, typer.Option(help="Reason, recorded in the audit trail.")] = "",
        portal: PortalUrl = DEFAULT_URL,
        token: Token = None,
    ) -> None:
        answer = _call(portal, token, "POST", f"/memberships/{membership}/{action}", json={"reason": reason})
        typer.echo(f"site '{answer['site_name']}' (membership {answer['id']}) is now {answer['status']}")

    command.__doc__ = f"{action.capitalize()} a site (anchor admin)."
    return command


for _action in ("approve", "reject", "suspend", "reinstate", "revoke"):
    app.command(_action)(_transition(_action))


@app.command("coordinator-token")
def coordinator_token(
    federation: Annotated[int, typer.Option(help="Federation id.")],
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            help="The coordinator's report-signing key (KEY_DIR/coordinator.pub.pem, from `sangsaeng privacy "
            "init-key`): the federation pins it, and its privacy reports verify against it only.",
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="Token name.")] = "coordinator",
    days: Annotated[int, typer.Option(help="Validity in days.")] = 90,
    portal: PortalUrl = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Issue a coordinator API token for a federation (printed once), pinning its signing key with --public-key."""
    body: dict[str, Any] = {"name": name, "days": days}
    if public_key is not None:
        try:
            body["coordinator_public_key_pem"] = public_key.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read the coordinator public key {public_key}: {exc}")
    answer = _call(portal, token, "POST", f"/federations/{federation}/tokens", json=body)
    if answer.get("coordinator_key_fingerprint"):
        typer.secho(f"federation {federation} pins coordinator key {answer['coordinator_key_fingerprint']}", err=True)
    typer.echo(answer["token"])


@app.command("set-network")
def set_network(
    federation: Annotated[int, typer.Option(help="Federation id.")],
    ca_cert: Annotated[Path, typer.Option(help="The network CA certificate (STATE/certs/ca.pem of `coordinator up`).")],
    superlink: Annotated[str, typer.Option(help="HOST:PORT suppliers dial (the fleet gateway).")],
    portal: PortalUrl = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Give enrolling sites the network CA and address (`coordinator up --advertise` does this itself)."""
    try:
        pem = ca_cert.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read the CA certificate {ca_cert}: {exc}")
    body = {"ca_cert_pem": pem, "superlink_address": superlink}
    answer = _call(portal, token, "PUT", f"/federations/{federation}/network", json=body)
    typer.echo(f"federation {federation}: sites enrol with {answer['superlink_address']}, "
               f"CA fingerprint {answer['network_ca_fingerprint']} (invitations carry it)")  # fmt: skip


@app.command("site-keys")
def site_keys(
    federation: Annotated[int, typer.Option(help="Federation id.")],
    out: Annotated[Path | None, typer.Option(help="Write one OpenSSH public key file per site here.")] = None,
    portal: PortalUrl = DEFAULT_URL,
    token: Token = None,
) -> None:
    """The admitted sites' public keys (for `flwr supernode register`)."""
    keys = _call(portal, token, "GET", f"/federations/{federation}/site-keys")
    if out is None:
        _show(keys)
        return
    from sangsaeng.files import write_atomic

    out.mkdir(parents=True, exist_ok=True)
    for key, name in zip(keys, key_file_names(keys), strict=True):
        # write_atomic renames a new file into place: a symlink planted under that name is replaced, not followed.
        write_atomic(out / name, f"{key['public_key']}\n".encode())
        typer.echo(f"{key['site_name']!r} (membership {key['membership_id']}): {out / name}")
    typer.echo(f"{len(keys)} key(s) written to {out}")


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def key_file_names(keys: list[dict[str, Any]]) -> list[str]:
    """One file name per key, each a plain name inside the output directory, whatever the sites are called.

    A site name made only of letters, digits and ``._-`` (not starting with a dot) and at most
    100 characters is kept: ``alpha-line-1.pub``. Any other name (``../x``, ``a/b``, ``.``,
    NUL, non-ASCII, too long) has each other character replaced by ``_``, is cut to 100
    characters and gets its membership id: ``a_b-m7.pub``. So does a name that another site's
    file already took, compared case-insensitively (macOS and Windows file systems).
    """
    names: list[str] = []
    taken: set[str] = set()
    for key in keys:
        site, membership = str(key["site_name"]), int(key["membership_id"])
        stem = site if _SAFE_NAME.fullmatch(site) else None
        if stem is None or stem.casefold() in taken:
            slug = re.sub(r"[^A-Za-z0-9._-]", "_", site)[:100].lstrip("._-") or "site"
            stem = f"{slug}-m{membership}"
            counter = 1
            while stem.casefold() in taken:  # only if another site is literally named like this one's fallback
                counter += 1
                stem = f"{slug}-m{membership}-{counter}"
        taken.add(stem.casefold())
        names.append(f"{stem}.pub")
    return names


@app.command("upload-run")
def upload_run(
    run_dir: Annotated[Path, typer.Argument(help="The coordinator's run directory (manifest.json, checkpoints/).")],
    federation: Annotated[
        int | None, typer.Option(help="Federation id (default: the one its queued upload names).")
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="Semantic version of the candidate release (default: the queued upload's).")
    ] = None,
    privacy: Annotated[Path | None, typer.Option(help="Privacy report (default RUN_DIR/privacy/report.json).")] = None,
    portal: Annotated[
        str | None,
        typer.Option("--portal", envvar="SANGSAENG_PORTAL_URL", help="Portal base URL (default: the queued upload's)."),
    ] = None,
    token: Token = None,
) -> None:
    """Report a finished run and upload its model as a draft release (coordinator token).

    Safe to repeat: what the portal already holds of this run is taken as done. A run whose
    upload `coordinator run` queued (RUN_DIR/portal-upload.json) needs no other option.
    """
    from portal.uploader import QUEUE_FILE, queued_upload
    from portal.uploader import upload_run as do_upload
    from sangsaeng.errors import SangsaengError
    from sangsaeng.files import write_json

    try:
        queued = queued_upload(run_dir) or {}
    except SangsaengError as exc:
        fail(str(exc))
    federation = federation if federation is not None else queued.get("federation")
    version = version or queued.get("version")
    portal = portal or queued.get("portal") or DEFAULT_URL
    if federation is None or version is None:
        fail("give --federation and --version (no upload is queued in this run directory)")
    try:
        with _http(portal, token) as api:
            run, release = do_upload(api, int(federation), run_dir, version=str(version), privacy_path=privacy)
    except SangsaengError as exc:  # UploadError, ModelArtifactError, PortalRequestError
        fail(str(exc))
        return
    if queued:
        write_json(run_dir / QUEUE_FILE, queued | {"status": "done", "last_error": None, "run_id": run["id"],
                                                   "release_id": release["id"]})  # fmt: skip
    typer.echo(f"run {run['id']} ({run['run_ref']}) reported; release {release['version']} (id {release['id']}) "
               f"uploaded as draft, sha256 {release['artifact_sha256']}")  # fmt: skip
    if run.get("privacy_report", {}).get("already_stored"):
        typer.echo("signed privacy report: already stored by an earlier upload of this run")
    elif "privacy_report" in run:
        typer.echo(f"signed privacy report stored (signature verified by the portal), "
                   f"sha256 {run['privacy_report']['sha256']}")  # fmt: skip


@app.command("privacy-report")
def privacy_report(
    run_id: Annotated[int, typer.Argument(help="Training run id.")],
    out: Annotated[Path, typer.Option(help="Directory for report.json, report.json.sig, coordinator.pub.pem.")],
    portal: PortalUrl = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Download a run's signed privacy report (auditor or anchor admin), check it and write it byte-exact."""
    import base64
    import hashlib

    from sangsaeng.errors import KeyFormatError
    from sangsaeng.signing import load_public_pem, verify

    answer = _call(portal, token, "GET", f"/runs/{run_id}/privacy-report")
    body = base64.b64decode(answer["report_b64"])
    signature = base64.b64decode(answer["signature_b64"])
    pem = answer["public_key_pem"].encode("ascii")
    if hashlib.sha256(body).hexdigest() != answer["sha256"]:
        fail(f"the report received does not have the sha256 the portal states ({answer['sha256']})")
    try:
        key = load_public_pem(pem, source="the coordinator key received")
    except KeyFormatError as exc:
        fail(str(exc))
        return
    if not verify(key, signature, body):
        fail("the signature does not verify over the report under the coordinator key received")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_bytes(body)
    (out / "report.json.sig").write_bytes(signature)
    (out / "coordinator.pub.pem").write_bytes(pem)
    typer.echo(f"run {answer['run_id']} ({answer['run_ref']}): signed privacy report written to {out}; "
               f"signature verifies; sha256 {answer['sha256']}; key {answer['public_key_fingerprint']}")  # fmt: skip


@app.command()
def release(
    action: Annotated[str, typer.Argument(help="approve, publish or withdraw")],
    release_id: Annotated[int, typer.Argument(help="Release id.")],
    reason: Annotated[str, typer.Option(help="Reason (withdraw).")] = "",
    portal: PortalUrl = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Approve, publish (signs it) or withdraw a release (anchor admin)."""
    if action not in ("approve", "publish", "withdraw"):
        fail(f"unknown action '{action}' (approve, publish or withdraw)")
    body = {"reason": reason or "withdrawn by the anchor"} if action == "withdraw" else None
    answer = _call(portal, token, "POST", f"/releases/{release_id}/{action}", json=body)
    typer.echo(f"release {answer['version']} is now {answer['status']}")


@app.command()
def ledger(
    federation: Annotated[int | None, typer.Option(help="Federation id: every scored run.")] = None,
    release_id: Annotated[int | None, typer.Option("--release", help="Release id: its run only.")] = None,
    csv: Annotated[Path | None, typer.Option("--csv", help="Write the ledger as CSV to this file.")] = None,
    portal: PortalUrl = DEFAULT_URL,
    token: Token = None,
) -> None:
    """The contribution ledger as the caller may see it (a supplier: its own rows, its share and the total)."""
    if (federation is None) == (release_id is None):
        fail("give one of --federation or --release")
    path = f"/federations/{federation}/contributions" if release_id is None else f"/releases/{release_id}/contributions"
    if csv is None:
        _show(_call(portal, token, "GET", path))
        return
    from portal.protocol import API_PREFIX
    from sangsaeng.errors import PortalRequestError
    from sangsaeng.files import write_atomic

    try:
        with _http(portal, token) as api:
            text = api.request("GET", f"{API_PREFIX}{path}.csv").text
    except PortalRequestError as exc:
        fail(str(exc))
        return
    write_atomic(csv, text.encode("utf-8"))
    typer.echo(f"{max(len(text.splitlines()) - 1, 0)} ledger row(s) written to {csv}")


@app.command("contribution-policy")
def contribution_policy(
    federation: Annotated[int, typer.Option(help="Federation id.")],
    min_share: Annotated[
        str, typer.Option(help="Least share of a release's run a supplier must have contributed to pull it; 'off'.")
    ],
    basis: Annotated[str, typer.Option(help="utility_share or data_share.")] = "utility_share",
    portal: PortalUrl = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Set the minimum contribution for release access, or switch it off (anchor admin; default off)."""
    if min_share.strip().lower() == "off":
        share: float | None = None
    else:
        try:
            share = float(min_share)
        except ValueError:
            fail(f"--min-share must be a number in (0, 1] or 'off', not {min_share!r}")
            return
    body = {"min_share": share, "basis": basis}
    answer = _call(portal, token, "PUT", f"/federations/{federation}/contribution-policy", json=body)
    if answer["min_contribution_share"] is None:
        typer.echo(f"federation {federation}: no minimum contribution for release access")
    else:
        typer.echo(f"federation {federation}: a supplier needs a {answer['contribution_basis'].replace('_', ' ')} of "
                   f"at least {answer['min_contribution_share']:g} in a release's run to pull it")  # fmt: skip
