"""PushSubscription delivery (RFC 8620 §7.2, RFC 8030 §5, RFC 8291, RFC 8292) against a real HTTPS receiver.

The receiver is an aiohttp server on 127.0.0.1 with a certificate from a throwaway CA (trustme); the
app runs with the push plugin, allow_private_targets on (the receiver is on loopback) and that CA
added. The SSRF tests turn allow_private_targets off and check that nothing reaches the receiver.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.metadata
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import http_ece
import orjson
import pytest
import trustme
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from conftest import CORE, NOTES, JmapClient, add_user, basic, share
from jmaple.app import make_app
from jmaple.config import Config, ConfigError, PushConfig
from jmaple.core.capability import BUILTIN_PLUGINS, ENTRY_POINT_GROUP
from jmaple.keys import RUNTIME
from jmaple.push import webhook
from jmaple.push.subscription import PLUGIN, VAPID_URN
from jmaple.push.webhook import (WEBHOOKS, PublicResolver, TargetRefusedError, client_session,
                                 fanout_state_change, is_public_address, retry_after)
from jmaple.store import push as push_store
from notes import PLUGIN as NOTES_PLUGIN

USING = [CORE, VAPID_URN, NOTES]
# Fast retries for the tests; each test may override any key of [push].
FAST = {"backoff_initial": 0.05, "backoff_max": 0.2, "give_up_after": 60.0}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- the receiver ------------------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        assert self.headers["Content-Type"] == "application/json", self.headers
        return orjson.loads(self.body)


@dataclass
class UserAgent:
    """A browser's side of a Web Push subscription: its key pair and auth secret (RFC 8291 §2)."""

    private_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    auth: bytes = field(default_factory=lambda: os.urandom(16))

    @property
    def keys(self) -> dict[str, str]:
        public = self.private_key.public_key().public_bytes(serialization.Encoding.X962,
                                                            serialization.PublicFormat.UncompressedPoint)
        return {"p256dh": b64(public), "auth": b64(self.auth)}

    def decrypt(self, request: Received) -> Any:
        assert request.headers["Content-Encoding"] == "aes128gcm"
        assert request.headers["Content-Type"] == "application/octet-stream"
        assert len(request.body) <= 4096
        return orjson.loads(http_ece.decrypt(request.body, private_key=self.private_key, auth_secret=self.auth))


class Receiver:
    """A push endpoint: records every request; answers 201 unless a path's script or gate says otherwise."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.script: dict[str, list[int | tuple[int, dict[str, str]]]] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.changed = asyncio.Condition()
        self.server: Any = None
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(Received(request.path, dict(request.headers), body, time.monotonic()))
        async with self.changed:
            self.changed.notify_all()
        gate = self.gates.get(request.path)
        if gate is not None:
            await gate.wait()
        script = self.script.get(request.path)
        answer = script.pop(0) if script else 201
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        return web.Response(status=status, headers=headers)

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.server.port}{path}"

    def at(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def wait(self, predicate: Callable[[], Any]) -> Any:
        async with asyncio.timeout(5):
            async with self.changed:
                await self.changed.wait_for(predicate)
        return predicate()

    async def nth(self, path: str, n: int) -> Received:
        """The n-th request (from 1) at path, waiting for it."""
        await self.wait(lambda: len(self.at(path)) >= n)
        return self.at(path)[n - 1]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca, tmp_path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def tls_server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost", "::1").configure_cert(context)
    return context


@pytest.fixture
async def receiver(aiohttp_server, ca) -> Receiver:
    found = Receiver()
    found.server = await aiohttp_server(found.app, ssl=tls_server_context(ca))
    return found


# --- the app -----------------------------------------------------------------------------------------------


class Clock:
    """An injected wall clock the test moves (Config.clock)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def plugins() -> list[Any]:
    """The test capability, plus the push plugin unless it is already installed (an entry point or built in)."""
    installed = {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)} | set(BUILTIN_PLUGINS)
    return [NOTES_PLUGIN] + ([] if PLUGIN.name in installed else [PLUGIN])


def push_config(data_dir: Any, **settings: Any) -> Config:
    """A test Config with these [push] webhook settings."""
    clock = settings.pop("clock", None)
    extra = {"clock": clock} if clock is not None else {}
    return Config.for_tests(data_dir=data_dir, push=settings, **extra)


class Events:
    """What the engine reports: ("delivered" | "failed" | "destroyed" | "expired", subscription id, detail)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []
        self._next = asyncio.Event()

    def __call__(self, event: str, sub_id: str, detail: str) -> None:
        self.seen.append((event, sub_id, detail))
        self._next.set()
        self._next = asyncio.Event()

    def of(self, sub_id: str, event: str | None = None) -> list[tuple[str, str, str]]:
        return [e for e in self.seen if e[1] == sub_id and (event is None or e[0] == event)]

    async def wait(self, sub_id: str, event: str, count: int = 1) -> list[tuple[str, str, str]]:
        async with asyncio.timeout(5):
            while len(self.of(sub_id, event)) < count:
                await self._next.wait()
        return self.of(sub_id, event)


@pytest.fixture
def start(receiver, aiohttp_client, tmp_path, ca_file):
    """start(**settings) -> a client logged in as alice on an app with the push plugin; same data dir each time.

    It depends on `receiver` so that the apps stop before any receiver does (fixtures tear down in reverse).
    """

    async def go(*, user: bool = True, **settings: Any) -> JmapClient:
        values = {"allow_private_targets": True, "extra_ca_file": ca_file, **FAST, **settings}
        client = await aiohttp_client(make_app(push_config(tmp_path / "data", **values), capabilities=plugins()))
        client.events = Events()
        webhook.engine_of(client.app[RUNTIME]).add_listener(client.events)
        if user:
            runtime = client.app[RUNTIME]
            async with runtime.db.read() as conn:
                known = await conn.value("SELECT u.id FROM users u WHERE login = 'alice@example.org'")
            if known is None:
                await add_user(client, "alice@example.org")
            async with runtime.db.read() as conn:
                client.account_id = await conn.value(
                    "SELECT a.id FROM accounts a JOIN users u ON u.id = a.owner_id WHERE u.login = ?",
                    ("alice@example.org",))
            client.auth = basic("alice@example.org")
        return client

    return go


async def call(client: JmapClient, method: str, args: dict[str, Any], *, auth: str | None = None) -> dict[str, Any]:
    """One call with the push capability in `using`; returns its arguments (asserting it did not fail)."""
    body = {"using": USING, "methodCalls": [[method, args, "0"]]}
    (name, result, _), = (await client.request_json(body, auth=auth))["methodResponses"]
    assert name == method, (name, result)
    return result


# The types the tests publish: subscriptions name them, so the states of other plugins' types (default
# mailboxes created with the user, say) do not turn up in the StateChanges compared.
TYPES = ["Foo", "Bar", "Note", "Email", "EmailDelivery"]


async def subscribe(client: JmapClient, receiver: Receiver, path: str, *, verify: bool = True,
                    auth: str | None = None, ua: UserAgent | None = None, **props: Any) -> str:
    """Create a subscription to receiver's path, read the PushVerification it gets, and (by default) verify."""
    create = {"deviceClientId": f"device{path}", "url": receiver.url(path), "types": TYPES, **props}
    if ua is not None:
        create["keys"] = ua.keys
    result = await call(client, "PushSubscription/set", {"create": {"c": create}}, auth=auth)
    assert result["created"], result
    sub_id = result["created"]["c"]["id"]
    first = await receiver.nth(path, 1)
    verification = ua.decrypt(first) if ua is not None else first.json
    assert verification["pushSubscriptionId"] == sub_id
    if verify:
        result = await call(client, "PushSubscription/set",
                            {"update": {sub_id: {"verificationCode": verification["verificationCode"]}}}, auth=auth)
        assert result["updated"] == {sub_id: None}, result
    return sub_id


async def publish(client: JmapClient, type_states: dict[str, str], account_id: str | None = None) -> None:
    await client.app[RUNTIME].broker.publish(account_id or client.account_id, type_states)


# --- delivery ----------------------------------------------------------------------------------------------


async def test_a_real_change_reaches_a_verified_subscription_as_a_state_change(start, receiver):
    """RFC 8620 §7.2: after verification, each change is POSTed as a StateChange (§7.1) with a TTL header
    (RFC 8030 §5.2), Urgency (§5.3) and Topic (§5.4)."""
    client = await start()
    sub_id = await subscribe(client, receiver, "/a")
    result = await call(client, "Note/set", {"accountId": client.account_id, "create": {"n": {"title": "hi"}}})
    request = await receiver.nth("/a", 2)
    body = request.json
    assert body == {"@type": "StateChange", "changed": {client.account_id: {"Note": result["newState"]}},
                    "pushState": body["pushState"]}
    assert body["pushState"].startswith("s")
    assert request.headers["TTL"] == "86400"
    assert request.headers["Urgency"] == "normal"
    assert len(request.headers["Topic"]) == 32 and request.headers["Topic"].isascii()
    assert "Authorization" not in request.headers and "Content-Encoding" not in request.headers
    await client.events.wait(sub_id, "delivered", 2)
    async with client.app[RUNTIME].db.read() as conn:
        (listed,) = await push_store.listing(conn, sub_id)
    assert (listed.pending, listed.sub.failures, listed.sub.last_status) == (0, 0, "201")


async def test_email_delivery_is_pushed_with_high_urgency(start, receiver):
    """RFC 8030 §5.3: Urgency "high" when new mail arrived (EmailDelivery), so devices wake for it."""
    client = await start()
    await subscribe(client, receiver, "/u")
    await publish(client, {"Email": "7", "EmailDelivery": "7"})
    request = await receiver.nth("/u", 2)
    assert request.headers["Urgency"] == "high"
    assert request.json["changed"] == {client.account_id: {"Email": "7", "EmailDelivery": "7"}}


async def test_types_limit_what_is_pushed(start, receiver):
    """RFC 8620 §7.2: with `types`, only those types are pushed and the others are left out of the object."""
    client = await start()
    await subscribe(client, receiver, "/t", types=["Foo"])
    await publish(client, {"Bar": "1"})
    await publish(client, {"Foo": "2", "Bar": "3"})
    request = await receiver.nth("/t", 2)
    assert request.json["changed"] == {client.account_id: {"Foo": "2"}}
    await publish(client, {"Foo": "4"})
    assert (await receiver.nth("/t", 3)).json["changed"] == {client.account_id: {"Foo": "4"}}


async def test_types_null_means_every_type(start, receiver):
    """RFC 8620 §7.2: types null pushes changes of all types."""
    client = await start()
    await subscribe(client, receiver, "/all", types=None)
    await publish(client, {"Foo": "1", "Zed": "2"})
    await receiver.wait(lambda: any(r.json["changed"].get(client.account_id, {}).get("Zed") == "2"
                                    for r in receiver.at("/all")[1:]))
    (request,) = [r for r in receiver.at("/all")[1:] if "Zed" in r.json["changed"].get(client.account_id, {})]
    assert request.json["changed"][client.account_id].items() >= {"Foo": "1", "Zed": "2"}.items()


async def test_changes_in_an_account_shared_with_the_user_are_pushed_too(start, receiver):
    """A subscription covers every account its user may use (RFC 8620 §7.2 subscriptions are per credential)."""
    client = await start()
    bob = await add_user(client, "bob@example.org")
    await share(client, "alice@example.org", "bob@example.org", False)
    await subscribe(client, receiver, "/shared")
    await publish(client, {"Foo": "9"}, account_id=bob.account_id)
    assert (await receiver.nth("/shared", 2)).json["changed"] == {bob.account_id: {"Foo": "9"}}


async def test_changes_made_while_the_receiver_stalls_are_coalesced_and_none_is_lost(start, receiver):
    """RFC 8620 §7.2: pushes coalesce into one minimal StateChange; the newest state of each type arrives."""
    client = await start()
    await subscribe(client, receiver, "/slow", types=["Foo", *(f"T{n}" for n in range(2, 7))])
    receiver.gates["/slow"] = gate = asyncio.Event()
    await publish(client, {"Foo": "1"})
    await receiver.nth("/slow", 2)             # the first StateChange is in flight, its answer held
    for n in range(2, 7):
        await publish(client, {"Foo": str(n), f"T{n}": str(n)})
    gate.set()
    await receiver.wait(lambda: any(r.json["changed"][client.account_id].get("Foo") == "6"
                                    for r in receiver.at("/slow")[1:]))
    posts = receiver.at("/slow")[1:]
    assert len(posts) == 2
    assert posts[1].json["changed"] == {client.account_id: {"Foo": "6", **{f"T{n}": str(n) for n in range(2, 7)}}}


async def test_a_stalled_receiver_does_not_delay_other_subscriptions(start, receiver):
    client = await start()
    await subscribe(client, receiver, "/stuck")
    await subscribe(client, receiver, "/free")
    receiver.gates["/stuck"] = asyncio.Event()
    await publish(client, {"Foo": "1"})
    await receiver.nth("/free", 2)
    await receiver.nth("/stuck", 2)
    receiver.gates["/stuck"].set()


async def test_fanout_state_change_queues_through_the_app_and_returns_at_once(start, receiver):
    """jmaple.push.webhook.fanout_state_change, the documented on_publish hook, never waits for delivery."""
    client = await start()
    await subscribe(client, receiver, "/f")
    receiver.gates["/f"] = gate = asyncio.Event()
    engine = webhook.engine_of(client.app[RUNTIME])
    assert fanout_state_change({WEBHOOKS: engine}, engine.http, client.account_id, {"Foo": "3"}) is None
    assert fanout_state_change({}, engine.http, client.account_id, {"Foo": "4"}) is None   # no engine: nothing
    request = await receiver.nth("/f", 2)
    gate.set()
    assert request.json["changed"] == {client.account_id: {"Foo": "3"}}


# --- answers from the push service ---------------------------------------------------------------------------


async def test_429_with_retry_after_delays_the_next_attempt(start, receiver):
    """RFC 8620 §7.2: a 429 must reduce the frequency of pushes; Retry-After (RFC 9110 §10.2.3) says how long."""
    client = await start()
    sub_id = await subscribe(client, receiver, "/busy")
    receiver.script["/busy"] = [(429, {"Retry-After": "1"})]
    await publish(client, {"Foo": "1"})
    first = await receiver.nth("/busy", 2)
    second = await receiver.nth("/busy", 3)
    assert second.at - first.at >= 0.95
    assert second.json["changed"] == {client.account_id: {"Foo": "1"}}
    await client.events.wait(sub_id, "delivered", 2)
    assert [e[2] for e in client.events.of(sub_id)] == ["201", "429", "201"]


@pytest.mark.parametrize("status", [404, 410])
async def test_404_and_410_destroy_the_subscription(start, receiver, status):
    """RFC 8030 §7.3: the push subscription expired or was dropped; the server destroys its PushSubscription."""
    client = await start()
    sub_id = await subscribe(client, receiver, "/gone")
    receiver.script["/gone"] = [status]
    await publish(client, {"Foo": "1"})
    await client.events.wait(sub_id, "destroyed")
    result = await call(client, "PushSubscription/get", {"ids": [sub_id]})
    assert result == {"list": [], "notFound": [sub_id]}
    async with client.app[RUNTIME].db.read() as conn:
        assert await conn.value("SELECT count(*) FROM push_subscriptions") == 0
        assert await conn.value("SELECT count(*) FROM push_pending") == 0


async def test_server_errors_back_off_then_succeed(start, receiver):
    """Failures are retried with exponential back-off (with jitter), and the change still arrives."""
    client = await start(backoff_initial=0.1, backoff_max=1.0)
    sub_id = await subscribe(client, receiver, "/flaky")
    receiver.script["/flaky"] = [500, 503, 502]
    await publish(client, {"Foo": "1"})
    posts = [await receiver.nth("/flaky", n) for n in range(2, 6)]
    gaps = [b.at - a.at for a, b in zip(posts, posts[1:])]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2   # base 0.1, 0.2, 0.4, halved at worst
    assert posts[-1].json["changed"] == {client.account_id: {"Foo": "1"}}
    await client.events.wait(sub_id, "delivered", 2)
    async with client.app[RUNTIME].db.read() as conn:
        (listed,) = await push_store.listing(conn, sub_id)
    assert (listed.sub.failures, listed.sub.failing_since, listed.sub.next_attempt_at, listed.pending) == \
        (0, None, None, 0)


async def test_repeated_failures_end_in_giving_up_and_destroying_the_subscription(start, receiver):
    client = await start(give_up_after=0.3)
    sub_id = await subscribe(client, receiver, "/dead")
    receiver.script["/dead"] = [500] * 100
    await publish(client, {"Foo": "1"})
    (event,) = await client.events.wait(sub_id, "destroyed")
    assert event[2] == "gave up: 500"
    assert len(receiver.at("/dead")) >= 3
    assert (await call(client, "PushSubscription/get", {"ids": None}))["list"] == []


async def test_redirects_are_not_followed(start, receiver):
    """A 3xx is a failed attempt: following it would let the target send us anywhere (RFC 8620 §8.6)."""
    client = await start()
    sub_id = await subscribe(client, receiver, "/moved")
    receiver.script["/moved"] = [(307, {"Location": receiver.url("/elsewhere")})]
    await publish(client, {"Foo": "1"})
    await client.events.wait(sub_id, "failed")
    await receiver.nth("/moved", 3)                   # retried at the same URL
    assert receiver.at("/elsewhere") == []


async def test_a_pending_delivery_survives_a_restart(start, receiver, aiohttp_server, ca):
    """Pending deliveries are kept in SQLite: stop the server while the receiver is down, start a new one on
    the same data directory, and the change arrives."""
    client = await start(backoff_initial=0.05, backoff_max=0.05)
    sub_id = await subscribe(client, receiver, "/r")
    port = receiver.server.port
    await receiver.server.close()                  # the receiver is down: connections are refused
    await publish(client, {"Foo": "41"})
    await client.events.wait(sub_id, "failed")
    await client.close()                           # the first server stops with the delivery pending

    again = Receiver()
    again.server = await aiohttp_server(again.app, port=port, ssl=tls_server_context(ca))
    client = await start()
    request = await again.nth("/r", 1)
    assert request.json["changed"] == {client.account_id: {"Foo": "41"}}


async def test_a_receiver_with_an_untrusted_certificate_is_not_sent_anything(start, receiver, aiohttp_server):
    """Outgoing TLS verifies the certificate (the system store plus extra_ca_file)."""
    client = await start()
    stranger = Receiver()
    stranger.server = await aiohttp_server(stranger.app, ssl=tls_server_context(trustme.CA()))
    result = await call(client, "PushSubscription/set", {"create": {"c": {
        "deviceClientId": "d", "url": stranger.url("/x")}}})
    sub_id = result["created"]["c"]["id"]
    (event,) = await client.events.wait(sub_id, "failed")
    assert event[2].startswith("TLS certificate error"), event
    assert stranger.requests == []


async def test_a_verification_that_cannot_be_delivered_is_tried_three_times_then_destroyed(start, receiver):
    """RFC 8620 §7.2: nothing more may go to the URL until the client sets the code; a URL that refuses the
    PushVerification gets at most three tries (transient failures), then the subscription is destroyed."""
    client = await start()
    receiver.script["/nv"] = [500] * 20
    result = await call(client, "PushSubscription/set", {"create": {"c": {"deviceClientId": "d",
                                                                          "url": receiver.url("/nv")}}})
    sub_id = result["created"]["c"]["id"]
    (event,) = await client.events.wait(sub_id, "destroyed")
    assert event[2] == "verification failed: 500"
    assert [e[0] for e in client.events.of(sub_id)] == ["failed", "failed", "destroyed"]
    assert len(receiver.at("/nv")) == webhook.VERIFICATION_ATTEMPTS == 3
    assert (await call(client, "PushSubscription/get", {"ids": [sub_id]}))["notFound"] == [sub_id]
    await client.events.wait("", "erased")            # the destruction is erased from the files too
    assert len(receiver.at("/nv")) == 3


async def test_a_verification_failing_once_is_retried_and_can_then_be_verified(start, receiver):
    client = await start()
    receiver.script["/flaky-v"] = [503]
    result = await call(client, "PushSubscription/set", {"create": {"c": {"deviceClientId": "d",
                                                                          "url": receiver.url("/flaky-v")}}})
    sub_id = result["created"]["c"]["id"]
    code = (await receiver.nth("/flaky-v", 2)).json["verificationCode"]
    result = await call(client, "PushSubscription/set", {"update": {sub_id: {"verificationCode": code}}})
    assert result["updated"] == {sub_id: None}


async def test_a_verification_is_not_retried_once_two_minutes_have_passed_since_creation(start, receiver):
    clock = Clock()
    client = await start(clock=clock)
    receiver.script["/late"] = [500]
    receiver.gates["/late"] = gate = asyncio.Event()
    result = await call(client, "PushSubscription/set", {"create": {"c": {"deviceClientId": "d",
                                                                          "url": receiver.url("/late")}}})
    sub_id = result["created"]["c"]["id"]
    await receiver.nth("/late", 1)
    clock.now += webhook.VERIFICATION_WINDOW + 1     # the first POST took (say) two minutes to fail
    gate.set()
    (event,) = await client.events.wait(sub_id, "destroyed")
    assert event[2] == "verification failed: 500"
    assert len(receiver.at("/late")) == 1


# --- pending states --------------------------------------------------------------------------------------------


async def test_an_older_state_never_replaces_a_newer_pending_one(start, receiver):
    """With several daemons (a shared broker) an older state may be committed after a newer one; the pending
    row keeps the newer (states are modseqs, compared as numbers: "9" is older than "10")."""
    client = await start()
    sub_id = await subscribe(client, receiver, "/p")
    runtime = client.app[RUNTIME]
    account = client.account_id

    async def add(*rows: tuple[str, str]) -> dict[str, str]:
        async with runtime.db.write() as tx:
            await push_store.add_pending(tx, [(sub_id, account, t, state) for t, state in rows])
        async with runtime.db.read() as conn:
            return dict(await conn.all("SELECT type, state FROM push_pending WHERE subscription_id = ?",
                                       (sub_id,)))

    assert await add(("Foo", "10"), ("Bar", "3")) == {"Foo": "10", "Bar": "3"}
    assert await add(("Foo", "9"), ("Bar", "4")) == {"Foo": "10", "Bar": "4"}
    assert await add(("Foo", "10")) == {"Foo": "10", "Bar": "4"}
    assert await add(("Foo", "100"), ("Foo", "99")) == {"Foo": "100", "Bar": "4"}
    assert await add(("Foo", "x1")) == {"Foo": "x1", "Bar": "4"}     # not a modseq: it simply replaces
    assert await add(("Foo", "7")) == {"Foo": "7", "Bar": "4"}


async def test_an_older_state_arriving_last_through_fanout_does_not_hide_the_newest(start, receiver):
    """Through the documented hook: "10" then (from another daemon, late) "5"; the POST carries "10"."""
    client = await start()
    sub_id = await subscribe(client, receiver, "/late-old")
    engine = webhook.engine_of(client.app[RUNTIME])
    receiver.gates["/late-old"] = gate = asyncio.Event()
    await publish(client, {"Foo": "1"})
    await receiver.nth("/late-old", 2)                # held: what follows stays pending meanwhile
    for state in ("10", "5"):
        fanout_state_change({WEBHOOKS: engine}, engine.http, client.account_id, {"Foo": state})
        await engine._flush()                         # each in its own batch, as two daemons would write them
    gate.set()
    request = await receiver.nth("/late-old", 3)
    assert request.json["changed"] == {client.account_id: {"Foo": "10"}}
    await client.events.wait(sub_id, "delivered", 3)
    assert len(receiver.at("/late-old")) == 3


# --- RFC 8291 encryption and RFC 8292 VAPID --------------------------------------------------------------------


def verify_vapid(authorization: str) -> tuple[dict[str, Any], str]:
    """Check `vapid t=..., k=...` as a push service would (RFC 8292 §3); return the claims and k."""
    scheme, _, params = authorization.partition(" ")
    assert scheme == "vapid"
    fields = dict(part.strip().split("=", 1) for part in params.split(","))
    token, k = fields["t"], fields["k"]
    header, claims, signature = token.split(".")
    raw = unb64(signature)
    public_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64(k))
    public_key.verify(encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")),
                      f"{header}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))
    assert orjson.loads(unb64(header)) == {"typ": "JWT", "alg": "ES256"}
    return orjson.loads(unb64(claims)), k


async def test_with_keys_every_push_is_encrypted_and_signed_with_vapid(start, receiver):
    """RFC 8620 §7.2: with keys, data is encrypted per RFC 8291 (aes128gcm, one record); RFC 8292 VAPID
    headers carry the key advertised in the session (RFC 9749)."""
    client = await start(vapid_contact="mailto:admin@example.org")
    ua = UserAgent()
    sub_id = await subscribe(client, receiver, "/enc", ua=ua)
    await publish(client, {"Foo": "12"})
    request = await receiver.nth("/enc", 2)
    assert ua.decrypt(request) == {"@type": "StateChange", "changed": {client.account_id: {"Foo": "12"}},
                                   "pushState": ua.decrypt(request)["pushState"]}
    session = await (await client.get("/jmap/session", headers={"Authorization": client.auth})).json()
    server_key = session["capabilities"][VAPID_URN]["applicationServerKey"]
    for received in receiver.at("/enc"):
        claims, k = verify_vapid(received.headers["Authorization"])
        assert k == server_key
        assert claims["aud"] == f"https://127.0.0.1:{receiver.server.port}"
        assert claims["sub"] == "mailto:admin@example.org"
        assert time.time() < claims["exp"] <= time.time() + 24 * 3600
        assert received.headers["TTL"] == "86400"
    assert (await call(client, "PushSubscription/get", {"ids": [sub_id]}))["list"][0]["id"] == sub_id


async def test_a_change_too_big_for_one_push_message_is_split_without_loss(start, receiver):
    """RFC 8291 §4 / RFC 8030 §7.2: one record of at most 4096 octets; what does not fit goes next."""
    client = await start()
    ua = UserAgent()
    states = {f"Type{n:03}WithARatherLongName": str(n) for n in range(150)}
    await subscribe(client, receiver, "/big", ua=ua, types=list(states))
    await publish(client, states)
    seen: dict[str, str] = {}

    def complete() -> bool:
        seen.clear()
        for r in receiver.at("/big")[1:]:
            seen.update(ua.decrypt(r)["changed"][client.account_id])
        return seen == states

    await receiver.wait(complete)
    assert len(receiver.at("/big")) >= 3


# --- targets -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                                     "100.64.0.1", "0.0.0.0", "224.0.0.1", "::1", "::", "fe80::1", "fc00::1",
                                     "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::1",
                                     "2001:db8::1", "not an address"])
def test_addresses_that_are_not_globally_routable_are_refused(address):
    assert not is_public_address(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_globally_routable_addresses_are_allowed(address):
    assert is_public_address(address)


async def test_a_name_resolving_to_loopback_is_refused_at_resolution():
    resolver = PublicResolver(aiohttp.resolver.ThreadedResolver(), allow_private=False)
    with pytest.raises(TargetRefusedError):
        await resolver.resolve("localhost", 443)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "[::ffff:127.0.0.1]"])
async def test_the_webhook_client_refuses_to_connect_to_loopback(receiver, ca_file, host):
    """The check is made on the address connected to: names through the resolver, IP literals (which aiohttp
    does not resolve) at the socket. The receiver on 127.0.0.1 must see nothing."""
    settings = PushConfig(allow_private_targets=False, extra_ca_file=ca_file)
    async with client_session(settings) as http:
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await http.post(f"https://{host}:{receiver.server.port}/ssrf", data=b"{}")
    assert isinstance(caught.value.os_error, TargetRefusedError)
    assert "globally routable" in str(caught.value.os_error)
    assert receiver.requests == []


async def test_with_private_targets_allowed_the_same_client_connects(receiver, ca_file):
    settings = PushConfig(allow_private_targets=True, extra_ca_file=ca_file)
    async with client_session(settings) as http:
        async with http.post(receiver.url("/ok"), data=b"{}") as resp:
            assert resp.status == 201
    assert [r.path for r in receiver.requests] == ["/ok"]


async def test_a_target_that_became_private_is_refused_at_delivery(start, receiver):
    """Created while private targets were allowed, then the server restarts without: nothing more is sent
    (the same holds when a name is rebound to a private address after creation)."""
    client = await start()
    sub_id = await subscribe(client, receiver, "/was-ok")
    await client.close()
    client = await start(allow_private_targets=False)
    await publish(client, {"Foo": "1"})
    (event,) = await client.events.wait(sub_id, "failed")
    assert event[2].startswith("refused"), event
    assert len(receiver.at("/was-ok")) == 1            # the verification, nothing since


# --- expiry ----------------------------------------------------------------------------------------------------


async def test_an_expired_subscription_gets_nothing_and_is_cleaned_up(start, receiver):
    """RFC 8620 §7.2: no requests after `expires`; the server may destroy the subscription then."""
    clock = Clock()
    client = await start(clock=clock)
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock.now + 3600))
    old_id = await subscribe(client, receiver, "/old", expires=soon)
    await subscribe(client, receiver, "/live")
    clock.now += 7200
    await publish(client, {"Foo": "1"})
    await receiver.nth("/live", 2)
    assert len(receiver.at("/old")) == 1
    await client.events.wait(old_id, "expired")
    async with client.app[RUNTIME].db.read() as conn:
        assert await push_store.listing(conn, old_id) == []


# --- settings ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table, message", [
    ({"max_expiry_days": 1}, "max_expiry_days: must be between 2 and 366"),
    ({"timeout": 0}, "timeout:"),
    ({"allow_private_targets": "yes"}, "allow_private_targets: must be true or false"),
    ({"concurrency": 1.5}, "concurrency: must be an integer"),
    ({"extra_ca_file": "/nonexistent/ca.pem"}, "extra_ca_file: no such file"),
    ({"vapid_contact": "postmaster"}, "vapid_contact:"),
    ({"backoff_max": 0.01}, "backoff_max:"),
    ({"nope": 1}, "nope: unknown key"),
])
def test_bad_settings_are_refused_naming_the_key(table, message):
    with pytest.raises(ConfigError) as caught:
        Config.for_tests(data_dir="/tmp/unused", push=table)
    assert f"[push] {message}" in str(caught.value)


def test_retry_after_takes_seconds_or_an_http_date():
    now = 1_700_000_000.0
    assert retry_after("120", now) == 120.0
    assert retry_after("Tue, 14 Nov 2023 22:15:20 GMT", now) == 120.0
    assert retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now) == 0.0
    assert retry_after("99999999999", now) == 86400.0
    assert retry_after("soon", now) is None and retry_after(None, now) is None and retry_after("-5", now) is None
