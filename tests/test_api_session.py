"""The Session resource (RFC 8620 §2) and its discovery (§2.2)."""

from __future__ import annotations

import asyncio
import re

import pytest

from conftest import CORE, NOTES, add_user, basic, share
from jmaple.app import make_app
from jmaple.config import Config
from jmaple.keys import RUNTIME
from jmaple.users import revoke_grant
from notes import PLUGIN as NOTES_PLUGIN


@pytest.fixture
def config(tmp_path) -> Config:
    """Without the Mail and push plugins, so the whole Session can be compared: core and the test capability."""
    return Config.for_tests(data_dir=tmp_path / "data",
                            capabilities={"mail": {"enabled": False}, "push": {"enabled": False}})

ID = re.compile(r"[A-Za-z0-9_-]{1,255}")


async def get_session(client, auth: str | None = None) -> dict:
    resp = await client.get("/jmap/session", headers={"Authorization": auth or client.auth})
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    return await resp.json()


async def wait_for_session(client, auth: str, predicate, timeout: float = 4.0) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            session = await get_session(client, auth)
            if predicate(session):
                return session
            await asyncio.sleep(0.05)


async def session_state(client, auth: str | None = None) -> str:
    result = await client.request_json({"using": [CORE], "methodCalls": [["Core/echo", {}, "0"]]}, auth=auth)
    return result["sessionState"]


async def test_the_session_describes_the_server_and_the_users_account(client):
    """RFC 8620 §2: every property of the Session object, with absolute URL templates."""
    session = await get_session(client)
    base = f"http://{client.host}:{client.port}"
    limits = client.app[RUNTIME].config.limits
    state = session.pop("state")
    assert session == {
        "capabilities": {
            CORE: {
                "maxSizeUpload": limits.max_size_upload,
                "maxConcurrentUpload": limits.max_concurrent_upload,
                "maxSizeRequest": limits.max_size_request,
                "maxConcurrentRequests": limits.max_concurrent_requests,
                "maxCallsInRequest": limits.max_calls_in_request,
                "maxObjectsInGet": limits.max_objects_in_get,
                "maxObjectsInSet": limits.max_objects_in_set,
                "collationAlgorithms": ["i;ascii-numeric", "i;ascii-casemap", "i;unicode-casemap", "i;octet"],
            },
            "urn:ietf:params:jmap:websocket": {"url": f"ws://{client.host}:{client.port}/jmap/ws",
                                               "supportsPush": True},
            "https://jmaple.org/capabilities/ticket": {"url": f"{base}/jmap/ticket",
                                                       "endpoints": ["eventsource", "websocket"], "lifetime": 60},
            NOTES: {"maxNoteSize": 10000},
        },
        "accounts": {
            client.account_id: {
                "name": "alice@example.org",
                "isPersonal": True,
                "isReadOnly": False,
                "accountCapabilities": {NOTES: {"canPin": True}},
            },
        },
        "primaryAccounts": {NOTES: client.account_id},
        "username": "alice@example.org",
        "apiUrl": f"{base}/jmap/api",
        "downloadUrl": f"{base}/jmap/download/{{accountId}}/{{blobId}}/{{name}}?accept={{type}}",
        "uploadUrl": f"{base}/jmap/upload/{{accountId}}/",
        "eventSourceUrl": f"{base}/jmap/eventsource?types={{types}}&closeafter={{closeafter}}&ping={{ping}}",
    }
    assert isinstance(state, str) and state


async def test_the_session_is_not_cached(client):
    resp = await client.get("/jmap/session", headers=client.headers())
    assert "no-store" in resp.headers["Cache-Control"]


async def test_ids_follow_the_id_syntax_and_never_reveal_the_login(client, bob):
    """RFC 8620 §1.2: Ids are 1-255 characters of the URL-safe base64 alphabet."""
    await share(client, "alice@example.org", "bob@example.org", True)
    session = await wait_for_session(client, client.auth, lambda s: len(s["accounts"]) == 2)
    blob = await client.upload(b"some bytes")
    for account_id in session["accounts"]:
        assert ID.fullmatch(account_id)
        assert "alice" not in account_id and "bob" not in account_id
    assert ID.fullmatch(blob["blobId"])
    assert client.account_id != bob.account_id


async def test_granted_accounts_are_listed_with_their_rights(client, bob):
    await share(client, "bob@example.org", "alice@example.org", False)
    session = await get_session(client, basic("bob@example.org"))
    assert session["accounts"] == {
        bob.account_id: {"name": "bob@example.org", "isPersonal": True, "isReadOnly": False,
                         "accountCapabilities": {NOTES: {"canPin": True}}},
        client.account_id: {"name": "alice@example.org", "isPersonal": False, "isReadOnly": True,
                            "accountCapabilities": {NOTES: {"canPin": False}}},
    }
    # The primary account is always the user's own, and never named for the core capability.
    assert session["primaryAccounts"] == {NOTES: bob.account_id}
    assert session["username"] == "bob@example.org"


async def test_a_user_without_grants_sees_only_their_own_account(client, bob):
    await add_user(client, "carol@example.org")
    await share(client, "carol@example.org", "alice@example.org", True)
    session = await get_session(client, basic("bob@example.org"))
    assert list(session["accounts"]) == [bob.account_id]


async def test_a_new_grant_appears_within_a_second_and_changes_the_state(client, bob):
    bob_auth = basic("bob@example.org")
    before = await get_session(client, bob_auth)
    assert before["state"] == await session_state(client, bob_auth)
    await share(client, "bob@example.org", "alice@example.org", True)
    after = await wait_for_session(client, bob_auth, lambda s: client.account_id in s["accounts"], timeout=2.5)
    assert after["accounts"][client.account_id]["isReadOnly"] is False
    assert after["state"] != before["state"]
    # RFC 8620 §3.4: an API response's sessionState is the Session's state.
    assert after["state"] == await session_state(client, bob_auth)


async def test_changing_rights_and_revoking_change_the_state(client, bob):
    bob_auth = basic("bob@example.org")
    await share(client, "bob@example.org", "alice@example.org", True)
    writable = await wait_for_session(client, bob_auth, lambda s: client.account_id in s["accounts"])
    await share(client, "bob@example.org", "alice@example.org", False)
    read_only = await wait_for_session(
        client, bob_auth, lambda s: s["accounts"].get(client.account_id, {}).get("isReadOnly"))
    assert read_only["state"] != writable["state"]
    await revoke_grant(client.app[RUNTIME], "bob@example.org", "alice@example.org")
    revoked = await wait_for_session(client, bob_auth, lambda s: client.account_id not in s["accounts"])
    assert revoked["state"] not in (writable["state"], read_only["state"])
    assert revoked["state"] == await session_state(client, bob_auth)
    error = await client.request_json({"using": [NOTES], "methodCalls": [
        ["Note/get", {"accountId": client.account_id, "ids": None}, "0"]]}, auth=bob_auth)
    assert error["methodResponses"] == [["error", {"type": "accountNotFound"}, "0"]]


async def test_the_state_is_stable_while_nothing_changes(client, bob):
    first = await get_session(client)
    await client.call("Note/set", {"create": {"n": {"title": "data changes do not move the session state"}}})
    second = await get_session(client)
    assert first["state"] == second["state"] == await session_state(client)
    # Different users have different states.
    assert (await get_session(client, basic("bob@example.org")))["state"] != first["state"]


async def test_a_configured_base_url_builds_every_url(aiohttp_client, tmp_path):
    config = Config.for_tests(data_dir=tmp_path / "d", server={"base_url": "https://mail.example.org/proxy/"})
    client = await aiohttp_client(make_app(config, capabilities=[NOTES_PLUGIN]))
    await add_user(client, "alice@example.org")
    session = await get_session(client, basic("alice@example.org"))
    base = "https://mail.example.org/proxy"
    assert session["apiUrl"] == f"{base}/jmap/api"
    assert session["downloadUrl"] == f"{base}/jmap/download/{{accountId}}/{{blobId}}/{{name}}?accept={{type}}"
    assert session["uploadUrl"] == f"{base}/jmap/upload/{{accountId}}/"
    assert session["eventSourceUrl"] == (
        f"{base}/jmap/eventsource?types={{types}}&closeafter={{closeafter}}&ping={{ping}}")
    resp = await client.get("/.well-known/jmap", allow_redirects=False)
    assert resp.headers["Location"] == f"{base}/jmap/session"


async def test_the_discovery_redirect_leads_to_the_session(client):
    """RFC 8620 §2.2: a client following /.well-known/jmap with its credentials gets the Session."""
    resp = await client.get("/.well-known/jmap", headers=client.headers())
    assert resp.status == 200
    assert resp.url.path == "/jmap/session"
    assert (await resp.json())["username"] == "alice@example.org"


async def test_healthz_needs_no_credentials_and_says_nothing_else(app_client):
    resp = await app_client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}
    head = await app_client.head("/healthz")
    assert head.status == 200
