"""RedisPushBroker: two daemons on one database and one real redis-server (RFC 8620 §7.1, §7.3; RFC 8887 §4.3.5)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp

import orjson
import pytest
import redis
import redis.asyncio

from conftest import CORE, PASSWORD, add_user, basic
from jmaple.app import make_app, open_runtime
from jmaple.cli import CliError, data_dir_lock
from jmaple.config import Config, ConfigError
from jmaple.keys import PUBLISHER, RUNTIME
from jmaple.push.redis import RedisPushBroker, shown_url
from jmaple.push.webhook import WEBHOOKS
from jmaple.store import changes
from jmaple.store.db import Database
from notes import PLUGIN as NOTES_PLUGIN
from test_api_eventsource import create_note, next_event, open_stream
from test_api_websocket import connect, receive, request
from test_push_webhook import ca, ca_file, receiver, start, subscribe  # noqa: F401 (fixtures)
from test_push_webhook import call as webhook_call

REDIS_SERVER = shutil.which("redis-server")

if REDIS_SERVER is None:
    if os.environ.get("CI"):
        raise RuntimeError("redis-server is not on PATH, and CI is set: the Redis broker tests must run here "
                           "(.ci/run installs it with apt-get)")
    pytestmark = pytest.mark.skip(reason="redis-server is not on PATH (it is required when CI is set)")


class RedisServer:
    """A throwaway redis-server on a free loopback port, without persistence."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen([REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def pair(redis_server, aiohttp_client, tmp_path) -> tuple[Any, Any]:
    """Two daemons (apps) on one data directory and one Redis, both logged in as alice."""
    config = Config.for_tests(data_dir=tmp_path / "data", push={"broker": redis_server.url})
    one = await aiohttp_client(make_app(config, capabilities=[NOTES_PLUGIN]))
    two = await aiohttp_client(make_app(config, capabilities=[NOTES_PLUGIN]))
    user = await add_user(one, "alice@example.org")
    for client in (one, two):
        client.auth = basic("alice@example.org")
        client.account_id = user.account_id
        broker = client.app[RUNTIME].broker
        assert isinstance(broker, RedisPushBroker)
        await broker.wait_subscribed()
        await caught_up(client)      # the new account's default mailboxes are published before a test starts
    return one, two


def count_hook_calls(*clients: Any) -> list[tuple[str, dict[str, str]]]:
    calls: list[tuple[str, dict[str, str]]] = []
    for client in clients:
        client.app[RUNTIME].broker.add_on_publish(lambda account_id, states: calls.append((account_id, states)))
    return calls


async def caught_up(client: Any) -> None:
    """Wait until this daemon's poller has seen every commit so far (and so tried to publish it)."""
    async with client.app[RUNTIME].db.read() as conn:
        seq = await changes.current_seq(conn)
    async with asyncio.timeout(5):
        while client.app[PUBLISHER].watermark < seq:
            await asyncio.sleep(0.02)


async def no_more_events(*streams: Any) -> None:
    for resp in streams:
        with pytest.raises(TimeoutError):
            await next_event(resp, timeout=0.5)


async def test_a_change_through_either_daemon_reaches_eventsource_clients_of_both(pair):
    one, two = pair
    streams = [await open_stream(one), await open_stream(two)]
    for writer in (one, two):
        state = await create_note(writer)
        for resp in streams:
            event = await next_event(resp)
            assert event["event"] == "state"
            assert event["data"]["changed"] == {one.account_id: {"Note": state}}
    for client in pair:
        await caught_up(client)
    await no_more_events(*streams)
    for resp in streams:
        resp.close()


async def test_a_change_through_either_daemon_reaches_websocket_clients_of_both(pair):
    one, two = pair
    sockets = []
    for client in pair:
        ws = await connect(client)
        await ws.send_str(orjson.dumps({"@type": "WebSocketPushEnable", "dataTypes": None}).decode())
        await ws.send_str(orjson.dumps(request([["Core/echo", {}, "c"]], "ready")).decode())
        assert (await receive(ws))["requestId"] == "ready"
        sockets.append(ws)
    result = await two.call("Note/set", {"create": {"a": {"title": "x"}}})
    for ws in sockets:
        change = await receive(ws)
        assert change["@type"] == "StateChange"
        assert change["changed"] == {one.account_id: {"Note": result["newState"]}}
        await ws.close()


async def test_a_commit_by_another_process_is_published_once(pair, tmp_path):
    """Both daemons' pollers see the commit; each client gets it once, and the hooks run once in all."""
    one, two = pair
    calls = count_hook_calls(one, two)
    streams = [await open_stream(one), await open_stream(two)]
    config = one.app[RUNTIME].config
    async with Database.open(config.data_dir / "jmaple.sqlite3", config.storage) as other:
        async with other.write() as tx:
            await changes.record(tx, one.account_id, "Note", created=["elsewhere"])
            state = await changes.state(tx, one.account_id, "Note")
    for resp in streams:
        event = await next_event(resp)
        assert event["data"]["changed"] == {one.account_id: {"Note": state}}
    for client in pair:
        await caught_up(client)
    await no_more_events(*streams)
    assert calls == [(one.account_id, {"Note": state})]
    for resp in streams:
        resp.close()


async def test_the_on_publish_hooks_run_once_across_daemons(pair):
    """Each webhook is queued by one daemon only: the one whose claim of the state won."""
    one, two = pair
    calls = count_hook_calls(one, two)
    first = await create_note(one)
    second = await create_note(two)
    for client in pair:
        await caught_up(client)
    assert sorted(calls, key=str) == sorted([(one.account_id, {"Note": first}), (one.account_id, {"Note": second})],
                                            key=str)


async def test_redis_going_away_and_coming_back_does_not_stop_either_daemon(pair, redis_server):
    one, two = pair
    streams = [await open_stream(one), await open_stream(two)]
    redis_server.stop()
    # Without Redis each daemon still serves its own clients, and its poller tells them what the other did.
    state = await create_note(one)
    for resp in streams:
        assert (await next_event(resp))["data"]["changed"] == {one.account_id: {"Note": state}}
    assert (await one.call("Note/get", {"ids": None}))["state"] == state
    redis_server.start()
    for client in pair:
        await client.app[RUNTIME].broker.wait_subscribed(timeout=10)
    for writer in (two, one):
        state = await create_note(writer)
        for resp in streams:
            assert (await next_event(resp))["data"]["changed"] == {one.account_id: {"Note": state}}
    for client in pair:
        await caught_up(client)
    await no_more_events(*streams)
    for resp in streams:
        resp.close()


async def test_a_malformed_message_on_the_channel_is_ignored(pair, redis_server):
    one, two = pair
    resp = await open_stream(two)
    channel = one.app[RUNTIME].broker.channel
    client = redis.asyncio.Redis.from_url(redis_server.url)
    for junk in (b"\xff\xfe not json", b"[]", b"{}", b'{"origin": "x", "accountId": 1, "changed": {}}',
                 b'{"origin": "x", "accountId": "a", "changed": {"Note": 5}}', b"null"):
        await client.publish(channel, junk)
    await client.aclose()
    state = await create_note(one)
    assert (await next_event(resp))["data"]["changed"] == {one.account_id: {"Note": state}}
    resp.close()


async def test_a_process_without_hooks_leaves_publishing_to_the_daemons(pair):
    """A CLI command's broker claims nothing, so the daemon that publishes the change runs the webhooks."""
    one, two = pair
    calls = count_hook_calls(one, two)
    config = one.app[RUNTIME].config
    async with open_runtime(config) as runtime:
        async with runtime.db.write() as tx:
            await changes.record(tx, one.account_id, "Note", created=["from-cli"])
            state = await changes.state(tx, one.account_id, "Note")
        await runtime.broker.publish(one.account_id, {"Note": state})
    for client in pair:
        await caught_up(client)
    async with asyncio.timeout(5):   # the claim may travel through Redis after the poll
        while not calls:
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)          # time for a second (wrong) call to show up
    assert calls == [(one.account_id, {"Note": state})]


async def test_the_shared_lock_serialises_daemons(redis_server, tmp_path):
    """Webhook attempts for one subscription take this lock, so two daemons never POST the same change."""
    async with RedisPushBroker(redis_server.url, "t") as a, RedisPushBroker(redis_server.url, "t") as b:
        entered = asyncio.Event()

        async def second() -> None:
            async with b.lock("webhook:s1", 10):
                entered.set()

        async with a.lock("webhook:s1", 10):
            waiter = asyncio.create_task(second())
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await entered.wait()
        async with asyncio.timeout(5):
            await waiter
        assert entered.is_set()


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://cache.example:6380",
                                 "unix:///run/redis/redis.sock"])
def test_the_broker_setting_takes_redis_urls(tmp_path, url):
    assert Config.for_tests(data_dir=tmp_path, push={"broker": url}).push.broker == url


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "redis", "", "Local"])
def test_the_broker_setting_refuses_anything_else(tmp_path, url):
    with pytest.raises(ConfigError, match="broker"):
        Config.for_tests(data_dir=tmp_path, push={"broker": url})


def test_daemons_with_the_redis_broker_share_the_data_directory_and_keep_a_local_one_out(tmp_path):
    shared = Config.for_tests(data_dir=tmp_path, push={"broker": "redis://127.0.0.1:1/0"})
    local = Config.for_tests(data_dir=tmp_path)
    with data_dir_lock(shared), data_dir_lock(shared):
        with pytest.raises(CliError, match="in use by another jmapled"):
            with data_dir_lock(local):
                pass
    with data_dir_lock(local):
        with pytest.raises(CliError, match='broker = "local"'):
            with data_dir_lock(shared):
                pass


async def test_each_webhook_is_delivered_once_whichever_daemon_made_the_change(redis_server, start, receiver, tmp_path):
    """RFC 8620 §7.2 through two daemons: one POST per change, never one per daemon."""
    one = await start(broker=redis_server.url)
    two = await start(broker=redis_server.url)
    for client in (one, two):
        await client.app[RUNTIME].broker.wait_subscribed()
        await caught_up(client)
    for client in (one, two):
        # Without the shared lock the two engines occasionally POST the same state: this says why if so.
        assert client.app[WEBHOOKS]._lock is not None
    sub_id = await subscribe(one, receiver, "/a")
    expected = []
    for writer in (two, one):
        result = await webhook_call(writer, "Note/set", {"accountId": one.account_id, "create": {"n": {"title": "x"}}})
        expected.append({one.account_id: {"Note": result["newState"]}})
    config = one.app[RUNTIME].config
    async with Database.open(config.data_dir / "jmaple.sqlite3", config.storage) as other:
        async with other.write() as tx:
            await changes.record(tx, one.account_id, "Note", created=["elsewhere"])
            expected.append({one.account_id: {"Note": await changes.state(tx, one.account_id, "Note")}})
    for client in (one, two):
        await caught_up(client)

    def seen() -> dict[str, str]:
        newest: dict[str, str] = {}
        for posted in receiver.at("/a")[1:]:
            newest.update(posted.json["changed"][one.account_id])
        return newest

    await receiver.wait(lambda: seen() == expected[-1][one.account_id])
    with contextlib.suppress(TimeoutError):
        await receiver.wait(lambda: len(receiver.at("/a")) > 1 + len(expected))
    posts = [orjson.dumps(r.json.get("changed")).decode() for r in receiver.at("/a")]
    assert len(posts) <= 1 + len(expected), " ".join(posts)
    states = [int(r.json["changed"][one.account_id]["Note"]) for r in receiver.at("/a")[1:]]
    assert len(states) == len(set(states)), states      # no state POSTed twice
    assert all(r.json["changed"].keys() == {one.account_id} for r in receiver.at("/a")[1:]), sub_id


async def test_a_dropped_subscription_is_taken_up_again(pair, redis_server):
    one, two = pair
    resp = await open_stream(two)
    admin = redis.asyncio.Redis.from_url(redis_server.url)
    channel = one.app[RUNTIME].broker.channel
    await admin.client_kill_filter(_type="pubsub")
    async with asyncio.timeout(10):
        while (await admin.pubsub_numsub(channel))[0][1] < 2:
            await asyncio.sleep(0.02)
    await admin.aclose()
    state = await create_note(one)
    assert (await next_event(resp))["data"]["changed"] == {one.account_id: {"Note": state}}
    await caught_up(two)
    await no_more_events(resp)
    resp.close()


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:secret@cache:6379/0", "redis://:***@cache:6379/0"),
    ("rediss://jmaple:secret@cache/1", "rediss://jmaple:***@cache/1"),
    ("unix:///run/redis.sock?db=2&password=secret", "unix:///run/redis.sock?db=2&password=***"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
])
def test_logs_show_the_redis_url_without_its_password(url, shown):
    assert shown_url(url) == shown


# --- two real `jmapled serve` processes --------------------------------------------------------------------

MAIL = "urn:ietf:params:jmap:mail"
ENV = {k: v for k, v in os.environ.items() if k not in ("JMAPLE_CONFIG", "NOTIFY_SOCKET", "JOURNAL_STREAM")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServeProcess:
    """`jmapled serve --config FILE --listen 127.0.0.1:PORT` in a process of its own, its log in a file."""

    def __init__(self, config: Path, tmp_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"jmapled-{self.port}.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "jmaple.cli", "serve", "--config", str(config),
                                          "--listen", f"127.0.0.1:{self.port}"],
                                         stdout=log, stderr=subprocess.STDOUT, env=ENV)

    async def ready(self, http: aiohttp.ClientSession) -> None:
        async with asyncio.timeout(20):
            while True:
                assert self.proc.poll() is None, f"jmapled exited early:\n{self.log_path.read_text()}"
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(self.url + "/healthz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
async def serve_pair(redis_server, receiver, ca_file, tmp_path) -> AsyncIterator[tuple[list[ServeProcess], str]]:
    """Two `jmapled serve` processes on one data directory and one Redis, alice's account created by the
    CLI; `[push]` lets them POST webhooks to the TLS receiver on 127.0.0.1. Yields them and alice's
    Authorization header."""
    config = tmp_path / "config.toml"
    config.write_text(f"""
[server]
data_dir = "{tmp_path / 'data'}"
[storage]
synchronous = "NORMAL"
[auth]
scrypt_n = 16
[logging]
access_log = false
[push]
broker = "{redis_server.url}"
allow_private_targets = true
extra_ca_file = "{ca_file}"
backoff_initial = 0.05
backoff_max = 0.2
""")
    done = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jmaple.cli", "user", "add", "alice@example.org", "--password-stdin",
        "--config", str(config), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    out, err = await done.communicate(f"{PASSWORD}\n".encode())
    assert done.returncode == 0, err.decode()
    daemons = [ServeProcess(config, tmp_path), ServeProcess(config, tmp_path)]
    try:
        async with aiohttp.ClientSession() as http:
            for daemon in daemons:
                await daemon.ready(http)
        yield daemons, basic("alice@example.org")
    finally:
        for daemon in daemons:
            daemon.stop()
        for daemon in daemons:
            if daemon.proc.returncode not in (0, None):
                print(daemon.log_path.read_text())


async def jmap(http: aiohttp.ClientSession, daemon: ServeProcess, auth: str, method: str,
               args: dict[str, Any]) -> dict[str, Any]:
    body = {"using": [CORE, MAIL], "methodCalls": [[method, args, "0"]]}
    async with http.post(daemon.url + "/jmap/api", data=orjson.dumps(body),
                         headers={"Authorization": auth, "Content-Type": "application/json"}) as resp:
        assert resp.status == 200, await resp.text()
        (name, result, _), = (await resp.json())["methodResponses"]
    assert name == method, result
    return result


async def sse_states(resp: aiohttp.ClientResponse, account_id: str, out: list[str]) -> None:
    """Append the Mailbox state of each StateChange on an event stream to `out`."""
    while line := await resp.content.readline():
        if line.startswith(b"data: "):
            out.append(orjson.loads(line[6:])["changed"][account_id]["Mailbox"])


async def test_two_serve_processes_push_every_change_to_both_and_each_webhook_once(serve_pair, receiver):
    """Issue 3, several processes: a change made through either `jmapled serve` reaches the EventSource
    clients of both, and a webhook (PushSubscription) gets each change exactly once."""
    daemons, auth = serve_pair
    one, two = daemons
    async with aiohttp.ClientSession() as http:
        async with http.get(one.url + "/jmap/session", headers={"Authorization": auth}) as resp:
            account_id = (await resp.json())["primaryAccounts"][MAIL]
        result = await jmap(http, one, auth, "PushSubscription/set", {"create": {"c": {
            "deviceClientId": "d", "url": receiver.url("/hook"), "types": ["Mailbox"]}}})
        sub_id = result["created"]["c"]["id"]
        verification = (await receiver.nth("/hook", 1)).json
        assert verification["pushSubscriptionId"] == sub_id
        result = await jmap(http, two, auth, "PushSubscription/set",
                            {"update": {sub_id: {"verificationCode": verification["verificationCode"]}}})
        assert result["updated"] == {sub_id: None}

        seen: list[list[str]] = [[], []]
        streams = [await http.get(d.url + "/jmap/eventsource?types=Mailbox&closeafter=no&ping=0",
                                  headers={"Authorization": auth}) for d in daemons]
        assert [r.status for r in streams] == [200, 200]
        readers = [asyncio.create_task(sse_states(r, account_id, out)) for r, out in zip(streams, seen)]

        expected: list[str] = []
        for n, writer in enumerate((one, two, two, one)):
            result = await jmap(http, writer, auth, "Mailbox/set", {"accountId": account_id,
                                                                    "create": {"m": {"name": f"box {n}"}}})
            expected.append(result["newState"])
            # Each change is awaited everywhere before the next, so none is coalesced with another.
            posted = await receiver.nth("/hook", 1 + len(expected))
            assert posted.json["changed"] == {account_id: {"Mailbox": expected[-1]}}
            async with asyncio.timeout(5):
                while any(len(out) < len(expected) for out in seen):
                    await asyncio.sleep(0.02)
        # Both daemons' pollers see every commit within 0.25 s; a second publish of any of them (a second
        # POST, a second event) would show within this second.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1):
                async with receiver.changed:
                    await receiver.changed.wait_for(lambda: len(receiver.at("/hook")) > 1 + len(expected))
        assert [r.json["changed"][account_id]["Mailbox"] for r in receiver.at("/hook")[1:]] == expected
        assert seen == [expected, expected]
        for task in readers:
            task.cancel()
        for resp in streams:
            resp.close()
    for daemon in daemons:
        assert "Traceback" not in daemon.log_path.read_text(), daemon.log_path.read_text()
