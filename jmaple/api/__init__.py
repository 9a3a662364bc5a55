"""HTTP transports, thin: authenticate, parse, call the core, serialise."""

from __future__ import annotations

from aiohttp import web

from jmaple.api import blobs, request, session


def add_routes(app: web.Application) -> None:
    app.router.add_get("/.well-known/jmap", session.well_known)
    app.router.add_get("/healthz", session.healthz)
    app.router.add_get("/jmap/session", session.session)
    app.router.add_post("/jmap/api", request.api)
    app.router.add_post("/jmap/upload/{accountId}/", blobs.upload)
    app.router.add_get("/jmap/download/{accountId}/{blobId}/{name}", blobs.download)
