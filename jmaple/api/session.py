"""/.well-known/jmap -> /jmap/session (RFC 8620 §2, §2.2)."""

from __future__ import annotations

import re

from aiohttp import web

from jmaple.api.http import json_response
from jmaple.core.session import session_object
from jmaple.keys import CONFIG, RUNTIME, principal_of


# What a Host header may hold to be echoed into URLs: a name or address and an optional port.
HOST = re.compile(r"(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9._-]{1,253})(:[0-9]{1,5})?")


def base_url(request: web.Request) -> str:
    """The configured base_url, else the scheme and Host this request came in on.

    Without a usable Host header (HTTP/1.0, or junk), the address the request arrived on.
    """
    configured = request.app[CONFIG].server.base_url
    if configured:
        return configured.rstrip("/")
    host = request.headers.get("Host", "")
    if not HOST.fullmatch(host):
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if isinstance(sockname, tuple) and len(sockname) >= 2:
            address = f"[{sockname[0]}]" if ":" in sockname[0] else sockname[0]
            host = f"{address}:{sockname[1]}"
        else:
            host = "localhost"   # a Unix socket: only a proxy in front knows the real name
    return f"{request.scheme}://{host}"


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
