"""/.well-known/jmap -> /jmap/session (RFC 8620 §2, §2.2)."""

from __future__ import annotations

from aiohttp import web

from jmaple.api.http import json_response
from jmaple.core.session import session_object
from jmaple.keys import CONFIG, RUNTIME, principal_of


def base_url(request: web.Request) -> str:
    """The configured base_url, else the scheme and Host this request came in on."""
    configured = request.app[CONFIG].server.base_url
    if configured:
        return configured.rstrip("/")
    return f"{request.scheme}://{request.host}"


async def well_known(request: web.Request) -> web.StreamResponse:
    """The discovery redirect; answers without credentials."""
    raise web.HTTPTemporaryRedirect(base_url(request) + "/jmap/session")


async def session(request: web.Request) -> web.StreamResponse:
    response = json_response(request, session_object(request.app[RUNTIME], principal_of(request), base_url(request)))
    response.headers["Cache-Control"] = "no-cache, no-store"
    return response


async def healthz(request: web.Request) -> web.StreamResponse:
    """Liveness for supervisors and load balancers: status only, no credentials needed."""
    return web.json_response({"status": "ok"})
