"""Browser tests in headless Chromium: the anchor invites, approves and publishes; a supplier sees only its own.

Screenshots go to test-output/screenshots/<test>/ (or $SANGSAENG_TEST_OUTPUT).
"""

from __future__ import annotations

import httpx
import pytest

from client import portal_commands as pc
from portal.uploader import upload_run
from tests.portal.factories import API, PASSWORD, bearer
from tests.portal.test_site_client import make_run_dir

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

DP = {"north-press": {"budget_epsilon": 8.0}, "south-mould": {"budget_epsilon": 8.0}}


def sign_in(page, base: str, email: str) -> None:
    page.goto(f"{base}/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


def test_anchor_invites_approves_publishes_and_supplier_sees_only_its_own(
    portal, live_server, browser, screenshots, tmp_path
):
    base = live_server
    anchor = portal.anchor()
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()

    # 1. The anchor admin signs in and creates a federation.
    sign_in(page, base, anchor.email)
    page.fill("input[name=name]", "Hyundai Tier-2 Maintenance")
    page.select_option("select[name=task_name]", "predictive-maintenance")
    page.fill("input[name=threshold]", "0.6")
    page.click("text=Create federation")
    page.wait_for_selector("text=Invite a supplier site")
    fid = int(page.url.rstrip("/").split("/")[-1])

    # 2. Invites two supplier sites; each token is shown once.
    tokens = {}
    for org, site in (("North Press Co", "north-press"), ("South Mould Ltd", "south-mould")):
        page.fill("input[name=organisation_name]", org)
        page.fill("input[name=site_name]", site)
        page.click("text=Create invitation")
        tokens[site] = page.inner_text("[data-testid=invite-token]").strip()
        assert tokens[site].startswith("ssi_")
        if site == "north-press":
            page.screenshot(path=str(screenshots / "01-invite-token.png"), full_page=True)
        page.click("text=Back to members")

    # 3. Each supplier enrols from its site PC (key pair made on-site), creating its admin login.
    for site, email in (("north-press", "admin@northpress.kr"), ("south-mould", "admin@southmould.kr")):
        pc.enroll(base, tokens[site], tmp_path / site, admin_email=email, admin_password=PASSWORD)
    page.reload()
    assert page.inner_text("tr[data-site=north-press] .state") == "enrolled"

    # 4. The anchor approves both sites in the browser.
    for site in ("north-press", "south-mould"):
        page.click(f"[data-action=approve-{site}]")
        page.wait_for_selector(f"tr[data-site={site}] .state.approved")
    page.screenshot(path=str(screenshots / "02-members-approved.png"), full_page=True)

    # 5. The coordinator reports a DP run and uploads the candidate model.
    with httpx.Client(base_url=base, headers=anchor.headers) as http:
        body = {"name": "coordinator", "coordinator_public_key_pem": portal.coordinator_key_pem()}
        token = http.post(f"{API}/federations/{fid}/tokens", json=body).json()["token"]
    run_dir, frame = make_run_dir(tmp_path, sites=("north-press", "south-mould"), auc=0.9, privacy=DP)
    with httpx.Client(base_url=base, headers=bearer(token)) as http:
        run, _ = upload_run(http, fid, run_dir, version="1.0.0")

    # 6. The anchor approves and publishes (signs) the release.
    page.goto(f"{base}/federations/{fid}/releases")
    page.click("[data-action=approve-1\\.0\\.0]")
    page.click("[data-action=publish-1\\.0\\.0]")
    page.wait_for_selector("article[data-version='1.0.0'] .state.published")
    assert "Ed25519" in page.inner_text("article[data-version='1.0.0']")
    page.screenshot(path=str(screenshots / "03-release-published.png"), full_page=True)
    page.goto(f"{base}/runs/{run['id']}")
    assert page.locator("svg.chart").count() == 2
    page.screenshot(path=str(screenshots / "04-run-charts.png"), full_page=True)
    page.goto(f"{base}/federations/{fid}/audit")
    assert "hash chain intact" in page.inner_text("[data-testid=chain]")
    page.screenshot(path=str(screenshots / "05-audit-trail.png"), full_page=True)
    context.close()

    # 7. The north supplier signs in: its own membership, privacy spend and the published release only.
    supplier = browser.new_context(viewport={"width": 1200, "height": 900})
    spage = supplier.new_page()
    sign_in(spage, base, "admin@northpress.kr")
    assert "supplier" in spage.inner_text("[data-testid=who]")
    spage.click("text=Hyundai Tier-2 Maintenance")
    members = spage.inner_text("[data-testid=members]")
    assert "north-press" in members and "south-mould" not in members and "South Mould" not in members
    assert spage.locator("[data-action^=approve]").count() == 0
    spage.screenshot(path=str(screenshots / "06-supplier-members.png"), full_page=True)
    spage.goto(f"{base}/federations/{fid}/privacy")
    privacy = spage.inner_text("main")
    assert "north-press" in privacy and "south-mould" not in privacy
    spage.screenshot(path=str(screenshots / "07-supplier-privacy.png"), full_page=True)
    spage.goto(f"{base}/federations/{fid}/releases")
    release = spage.inner_text("article[data-version='1.0.0']")
    assert "published" in release and "south-mould" not in release
    spage.screenshot(path=str(screenshots / "08-supplier-releases.png"), full_page=True)
    response = spage.goto(f"{base}/federations/{fid}/audit")
    assert response.status == 403
    supplier.close()

    # 8. The site pulls the release (signature and hash verified) and scores its own data.
    model = pc.pull_model(tmp_path / "north-press")
    data = tmp_path / "north.csv"
    frame.head(100).to_csv(data, index=False)
    report = pc.predict(model, data)
    scores, metrics = report.path, report.metrics
    assert scores.exists() and "roc_auc" in metrics


def test_contribution_ledger_shows_each_role_only_what_it_may(portal, live_server, browser, screenshots):
    """The anchor and auditor see every supplier's score and the chart; a supplier only its own; a stranger 404."""
    from tests.portal.factories import contribution, network

    base = live_server
    net = network(portal)
    scores = {"alpha-line-1": (1200, 0.20), "beta-line-1": (800, 0.06)}
    run = portal.run(net.coordinator, net.fid, ["alpha-line-1", "beta-line-1"], contribution=contribution(scores))
    release = portal.published(net.anchor, net.coordinator, net.fid, run["id"])
    ledger = f"{base}/releases/{release['id']}/contributions"
    for who, name in ((net.anchor, "anchor"), (net.auditor, "auditor")):
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        page = context.new_page()
        sign_in(page, base, who.email)
        page.goto(f"{base}/federations/{net.fid}/releases")
        page.click("[data-action=ledger-1\\.0\\.0]")
        page.wait_for_url(ledger)
        table = page.inner_text(f"[data-testid=ledger-{run['run_ref']}]")
        assert "alpha-line-1" in table and "beta-line-1" in table
        assert page.locator("svg.chart rect.bar").count() == 4
        page.screenshot(path=str(screenshots / f"ledger-{name}.png"), full_page=True)
        exported = context.request.get(f"{ledger}.csv").text()
        assert "alpha-line-1" in exported and "beta-line-1" in exported
        context.close()
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    sign_in(page, base, net.supplier_a.email)
    page.goto(ledger)
    main = page.inner_text("main")
    assert "alpha-line-1" in main and "beta-line-1" not in main and net.site_b.org_name not in main
    assert "Your share" in main and "may pull this release" in page.inner_text("[data-testid=access]")
    assert page.locator("svg.chart rect.bar").count() == 2
    assert "beta-line-1" not in page.content()
    page.screenshot(path=str(screenshots / "ledger-supplier.png"), full_page=True)
    for path in (f"{ledger}.csv", f"{base}/federations/{net.fid}/contributions.csv"):
        exported = context.request.get(path).text()
        assert "alpha-line-1" in exported and "beta-line-1" not in exported
    page.goto(f"{base}/federations/{net.fid}/contributions")
    assert page.locator("[data-testid=policy-form]").count() == 0
    context.close()
    stranger = portal.anchor()
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, base, stranger.email)
    for path in (ledger, f"{ledger}.csv", f"{base}/federations/{net.fid}/contributions"):
        response = page.goto(path) if not path.endswith(".csv") else None
        status = response.status if response is not None else context.request.get(path).status
        assert status == 404, path
    assert "alpha-line-1" not in page.content()
    context.close()
