"""HTTP transports, thin: authenticate, parse, call the core, serialise."""

from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application) -> None:
    # Imported here: the handler modules import jmaple.keys, which imports jmaple.api.streams.
    from jmaple.api import blobs, eventsource, request, session, ticket, websocket

    app.router.add_get("/.well-known/jmap", session.well_known)
    app.router.add_get("/healthz", session.healthz)
    app.router.add_get("/jmap/session", session.session)
    app.router.add_post("/jmap/api", request.api)
    app.router.add_post("/jmap/upload/{accountId}/", blobs.upload)
    app.router.add_get("/jmap/download/{accountId}/{blobId}/{name}", blobs.download)
    app.router.add_get("/jmap/eventsource", eventsource.eventsource)
    app.router.add_get("/jmap/ws", websocket.websocket)
    app.router.add_post("/jmap/ticket", ticket.ticket)
