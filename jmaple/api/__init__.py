"""HTTP transports, thin: authenticate, parse, call the core, serialise."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from jmaple.api.http import Handler


def add_routes(app: web.Application, front: Callable[[Handler], Handler]) -> None:
    """Every route, each handler wrapped in `front` (api.http.front). A path's other methods answer 405
    and any other path 404, through `front` too: problem+json, CORS, and 401 before anything else."""
    # Imported here: the handler modules import jmaple.keys, which imports jmaple.api.streams.
    from jmaple.api import blobs, eventsource, request, session, ticket, websocket

    routes: tuple[tuple[str, str, Handler], ...] = (
        ("GET", "/.well-known/jmap", session.well_known),
        ("GET", "/healthz", session.healthz),
        ("GET", "/jmap/session", session.session),
        ("POST", "/jmap/api", request.make_api(app)),
        ("POST", "/jmap/upload/{accountId}/", blobs.upload),
        ("GET", "/jmap/download/{accountId}/{blobId}/{name}", blobs.download),
        ("GET", "/jmap/eventsource", eventsource.eventsource),
        ("GET", "/jmap/ws", websocket.websocket),
        ("POST", "/jmap/ticket", ticket.ticket),
    )
    for method, path, handler in routes:
        app.router.add_route(method, path, front(handler))
        allowed = {"GET", "HEAD"} if method == "GET" else {method}
        if method == "GET":
            app.router.add_route("HEAD", path, front(handler))
        app.router.add_route("*", path, front(_method_not_allowed(allowed)))
    app.router.add_route("*", r"/{tail:[\s\S]*}", front(_not_found))   # "." would miss a decoded %0A


def _method_not_allowed(allowed: set[str]) -> Handler:
    async def refuse(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    return refuse


async def _not_found(request: web.Request) -> web.StreamResponse:
    raise web.HTTPNotFound()
