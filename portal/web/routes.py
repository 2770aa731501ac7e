"""Server-rendered pages (Jinja2). Same access rules and flows as the API (`portal.services`).

Sign-in sets an HttpOnly, SameSite=Strict session cookie; every form carries a CSRF token
bound to the session. No JavaScript is needed. Pages are in Korean or English
(`portal.web.i18n`): every template has ``_``; strings made here go through `gettext_for`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from pydantic import ValidationError
from sqlmodel import col, or_, select

from portal import crud
from portal.access import Principal, authenticate, federation_view, require, visible_federations
from portal.api.deps import SESSION_COOKIE, SessionDep, SettingsDep, SignerDep
from portal.api.params import MAX_ID, DbId
from portal.api.routes.login import login as do_login
from portal.core.config import Settings
from portal.core.errors import BadRequest, Conflict, Forbidden, PortalError, UnprocessableContent
from portal.core.security import cross_site_reason, csrf_matches, csrf_token
from portal.models import (
    AuditorAssignment,
    ContributionBasis,
    FederationCreate,
    InviteCreate,
    Organisation,
    OrganisationCreate,
    OrgKind,
    TrainingRun,
    UserCreate,
)
from portal.services import contributions, federations, organisations, users
from portal.services.audit import audit_trail
from portal.services.enrolment import invitation_code, invite_expiry, invite_site
from portal.services.memberships import memberships_of, transition_membership
from portal.services.privacy import privacy_entries, privacy_reports_of
from portal.services.releases import (
    approve_release,
    get_release_public,
    publish_release,
    releases_of,
    withdraw_release,
)
from portal.services.runs import interrupt_run, run_public, runs_of
from portal.web.charts import bar_chart, line_chart
from portal.web.i18n import (
    N_,
    LanguageCookie,
    gettext_for,
    i18n_context,
    install_gettext,
    request_locale,
    translations,
)

__all__ = ["install_web", "render_error"]

ROOT = Path(__file__).resolve().parents[1]


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(ROOT / "templates")), autoescape=True)
    # `tojson` (audit details, model cards) shows Korean names as written, not as \uXXXX escapes;
    # it still escapes <, >, & and ' for HTML.
    env.policies["json.dumps_kwargs"] = {"sort_keys": True, "ensure_ascii": False}
    install_gettext(env)
    return env


templates = Jinja2Templates(env=_environment(), context_processors=[i18n_context])
router = APIRouter(tags=["web"], include_in_schema=False)


def install_web(app: FastAPI) -> None:
    """Mount the static files and the web pages on `app`, with the language switch's cookie.

    Both catalogues are read here, so that a broken one stops the portal at start, not at a page.
    """
    from portal.main import API_PREFIX

    for locale in ("ko", "en"):
        translations(locale)
    settings = app.state.settings
    app.add_middleware(LanguageCookie, api_prefix=API_PREFIX, secure=bool(settings.cookie_secure))
    app.mount("/static", StaticFiles(directory=str(ROOT / "static")), name="static")
    app.include_router(router)


# The headline of the error page for each status; the reason below it comes from the service.
ERROR_TITLES = {
    400: N_("The request could not be used"),
    401: N_("Please sign in"),
    403: N_("Not allowed"),
    404: N_("Not found"),
    409: N_("Not possible in the current state"),
    410: N_("No longer available"),
    413: N_("Too large"),
    422: N_("Please check what you entered"),
    429: N_("Too many attempts"),
}
OTHER_ERROR_TITLE = N_("The request was refused")
# Reasons worded once, without details, that pages may show: translated where the page shows them.
# Reasons naming a site, a version or a number stay in English (as the API words them) on a Korean page.
SHOWN_REASONS = (
    N_("incorrect e-mail or password"),
    N_("sign in as a person to use the web pages"),
    N_("the form expired or did not come from this portal (CSRF check failed); reload the page"),
    N_("give a reason for withdrawing the release"),
    N_("no such id"),
    N_("only approved or active sites may download releases"),
)


def localised_reason(request: Request, status: int, reason: str, headers: dict[str, str] | None) -> tuple[str, bool]:
    """`reason` in the page's language, and whether it is (else it is shown as the API words it, in English)."""
    tr = gettext_for(request)
    if status == 429 and headers and headers.get("Retry-After", "").isdigit():
        seconds = int(headers["Retry-After"])
        return tr.gettext("too many failed sign-ins; try again in %(seconds)d s") % {"seconds": seconds}, True
    translated = tr.gettext(reason)
    return translated, translated != reason or request_locale(request) == "en"


def render_error(request: Request, status: int, reason: str, headers: dict[str, str] | None = None) -> Response:
    """The error page for a refused request; a 401 sends the browser to the sign-in page instead."""
    if status == 401 and request.url.path != "/login":
        return RedirectResponse("/login", status_code=303)
    text, localised = localised_reason(request, status, reason, headers)
    context = {
        "status": status,
        "title": gettext_for(request).gettext(ERROR_TITLES.get(status, OTHER_ERROR_TITLE)),
        "reason": text,
        "reason_localised": localised,
        "me": None,
    }
    return templates.TemplateResponse(request, "error.html", context, status_code=status, headers=headers)


def web_principal(request: Request, session: SessionDep) -> Principal:
    """The signed-in person from the session cookie; machine tokens are refused (web pages are for people)."""
    principal = authenticate(session, request.cookies.get(SESSION_COOKIE))
    if principal.user is None:
        raise Forbidden(N_("sign in as a person to use the web pages"))
    return principal


Me = Annotated[Principal, Depends(web_principal)]


def check_same_origin(request: Request, settings: Settings) -> None:
    """Refuse a form posted from another origin (another site, a sibling subdomain, another port)."""
    reason = cross_site_reason(request.headers, own_origin=settings.public_origin, host=request.url.netloc)
    if reason is not None:
        raise Forbidden(f"the form did not come from this portal ({reason}); open the portal and try again")


def check_csrf(request: Request, settings: SettingsDep, csrf: Annotated[str, Form(max_length=200)] = "") -> None:
    """Every state-changing form: posted from the portal's own origin, with the session's token."""
    check_same_origin(request, settings)
    if not csrf_matches(settings.secret_key, request.cookies.get(SESSION_COOKIE, ""), csrf):
        raise Forbidden(N_("the form expired or did not come from this portal (CSRF check failed); reload the page"))


Csrf = Depends(check_csrf)


def page(request: Request, name: str, me: Principal, **context: Any) -> HTMLResponse:
    """Render template `name` for the signed-in person, with the role and the session's CSRF token."""
    settings = request.app.state.settings
    token = request.cookies.get(SESSION_COOKIE, "")
    return templates.TemplateResponse(
        request, name, {"me": me, "role": me.kind, "csrf": csrf_token(settings.secret_key, token), **context}
    )


def _form_error(exc: ValidationError) -> UnprocessableContent:
    return UnprocessableContent("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))


# -- sign-in -------------------------------------------------------------------------------------
@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> HTMLResponse:
    """The sign-in form."""
    return templates.TemplateResponse(request, "login.html", {"me": None, "error": None, "error_localised": True})


@router.post("/login")
def login_submit(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    email: Annotated[str, Form(max_length=254)],
    password: Annotated[str, Form(max_length=128)],
) -> Response:
    """Check e-mail and password (rate-limited, as the API) and set the HttpOnly session cookie."""
    # No session exists yet to bind a token to; the origin check stops a cross-site page from
    # signing the victim's browser in to the attacker's account (login CSRF).
    try:
        check_same_origin(request, settings)
        token, _ = do_login(session, settings, request, email, password)
    except PortalError as exc:
        text, localised = localised_reason(request, exc.status, exc.reason, exc.headers)
        context = {"me": None, "error": text, "error_localised": localised}
        return templates.TemplateResponse(request, "login.html", context, status_code=exc.status, headers=exc.headers)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=bool(settings.cookie_secure),  # settled by Settings: production means Secure
        max_age=settings.session_minutes * 60,
    )
    return response


@router.post("/logout", dependencies=[Csrf])
def logout(session: SessionDep, me: Me) -> Response:
    """Revoke this session's token and drop the cookie (CSRF-checked)."""
    from portal.models import utcnow

    me.token.revoked_at = utcnow()
    session.add(me.token)
    session.commit()
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


# -- dashboard and federation -----------------------------------------------------------------------
@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request, session: SessionDep, me: Me) -> HTMLResponse:
    """The federations the person has a part in, and the tasks a new federation can train."""
    from models.tasks import builtin_tasks

    return page(
        request, "dashboard.html", me, federations=visible_federations(session, me), tasks=sorted(builtin_tasks())
    )


@router.post("/federations", dependencies=[Csrf])
def create_federation(
    session: SessionDep,
    me: Me,
    name: Annotated[str, Form()],
    task_name: Annotated[str, Form()],
    threshold: Annotated[float, Form()],
    description: Annotated[str, Form()] = "",
) -> Response:
    """Create a federation from the dashboard form (anchor admins; the same checks as the API)."""
    try:
        data = FederationCreate(name=name, task_name=task_name, threshold=threshold, description=description)
    except ValidationError as exc:
        raise _form_error(exc) from None
    federation = federations.create_federation(session, me, data)
    return RedirectResponse(f"/federations/{federation.id}", status_code=303)


def _fid(federation_id: int) -> int:
    if not 1 <= federation_id <= MAX_ID:
        raise BadRequest(N_("no such id"))
    return federation_id


@router.get("/federations/{federation_id}", response_class=HTMLResponse)
def federation_page(request: Request, session: SessionDep, me: Me, federation_id: int) -> Response:
    """A federation's members (auditors go to the privacy page: they do not see membership details)."""
    federation, role = federation_view(session, me, _fid(federation_id))
    if role == "auditor":  # auditors do not see membership details
        return RedirectResponse(f"/federations/{federation.id}/privacy", status_code=303)
    members = memberships_of(session, me, federation_id)
    names = dict(session.exec(select(Organisation.id, Organisation.name)).all())
    auditors: list[Organisation] = []
    assigned: list[str] = []
    if role == "anchor":
        # Only those assign_auditor accepts: created by this anchor, or by the operator (no owner).
        auditors = list(
            session.exec(
                select(Organisation)
                .where(Organisation.kind == OrgKind.auditor)
                .where(or_(col(Organisation.owner_org_id).is_(None), Organisation.owner_org_id == me.org_id))
                .order_by(col(Organisation.id))
            )
        )
        assigned = list(
            session.exec(
                select(Organisation.name)
                .join(AuditorAssignment, col(AuditorAssignment.organisation_id) == Organisation.id)
                .where(AuditorAssignment.federation_id == federation.id)
                .order_by(col(Organisation.name))
            )
        )
    return page(
        request,
        "federation.html",
        me,
        federation=federation,
        role=role,
        members=[crud.membership_public(session, m, names) for m in members],  # type: ignore[arg-type]  # Organisation.id keys are Optional
        auditors=auditors,
        assigned_auditors=assigned,
        tab="members",
    )


@router.post("/federations/{federation_id}/invite", response_class=HTMLResponse, dependencies=[Csrf])
def invite(
    request: Request,
    session: SessionDep,
    me: Me,
    federation_id: int,
    organisation_name: Annotated[str, Form()],
    site_name: Annotated[str, Form()],
    expires_hours: Annotated[int, Form()] = 72,
) -> HTMLResponse:
    """Invite a supplier's site; shows the single-use invite token once (anchor admins)."""
    try:
        data = InviteCreate(organisation_name=organisation_name, site_name=site_name, expires_hours=expires_hours)
    except ValidationError as exc:
        raise _form_error(exc) from None
    token, membership = invite_site(session, me, _fid(federation_id), data)
    federation, _ = federation_view(session, me, federation_id)
    return page(
        request,
        "invite_done.html",
        me,
        federation=federation,
        token=invitation_code(token, federation.network_ca_fingerprint),  # token#CA-fingerprint: the site checks it
        membership=membership,
        portal_url=request.app.state.settings.public_url,  # never the Host header: a poisoned one would be shown
        expires_at=invite_expiry(session, membership.id),  # type: ignore[arg-type]  # SQLModel ids are Optional until flushed
    )


@router.post("/federations/{federation_id}/auditors", dependencies=[Csrf])
def assign_auditor(
    session: SessionDep, me: Me, federation_id: int, organisation_id: Annotated[DbId, Form()]
) -> Response:
    """Make an auditor organisation an auditor of the federation (anchor admins)."""
    federations.assign_auditor(session, me, _fid(federation_id), organisation_id)
    return RedirectResponse(f"/federations/{federation_id}", status_code=303)


@router.post("/federations/{federation_id}/auditor-organisations", dependencies=[Csrf])
def create_auditor_organisation(
    session: SessionDep,
    me: Me,
    federation_id: int,
    name: Annotated[str, Form(max_length=200)],
    email: Annotated[str, Form(max_length=254)] = "",
    password: Annotated[str, Form(max_length=128)] = "",
    full_name: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """Create an auditor organisation, optionally its first account, and assign it here (anchor admins).

    The same services and checks as ``POST /organisations``, ``POST /users`` and
    ``POST /federations/{id}/auditors``; everything is checked before the first is stored.
    """
    federation, role = federation_view(session, me, _fid(federation_id))
    require(role, ("anchor",), "create auditor organisations")
    try:
        org_data = OrganisationCreate(name=name, kind=OrgKind.auditor)
        account = None
        if email.strip() or password:
            # organisation_id is the new organisation's, set below; 1 only lets the form be checked first.
            account = UserCreate(email=email, password=password, full_name=full_name, organisation_id=1)
    except ValidationError as exc:
        raise _form_error(exc) from None
    if account is not None and crud.get_user_by_email(session, account.email) is not None:
        raise Conflict(f"a user with e-mail '{account.email}' already exists")
    org = organisations.create_organisation(session, me, org_data)
    assert org.id is not None  # committed
    if account is not None:
        users.create_user(session, me, account.model_copy(update={"organisation_id": org.id}))
    federations.assign_auditor(session, me, federation.id, org.id)  # type: ignore[arg-type]  # a stored federation has an id
    return RedirectResponse(f"/federations/{federation.id}", status_code=303)


@router.post("/memberships/{membership_id}/{action}", dependencies=[Csrf])
def change_membership(
    session: SessionDep, me: Me, membership_id: int, action: str, reason: Annotated[str, Form(max_length=500)] = ""
) -> Response:
    """Approve, reject, suspend, reinstate or revoke a site (anchor admins)."""
    membership = transition_membership(session, me, _fid(membership_id), action, reason)
    return RedirectResponse(f"/federations/{membership.federation_id}", status_code=303)


# -- runs and privacy -------------------------------------------------------------------------------
RUN_REFRESH_SECONDS = 10  # a running run's page reloads itself this often (its coordinator reports every round)


@router.get("/federations/{federation_id}/runs", response_class=HTMLResponse)
def runs_page(request: Request, session: SessionDep, settings: SettingsDep, me: Me, federation_id: int) -> HTMLResponse:
    """The runs the person may see, with only their own sites for a supplier; stalled runs say so."""
    federation, role = federation_view(session, me, _fid(federation_id))
    runs = runs_of(session, me, federation_id, stall_minutes=settings.run_stall_minutes)
    return page(request, "runs.html", me, federation=federation, role=role, runs=runs, tab="runs")


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, session: SessionDep, settings: SettingsDep, me: Me, run_id: int) -> HTMLResponse:
    """One run with its charts: the global metric against the threshold, and the metric per visible site."""
    run = run_public(session, me, _fid(run_id), stall_minutes=settings.run_stall_minutes)
    federation, role = federation_view(session, me, run.federation_id)
    metric = federation.metric
    global_series = {metric: [(r["round"], r["metrics"].get(metric)) for r in run.rounds]}
    sites = sorted({s for r in run.rounds for s in r.get("per_site", {})})
    site_series = {s: [(r["round"], r["per_site"].get(s, {}).get(metric)) for r in run.rounds] for s in sites}
    tr = gettext_for(request)
    global_title = tr.gettext("Global %(metric)s over rounds") % {"metric": metric}
    site_title = tr.gettext("%(metric)s per site over rounds") % {"metric": metric}
    charts = [
        line_chart(
            global_series,
            title=global_title,
            y_label=metric,
            x_label=tr.gettext("round"),
            hline=(tr.gettext("threshold %(value)s") % {"value": f"{federation.threshold:g}"}, federation.threshold),
            empty_text=tr.gettext("%(chart)s: no data yet") % {"chart": global_title},
        ),
        line_chart(
            site_series,
            title=site_title,
            y_label=metric,
            x_label=tr.gettext("round"),
            empty_text=tr.gettext("%(chart)s: no data yet") % {"chart": site_title},
        ),
    ]
    return page(request, "run.html", me, federation=federation, role=role, run=run, charts=charts, tab="runs",
                refresh_seconds=RUN_REFRESH_SECONDS, stall_minutes=settings.run_stall_minutes)  # fmt: skip


@router.post("/runs/{run_id}/interrupt", dependencies=[Csrf])
def interrupt(session: SessionDep, me: Me, run_id: int, reason: Annotated[str, Form(max_length=400)] = "") -> Response:
    """Mark a running run interrupted: its coordinator stopped reporting (anchor admins; audited)."""
    run = interrupt_run(session, me, _fid(run_id), reason)
    return RedirectResponse(f"/runs/{run.id}", status_code=303)


@router.get("/federations/{federation_id}/privacy", response_class=HTMLResponse)
def privacy_page(request: Request, session: SessionDep, me: Me, federation_id: int) -> HTMLResponse:
    """Privacy spend per site over rounds against the budget; signed reports for the anchor and auditors."""
    federation, role = federation_view(session, me, _fid(federation_id))
    entries = privacy_entries(session, me, federation_id)
    series: dict[str, list[tuple[float, float]]] = {}
    offset: dict[str, int] = {}
    for entry in entries:  # runs in order: a site's rounds continue across runs
        rounds = entry.epsilon_by_round or [entry.epsilon]
        start = offset.get(entry.site, 0)
        series.setdefault(entry.site, []).extend((start + i + 1, e) for i, e in enumerate(rounds))
        offset[entry.site] = start + len(rounds)
    budget = max((e.budget_epsilon for e in entries), default=None)
    tr = gettext_for(request)
    title = tr.gettext("Privacy spend (epsilon) per site over rounds")
    chart = line_chart(
        series,
        title=title,
        y_label=tr.gettext("epsilon"),
        x_label=tr.gettext("round"),
        hline=(tr.gettext("budget %(value)s") % {"value": f"{budget:g}"}, budget) if budget else None,
        empty_text=tr.gettext("%(chart)s: no data yet") % {"chart": title},
    )
    signed = privacy_reports_of(session, me, federation_id) if role in ("anchor", "auditor") else []
    return page(
        request,
        "privacy.html",
        me,
        federation=federation,
        role=role,
        entries=entries,
        chart=chart,
        signed=signed,
        tab="privacy",
    )


# -- releases and audit ------------------------------------------------------------------------------
@router.get("/federations/{federation_id}/releases", response_class=HTMLResponse)
def releases_page(request: Request, session: SessionDep, me: Me, federation_id: int) -> HTMLResponse:
    """A federation's releases as the person may see them."""
    federation, role = federation_view(session, me, _fid(federation_id))
    releases = releases_of(session, me, federation_id)
    runs = {
        r.id: r.run_ref for r in session.exec(select(TrainingRun).where(TrainingRun.federation_id == federation.id))
    }
    return page(
        request, "releases.html", me, federation=federation, role=role, releases=releases, runs=runs, tab="releases"
    )


@router.post("/releases/{release_id}/{action}", dependencies=[Csrf])
def release_action(
    session: SessionDep,
    me: Me,
    signer: SignerDep,
    release_id: int,
    action: str,
    reason: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    """Approve, publish or withdraw (with a reason) a release (anchor admins; the release gate applies)."""
    release_id = _fid(release_id)
    if action == "approve":
        release = approve_release(session, me, release_id)
    elif action == "publish":
        release = publish_release(session, me, signer, release_id)
    elif action == "withdraw":
        if not reason.strip():
            raise UnprocessableContent(N_("give a reason for withdrawing the release"))
        release = withdraw_release(session, me, release_id, reason.strip())
    else:
        raise BadRequest(f"unknown action '{action}' (approve, publish or withdraw)")
    return RedirectResponse(f"/federations/{release.federation_id}/releases", status_code=303)


@router.get("/federations/{federation_id}/audit", response_class=HTMLResponse)
def audit_page(request: Request, session: SessionDep, me: Me, federation_id: int) -> HTMLResponse:
    """The federation's audit trail and its hash-chain check (anchor admins and auditors)."""
    federation, role = federation_view(session, me, _fid(federation_id))
    events, broken = audit_trail(session, me, federation_id, limit=1000)
    return page(request, "audit.html", me, federation=federation, role=role, events=events, broken=broken, tab="audit")


# -- contribution ledger ---------------------------------------------------------------------------------
def _csv_download(text: str, filename: str) -> Response:
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/federations/{federation_id}/contributions", response_class=HTMLResponse)
def contributions_page(request: Request, session: SessionDep, me: Me, federation_id: int) -> HTMLResponse:
    """Every scored run's contribution ledger as the person may see it, and the minimum contribution."""
    federation, role = federation_view(session, me, _fid(federation_id))
    ledger = contributions.federation_ledger(session, me, federation_id)
    return page(request, "contributions.html", me, federation=federation, role=role, ledger=ledger, tab="contributions")


@router.get("/federations/{federation_id}/contributions.csv")
def contributions_csv(session: SessionDep, me: Me, federation_id: int) -> Response:
    """The federation's ledger as CSV: exactly the rows the person may see."""
    ledger = contributions.federation_ledger(session, me, _fid(federation_id))
    return _csv_download(contributions.ledger_csv(ledger), f"contributions-federation-{federation_id}.csv")


@router.post("/federations/{federation_id}/contribution-policy", dependencies=[Csrf])
def contribution_policy(
    session: SessionDep,
    me: Me,
    federation_id: int,
    min_share: Annotated[str, Form(max_length=40)] = "",
    basis: Annotated[str, Form(max_length=40)] = ContributionBasis.utility_share.value,
) -> Response:
    """Set the minimum contribution for release access, or switch it off with a blank share (anchor admins)."""
    from portal.models import ContributionPolicyUpdate

    try:
        data = ContributionPolicyUpdate(min_share=float(min_share) if min_share.strip() else None, basis=basis)  # type: ignore[arg-type]  # validated here
    except ValueError as exc:
        raise UnprocessableContent(
            f"min_share must be a share in (0, 1] or blank, basis utility_share or data_share ({exc})"
        ) from None
    contributions.set_contribution_policy(session, me, _fid(federation_id), data.min_share, data.basis)
    return RedirectResponse(f"/federations/{federation_id}/contributions", status_code=303)


@router.get("/releases/{release_id}/contributions", response_class=HTMLResponse)
def release_contributions_page(request: Request, session: SessionDep, me: Me, release_id: int) -> HTMLResponse:
    """A release's ledger with a chart of each visible site's data and utility share."""
    ledger = contributions.release_ledger(session, me, _fid(release_id))
    release = get_release_public(session, me, release_id)
    federation, role = federation_view(session, me, release.federation_id)
    rows = ledger.runs[0].rows if ledger.runs else []
    chart = bar_chart(
        {r.site: {"data share": r.data_share, "utility share": r.utility_share} for r in rows},
        title=f"Contribution per site, release {release.version}",
        y_label="share of the run",
    )
    return page(
        request,
        "release_contributions.html",
        me,
        federation=federation,
        role=role,
        release=release,
        ledger=ledger,
        chart=chart,
        tab="contributions",
    )


@router.get("/releases/{release_id}/contributions.csv")
def release_contributions_csv(session: SessionDep, me: Me, release_id: int) -> Response:
    """The release's ledger as CSV: exactly the rows the person may see."""
    ledger = contributions.release_ledger(session, me, _fid(release_id))
    return _csv_download(contributions.ledger_csv(ledger), f"contributions-release-{release_id}.csv")
