"""Korean and English pages: complete catalogues, the reader's language, translated pages and errors, auditor form."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po
from sqlmodel import select

from portal.models import Organisation, User
from portal.web.errors import MessageCatalogueError
from portal.web.i18n import LANG_COOKIE, LOCALE_DIR, load_catalogue, negotiate_locale, translations
from tests.portal.factories import PASSWORD, network
from tests.portal.test_web import DP, csrf_of, sign_in

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "portal" / "templates"
PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]")


def page_msgids() -> set[str]:
    """Every message id the pages use, extracted from the sources as `pybabel extract` does (babel.cfg)."""
    with (LOCALE_DIR / "babel.cfg").open() as handle:
        method_map, options_map = parse_mapping_cfg(handle)
    found = set()
    for _file, _line, message, _comments, _context in extract_from_dir(str(ROOT), method_map, options_map):
        found.add(message if isinstance(message, str) else message[0])
    return found


def catalogue(locale: str):  # type: ignore[no-untyped-def]
    with (LOCALE_DIR / locale / "LC_MESSAGES" / "messages.po").open("rb") as handle:
        return read_po(handle, locale=locale)


def test_every_page_string_has_a_korean_translation_with_the_same_placeholders():
    used = page_msgids()
    assert len(used) > 100 and "Sign in" in used and "%(metric)s per site over rounds" in used
    ko, en = catalogue("ko"), catalogue("en")
    missing, fuzzy, broken = [], [], []
    for msgid in sorted(used):
        entry = ko.get(msgid)
        if entry is None or not (entry.string if isinstance(entry.string, str) else all(entry.string)):
            missing.append(msgid)
            continue
        if entry.fuzzy:
            fuzzy.append(msgid)
        for text in [entry.string] if isinstance(entry.string, str) else entry.string:
            if set(PLACEHOLDER.findall(text)) != set(PLACEHOLDER.findall(msgid)):
                broken.append((msgid, text))
    assert not missing, f"no Korean translation in portal/locale/ko (see portal/web/i18n.py): {missing}"
    assert not fuzzy, f"fuzzy Korean entries are not shown; check and unmark them: {fuzzy}"
    assert not broken, f"Korean translations with other placeholders than their English text: {broken}"
    assert not [m for m in used if en.get(m) is None], "the English catalogue is behind the pages: run pybabel update"


def test_a_missing_or_malformed_catalogue_is_refused_naming_the_file(tmp_path):
    with pytest.raises(MessageCatalogueError, match="no message catalogue for language 'fr'"):
        translations("fr")
    with pytest.raises(MessageCatalogueError, match="missing.po is missing"):
        load_catalogue(tmp_path / "missing.po", "ko")
    broken = tmp_path / "broken.po"
    broken.write_text('msgid "Sign in"\n', encoding="utf-8")  # no msgstr
    with pytest.raises(MessageCatalogueError, match="broken.po cannot be read"):
        load_catalogue(broken, "ko")
    good = tmp_path / "good.po"
    good.write_text('msgid "Sign in"\nmsgstr "로그인"\n', encoding="utf-8")
    assert load_catalogue(good, "ko").gettext("Sign in") == "로그인"


def visible_template_text(source: str) -> str:
    """A template's literal text as a reader sees it: no Jinja, no tags, no code samples."""
    source = re.sub(r"{#.*?#}|{%.*?%}|{{.*?}}", " ", source, flags=re.S)
    source = re.sub(r"<(code|pre)\b[^>]*>.*?</\1>", " ", source, flags=re.S)
    source = re.sub(r"<[^>]+>", " ", source)
    return source


@pytest.mark.parametrize("template", sorted(p.name for p in TEMPLATES.glob("*.html")))
def test_templates_hold_no_text_outside_the_catalogues(template):
    words = re.findall(r"[A-Za-z][A-Za-z'-]+", visible_template_text((TEMPLATES / template).read_text()))
    assert [w for w in words if w != "Sangsaeng"] == [], f"{template}: wrap user-facing text in {{{{ _('...') }}}}"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("ko-KR,ko;q=0.9,en-US;q=0.8,en;q=0.7", "ko"),
        ("en-US,en;q=0.9,ko;q=0.8", "en"),
        ("de-DE,de;q=0.9,en;q=0.5,ko;q=0.4", "en"),
        ("en;q=0.2, ko;q=0.8", "ko"),  # q-values, not order, decide
        ("EN-gb", "en"),
        ("en;q=0, ko;q=0.1", "ko"),  # q=0 means "not this one"
        ("fr-FR,fr;q=0.9", None),
        ("*", None),
        ("", None),
        (None, None),
        ("en;q=abc,ko", "ko"),  # a malformed q counts as 0
    ],
)
def test_accept_language_is_negotiated_by_quality(header, expected):
    assert negotiate_locale(header) == expected


def test_korean_by_default_english_on_request_and_the_switch_is_remembered(portal, client):
    del client.headers["Accept-Language"]
    korean = client.get("/login")
    assert korean.status_code == 200 and '<html lang="ko">' in korean.text and "<h1>로그인</h1>" in korean.text
    assert 'href="/login?lang=en"' in korean.text  # the switch

    english = client.get("/login", headers={"Accept-Language": "en-GB,en;q=0.9"})
    assert '<html lang="en">' in english.text and "<h1>Sign in</h1>" in english.text
    assert "Accept-Language" in english.headers["vary"] and LANG_COOKIE not in english.headers.get("set-cookie", "")

    switched = client.get("/login?lang=en", headers={"Accept-Language": "ko"})
    assert '<html lang="en">' in switched.text
    cookie = switched.headers["set-cookie"]
    assert f"{LANG_COOKIE}=en" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    kept = client.get("/login", headers={"Accept-Language": "ko"})  # the cookie now outranks the browser
    assert '<html lang="en">' in kept.text
    back = client.get("/login?lang=ko")
    assert '<html lang="ko">' in back.text

    ignored = client.get("/login?lang=xx", headers={"Accept-Language": "fr"})
    assert '<html lang="ko">' in ignored.text  # the cookie (ko) still holds; an unknown code changes nothing
    api = client.get("/api/v1/users/me?lang=en")
    assert LANG_COOKIE not in api.headers.get("set-cookie", "") and "vary" not in api.headers


@pytest.fixture
def world(portal):  # type: ignore[no-untyped-def]
    net = network(portal)
    run = portal.run(net.coordinator, net.fid, ["alpha-line-1", "beta-line-1"], privacy=DP)
    portal.published(net.anchor, net.coordinator, net.fid, run["id"])
    return net, run


def test_pages_in_korean_translate_chart_labels_states_and_errors(portal, client, world):
    net, run = world
    client.headers["Accept-Language"] = "ko-KR,ko;q=0.9"
    sign_in(client, net.anchor.email)
    ko = translations("ko")
    pages = {
        "/": ["연합", "새 연합 만들기"],
        f"/federations/{net.fid}": ["참여 사이트", "승인됨", "해지", "새 감사 기관"],
        f"/runs/{run['id']}": ["라운드별 전역 모델", "라운드별 사이트", "기준값"],
        f"/federations/{net.fid}/privacy": ["라운드별 사이트 프라이버시 예산 사용량(ε)", "예산 이내"],
        f"/federations/{net.fid}/releases": ["게시됨", "서명(Ed25519)"],
        f"/federations/{net.fid}/audit": ["해시 체인 정상"],
    }
    for path, needles in pages.items():
        page = client.get(path)
        assert page.status_code == 200 and '<html lang="ko">' in page.text, path
        for needle in needles:
            assert needle in page.text, (path, needle)
        for english in ("Sign out", "Members", "Privacy spend", "hash chain intact", "Global "):
            assert f">{english}" not in page.text, (path, english)
    assert ko.gettext("Members") == "참여 사이트"

    token = csrf_of(client.get(f"/federations/{net.fid}").text)
    invited = client.post(f"/federations/{net.fid}/invite", data={"csrf": token, "organisation_name": "감마 정밀",
                                                                   "site_name": "gamma-1"})  # fmt: skip
    assert invited.status_code == 200 and "일회용 토큰" in invited.text
    assert 'href="/?lang=en"' in invited.text  # a posted page cannot be fetched again: the switch goes home
    forged = client.post(f"/memberships/{net.site_a.membership_id}/suspend", data={"csrf": "0" * 64})
    assert forged.status_code == 403 and "권한이 없습니다" in forged.text and "CSRF 검사 실패" in forged.text
    sign_in(client, net.supplier_a.email)
    refused = client.get(f"/federations/{net.fid}/audit")
    # A reason naming details stays as the API words it, marked as English for the browser.
    assert refused.status_code == 403 and "권한이 없습니다" in refused.text and 'role="alert" lang="en"' in refused.text
    client.cookies.clear()
    wrong = client.post("/login", data={"email": net.anchor.email, "password": "nope"})
    assert wrong.status_code == 401 and "이메일 또는 비밀번호가 올바르지 않습니다" in wrong.text


def test_anchor_creates_an_auditor_organisation_from_the_page_and_its_auditor_signs_in(portal, client, world):
    net, _ = world
    sign_in(client, net.anchor.email)
    page = client.get(f"/federations/{net.fid}")
    assert f'action="/federations/{net.fid}/auditor-organisations"' in page.text
    form = {"csrf": csrf_of(page.text), "name": "Korea Quality Audit", "email": "kim@kqa.example.kr"}
    form |= {"password": PASSWORD, "full_name": "Kim Auditor"}

    short = client.post(f"/federations/{net.fid}/auditor-organisations", data=form | {"password": "short"})
    taken = client.post(f"/federations/{net.fid}/auditor-organisations", data=form | {"email": net.auditor.email})
    assert short.status_code == 422 and "password" in short.text
    assert taken.status_code == 409 and "already exists" in taken.text
    with portal.session() as session:  # refused forms leave nothing behind
        assert session.exec(select(Organisation).where(Organisation.name == "Korea Quality Audit")).first() is None

    done = client.post(f"/federations/{net.fid}/auditor-organisations", data=form)
    assert done.status_code == 200 and done.url.path == f"/federations/{net.fid}"
    assert "Korea Quality Audit" in re.search(r'data-testid="assigned-auditors">([^<]*)<', done.text).group(1)
    with portal.session() as session:
        org = session.exec(select(Organisation).where(Organisation.name == "Korea Quality Audit")).one()
        user = session.exec(select(User).where(User.email == "kim@kqa.example.kr")).one()
        assert org.kind == "auditor" and org.owner_org_id == net.anchor.org_id and user.organisation_id == org.id
    again = client.post(f"/federations/{net.fid}/auditor-organisations", data=form | {"email": "", "password": ""})
    assert again.status_code == 409  # the name is taken

    sign_in(client, "kim@kqa.example.kr")
    privacy = client.get(f"/federations/{net.fid}/privacy")
    assert privacy.status_code == 200 and "beta-line-1" in privacy.text and "auditor" in privacy.text
    refused = client.post(
        f"/federations/{net.fid}/auditor-organisations", data={"csrf": csrf_of(privacy.text), "name": "Mine"}
    )
    assert refused.status_code == 403 and "read-only" in refused.text

    sign_in(client, net.supplier_a.email)
    members = client.get(f"/federations/{net.fid}")
    assert "auditor-organisations" not in members.text
    refused = client.post(
        f"/federations/{net.fid}/auditor-organisations", data={"csrf": csrf_of(members.text), "name": "Shadow"}
    )
    assert refused.status_code == 403 and "a supplier cannot create auditor organisations" in refused.text
