"""The playground page as the gateway serves it: without a key, under a strict CSP that the
page's own markup must live with (no inline script, style or handlers, nothing from another
origin), outside the API's OpenAPI. What the page does in a browser is
tests/e2e/test_playground_browser.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.common.contracts import Error
from services.common.db import Database
from services.common.queue import QueueSettings, create_celery_app
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings

PAGE = "/playground"


def gateway(tmp_path: Path, **overrides: Any) -> TestClient:
    database = Database(f"sqlite:///{tmp_path / 'gateway.db'}")
    celery = create_celery_app(
        QueueSettings(broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}"), name="test-page"
    )
    settings = GatewaySettings.model_validate(
        {"database_url": database.url, "artifact_root": tmp_path / "artifacts", **overrides}
    )
    return TestClient(create_app(settings, database=database, celery=celery))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with gateway(tmp_path) as client:
        yield client


class Markup(HTMLParser):
    """What the page's HTML loads and what it holds inline."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.stylesheets: list[str] = []
        self.inline_scripts: list[str] = []
        self.inline_styles: list[str] = []
        self.handlers: list[str] = []
        self.ids: set[str] = set()
        self.urls: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        self.handlers += [name for name in values if name.startswith("on")]
        if "style" in values or tag == "style":
            self.inline_styles.append(tag)
        if "id" in values:
            self.ids.add(values["id"])
        self.urls += [values[name] for name in ("src", "href", "action") if name in values]
        if tag == "script":
            self._in_script = True
            if values.get("src"):
                self.scripts.append(values["src"])
        if tag == "link" and values.get("rel") == "stylesheet":
            self.stylesheets.append(values["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts.append(data)


def markup(html: str) -> Markup:
    parser = Markup()
    parser.feed(html)
    return parser


def directives(policy: str) -> dict[str, list[str]]:
    parts = (part.split() for part in policy.split(";") if part.strip())
    return {name: sources for name, *sources in parts}


def test_the_page_is_served_without_a_key_under_a_strict_policy(client: TestClient) -> None:
    response = client.get(PAGE)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    policy = directives(response.headers["content-security-policy"])
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"] and policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"]
    assert set(policy["img-src"]) == {"'self'", "blob:", "data:"}
    assert policy["frame-ancestors"] == ["'none'"] and policy["form-action"] == ["'none'"]
    assert "'unsafe-inline'" not in response.headers["content-security-policy"]
    assert "BOIG playground" in response.text


def test_the_page_needs_nothing_its_policy_blocks(client: TestClient) -> None:
    """Inline script, style attributes and on* handlers would be refused by the CSP and leave
    a dead page; so would anything from another origin."""
    page = markup(client.get(PAGE).text)
    assert page.scripts == ["playground/playground.js"]
    assert page.stylesheets == ["playground/playground.css"]
    assert page.inline_scripts == [] and page.inline_styles == [] and page.handlers == []
    assert all(not re.match(r"^([a-z]+:)?//", url) for url in page.urls), page.urls
    for asset in (*page.scripts, *page.stylesheets):
        text = client.get(f"/{asset}").text
        assert not re.search(r"\b(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text), asset
    script = client.get("/playground/playground.js").text
    # Server text goes in as text: markup sinks would let a caption or a reason inject HTML.
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", script)
    # Every element the script looks up is on the page.
    looked_up = set(re.findall(r'\$\("([a-z-]+)"\)', script))
    tabs = set(re.findall(r'"(score|generate|checkpoints)"', script))
    assert looked_up and looked_up - page.ids == set()
    assert {f"tab-{tab}" for tab in tabs} | tabs <= page.ids


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("/playground/playground.js", "text/javascript; charset=utf-8"),
        ("/playground/playground.css", "text/css; charset=utf-8"),
    ],
)
def test_each_asset_is_served_with_its_type_and_the_same_policy(
    client: TestClient, path: str, media_type: str
) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.content


def test_an_unchanged_file_is_answered_not_modified(client: TestClient) -> None:
    first = client.get(PAGE)
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "no-cache"
    again = client.get(PAGE, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    weak = client.get(PAGE, headers={"If-None-Match": f'"other", W/{etag}'})
    assert weak.status_code == 304
    assert client.get(PAGE, headers={"If-None-Match": '"other"'}).status_code == 200
    script = client.get("/playground/playground.js")
    assert script.headers["etag"] != etag


@pytest.mark.parametrize(
    "path",
    ["/playground/index.html", "/playground/__init__.py", "/playground/nothing.js"],
)
def test_only_the_pages_files_are_served(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    error = Error.model_validate(response.json()).error
    assert error.type == "not_found" and error.request_id == response.headers["x-request-id"]


def test_a_slash_after_the_page_leads_to_the_page(client: TestClient) -> None:
    """Relative asset and API paths resolve against /playground, not /playground/."""
    response = client.get(f"{PAGE}/", follow_redirects=False)
    assert response.status_code in (307, 308)
    assert response.headers["location"].endswith(PAGE)


def test_the_page_is_no_part_of_the_api_contract(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith(PAGE)]


def test_an_operator_can_turn_the_page_off(tmp_path: Path) -> None:
    with gateway(tmp_path, playground=False) as client:
        assert client.get(PAGE).status_code == 404
        assert client.get("/playground/playground.js").status_code == 404
