"""The playground: a static page the gateway serves at /playground that calls the public /v1
API in the browser with a key the user pastes. The page holds no data, so it needs no key;
a strict Content-Security-Policy keeps it to its own script, styles and the API."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request, Response

from services.common.errors import NotFound

PAGE_PATH = "/playground"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        # blob: the uploaded creatives' thumbnails and the generated images, which are read
        # with the key (fetch) and shown from memory: an <img src> could not send it.
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        # The page submits nothing itself: without its script a form must not navigate
        # (a GET form would put what it holds in the URL).
        "form-action 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    )
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Revalidated on every load (a 304 when unchanged): an upgraded gateway serves its own page.
    "Cache-Control": "no-cache",
}

PAGE = "index.html"
_MEDIA_TYPES = {
    PAGE: "text/html; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}
"""Every file the playground serves; nothing else in this folder is reachable."""


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """The page and its files, read once from the package data: a gateway installed without
    them fails at startup, not at a user's first visit."""
    folder = resources.files(__name__)
    assets = {}
    for name, media_type in _MEDIA_TYPES.items():
        body = folder.joinpath(name).read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        assets[name] = Asset(body=body, media_type=media_type, etag=etag)
    return assets


def add_playground(app: FastAPI) -> None:
    """Serve the page at ``/playground`` and its files under it, without a key and outside
    the OpenAPI: they are no part of the API."""
    assets = load_assets()

    @app.get(PAGE_PATH, include_in_schema=False)
    async def playground_page(request: Request) -> Response:
        return _answer(assets[PAGE], request)

    @app.get(PAGE_PATH + "/{name}", include_in_schema=False)
    async def playground_asset(name: str, request: Request) -> Response:
        asset = assets.get(name) if name != PAGE else None
        if asset is None:
            raise NotFound(f"the playground has no file {name!r}")
        return _answer(asset, request)


def _answer(asset: Asset, request: Request) -> Response:
    headers = {**_SECURITY_HEADERS, "ETag": asset.etag}
    tags = _etags(request.headers.get("if-none-match"))
    if asset.etag in tags or "*" in tags:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def _etags(header: str | None) -> set[str]:
    """The entity tags of an If-None-Match header; weak ones match too (RFC 9110 13.1.2)."""
    if not header:
        return set()
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}
