"""The dashboard: ``/`` serves the single-page app, ``/assets/<file>`` its built scripts and styles.

The files are built from ``services/gateway/frontend`` (``npm ci && npm run build``) into
``halo_gateway/static/`` and shipped in the package, so a machine without Node serves the same dashboard.
These routes are public (the page holds no data; every API call it makes needs a token or a session) and
carry a strict Content-Security-Policy: scripts from this origin only, no framing.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, Response
from halo_common.errors import NotFound

router = APIRouter(include_in_schema=False)

STATIC = Path(__file__).resolve().parent.parent / "static"
_ASSET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
_PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache",
                 "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}
NOT_BUILT = """<!doctype html><meta charset="utf-8"><title>Halo Forge</title>
<p>The dashboard is not built in this installation: run <code>cd services/gateway/frontend && npm ci &&
npm run build</code> (or <code>scripts/dev setup</code> with Node installed). The API is at
<a href="/docs">/docs</a>.</p>"""


@router.get("/")
async def index() -> Response:
    page = STATIC / "index.html"
    if not page.is_file():
        return HTMLResponse(NOT_BUILT, status_code=503, headers=_PAGE_HEADERS)
    return FileResponse(page, media_type="text/html", headers=_PAGE_HEADERS)


@router.get("/favicon.svg")
async def favicon() -> Response:
    return _file(STATIC / "favicon.svg")


@router.get("/assets/{name}")
async def asset(name: str) -> Response:
    """A built asset; names carry a content hash, so they are cached for good."""
    if not _ASSET.match(name) or ".." in name:
        raise NotFound(f"no asset {name!r}", param="name")
    return _file(STATIC / "assets" / name, immutable=True)


def _file(path: Path, immutable: bool = False) -> Response:
    if not path.is_file():
        raise NotFound(f"no file {path.name!r} in the dashboard's assets", param="name")
    cache = "public, max-age=31536000, immutable" if immutable else "no-cache"
    return FileResponse(path, headers={"Cache-Control": cache, "X-Content-Type-Options": "nosniff"})
