"""make_app(config) and lifespan(): the one place that wires the parts together."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import orjson
from aiohttp import web

from jmaple.api import add_routes
from jmaple.api.streams import StreamSupervisor
from jmaple.api.ticket import Tickets
from jmaple.api.http import Limiter, front
from jmaple.auth import Authenticator, auth_gate
from jmaple.config import Config
from jmaple.core.capability import Plugin, Registry
from jmaple.core.context import Runtime
from jmaple.core.dispatcher import Dispatcher
from jmaple.core.publisher import StatePublisher
from jmaple.keys import (AUTH_HEADER, AUTHENTICATOR, CONFIG, DISPATCHER, EXTRA_PLUGINS, LIMITER, PRINCIPAL,
                         PUBLISHER, RUNTIME, SUPERVISOR, TICKETS)
from jmaple.push.broker import PushBroker
from jmaple.push.webhook import WEBHOOKS, Lock, WebhookDelivery, client_session, fanout_state_change
from jmaple.store import changes
from jmaple.store.blobs import BlobStore
from jmaple.store.db import Database

log = logging.getLogger(__name__)

DATABASE_FILE = "jmaple.sqlite3"
BLOB_COLLECT_INTERVAL = 600.0
TOMBSTONE_PRUNE_INTERVAL = 3600.0


def make_broker(config: Config) -> contextlib.AbstractAsyncContextManager[PushBroker]:
    """The broker [push] broker names: the in-process one, or Redis for several daemons on one database."""
    if config.push.broker == "local":
        return PushBroker()
    from jmaple.push.redis import RedisPushBroker, namespace_for   # the redis package is an optional extra
    return RedisPushBroker(config.push.broker, namespace_for(config.data_dir / DATABASE_FILE))


def _shared_lock(config: Config, broker: PushBroker) -> Lock | None:
    """The lock the daemons sharing a Redis broker take around each webhook attempt; one daemon needs none."""
    if config.push.broker == "local":
        return None
    from jmaple.push.redis import RedisPushBroker
    return broker.lock if isinstance(broker, RedisPushBroker) else None


@contextlib.asynccontextmanager
async def open_runtime(config: Config, extra: Sequence[Plugin] = ()) -> AsyncIterator[Runtime]:
    """Registry, migrated database, broker and blob store: what the daemon and every CLI command need.

    Each enabled plugin's after_migrate hook runs before the runtime is handed out."""
    registry = Registry.load(config, extra)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        db = await stack.enter_async_context(Database.open(config.data_dir / DATABASE_FILE, config.storage,
                                                           config.clock))
        await db.migrate(registry.migrations())
        broker = await stack.enter_async_context(make_broker(config))
        blobs = BlobStore(config.data_dir / "blobs", config.limits)
        runtime = Runtime(config, registry, db, broker, blobs)
        for plugin in registry.plugins:
            if plugin.after_migrate is not None:
                await plugin.after_migrate(runtime)
        yield runtime


async def _every(interval: float, job: Callable[[], Awaitable[Any]], name: str) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await job()
        except Exception:
            log.exception("background job %s failed", name)


def _tracer(kind: str, body: Any) -> None:
    """`jmapled dev --trace`: print a request or response; one orjson cannot write gets a placeholder."""
    try:
        text = orjson.dumps(body, option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONEncodeError as exc:   # e.g. nested deeper than orjson writes (254 levels)
        text = f"<not shown: {exc}>"
    print(f"--- {kind}\n{text}", flush=True)


async def lifespan(app: web.Application) -> AsyncIterator[None]:
    """Open every long-lived part in dependency order; close them in reverse."""
    config = app[CONFIG]
    async with contextlib.AsyncExitStack() as stack:
        runtime = await stack.enter_async_context(open_runtime(config, app[EXTRA_PLUGINS]))
        publisher = StatePublisher(runtime.db, runtime.broker)
        await publisher.start()
        app[RUNTIME] = runtime
        app[DISPATCHER] = Dispatcher(runtime, publisher, _tracer if config.trace else None)
        app[PUBLISHER] = publisher
        app[AUTHENTICATOR] = Authenticator(runtime.db, config.auth)
        app[SUPERVISOR] = supervisor = StreamSupervisor(app[AUTHENTICATOR])
        # Webhooks (PushSubscription): their own HTTP client, with the SSRF checks and our TLS trust.
        http = await stack.enter_async_context(client_session(config.push))
        app[WEBHOOKS] = await stack.enter_async_context(
            WebhookDelivery(runtime, http, config.push, _shared_lock(config, runtime.broker)))
        runtime.broker.add_on_publish(functools.partial(fanout_state_change, app, http))
        for plugin in runtime.registry.plugins:
            for service in plugin.services:
                await stack.enter_async_context(service(runtime))

        async def prune() -> None:
            async with runtime.db.write() as tx:
                await changes.prune_tombstones(tx, tx.now - config.storage.changes_horizon_days * 86400)

        tasks = [
            asyncio.create_task(publisher.watch(), name="jmaple.watch"),
            asyncio.create_task(supervisor.run(), name="jmaple.streams"),
            asyncio.create_task(_every(BLOB_COLLECT_INTERVAL, lambda: runtime.blobs.collect(runtime.db),
                                       "blob collection"), name="jmaple.blobs"),
            asyncio.create_task(_every(TOMBSTONE_PRUNE_INTERVAL, prune, "tombstone pruning"), name="jmaple.prune"),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def close_streams(app: web.Application) -> None:
    """Tell every open SSE and WebSocket stream that the server is going away, before cleanup."""
    if SUPERVISOR not in app:
        return
    for stream in list(app[SUPERVISOR].streams):
        with contextlib.suppress(Exception):
            await stream.close_for_shutdown()


def make_app(config: Config, *, capabilities: Sequence[Plugin] = ()) -> web.Application:
    """The aiohttp application; its parts open in lifespan()."""
    app = web.Application(client_max_size=max(config.limits.max_size_request, config.limits.max_size_upload) + 1)
    app[CONFIG] = config
    app[EXTRA_PLUGINS] = tuple(capabilities)
    app[TICKETS] = Tickets()
    app[LIMITER] = Limiter()
    app.cleanup_ctx.append(lifespan)
    app.on_shutdown.append(close_streams)
    add_routes(app, front(config.server, auth_gate(AUTHENTICATOR, config.server, PRINCIPAL, AUTH_HEADER, TICKETS)))
    return app
