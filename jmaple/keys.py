"""The typed AppKeys shared by app.py and api/ (no module-level state: everything hangs off the app)."""

from __future__ import annotations

import weakref
from typing import Any

from aiohttp import web

from jmaple.auth import Authenticator
from jmaple.config import Config
from jmaple.core.capability import Plugin
from jmaple.core.context import Principal, Runtime
from jmaple.core.dispatcher import Dispatcher

CONFIG = web.AppKey("jmaple.config", Config)
EXTRA_PLUGINS = web.AppKey("jmaple.extra_plugins", tuple[Plugin, ...])
RUNTIME = web.AppKey("jmaple.runtime", Runtime)
DISPATCHER = web.AppKey("jmaple.dispatcher", Dispatcher)
AUTHENTICATOR = web.AppKey("jmaple.authenticator", Authenticator)
LIMITER = web.AppKey("jmaple.limiter", Any)
STREAMS = web.AppKey("jmaple.streams", weakref.WeakSet)
METRICS = web.AppKey("jmaple.metrics", dict)

# Request keys (per request, set by the auth middleware).
PRINCIPAL = web.RequestKey("jmaple.principal", Principal)


def principal_of(request: web.Request) -> Principal:
    return request[PRINCIPAL]
