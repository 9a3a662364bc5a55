"""The typed AppKeys shared by app.py and api/ (no module-level state: everything hangs off the app)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from jmaple.api.streams import StreamSupervisor
from jmaple.auth import Authenticator
from jmaple.config import Config
from jmaple.core.capability import Plugin
from jmaple.core.context import Principal, Runtime
from jmaple.core.dispatcher import Dispatcher
from jmaple.core.publisher import StatePublisher

CONFIG = web.AppKey("jmaple.config", Config)
EXTRA_PLUGINS = web.AppKey("jmaple.extra_plugins", tuple[Plugin, ...])
RUNTIME = web.AppKey("jmaple.runtime", Runtime)
DISPATCHER = web.AppKey("jmaple.dispatcher", Dispatcher)
AUTHENTICATOR = web.AppKey("jmaple.authenticator", Authenticator)
LIMITER = web.AppKey("jmaple.limiter", Any)
METRICS = web.AppKey("jmaple.metrics", dict)
PUBLISHER = web.AppKey("jmaple.publisher", StatePublisher)
SUPERVISOR = web.AppKey("jmaple.supervisor", StreamSupervisor)
TICKETS = web.AppKey("jmaple.tickets", Any)

# Request keys (per request, set by the auth gate).
PRINCIPAL = web.RequestKey("jmaple.principal", Principal)
AUTH_HEADER = web.RequestKey("jmaple.auth_header", str)   # the credentials used (never logged)


def principal_of(request: web.Request) -> Principal:
    return request[PRINCIPAL]
