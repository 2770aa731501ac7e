"""A supplier site's portal commands: enrol, pull a published model, score local data.

    sangsaeng client enrol --portal URL --invite TOKEN[#CA-FINGERPRINT] [--site-dir DIR]
    sangsaeng client pull-model [--site-dir DIR] [--version X.Y.Z]
    sangsaeng client predict MODEL.zip DATA.csv [--out scores.csv]

The site directory (default ``./sangsaeng-site``) holds what enrolment creates on-site:

    site_key        the site's ECDSA P-384 private key, OpenSSH format, mode 0600 (never sent;
                    also usable as Flower's ``--auth-supernode-private-key``)
    site_key.pub    its public key (registered with the portal)
    token           the site's client API token, mode 0600
    site.json       portal URL, membership, federation, the portal's pinned release-signing key and,
                    when the anchor set them, the SuperLink address and the network CA's path
    network-ca.pem  the network CA certificate, checked against the invitation's fingerprint
    models/         pulled releases: <federation>-<version>.zip and .release.json

Heavy imports (httpx, cryptography, torch, pandas) happen inside the functions so the CLI
starts fast.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from client.errors import PortalClientError
from sangsaeng.console import fail
from sangsaeng.errors import ModelArtifactError, PortalRequestError, SangsaengError
from sangsaeng.files import write_private

__all__ = [
    "generate_site_key", "enroll", "split_invitation", "pull_model", "predict", "PredictReport",
    "enroll_command", "pull_model_command", "predict_command", "DEFAULT_SITE_DIR",
]  # fmt: skip

DEFAULT_SITE_DIR = Path("sangsaeng-site")


def generate_site_key(site_dir: Path) -> tuple[Any, str]:
    """Create the site's key pair on-site; returns (private key, OpenSSH public key line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())  # fmt: skip
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    write_private(site_dir / "site_key", private)
    (site_dir / "site_key.pub").write_text(public + "\n", encoding="utf-8")
    return key, public


def sign_enrolment(private_key: Any, invite_token: str, public_openssh: str) -> str:
    """Proof of possession: the ECDSA-SHA256 signature of the enrolment message, base64."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from portal.protocol import enrolment_message

    signature = private_key.sign(enrolment_message(invite_token, public_openssh), ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(signature).decode()


def _portal(portal: str, token: str | None = None, http: Any = None) -> Any:
    """The site's `PortalAPI` (httpx is imported here, not when the CLI starts)."""
    from sangsaeng.portal_api import PortalAPI

    return PortalAPI(portal, token, http=http)


def _ask(api: Any, method: str, path: str, what: str, **kwargs: Any) -> Any:
    """One portal request; the portal's refusal (or absence) becomes the site's `PortalClientError`."""
    try:
        return api.request(method, path, what=what, **kwargs)
    except PortalRequestError as exc:
        raise PortalClientError(str(exc)) from exc


def split_invitation(invitation: str) -> tuple[str, str | None]:
    """The invite token and the network CA fingerprint of an invitation code ``TOKEN#FINGERPRINT``."""
    token, _, fingerprint = invitation.strip().partition("#")
    fingerprint = fingerprint.strip().lower().replace(":", "")
    if fingerprint and (len(fingerprint) != 64 or any(c not in "0123456789abcdef" for c in fingerprint)):
        raise PortalClientError(
            "the invitation's CA fingerprint (after '#') is not 64 hex digits: paste the whole invitation code"
        )
    return token, fingerprint or None


def certificate_fingerprint(pem: str) -> str:
    """SHA-256 (hex) of a PEM certificate's DER bytes, as the portal computes a network CA's fingerprint."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    return x509.load_pem_x509_certificate(pem.encode("ascii")).fingerprint(hashes.SHA256()).hex()


def enroll(
    portal: str,
    invite: str,
    site_dir: Path = DEFAULT_SITE_DIR,
    *,
    admin_email: str | None = None,
    admin_password: str | None = None,
    ca_fingerprint: str | None = None,
    http: Any = None,
) -> dict[str, Any]:
    """Generate the site's key pair here, register the public key with the invite, store the answers.

    `invite` is the invitation code the anchor sent: the token and, after '#', the network CA
    certificate's fingerprint (`ca_fingerprint` gives it separately). The portal refuses the
    enrolment, leaving the invite unused, when its federation's CA is another; the site then
    checks the certificate it receives against the fingerprint itself and keeps it only if
    they match, with the SuperLink address, so that `client start` needs nothing else. A
    certificate that does not match raises `PortalClientError` (the site is enrolled, the
    certificate not kept); one the invitation carried no fingerprint for is not kept either,
    and the record's ``"warning"`` says so.
    """
    from portal.protocol import API_PREFIX

    site_dir = Path(site_dir)
    if (site_dir / "site.json").exists():
        raise PortalClientError(f"{site_dir} already holds an enrolled site; use another --site-dir")
    token_text, carried = split_invitation(invite)
    if ca_fingerprint is not None:
        expected = split_invitation("#" + ca_fingerprint)[1]
        if carried is not None and carried != expected:
            raise PortalClientError("--ca-fingerprint differs from the fingerprint in the invitation code; check both")
    else:
        expected = carried
    key, public = generate_site_key(site_dir)
    body: dict[str, Any] = {
        "invite_token": token_text,
        "public_key": public,
        "proof": sign_enrolment(key, token_text, public),
    }
    if expected is not None:
        body["network_ca_fingerprint"] = expected
    if admin_email:
        body |= {"admin_email": admin_email, "admin_password": admin_password}
    with _portal(portal, http=http) as api:
        answer = _ask(api, "POST", f"{API_PREFIX}/sites/enrol", "enrolment", json=body).json()
    write_private(site_dir / "token", answer["client_token"].encode())
    record = {
        "portal": portal.rstrip("/"),
        "membership_id": answer["membership"]["id"],
        "federation_id": answer["membership"]["federation_id"],
        "site_name": answer["membership"]["site_name"],
        "key_fingerprint": answer["membership"]["key_fingerprint"],
        "portal_signing_key": answer["portal_signing_key"],
        "portal_signing_key_fingerprint": answer["portal_signing_key_fingerprint"],
    }
    problem = None
    ca_pem = answer.get("network_ca_pem")
    if ca_pem:
        try:
            received = certificate_fingerprint(ca_pem)
        except ValueError as exc:
            received, problem = None, f"the network CA certificate the portal sent cannot be read ({exc})"
        if received is not None and expected is None:
            record["warning"] = (
                f"the portal sent a network CA certificate ({received}) but the invitation carried no fingerprint to "
                "check it against, so it was not saved: ask the anchor for the certificate and pass --ca-cert and "
                "--superlink to `client start`"
            )
        elif received is not None and received != expected:
            problem = (
                f"the portal sent a network CA certificate whose fingerprint {received[:16]}… is not the "
                f"invitation's {str(expected)[:16]}…: it was not saved; do not join the network, tell the anchor"
            )
        elif received is not None:
            (site_dir / "network-ca.pem").write_text(ca_pem, encoding="ascii")
            record |= {"ca_cert": "network-ca.pem", "ca_fingerprint": received}
    if "ca_cert" in record and answer.get("superlink_address"):
        record["superlink"] = answer["superlink_address"]
    (site_dir / "site.json").write_text(
        json.dumps({k: v for k, v in record.items() if k != "warning"}, indent=2), encoding="utf-8"
    )
    if problem:
        raise PortalClientError(f"enrolled as '{record['site_name']}', but {problem}")
    return record


def _load_site(site_dir: Path) -> tuple[dict[str, Any], str]:
    try:
        record = json.loads((site_dir / "site.json").read_text(encoding="utf-8"))
        token = (site_dir / "token").read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise PortalClientError(f"{site_dir} holds no enrolled site: run `sangsaeng client enrol` first") from None
    return record, token


_SEMVER = r"(0|[1-9]\d{0,5})\.(0|[1-9]\d{0,5})\.(0|[1-9]\d{0,5})(-[0-9A-Za-z-]{1,20}(\.[0-9A-Za-z-]{1,20}){0,4})?"


def verify_release(
    release: dict[str, Any], artifact: bytes, signing_key_pem: str, *, federation_id: int, version: str
) -> dict[str, Any]:
    """Refuse anything but this federation's published `version` whose artifact hash and signature check out.

    Returns the signed model card. Everything the site acts on afterwards (the file name, the
    version) comes from that card, never from the unsigned fields around it: the portal signs
    every federation's releases with one key, so a valid signature alone does not say the
    release is this site's (a release of another federation, or another version, verifies too).
    """
    import re

    from portal.protocol import signing_payload

    name = f"release {version}"
    if release.get("status") != "published":
        raise PortalClientError(f"{name} is {release.get('status')}, not published: refused")
    card = release.get("model_card") or {}
    digest = hashlib.sha256(artifact).hexdigest()
    if digest != release.get("artifact_sha256") or digest != card.get("artifact", {}).get("sha256"):
        raise PortalClientError(f"{name}: artifact hash {digest} does not match the signed model card: refused")
    from sangsaeng.signing import load_public_pem, verify_b64

    try:
        key = load_public_pem(signing_key_pem, source="the portal key pinned at enrolment (site.json)")
    except SangsaengError as exc:
        raise PortalClientError(f"{name}: {exc}: refused") from None
    if not verify_b64(key, str(release.get("signature") or ""), signing_payload(card)):
        raise PortalClientError(f"{name}: signature does not verify with the portal key pinned at enrolment: refused")
    # Only now is the card trusted; it must name this site's federation and the version asked for.
    signed_federation = (card.get("federation") or {}).get("id")
    if type(signed_federation) is not int or signed_federation != federation_id:
        raise PortalClientError(
            f"{name}: the signed model card is for federation {signed_federation!r}, not this site's federation "
            f"{federation_id}: refused"
        )
    signed_version = card.get("version")
    if not isinstance(signed_version, str) or not re.fullmatch(_SEMVER, signed_version):
        raise PortalClientError(f"{name}: the signed model card names no valid version ({signed_version!r}): refused")
    if signed_version != version or release.get("version") != version:
        raise PortalClientError(
            f"{name}: the signed model card is for version {signed_version}, not {version}: refused"
        )
    return card


def pull_model(site_dir: Path = DEFAULT_SITE_DIR, *, version: str | None = None, http: Any = None) -> Path:
    """Download a published release (the newest, or `version`), verify it, and store it in site_dir/models."""
    site_dir = Path(site_dir)
    record, token = _load_site(site_dir)
    with _portal(record["portal"], token, http=http) as api:
        return _pull_release(api, site_dir, record, version)


def _pull_release(api: Any, site_dir: Path, record: dict[str, Any], version: str | None) -> Path:
    """`pull_model`'s steps over an open `PortalAPI`."""
    from portal.protocol import API_PREFIX

    fed = record["federation_id"]
    releases = _ask(api, "GET", f"{API_PREFIX}/federations/{fed}/releases", "listing releases").json()
    published = [r for r in releases if r["status"] == "published"]
    if version is not None:
        chosen = [r for r in releases if r["version"] == version]
        if not chosen:
            raise PortalClientError(f"no release {version} in federation {fed}")
        release = chosen[0]
    elif published:
        release = published[0]
    else:
        raise PortalClientError(f"federation {fed} has no published release yet")
    artifact = _ask(api, "GET", f"{API_PREFIX}/releases/{release['id']}/artifact", f"downloading {release['version']}")
    card = verify_release(
        release,
        artifact.content,
        record["portal_signing_key"],
        federation_id=fed,
        version=version or release["version"],
    )
    out_dir = site_dir / "models"
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"federation-{card['federation']['id']}-{card['version']}.zip"  # signed fields only
    target.write_bytes(artifact.content)
    target.with_suffix(".release.json").write_text(json.dumps(release, indent=2), encoding="utf-8")
    return target


@dataclass(frozen=True)
class PredictReport:
    """What `predict` wrote and measured.

    `predictions` counts the rows of the scores file. For a sequence task `groups` counts the
    groups in the data, `windows` the windows scored, and `dropped_groups` / `dropped_rows`
    what ``short = "drop"`` left without a window (no prediction); all four are 0 otherwise.
    For an image task `images` counts the images listed (rows written), `predictions` those
    scored, `skipped` / `first_skipped` the bad ones (written without a score) and `converted`
    the images whose channels were converted, by their own mode.
    """

    path: Path
    metrics: dict[str, float]
    predictions: int
    groups: int = 0
    windows: int = 0
    dropped_groups: int = 0
    dropped_rows: int = 0
    images: int = 0
    skipped: int = 0
    first_skipped: tuple[str, ...] = ()
    converted: dict[str, int] = field(default_factory=dict)
    channels: int = 0  # an image task's channels (what `converted` images were converted to)
    # The card's operating point was chosen on DP-noised histograms that could not support it (its warning).
    threshold_warning: str | None = None


def predict(
    model: Path,
    data: Path,
    out: Path | None = None,
    *,
    all_windows: bool = False,
    batch_size: int = 64,
    on_progress: Callable[[int, int], None] | None = None,
) -> PredictReport:
    """Score a local CSV with a pulled model; writes the scores file and, if labels are present, measures.

    An image task (``[task.image]``) scores a manifest or a folder of images instead, `batch_size`
    images at a time, calling `on_progress` (images done, in all) after each batch; a bad image
    is written with an empty score and its reason (see `client.predict_images`).

    Binary tasks get ``p_<label>`` and, when the model carries the federation's operating point
    (`portal.artifact.ModelArtifactContent.operating_point`), ``flag_<label>`` (1: inspect,
    score at least the threshold) and ``threshold``; regression ``predicted_<label>``; multiclass
    tasks get the most probable class, ``predicted_<label>``, and its probability, ``p_<label>``,
    and with an operating point ``p_defect`` (1 - P(normal class)), ``flag_defect`` and
    ``threshold``. A row task
    scores every row, next to its id columns. A sequence task (``[task.sequence]``) scores
    windows: by default one row per group, its prediction at its latest row (the group, the
    order value of that row, its other id columns); with `all_windows` one row per window
    (the order value of the window's last row). Rows of the scores file are sorted by group and
    order, whatever the order of the data. With labels present the metrics are computed over
    every window (sequence regression adds the remaining-useful-life metrics at each group's
    last row), whichever rows are written.
    """
    import numpy as np
    import pandas as pd

    from models.nets import build_model, set_weights
    from models.scaler import FederatedScaler
    from models.schema import load_site_data, read_table
    from models.tasks import TaskSpec
    from models.training import predict_frame, task_metrics
    from portal.artifact import read_artifact

    model, data = Path(model), Path(data)
    if not model.exists():
        raise PortalClientError(f"{model}: model file not found")
    blob = model.read_bytes()
    sidecar = model.with_suffix(".release.json")
    if sidecar.exists():
        expected = json.loads(sidecar.read_text(encoding="utf-8")).get("artifact_sha256")
        if hashlib.sha256(blob).hexdigest() != expected:
            raise PortalClientError(f"{model}: content does not match the hash of its release record: refused")
    try:
        content = read_artifact(blob)
    except ModelArtifactError as exc:
        raise PortalClientError(f"{model}: {exc}") from None
    spec = TaskSpec.from_dict(content.task, source=str(model))
    scaler = FederatedScaler.from_json(content.scaler_json)
    if spec.image is not None:
        return _predict_images(content, data, out, spec=spec, scaler=scaler, batch_size=batch_size,
                               on_progress=on_progress)  # fmt: skip
    if data.is_dir():
        raise PortalClientError(f"{data} is a folder; task '{spec.name}' scores a CSV or Parquet file")
    raw = read_table(data)
    has_label = all(c in raw.columns for c in spec.label_columns)
    if has_label:
        frame = load_site_data(data, spec)
    else:
        # Scoring new parts: no label yet. Validate the features with a placeholder label.
        from models.schema import validate_frame

        placeholder = {c: 0 for c in spec.label_from} if spec.label_from else {spec.label: _placeholder(spec, scaler)}
        frame = validate_frame(raw.assign(**placeholder), spec, source=data)
    net = build_model(scaler.n_inputs, name=content.model, hidden=content.hidden, outputs=scaler.n_outputs)
    set_weights(net, content.weights)
    scored = predict_frame(net, frame, spec=spec, scaler=scaler)
    shown = scored if all_windows else scored.latest()
    # The rows of `frame` are the rows of `raw`, in the same order: ids are read from the file as written.
    sequence = spec.sequence
    leading = [sequence.group, sequence.order] if sequence is not None else []
    keep = [*leading, *(c for c in spec.id_columns if c in raw.columns and c not in leading)]
    result = raw.iloc[shown.rows][keep].reset_index(drop=True) if keep else pd.DataFrame(index=range(len(shown.rows)))
    scores = shown.predictions
    point = content.operating_point
    if spec.kind == "multiclass":
        best = scores.argmax(axis=1)
        result[f"predicted_{spec.label}"] = [scaler.classes[k] for k in best]
        result[f"p_{spec.label}"] = scores[np.arange(len(best)), best]
        if point is not None:  # "any defect": 1 - P(normal class) against the card's threshold
            from models.histogram import normal_class

            defect = 1.0 - scores[:, normal_class(scaler.classes)]
            result["p_defect"] = defect
            result["flag_defect"] = (defect >= float(point["threshold"])).astype(int)
            result["threshold"] = float(point["threshold"])
    else:
        column = f"predicted_{spec.label}" if spec.kind == "regression" else f"p_{spec.label}"
        result[column] = scores
        if spec.kind == "binary" and point is not None:  # the threshold the federation chose, signed in the card
            result[f"flag_{spec.label}"] = (scores >= float(point["threshold"])).astype(int)
            result["threshold"] = float(point["threshold"])
    out = Path(out) if out else data.with_name(f"{data.stem}.scores.csv")
    result.to_csv(out, index=False)
    metrics: dict[str, float] = {}
    if has_label and len(scored.rows):
        labels = frame[spec.label].to_numpy()[scored.rows]
        truth = scaler.class_index(labels) if spec.kind == "multiclass" else labels.astype(np.float64)
        metrics = task_metrics(spec, truth, scored.predictions, scored.last, classes=scaler.classes)
    plan = scored.plan
    warning = point.get("warning") if point is not None else None
    if plan is None:
        return PredictReport(out, metrics, predictions=len(result), threshold_warning=warning)
    return PredictReport(
        out, metrics, predictions=len(result), groups=len(plan.lengths), windows=plan.n_windows,
        dropped_groups=plan.dropped_groups, dropped_rows=plan.dropped_rows, threshold_warning=warning,
    )  # fmt: skip


def _predict_images(
    content: Any, data: Path, out: Path | None, *, spec: Any, scaler: Any, batch_size: int,
    on_progress: Callable[[int, int], None] | None,
) -> PredictReport:  # fmt: skip
    """`predict` for an image task: `client.predict_images.score_images` with the artifact's cnn."""
    from client.predict_images import score_images
    from models.nets import build_model, set_weights

    if not data.exists():
        raise PortalClientError(f"{data}: no such manifest or folder of images")
    net = build_model(scaler.n_inputs, name=content.model, hidden=content.hidden, outputs=scaler.n_outputs)
    set_weights(net, content.weights)
    scored = score_images(net, data, out, spec=spec, scaler=scaler, batch_size=batch_size, on_progress=on_progress)
    return PredictReport(
        scored.path, scored.metrics, predictions=scored.scored, images=scored.rows, skipped=scored.skipped,
        first_skipped=scored.first_skipped, converted=dict(scored.converted), channels=spec.image.channels,
    )  # fmt: skip


def _placeholder(spec: Any, scaler: Any) -> object:
    """A label value that passes validation, for rows that have no label yet."""
    return scaler.classes[0] if spec.kind == "multiclass" else 0


# -- typer commands (registered on `sangsaeng client` in client/cli.py) ------------------------------------
@contextlib.contextmanager
def _progress_bar() -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr (the scores' summary stays on stdout), shown once an image task reports."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("scoring images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True,
    )  # fmt: skip
    task: list[Any] = []

    def update(done: int, total: int) -> None:
        if not task:
            progress.start()
            task.append(progress.add_task("images", total=total))
        progress.update(task[0], completed=done)

    try:
        yield update
    finally:
        if task:
            progress.stop()


SiteDir = Annotated[Path, typer.Option(help="The site's directory (keys, token, pulled models).")]


def enroll_command(
    portal: Annotated[str, typer.Option(help="Portal URL, e.g. https://portal.example.com")],
    invite: Annotated[
        str, typer.Option(help="The invitation code the anchor sent you: TOKEN#CA-FINGERPRINT (single use).")
    ],
    site_dir: SiteDir = DEFAULT_SITE_DIR,
    admin_email: Annotated[str | None, typer.Option(help="Also create your supplier admin login.")] = None,
    ca_fingerprint: Annotated[
        str | None, typer.Option(help="The network CA's SHA-256 fingerprint, if the anchor sent it apart.")
    ] = None,
) -> None:
    """Enrol this site: create its key pair here (the private key never leaves) and register the public key."""
    password = (
        typer.prompt("Password for the portal login", hide_input=True, confirmation_prompt=True)
        if admin_email
        else None
    )
    try:
        record = enroll(
            portal, invite, site_dir, admin_email=admin_email, admin_password=password, ca_fingerprint=ca_fingerprint
        )
    except SangsaengError as exc:
        fail(exc)
    typer.echo(
        f"enrolled site '{record['site_name']}' (membership {record['membership_id']}); key {record['key_fingerprint']}"
    )
    typer.echo(f"private key: {Path(site_dir) / 'site_key'} (mode 0600). Waiting for the anchor's approval.")
    if record.get("warning"):
        typer.secho(f"warning: {record['warning']}", err=True)
    if record.get("superlink"):
        typer.echo(
            f"network: {record['superlink']}, CA {record['ca_fingerprint'][:16]}… checked against the invitation; "
            f"once approved: sangsaeng client start --site-dir {site_dir} --data YOUR-EXPORT.csv"
        )


def pull_model_command(
    site_dir: SiteDir = DEFAULT_SITE_DIR,
    version: Annotated[str | None, typer.Option(help="Release version (default: newest published).")] = None,
) -> None:
    """Download the newest published model, verify its signature and hash, and store it locally."""
    try:
        path = pull_model(site_dir, version=version)
    except SangsaengError as exc:
        fail(exc)
    typer.echo(f"verified and saved: {path}")


def predict_command(
    model: Annotated[Path, typer.Argument(help="A pulled model (.zip).")],
    data: Annotated[Path, typer.Argument(help="CSV or Parquet file to score.")],
    out: Annotated[Path | None, typer.Option(help="Where to write the scores (CSV).")] = None,
    all_windows: Annotated[
        bool,
        typer.Option(
            "--all-windows",
            help="Sequence tasks: one prediction per window (at each window's last row), not only each group's latest.",
        ),
    ] = False,
    batch_size: Annotated[
        int, typer.Option(help="Image tasks: images decoded and scored at a time (bounds memory).", min=1)
    ] = 64,
) -> None:
    """Score a local file (image tasks: a manifest or a folder of images) with a pulled model; the data stays here."""
    try:
        with _progress_bar() as on_progress:
            report = predict(model, data, out, all_windows=all_windows, batch_size=batch_size, on_progress=on_progress)
    except SangsaengError as exc:
        fail(exc)
    typer.echo(f"scores: {report.path} ({report.predictions} prediction(s))")
    if report.threshold_warning:
        typer.echo(f"warning: the model card's threshold is unreliable: {report.threshold_warning}", err=True)
    if report.skipped:
        typer.echo(f"{report.skipped} of {report.images} image(s) not scored (written with an empty score and the "
                   f"reason in column 'problem'); first {len(report.first_skipped)}:")  # fmt: skip
        for problem in report.first_skipped:
            typer.echo(f"  {problem}")
    if report.converted:
        from models.images import describe_conversions

        typer.echo(describe_conversions(report.converted, report.channels))
    if report.groups:
        each = "one per window" if all_windows else "one per group, at its latest row"
        typer.echo(f"{report.groups} group(s), {report.windows} window(s); written: {each}")
    if report.dropped_groups or report.dropped_rows:
        typer.echo(
            f"no prediction for {report.dropped_groups} group(s) shorter than the window and for "
            f'{report.dropped_rows} row(s) before a group\'s first full window (short = "drop")'
        )
    for name, value in report.metrics.items():
        typer.echo(f"{name}: {value:.4f}")
