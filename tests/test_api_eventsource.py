"""GET /jmap/eventsource (RFC 8620 §7.3) against the real app, read with aiohttp's client."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from conftest import basic, share
from jmaple.app import make_app
from jmaple.config import Config
from jmaple.keys import RUNTIME, SUPERVISOR
from jmaple.store import changes
from jmaple.store.db import Database
from jmaple.users import create_credential
from notes import PLUGIN as NOTES_PLUGIN

URL = "/jmap/eventsource?types={types}&closeafter={closeafter}&ping={ping}"


async def open_stream(client: Any, types: str = "*", closeafter: str = "no", ping: int = 0,
                      headers: dict[str, str] | None = None, auth: str | None = None) -> Any:
    h = {"Authorization": auth or client.auth, **(headers or {})}
    resp = await client.get(URL.format(types=types, closeafter=closeafter, ping=ping), headers=h)
    return resp


async def next_event(resp: Any, timeout: float = 5.0) -> dict[str, Any] | None:
    """The next SSE event as {"event", "id", "data"}; None when the stream ended."""
    event: dict[str, Any] = {}
    async with asyncio.timeout(timeout):
        while True:
            line = await resp.content.readline()
            if not line:
                return None
            line = line.decode().rstrip("\n")
            if not line:
                if event:
                    return event
                continue
            field, _, value = line.partition(": ")
            event[field] = orjson.loads(value) if field == "data" else value


async def create_note(client: Any, title: str = "n") -> str:
    result = await client.call("Note/set", {"create": {"c": {"title": title}}})
    return result["newState"]


async def test_headers_and_a_state_event_after_a_mutation(client):
    """RFC 8620 §7.3: text/event-stream; a "state" event carries the StateChange after each change."""
    resp = await open_stream(client)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Accel-Buffering"] == "no"
    state = await create_note(client)
    event = await next_event(resp)
    assert event["event"] == "state"
    assert event["data"]["@type"] == "StateChange"
    assert event["data"]["changed"] == {client.account_id: {"Note": state}}
    assert event["id"] == event["data"]["pushState"]
    resp.close()


async def test_types_filter_ignores_unknown_names_and_rejects_malformed(client):
    resp = await open_stream(client, types="Thread,NoSuchType")
    await create_note(client)
    with pytest.raises(TimeoutError):
        await next_event(resp, timeout=0.5)
    resp.close()
    resp = await open_stream(client, types="NoSuchType,Note")
    state = await create_note(client)
    assert (await next_event(resp))["data"]["changed"] == {client.account_id: {"Note": state}}
    resp.close()
    for bad in ("", "Note,,Mailbox", "No te", "Note;drop"):
        resp = await open_stream(client, types=bad)
        assert resp.status == 400, bad
        assert resp.headers["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize("query", ["closeafter=maybe&types=*&ping=0", "types=*&closeafter=no&ping=-1",
                                   "types=*&closeafter=no&ping=abc", "types=*&closeafter=no&ping=99999999999"])
async def test_bad_parameters_are_400(client, query):
    resp = await client.get("/jmap/eventsource?" + query, headers={"Authorization": client.auth})
    assert resp.status == 400
    assert resp.headers["Content-Type"] == "application/problem+json"


async def test_closeafter_state_ends_the_stream_after_one_event(client):
    resp = await open_stream(client, closeafter="state")
    await create_note(client)
    assert (await next_event(resp))["event"] == "state"
    assert await next_event(resp) is None


@pytest.fixture
async def fast_ping_client(aiohttp_client, tmp_path):
    from conftest import add_user
    config = Config.for_tests(data_dir=tmp_path / "d", push={"ping_min": 1, "ping_max": 300})
    c = await aiohttp_client(make_app(config, capabilities=[NOTES_PLUGIN]))
    user = await add_user(c, "alice@example.org")
    c.auth = basic("alice@example.org")
    c.account_id = user.account_id
    return c


async def test_ping_reports_the_interval_used_and_sets_no_id(fast_ping_client):
    """RFC 8620 §7.3: a ping event's data is {"interval": N} with the interval actually used."""
    resp = await open_stream(fast_ping_client, types="Note", ping=1)
    event = await next_event(resp, timeout=3)
    assert event == {"event": "ping", "data": {"interval": 1}}
    resp.close()


async def test_ping_is_clamped_to_the_configured_maximum(fast_ping_client):
    resp = await open_stream(fast_ping_client, ping=100000)
    assert resp.status == 200
    resp.close()


async def test_last_event_id_resumes_with_what_changed_while_away(client):
    resp = await open_stream(client)
    await create_note(client)
    event = await next_event(resp)
    resp.close()
    missed = await create_note(client, "while away")
    resp = await open_stream(client, headers={"Last-Event-ID": event["id"]})
    first = await next_event(resp)
    assert first["data"]["changed"][client.account_id]["Note"] == missed
    resp.close()


async def test_an_unparsable_last_event_id_yields_all_current_states(client):
    state = await create_note(client)
    resp = await open_stream(client, types="Note", closeafter="state", headers={"Last-Event-ID": "garbage"})
    first = await next_event(resp)
    assert first["data"]["changed"] == {client.account_id: {"Note": state}}
    assert await next_event(resp) is None   # with closeafter=state that event counts


async def test_a_stalled_reader_does_not_delay_others_and_gets_the_newest_state(client):
    stalled = await open_stream(client)
    live = await open_stream(client)
    for n in range(30):
        state = await create_note(client, f"n{n}")
        event = await next_event(live)
        assert event["data"]["changed"][client.account_id]["Note"] == state
    # The stalled stream coalesced: it delivers the newest state, never more events than changes.
    seen = []
    while True:
        event = await next_event(stalled, timeout=5)
        seen.append(event["data"]["changed"][client.account_id]["Note"])
        if seen[-1] == state:
            break
    assert len(seen) <= 30
    stalled.close()
    live.close()


async def test_a_new_grant_reaches_an_open_stream(client, bob):
    bob_auth = basic("bob@example.org")
    resp = await open_stream(client, auth=bob_auth)
    await share(client, "bob@example.org", "alice@example.org", False)
    async with asyncio.timeout(5):
        while True:
            state = await create_note(client)
            try:
                event = await next_event(resp, timeout=0.3)
            except TimeoutError:
                continue   # the stream has not noticed the grant yet (it rechecks every second)
            if client.account_id in event["data"]["changed"]:
                break
    assert event["data"]["changed"][client.account_id] == {"Note": state}
    resp.close()


async def test_a_revoked_token_ends_its_stream(client):
    runtime = client.app[RUNTIME]
    credential_id, token = await create_credential(runtime, "alice@example.org", "token", "sse")
    resp = await open_stream(client, types="Note", auth=f"Bearer {token}")
    assert resp.status == 200
    from jmaple.store import accounts
    async with runtime.db.write() as tx:
        user = await accounts.user_by_login(tx, "alice@example.org")
        await accounts.revoke_credential(tx, user.id, credential_id)
    assert await next_event(resp, timeout=5) is None


async def test_no_subscription_leaks_after_many_connections(client):
    runtime = client.app[RUNTIME]
    for _ in range(100):
        resp = await open_stream(client)
        resp.close()
    async with asyncio.timeout(5):
        while runtime.broker.subscriber_count() or client.app[SUPERVISOR].streams:
            await asyncio.sleep(0.02)


async def test_changes_committed_by_another_process_are_pushed(client, tmp_path):
    resp = await open_stream(client)
    config = client.app[RUNTIME].config
    async with Database.open(config.data_dir / "jmaple.sqlite3", config.storage) as other:
        async with other.write() as tx:
            await changes.record(tx, client.account_id, "Note", created=["elsewhere"])
    event = await next_event(resp)
    assert "Note" in event["data"]["changed"][client.account_id]
    resp.close()


async def test_without_credentials_is_401(app_client):
    resp = await app_client.get(URL.format(types="*", closeafter="no", ping=0))
    assert resp.status == 401


async def test_a_ticket_opens_one_endpoint_without_an_authorization_header(client):
    resp = await client.post("/jmap/ticket", json={"endpoint": "eventsource"},
                             headers={"Authorization": client.auth})
    assert resp.status == 200
    ticket = (await resp.json())["ticket"]
    stream = await client.get(URL.format(types="*", closeafter="no", ping=0) + f"&ticket={ticket}")
    assert stream.status == 200
    state = await create_note(client)
    assert (await next_event(stream))["data"]["changed"] == {client.account_id: {"Note": state}}
    stream.close()
    # The same ticket serves that stream's reconnects, but not another endpoint.
    again = await client.get(URL.format(types="*", closeafter="no", ping=0) + f"&ticket={ticket}")
    assert again.status == 200
    again.close()
    ws = await client.get(f"/jmap/ws?ticket={ticket}")
    assert ws.status == 401
    bad = await client.get(URL.format(types="*", closeafter="no", ping=0) + "&ticket=nope")
    assert bad.status == 401


async def test_ticket_needs_credentials_and_a_known_endpoint(client):
    assert (await client.post("/jmap/ticket", json={"endpoint": "eventsource"})).status == 401
    resp = await client.post("/jmap/ticket", json={"endpoint": "elsewhere"}, headers={"Authorization": client.auth})
    assert resp.status == 400
    resp = await client.post("/jmap/ticket", data=b"{", headers={"Authorization": client.auth,
                                                                  "Content-Type": "application/json"})
    assert resp.status == 400


async def test_the_session_advertises_the_ticket_endpoint(client):
    session = await (await client.get("/jmap/session", headers={"Authorization": client.auth})).json()
    ticket = [v for k, v in session["capabilities"].items() if k.endswith("ticket")]
    assert ticket and ticket[0]["url"].endswith("/jmap/ticket")

