"""Browser tests in headless Chromium: the anchor invites, approves and publishes; a supplier sees only its own;
each role reads Korean and English pages with no Hangul drawn as a box.

Screenshots go to test-output/screenshots/<test>/ (or $SANGSAENG_TEST_OUTPUT).
"""

from __future__ import annotations

import re

import httpx
import pytest

from client import portal_commands as pc
from portal.uploader import upload_run
from tests.portal.factories import API, PASSWORD, bearer, network
from tests.portal.test_site_client import make_run_dir

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

DP = {"north-press": {"budget_epsilon": 8.0}, "south-mould": {"budget_epsilon": 8.0}}
DP_RUN = {
    "alpha-line-1": {"epsilon": 2.0, "budget_epsilon": 8.0, "epsilon_by_round": [1.0, 1.5, 2.0]},
    "beta-line-1": {"epsilon": 3.0, "budget_epsilon": 8.0, "epsilon_by_round": [1.2, 2.1, 3.0]},
}


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
    context = browser.new_context(viewport={"width": 1200, "height": 900}, locale="en-US")
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
    supplier = browser.new_context(viewport={"width": 1200, "height": 900}, locale="en-US")
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


# -- Korean and English pages: each role, both languages, no Hangul drawn as a box ------------------
HANGUL = re.compile("[\u1100-\u11ff\u3130-\u318f\uac00-\ud7a3]")

# Draws every distinct Hangul character of the page in its element's font on a canvas and compares
# it with a character no font has (U+10FFFD, private use): the same pixels mean a missing-glyph box.
# Also wraps each text with Hangul in a plain <span data-hangul> (no style: the layout does not move), so
# that the font check below sees the fonts of exactly those texts.
FIND_BOXES = """
(extra) => {
  const canvas = document.createElement("canvas");
  canvas.width = 96; canvas.height = 96;
  const ctx = canvas.getContext("2d", {willReadFrequently: true});
  const draw = (font, text) => {
    ctx.clearRect(0, 0, 96, 96);
    ctx.font = font; ctx.textBaseline = "top"; ctx.fillStyle = "#000";
    ctx.fillText(text, 8, 8);
    return ctx.getImageData(0, 0, 96, 96).data.filter((_, i) => i % 4 === 3).join(",");
  };
  const hangul = /[\\u1100-\\u11ff\\u3130-\\u318f\\uac00-\\ud7a3]/g;
  const seen = new Map();
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const texts = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) texts.push(node);
  for (const node of texts) {
    const parent = node.parentElement;
    const chars = node.nodeValue.match(hangul) || [];
    const probe = parent.dataset.probe ? [extra] : [];
    if (!chars.length && !probe.length) continue;
    const style = getComputedStyle(parent);
    const font = `${style.fontStyle} ${style.fontWeight} 48px ${style.fontFamily}`;
    if (chars.length && !parent.hasAttribute("data-hangul")) {
      const span = document.createElement("span");
      span.setAttribute("data-hangul", "");
      parent.replaceChild(span, node);
      span.appendChild(node);
    }
    for (const ch of [...chars, ...probe]) seen.set(font + "|" + ch, [font, ch]);
  }
  const boxes = [];
  const reference = new Map();
  for (const [font, ch] of seen.values()) {
    if (!reference.has(font)) reference.set(font, draw(font, String.fromCodePoint(0x10FFFD)));
    const drawn = draw(font, ch);
    if (drawn === reference.get(font) || !/[1-9]/.test(drawn)) boxes.push(ch);
  }
  return {checked: seen.size, boxes: [...new Set(boxes)]};
}
"""


def hangul_fonts(page) -> dict[str, int]:
    """Glyphs per platform font that Chromium used for the elements holding Hangul (DevTools protocol)."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("DOM.enable")
    cdp.send("CSS.enable")
    root = cdp.send("DOM.getDocument", {"depth": 0})["root"]["nodeId"]
    glyphs: dict[str, int] = {}
    for node in cdp.send("DOM.querySelectorAll", {"nodeId": root, "selector": "[data-hangul]"})["nodeIds"]:
        for font in cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]:
            glyphs[font["familyName"]] = glyphs.get(font["familyName"], 0) + font["glyphCount"]
    cdp.detach()
    return glyphs


def check_glyphs(page, *, fonts_too: bool = True) -> None:
    """No Hangul character on `page` is drawn as a missing-glyph box, and (`fonts_too`) Noto Sans CJK KR draws them."""
    found = page.evaluate(FIND_BOXES, "")
    assert found["checked"] > 0 and found["boxes"] == [], f"{page.url}: drawn as boxes: {found['boxes']}"
    if not fonts_too:
        return
    fonts = hangul_fonts(page)
    assert fonts and all("CJK KR" in family for family in fonts), f"{page.url}: Hangul drawn with {fonts}"
    hangul = page.evaluate("() => [...document.querySelectorAll('[data-hangul]')].map(e => e.textContent).join('')")
    assert sum(fonts.values()) >= len(HANGUL.findall(hangul)), (page.url, fonts)


def test_the_box_check_finds_a_character_no_font_has(live_server, browser):
    """The check above can fail: a character without any glyph (private use, plane 15) is reported."""
    context = browser.new_context(locale="ko-KR")
    page = context.new_page()
    page.goto(f"{live_server}/login")
    page.evaluate("() => { const s = document.createElement('span'); s.dataset.probe = '1';"
                  " s.textContent = 'x'; document.querySelector('h1').append(s); }")  # fmt: skip
    found = page.evaluate(FIND_BOXES, chr(0xF0000))
    assert found["boxes"] == [chr(0xF0000)], found
    assert page.evaluate(FIND_BOXES, "가")["boxes"] == []  # a Hangul probe has its glyph
    context.close()


ROLE_PAGES = {
    "anchor": ["", "/runs", "/privacy", "/releases", "/audit"],
    "supplier": ["", "/privacy", "/releases"],
    "auditor": ["/privacy", "/releases", "/audit"],
}


@pytest.mark.slow  # 22 pages, each checked glyph by glyph
def test_each_role_reads_korean_and_english_pages_without_boxes(portal, live_server, browser, screenshots):
    """Korean from the browser's language, English from the switch; an auditor organisation made on the page."""
    base = live_server
    net = network(portal)
    run = portal.run(net.coordinator, net.fid, ["alpha-line-1", "beta-line-1"], privacy=DP_RUN)
    portal.published(net.anchor, net.coordinator, net.fid, run["id"])
    auditor_email = "kim@kqa.example.kr"
    for role in ("anchor", "supplier", "auditor"):
        email = {"anchor": net.anchor.email, "supplier": net.supplier_a.email, "auditor": auditor_email}[role]
        context = browser.new_context(locale="ko-KR", viewport={"width": 1200, "height": 900})
        page = context.new_page()
        page.goto(f"{base}/login")
        assert page.get_attribute("html", "lang") == "ko" and page.inner_text("h1") == "로그인"
        assert page.evaluate("getComputedStyle(document.body).fontFamily").startswith('"Noto Sans CJK KR"')
        check_glyphs(page)
        sign_in(page, base, email)
        assert page.inner_text("[data-testid=who]").split(" · ")[1] == {"anchor": "앵커 기업", "supplier": "공급사",
                                                                        "auditor": "감사인"}[role]  # fmt: skip
        if role == "anchor":  # the anchor makes the auditor organisation whose auditor signs in below
            page.goto(f"{base}/federations/{net.fid}")
            page.fill("[data-testid=new-auditor] input[name=name]", "한국품질감사원")
            page.fill("[data-testid=new-auditor] input[name=email]", auditor_email)
            page.fill("[data-testid=new-auditor] input[name=full_name]", "김감사")
            page.fill("[data-testid=new-auditor] input[name=password]", PASSWORD)
            page.click("[data-action=create-auditor]")
            assert "한국품질감사원" in page.inner_text("[data-testid=assigned-auditors]")
        for language in ("ko", "en"):
            if language == "en":  # the switch, then the cookie keeps English on the next pages
                page.click("[data-testid=languages] a[data-lang=en]")
                page.wait_for_selector("html[lang=en]")
            for suffix in ROLE_PAGES[role]:
                response = page.goto(f"{base}/federations/{net.fid}{suffix}")
                assert response.status == 200, (role, suffix)
                assert page.get_attribute("html", "lang") == language, (role, suffix)
                tabs = page.inner_text("nav.tabs")
                assert ("프라이버시" in tabs) == (language == "ko") and ("Privacy" in tabs) == (language == "en")
                name = suffix.strip("/") or ("privacy" if role == "auditor" else "members")
                page.screenshot(path=str(screenshots / f"{role}-{language}-{name}.png"), full_page=True)
                check_glyphs(page, fonts_too=language == "ko")  # English pages: the brand and names only
        context.close()
    assert len(list(screenshots.glob("*-ko-*.png"))) == len(list(screenshots.glob("*-en-*.png"))) == 11


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
        context = browser.new_context(locale="en-US", viewport={"width": 1200, "height": 900})
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
    context = browser.new_context(locale="en-US", viewport={"width": 1200, "height": 900})
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
    context = browser.new_context(locale="en-US")
    page = context.new_page()
    sign_in(page, base, stranger.email)
    for path in (ledger, f"{ledger}.csv", f"{base}/federations/{net.fid}/contributions"):
        response = page.goto(path) if not path.endswith(".csv") else None
        status = response.status if response is not None else context.request.get(path).status
        assert status == 404, path
    assert "alpha-line-1" not in page.content()
    context.close()
