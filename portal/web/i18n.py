"""Korean and English pages: the message catalogues, the reader's language, and `_` in every template.

Catalogues are GNU gettext files, ``portal/locale/<lang>/LC_MESSAGES/messages.po``; the
message ids are the English text. They are compiled in memory (pure-Python Babel) the first
time a language is used, so no ``.mo`` file is committed or built and an edited ``.po`` is what
the portal shows. After changing a page's strings, refresh the catalogues with Babel's own
tool and translate what it marks new (a fuzzy or empty entry shows the English text)::

    pybabel extract -F portal/locale/babel.cfg --add-location=file -o build/messages.pot .
    pybabel update -i build/messages.pot -d portal/locale --add-location=file --ignore-obsolete

``tests/portal/test_i18n.py`` fails while a page string has no Korean translation.

The language of a page: ``?lang=ko`` or ``?lang=en`` on any page (which also sets the
`LANG_COOKIE` that the switch in the header relies on), else that cookie, else the browser's
``Accept-Language``, else Korean: most of the network's people read Korean first.
Templates call ``{{ _("...") }}`` (Jinja2's i18n extension, new-style gettext: ``%(name)s``
placeholders are filled and escaped by the call); Python code gets the request's
catalogue from `gettext_for`.
"""

from __future__ import annotations

import functools
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations
from jinja2 import pass_context
from jinja2.runtime import Context
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from portal.web.errors import MessageCatalogueError

__all__ = [
    "LOCALES",
    "DEFAULT_LOCALE",
    "LANG_COOKIE",
    "LANG_PARAM",
    "LOCALE_DIR",
    "LanguageCookie",
    "N_",
    "gettext_for",
    "i18n_context",
    "install_gettext",
    "load_catalogue",
    "negotiate_locale",
    "request_locale",
    "translations",
]

LOCALES = ("ko", "en")
DEFAULT_LOCALE = "ko"
LANG_COOKIE = "sangsaeng_lang"
LANG_PARAM = "lang"
LOCALE_DIR = Path(__file__).resolve().parents[1] / "locale"
# Each language's name in itself, for the switch.
LANGUAGE_NAMES = {"ko": "한국어", "en": "English"}
_COOKIE_MAX_AGE = 365 * 24 * 3600


def N_(message: str) -> str:
    """Mark `message` for the catalogues without translating it (it is translated where it is shown)."""
    return message


# Words the pages show from data (a status, a role, an action): each translated where shown,
# ``{{ _(m.status) }}``, and listed here so that extraction puts them in the catalogues.
DATA_WORDS = (
    # membership states
    N_("invited"), N_("enrolled"), N_("approved"), N_("active"), N_("suspended"), N_("revoked"), N_("rejected"),
    # release states (approved is above)
    N_("draft"), N_("published"), N_("withdrawn"),
    # run states
    N_("running"), N_("completed"), N_("failed"), N_("interrupted"),
    # roles
    N_("anchor"), N_("supplier"), N_("auditor"), N_("coordinator"), N_("site"),
    # membership actions, as button labels
    N_("Approve"), N_("Reject"), N_("Suspend"), N_("Reinstate"), N_("Revoke"),
)  # fmt: skip


@functools.cache
def translations(locale: str) -> Translations:
    """The compiled catalogue of `locale` (one of `LOCALES`), read from its ``.po`` file once per process.

    Fuzzy entries are left out (their English text shows), as ``msgfmt`` does.
    """
    if locale not in LOCALES:
        raise MessageCatalogueError(f"no message catalogue for language '{locale}' (have: {', '.join(LOCALES)})")
    return load_catalogue(LOCALE_DIR / locale / "LC_MESSAGES" / "messages.po", locale)


def load_catalogue(path: Path, locale: str) -> Translations:
    """The ``.po`` file at `path` compiled in memory; `MessageCatalogueError` names the file if it cannot be."""
    try:
        with path.open("rb") as handle:
            catalog = read_po(handle, locale=locale, domain="messages", abort_invalid=True)
    except FileNotFoundError:
        raise MessageCatalogueError(f"message catalogue {path} is missing (is the package installed whole?)") from None
    except Exception as exc:  # noqa: BLE001 - babel raises several kinds for a malformed file
        raise MessageCatalogueError(f"message catalogue {path} cannot be read: {exc}") from exc
    compiled = BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(compiled, domain="messages")


def negotiate_locale(accept_language: str | None) -> str | None:
    """The first of `LOCALES` the ``Accept-Language`` header asks for, by its q-values; None if none.

    ``ko-KR,ko;q=0.9,en;q=0.8`` is Korean; ``en-US,de;q=0.5`` English; ``fr`` or ``*`` None
    (the caller's default applies). A range with ``q=0`` is refused, as RFC 9110 says.
    """
    if not accept_language:
        return None
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate(accept_language.split(",")[:32]):  # a header is short; ignore a flood
        tag, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        language = tag.strip().split("-")[0].lower()
        if q > 0 and language in LOCALES:
            ranked.append((-q, position, language))
    return min(ranked)[2] if ranked else None


def request_locale(request: Request) -> str:
    """The language a page for `request` is shown in: ``?lang=``, the cookie, ``Accept-Language``, else Korean."""
    asked = request.query_params.get(LANG_PARAM)
    if asked in LOCALES:
        return asked
    kept = request.cookies.get(LANG_COOKIE)
    if kept in LOCALES:
        return kept
    return negotiate_locale(request.headers.get("accept-language")) or DEFAULT_LOCALE


def gettext_for(request: Request) -> Translations:
    """The catalogue of `request`'s language, for strings made in Python (chart labels, error reasons)."""
    return translations(request_locale(request))


def _switch_url(request: Request, locale: str) -> str:
    """This page again in `locale`; after a form post (the page cannot be fetched again), the dashboard."""
    if request.method != "GET":
        return f"/?{LANG_PARAM}={locale}"
    query = [(k, v) for k, v in request.query_params.multi_items() if k != LANG_PARAM] + [(LANG_PARAM, locale)]
    return f"{request.url.path}?{urlencode(query)}"


def i18n_context(request: Request) -> dict[str, Any]:
    """Template context for every page: ``locale`` (``<html lang>``, `_`'s catalogue) and the language switch."""
    locale = request_locale(request)
    return {
        "locale": locale,
        "languages": [
            {"code": code, "name": LANGUAGE_NAMES[code], "url": _switch_url(request, code), "current": code == locale}
            for code in LOCALES
        ],
    }


def _catalogue_of(context: Context) -> Translations:
    locale = context.get("locale")
    return translations(locale if locale in LOCALES else DEFAULT_LOCALE)


@pass_context
def _gettext(context: Context, message: str) -> str:
    return _catalogue_of(context).gettext(message)


@pass_context
def _ngettext(context: Context, singular: str, plural: str, n: int) -> str:
    return _catalogue_of(context).ngettext(singular, plural, n)


@pass_context
def _pgettext(context: Context, ctxt: str, message: str) -> str:
    return str(_catalogue_of(context).pgettext(ctxt, message))


@pass_context
def _npgettext(context: Context, ctxt: str, singular: str, plural: str, n: int) -> str:
    return _catalogue_of(context).npgettext(ctxt, singular, plural, n)


def install_gettext(env: jinja2.Environment) -> None:
    """Give `env`'s templates ``_``, ``gettext``, ``ngettext`` (new-style), translating to each page's ``locale``.

    The catalogue is chosen per render from the template context (`i18n_context` puts
    ``locale`` there), so one environment serves both languages with no global state.
    """
    env.add_extension("jinja2.ext.i18n")
    env.install_gettext_callables(  # type: ignore[attr-defined]  # added by the i18n extension
        gettext=_gettext, ngettext=_ngettext, newstyle=True, pgettext=_pgettext, npgettext=_npgettext
    )


class LanguageCookie:
    """Remember a page's ``?lang=`` choice in the `LANG_COOKIE` cookie; web responses vary by language.

    A pure ASGI middleware, so that every page (also those of other modules and the error
    pages) honours the switch. The API (`api_prefix`) is left alone: it answers in English.
    """

    def __init__(self, app: ASGIApp, *, api_prefix: str, secure: bool = False):
        self.app = app
        self.api_prefix = api_prefix
        self.secure = secure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(self.api_prefix) or path.startswith("/static/"):
            await self.app(scope, receive, send)
            return
        asked = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(LANG_PARAM, [None])[-1]

        async def with_language(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.add_vary_header("Accept-Language")
                headers.add_vary_header("Cookie")
                if asked in LOCALES:
                    cookie = f"{LANG_COOKIE}={asked}; Path=/; Max-Age={_COOKIE_MAX_AGE}; SameSite=Lax; HttpOnly"
                    headers.append("Set-Cookie", cookie + ("; Secure" if self.secure else ""))
            await send(message)

        await self.app(scope, receive, with_language)
