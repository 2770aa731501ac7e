"""``sangsaeng privacy``: what an auditor and the anchor run to check privacy claims."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from privacy.errors import PrivacyError

__all__ = ["app"]

app = typer.Typer(help="Privacy reports, audit logs and the coordinator's signing key.", no_args_is_help=True)
console = Console()


@app.command()
def verify(
    report: Annotated[Path, typer.Argument(help="report.json")],
    public_key: Annotated[Path, typer.Option(help="The coordinator's public key (PEM).")],
    signature: Annotated[Path | None, typer.Option(help="Signature file (default: REPORT.sig).")] = None,
) -> None:
    """Check a privacy report's signature, recompute every epsilon, and check every budget.

    Each site's membership-inference figure is checked for consistency and shown as signed: the
    site measured it on its own rows, so no verifier can recompute it.
    """
    from privacy.report import verify_report

    try:
        data = verify_report(report, public_key, signature)
    except PrivacyError as exc:
        console.print(f"[bold red]INVALID:[/] {exc}")
        raise typer.Exit(code=1) from None
    for site, entry in sorted(data["sites"].items()):
        console.print(
            f"  {site}: epsilon {entry['epsilon']:.4f} <= budget {entry['budget_epsilon']:g} "
            f"(delta {entry['delta']:.2g}, {entry['accountant']}, {len(entry['rounds'])} rounds) recomputed"
        )
    if data.get("central_dp"):
        adaptive = ""
        if data["central_dp"].get("adaptive_clipping"):
            adaptive = " (adaptive clipping: update and count noise add up)"
        console.print(f"  supplier-level: epsilon {data['central_dp']['epsilon']:.3f} recomputed{adaptive}")
    for site, figure in sorted((data.get("membership_inference") or {}).items()):
        console.print(
            f"  {site}: membership-inference ROC-AUC {figure['auc']:.3f} ({figure['method']}, "
            f"{figure['n_train']} training vs {figure['n_holdout']} held-out rows) signed; measured on-site, "
            "not recomputable"
        )
    console.print(f"[green]valid:[/] signature good, {len(data['sites'])} site(s) recomputed and within budget")


@app.command("audit-verify")
def audit_verify(
    log: Annotated[Path, typer.Argument(help="An audit log (JSON lines).")],
    report: Annotated[
        Path | None, typer.Option(help="A report.json whose recorded log head must be in the chain.")
    ] = None,
) -> None:
    """Check an audit log's hash chain: finds edited, removed or reordered entries."""
    from privacy.audit import AuditLog

    audit = AuditLog(log)
    try:
        count = audit.verify()
        if report is not None:
            head = json.loads(report.read_text(encoding="utf-8")).get("audit_log_head")
            if head and head not in {e["hash"] for e in audit.entries()}:
                raise PrivacyError(
                    f"{log}: the head {head[:12]} recorded in {report} is not in the log: entries were cut"
                )
    except PrivacyError as exc:
        console.print(f"[bold red]BROKEN:[/] {exc}")
        raise typer.Exit(code=1) from None
    console.print(f"[green]intact:[/] {count} entries, chain verified")


@app.command("init-key")
def init_key(key_dir: Annotated[Path, typer.Option(help="Where the coordinator keeps its signing key.")]) -> None:
    """Create the coordinator's Ed25519 signing key (once; never overwritten)."""
    from privacy.keys import PUBLIC_NAME, init_signing_key

    try:
        init_signing_key(key_dir)
    except PrivacyError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(code=2) from None
    console.print(f"signing key created in {key_dir} (mode 0600); give auditors {key_dir / PUBLIC_NAME}")
