"""The portal's exception tree: the drawing in `portal.core.errors` is the code, and every error keeps its status."""

from __future__ import annotations

import re

import pytest

from portal.core import errors
from portal.core.errors import PortalError
from sangsaeng.errors import SangsaengError
from tests.portal.factories import API

# "    │   ├── InvalidKey (422)   ..." -> depth from the indent, name, status
TREE_LINE = re.compile(r"^(?P<indent>[ │]*)[├└]── (?P<name>\w+)(?: \((?P<status>\d{3})\))?")


def drawn_tree() -> list[tuple[str, str, int | None]]:
    """(class, drawn parent, drawn status) for each line of the tree in the module docstring."""
    lines = (errors.__doc__ or "").split("::", 1)[1].splitlines()
    parents: list[str] = []
    out = []
    for line in lines:
        match = TREE_LINE.match(line.removeprefix("    "))
        if match is None:
            if line.strip():
                parents = [line.strip().rsplit(".", 1)[-1]]  # the root line: sangsaeng.errors.SangsaengError
            continue
        depth = len(match["indent"]) // 4 + 1
        del parents[depth:]
        out.append((match["name"], parents[depth - 1], int(match["status"]) if match["status"] else None))
        parents.append(match["name"])
    return out


def test_the_drawn_tree_is_the_class_tree_with_its_statuses():
    drawn = drawn_tree()
    assert sorted(name for name, _, _ in drawn) == sorted(errors.__all__)
    for name, parent, status in drawn:
        cls = getattr(errors, name)
        assert cls.__bases__[0].__name__ == parent, f"{name} is drawn under {parent}, the code says {cls.__bases__}"
        if status is not None:
            assert cls.status == status, f"{name} is drawn as {status}, the code says {cls.status}"


def test_every_portal_error_is_a_sangsaeng_error():
    assert issubclass(PortalError, SangsaengError)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), SangsaengError), name


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("name", errors.__all__)
def test_the_api_and_the_web_pages_answer_each_error_with_its_status(app, client, name):
    cls = getattr(errors, name)

    def refuse() -> None:
        raise cls("refused for a test") if cls is not errors.Unauthorized else cls()

    app.add_api_route(f"{API}/_test/refuse", refuse)
    app.add_api_route("/_test/refuse", refuse)
    answer = client.get(f"{API}/_test/refuse")
    assert answer.status_code == cls.status
    if cls is errors.Unauthorized:
        assert answer.json() == {"detail": "not authenticated"}
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    else:
        assert answer.json() == {"detail": "refused for a test"}
    page = client.get("/_test/refuse", follow_redirects=False)
    if cls is errors.Unauthorized:  # a web page sends the signed-out browser to the sign-in page
        assert page.status_code == 303 and page.headers["location"] == "/login"
    else:
        assert page.status_code == cls.status and "refused for a test" in page.text
