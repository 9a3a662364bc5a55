"""PushSubscription/get and /set (RFC 8620 §7.2), the VAPID capability (RFC 9749) and `jmapled push`."""

from __future__ import annotations

import argparse
import asyncio
import base64
import time
from typing import Any

import pytest

from conftest import CORE, add_user, basic
from jmaple.keys import RUNTIME
from jmaple.push.subscription import PUSH_COMMAND, VAPID_URN
from jmaple.push.webpush import VapidKey
from jmaple.store import push as push_store
from jmaple.store.accounts import NotFound
from jmaple.users import create_credential, revoke_credential, set_password
from jmaple.cli import main
from test_push_webhook import (USING, Clock, UserAgent, ca, ca_file, call, plugins, publish,  # noqa: F401
                               receiver, start, subscribe)

DAY = 86400


def utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


async def error(client, method: str, args: dict[str, Any], *, using: list[str] | None = None) -> dict[str, Any]:
    body = {"using": using or USING, "methodCalls": [[method, args, "0"]]}
    (name, result, _), = (await client.request_json(body))["methodResponses"]
    assert name == "error", (name, result)
    return result


async def create(client, props: dict[str, Any], *, auth: str | None = None) -> dict[str, Any]:
    """One create; returns the whole /set response."""
    return await call(client, "PushSubscription/set", {"create": {"c": props}}, auth=auth)


# --- the session ------------------------------------------------------------------------------------------------


async def test_the_session_advertises_the_vapid_public_key(start):
    """RFC 9749 §3: urn:ietf:params:jmap:webpush-vapid {applicationServerKey}, the key kept in the data
    directory; it is a server capability, not an account one."""
    client = await start()
    resp = await client.get("/jmap/session", headers={"Authorization": client.auth})
    session = await resp.json()
    key = VapidKey.load_or_create(client.app[RUNTIME].config.data_dir / "vapid.pem")
    assert session["capabilities"][VAPID_URN] == {"applicationServerKey": key.application_server_key}
    assert base64.urlsafe_b64decode(key.application_server_key + "=")[0] == 4
    assert VAPID_URN not in session["accounts"][client.account_id]["accountCapabilities"]


# --- create and verify -------------------------------------------------------------------------------------------


async def test_create_answers_with_id_null_code_and_the_capped_expiry(start, receiver):
    """RFC 8620 §7.2.3: the server limits `expires` to its maximum (7 days by default) and returns the value
    used; verificationCode is null until the client sets it."""
    clock = Clock()
    client = await start(clock=clock)
    result = await create(client, {"deviceClientId": "a889-ffea-910", "url": receiver.url("/p"),
                                   "expires": "2999-01-01T00:00:00Z", "types": None})
    created = result["created"]["c"]
    assert created == {"id": created["id"], "keys": None, "verificationCode": None,
                       "expires": utc(int(clock.now) + 7 * DAY)}
    assert result == {"created": {"c": created}, "updated": None, "destroyed": None, "notCreated": None,
                      "notUpdated": None, "notDestroyed": None}   # RFC 8620 §7.2.2: no oldState or newState


async def test_an_expiry_within_the_limit_is_kept_and_can_be_extended_up_to_it(start, receiver):
    """RFC 8620 §7.2.2: the client may extend `expires`; the server may shorten what it asks for."""
    clock = Clock()
    client = await start(clock=clock, max_expiry_days=3)
    wanted = utc(clock.now + DAY)
    result = await create(client, {"deviceClientId": "d", "url": receiver.url("/e"), "expires": wanted})
    sub_id = result["created"]["c"]["id"]
    assert result["created"]["c"]["expires"] == wanted
    clock.now += 100
    result = await call(client, "PushSubscription/set", {"update": {sub_id: {"expires": "2999-01-01T00:00:00Z"}}})
    assert result["updated"] == {sub_id: {"expires": utc(int(clock.now) + 3 * DAY)}}
    result = await call(client, "PushSubscription/set", {"update": {sub_id: {"expires": None}}})
    assert result["updated"] == {sub_id: {"expires": utc(int(clock.now) + 3 * DAY)}}
    got = await call(client, "PushSubscription/get", {"ids": [sub_id], "properties": ["expires"]})
    assert got["list"] == [{"id": sub_id, "expires": utc(int(clock.now) + 3 * DAY)}]


async def test_the_verification_push_arrives_at_once_with_a_strong_code(start, receiver):
    """RFC 8620 §7.2.2: on create the server POSTs a PushVerification (application/json, with TTL) whose code
    cannot be guessed (at least 128 bits)."""
    client = await start()
    began = time.monotonic()
    result = await create(client, {"deviceClientId": "d", "url": receiver.url("/v?device=X8980fc")})
    sub_id = result["created"]["c"]["id"]
    request = await receiver.nth("/v", 1)
    assert request.at - began < 1.0
    body = request.json
    code = body["verificationCode"]
    assert body == {"@type": "PushVerification", "pushSubscriptionId": sub_id, "verificationCode": code}
    assert len(code) * 6 >= 128 and code.isascii()
    assert request.headers["TTL"] == "86400" and request.headers["Urgency"] in ("normal", "high")
    assert len(request.headers["Topic"]) == 32
    second = await create(client, {"deviceClientId": "e", "url": receiver.url("/v2")})
    assert second["created"]["c"]["id"] != sub_id
    assert (await receiver.nth("/v2", 1)).json["verificationCode"] != code


async def test_with_keys_the_verification_is_encrypted(start, receiver):
    """RFC 8620 §7.2: with keys, all data sent to the subscription is encrypted (RFC 8291)."""
    client = await start()
    ua = UserAgent()
    result = await create(client, {"deviceClientId": "d", "url": receiver.url("/k"), "keys": ua.keys})
    assert "keys" not in result["created"]["c"]
    body = ua.decrypt(await receiver.nth("/k", 1))
    assert body["@type"] == "PushVerification" and body["pushSubscriptionId"] == result["created"]["c"]["id"]


async def test_nothing_but_the_verification_is_sent_until_the_right_code_is_set(start, receiver):
    """RFC 8620 §7.2: no further request to the URL until the client sets the verification code."""
    client = await start()
    waiting = await subscribe(client, receiver, "/unverified", verify=False)
    await subscribe(client, receiver, "/verified")
    await publish(client, {"Foo": "1"})
    await receiver.nth("/verified", 2)      # the change went out; the unverified subscription got nothing
    assert len(receiver.at("/unverified")) == 1
    code = receiver.at("/unverified")[0].json["verificationCode"]

    result = await call(client, "PushSubscription/set", {"update": {waiting: {"verificationCode": code + "x"}}})
    assert result["notUpdated"] == {waiting: {"type": "invalidProperties", "properties": ["verificationCode"],
                                              "description": result["notUpdated"][waiting]["description"]}}
    result = await call(client, "PushSubscription/set", {"update": {waiting: {"verificationCode": None}}})
    assert result["updated"] == {waiting: None}    # still null: nothing changes
    got = await call(client, "PushSubscription/get", {"ids": [waiting]})
    assert got["list"][0]["verificationCode"] is None   # never shown before the client proves it has it

    result = await call(client, "PushSubscription/set", {"update": {waiting: {"verificationCode": code}}})
    assert result["updated"] == {waiting: None}
    got = await call(client, "PushSubscription/get", {"ids": [waiting]})
    assert got["list"][0]["verificationCode"] == code
    await publish(client, {"Foo": "2"})
    assert (await receiver.nth("/unverified", 2)).json["changed"] == {client.account_id: {"Foo": "2"}}
    result = await call(client, "PushSubscription/set", {"update": {waiting: {"verificationCode": "other"}}})
    assert result["notUpdated"][waiting]["type"] == "invalidProperties"


# --- get ---------------------------------------------------------------------------------------------------------


async def test_get_returns_every_property_but_url_and_keys(start, receiver):
    """RFC 8620 §7.2.1: url and keys are never returned; default properties exclude them; no accountId, no state."""
    client = await start()
    ua = UserAgent()
    result = await create(client, {"deviceClientId": "phone", "url": receiver.url("/g"), "keys": ua.keys,
                                   "types": ["Mailbox", "Email"]})
    created = result["created"]["c"]
    got = await call(client, "PushSubscription/get", {})
    assert got == {"list": [{"id": created["id"], "deviceClientId": "phone", "verificationCode": None,
                             "expires": created["expires"], "types": ["Mailbox", "Email"]}], "notFound": []}
    got = await call(client, "PushSubscription/get", {"ids": [created["id"], "nope", created["id"]],
                                                      "properties": ["types"]})
    assert got == {"list": [{"id": created["id"], "types": ["Mailbox", "Email"]}], "notFound": ["nope"]}


@pytest.mark.parametrize("properties", [["url"], ["keys"], ["id", "keys", "url"]])
async def test_asking_for_url_or_keys_is_forbidden(start, properties):
    """RFC 8620 §7.2.1: explicitly requesting url or keys is rejected with "forbidden"."""
    client = await start()
    assert (await error(client, "PushSubscription/get", {"properties": properties}))["type"] == "forbidden"


async def test_creation_ids_can_be_referenced_in_the_same_request(start, receiver):
    client = await start()
    body = {"using": USING, "methodCalls": [
        ["PushSubscription/set", {"create": {"a": {"deviceClientId": "d", "url": receiver.url("/ref")}}}, "0"],
        ["PushSubscription/get", {"ids": ["#a"]}, "1"],
        ["PushSubscription/set", {"destroy": ["#a"]}, "2"]]}
    (_, created, _), (_, got, _), (_, destroyed, _) = (await client.request_json(body))["methodResponses"]
    sub_id = created["created"]["a"]["id"]
    assert [o["id"] for o in got["list"]] == [sub_id]
    assert destroyed["destroyed"] == [sub_id]


# --- credentials -------------------------------------------------------------------------------------------------


async def test_each_credential_sees_and_changes_only_its_own_subscriptions(start, receiver):
    """RFC 8620 §7.2.1: only subscriptions created with the same credentials are returned; other users' and
    other credentials' subscriptions are not found."""
    client = await start()
    runtime = client.app[RUNTIME]
    _, token = await create_credential(runtime, "alice@example.org", "token", "phone")
    bearer = f"Bearer {token}"
    await add_user(client, "bob@example.org")
    with_password = (await create(client, {"deviceClientId": "pw", "url": receiver.url("/pw")}))["created"]["c"]["id"]
    with_token = (await create(client, {"deviceClientId": "tok", "url": receiver.url("/tok")},
                               auth=bearer))["created"]["c"]["id"]
    bob = basic("bob@example.org")
    assert [o["id"] for o in (await call(client, "PushSubscription/get", {}))["list"]] == [with_password]
    assert [o["id"] for o in (await call(client, "PushSubscription/get", {}, auth=bearer))["list"]] == [with_token]
    assert (await call(client, "PushSubscription/get", {"ids": [with_password, with_token]}, auth=bob)) == \
        {"list": [], "notFound": [with_password, with_token]}
    result = await call(client, "PushSubscription/set", {"update": {with_password: {"types": ["Foo"]}},
                                                         "destroy": [with_password]}, auth=bearer)
    assert result["notUpdated"] == {with_password: {"type": "notFound"}}
    assert result["notDestroyed"] == {with_password: {"type": "notFound"}}
    assert [o["id"] for o in (await call(client, "PushSubscription/get", {}))["list"]] == [with_password]


async def test_revoking_a_token_destroys_its_subscriptions(start, receiver):
    """RFC 8620 §7.2: when the credentials are revoked, the push subscription must be destroyed."""
    client = await start()
    runtime = client.app[RUNTIME]
    credential_id, token = await create_credential(runtime, "alice@example.org", "token", "phone")
    await create(client, {"deviceClientId": "tok", "url": receiver.url("/tok")}, auth=f"Bearer {token}")
    kept = (await create(client, {"deviceClientId": "pw", "url": receiver.url("/pw")}))["created"]["c"]["id"]
    await revoke_credential(runtime, "alice@example.org", credential_id)
    async with runtime.db.read() as conn:
        assert [i.sub.id for i in await push_store.listing(conn)] == [kept]


async def test_destroy_for_credential_destroys_the_passwords_subscriptions(start, receiver):
    """What a password change calls: the password's subscriptions go, the tokens' stay."""
    client = await start()
    runtime = client.app[RUNTIME]
    _, token = await create_credential(runtime, "alice@example.org", "token", "phone")
    kept = (await create(client, {"deviceClientId": "t", "url": receiver.url("/t")},
                         auth=f"Bearer {token}"))["created"]["c"]["id"]
    await create(client, {"deviceClientId": "pw", "url": receiver.url("/pw")})
    async with runtime.db.read() as conn:
        user_id = await conn.value("SELECT id FROM users WHERE login = 'alice@example.org'")
    async with runtime.db.write() as tx:
        assert await push_store.destroy_for_credential(tx, user_id, None) == 1
    async with runtime.db.read() as conn:
        assert [i.sub.id for i in await push_store.listing(conn)] == [kept]


async def test_changing_the_password_destroys_the_subscriptions_created_with_it(start, receiver):
    """RFC 8620 §7.2: a subscription is tied to the credentials that created it and must be destroyed when
    they are changed or revoked; a token's subscriptions are not the password's."""
    client = await start()
    runtime = client.app[RUNTIME]
    _, token = await create_credential(runtime, "alice@example.org", "token", "phone")
    bearer = f"Bearer {token}"
    by_token = await subscribe(client, receiver, "/by-token", auth=bearer)
    await subscribe(client, receiver, "/by-password")
    await set_password(runtime, "alice@example.org", "a brand new password")
    new = basic("alice@example.org", "a brand new password")
    assert (await call(client, "PushSubscription/get", {"ids": None}, auth=new))["list"] == []
    assert [s["id"] for s in (await call(client, "PushSubscription/get", {"ids": None}, auth=bearer))["list"]] == \
        [by_token]
    await publish(client, {"Foo": "1"})
    await receiver.nth("/by-token", 2)
    assert len(receiver.at("/by-password")) == 1      # its verification, nothing since


def database_files(runtime) -> bytes:
    path = runtime.db.path
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


async def secure_delete(runtime) -> int:
    """The writer's PRAGMA secure_delete: Database turns it on, whatever SQLite was built with."""
    async with runtime.db.write() as tx:
        return await tx.value("PRAGMA secure_delete")


async def test_a_destroyed_subscriptions_url_and_keys_leave_the_database_files(start, receiver):
    """RFC 8620 §7.2: on destroy the URL and keys are erased from storage as soon as possible: neither the
    database file (free space of a page, free pages) nor the WAL keeps a copy once it is checkpointed."""
    client = await start()
    runtime = client.app[RUNTIME]
    assert await secure_delete(runtime) == 1
    ua = UserAgent()
    gone = await subscribe(client, receiver, "/erase-me-4f2a9c", ua=ua)
    await subscribe(client, receiver, "/keep-me-77b1e0")
    for n in range(1, 4):                            # each delivery rewrites the rows
        await publish(client, {"Foo": str(n)})
        await client.events.wait(gone, "delivered", n + 1)
    assert b"erase-me-4f2a9c" in database_files(runtime)
    result = await call(client, "PushSubscription/set", {"destroy": [gone]})
    assert result["destroyed"] == [gone]
    await client.events.wait("", "erased")
    files = database_files(runtime)
    assert b"keep-me-77b1e0" in files                 # the scan does see what is stored
    for secret in ("erase-me-4f2a9c", ua.keys["p256dh"], ua.keys["auth"]):
        assert secret.encode() not in files, secret
    assert await secure_delete(runtime) == 1


async def test_revoking_a_token_erases_its_subscriptions_from_the_database_files(start, receiver):
    """The same erasure when the subscriptions go with their credential (RFC 8620 §7.2)."""
    client = await start()
    runtime = client.app[RUNTIME]
    assert await secure_delete(runtime) == 1
    credential_id, token = await create_credential(runtime, "alice@example.org", "token", "phone")
    ua = UserAgent()
    await subscribe(client, receiver, "/token-url-5d0c31", ua=ua, auth=f"Bearer {token}")
    await revoke_credential(runtime, "alice@example.org", credential_id)
    await client.events.wait("", "erased")
    files = database_files(runtime)
    for secret in ("token-url-5d0c31", ua.keys["p256dh"], ua.keys["auth"]):
        assert secret.encode() not in files, secret


# --- set -----------------------------------------------------------------------------------------------------


async def test_destroy_erases_the_subscription_and_its_pending_deliveries(start, receiver):
    """RFC 8620 §7.2: on destroy the URL and keys are erased from storage."""
    client = await start()
    sub_id = await subscribe(client, receiver, "/d", ua=UserAgent())
    receiver.gates["/d"] = gate = asyncio.Event()
    await publish(client, {"Foo": "1"})
    await receiver.nth("/d", 2)
    await publish(client, {"Foo": "2"})          # pending while the first StateChange is held
    result = await call(client, "PushSubscription/set", {"destroy": [sub_id]})
    gate.set()
    assert result["destroyed"] == [sub_id]
    async with client.app[RUNTIME].db.read() as conn:
        assert await conn.value("SELECT count(*) FROM push_subscriptions") == 0
        assert await conn.value("SELECT count(*) FROM push_pending") == 0
    assert (await call(client, "PushSubscription/set", {"destroy": [sub_id]}))["notDestroyed"] == \
        {sub_id: {"type": "notFound"}}


@pytest.mark.parametrize("patch, bad", [
    ({"url": "https://example.org/other"}, "url"),
    ({"keys": None}, "keys"),
    ({"keys/auth": "AAAAAAAAAAAAAAAAAAAAAA"}, "keys"),
    ({"deviceClientId": "other"}, "deviceClientId"),
    ({"id": "other"}, "id"),
    ({"types": "Email"}, "types"),
    ({"types": [1]}, "types"),
    ({"expires": "tomorrow"}, "expires"),
    ({"expires": "2001-01-01T00:00:00Z"}, "expires"),
    ({"surprise": 1}, "surprise"),
    ({"verificationCode": 5}, "verificationCode"),
    ({"verificationCode": "x" * 100_000}, "verificationCode"),
])
async def test_immutable_and_invalid_updates_are_invalid_properties(start, receiver, patch, bad):
    """RFC 8620 §7.2.2: url and keys are immutable (so is deviceClientId, §7.2)."""
    client = await start()
    sub_id = (await create(client, {"deviceClientId": "d", "url": receiver.url("/i")}))["created"]["c"]["id"]
    result = await call(client, "PushSubscription/set", {"update": {sub_id: patch}})
    assert result["notUpdated"][sub_id]["type"] == "invalidProperties", result
    assert result["notUpdated"][sub_id]["properties"] == [bad]


@pytest.mark.parametrize("patch", ["not an object", {"types/0": "Email"}, {"expires/x": 1}])
async def test_malformed_patches_are_invalid_patch(start, receiver, patch):
    client = await start()
    sub_id = (await create(client, {"deviceClientId": "d", "url": receiver.url("/i")}))["created"]["c"]["id"]
    result = await call(client, "PushSubscription/set", {"update": {sub_id: patch}})
    assert result["notUpdated"][sub_id]["type"] == "invalidPatch"


async def test_types_can_be_changed_and_reset_to_all(start, receiver):
    client = await start()
    sub_id = (await create(client, {"deviceClientId": "d", "url": receiver.url("/ty"), "types": ["A"]}
                           ))["created"]["c"]["id"]
    assert (await call(client, "PushSubscription/set", {"update": {sub_id: {"types": ["B", "B", "C"]}}}))[
        "updated"] == {sub_id: None}
    assert (await call(client, "PushSubscription/get", {"properties": ["types"]}))["list"][0]["types"] == \
        ["B", "B", "C"]
    await call(client, "PushSubscription/set", {"update": {sub_id: {"types": None}}})
    assert (await call(client, "PushSubscription/get", {"properties": ["types"]}))["list"][0]["types"] is None


async def test_update_and_destroy_of_the_same_subscription_is_will_destroy(start, receiver):
    client = await start()
    sub_id = (await create(client, {"deviceClientId": "d", "url": receiver.url("/w")}))["created"]["c"]["id"]
    result = await call(client, "PushSubscription/set", {"update": {sub_id: {"types": None}}, "destroy": [sub_id]})
    assert result["notUpdated"] == {sub_id: {"type": "willDestroy"}} and result["destroyed"] == [sub_id]


async def test_more_subscriptions_than_allowed_per_user_is_over_quota(start, receiver):
    client = await start(max_per_user=2)
    creates = {f"c{n}": {"deviceClientId": f"d{n}", "url": receiver.url(f"/q{n}")} for n in range(3)}
    result = await call(client, "PushSubscription/set", {"create": creates})
    assert sorted(result["created"]) == ["c0", "c1"]
    assert result["notCreated"]["c2"]["type"] == "overQuota"


async def test_creating_too_many_subscriptions_in_an_hour_is_rate_limited(start, receiver):
    """Destroying subscriptions does not give their creations back; an hour later creation works again."""
    clock = Clock()
    client = await start(clock=clock, creations_per_hour=2)
    for n in range(2):
        sub_id = (await create(client, {"deviceClientId": "d", "url": receiver.url(f"/rl{n}")}))["created"]["c"]["id"]
        await call(client, "PushSubscription/set", {"destroy": [sub_id]})
    result = await create(client, {"deviceClientId": "d", "url": receiver.url("/rl2")})
    assert result["notCreated"]["c"]["type"] == "rateLimit"
    clock.now += 3601
    assert (await create(client, {"deviceClientId": "d", "url": receiver.url("/rl3")}))["created"]


async def test_an_expired_subscription_is_no_longer_found(start, receiver):
    clock = Clock()
    client = await start(clock=clock)
    sub_id = (await create(client, {"deviceClientId": "d", "url": receiver.url("/x"),
                                    "expires": utc(clock.now + 60)}))["created"]["c"]["id"]
    clock.now += 61
    assert (await call(client, "PushSubscription/get", {"ids": [sub_id]}))["notFound"] == [sub_id]
    result = await call(client, "PushSubscription/set", {"update": {sub_id: {"types": None}}})
    assert result["notUpdated"] == {sub_id: {"type": "notFound"}}


# --- targets ----------------------------------------------------------------------------------------------------


async def test_an_http_url_is_refused_even_when_private_targets_are_allowed(start):
    """RFC 8620 §7.2: the url MUST begin with "https://"."""
    client = await start(allow_private_targets=True)
    result = await create(client, {"deviceClientId": "d", "url": "http://127.0.0.1:9/push"})
    assert result["notCreated"]["c"]["type"] == "invalidProperties"
    assert result["notCreated"]["c"]["properties"] == ["url"]


@pytest.mark.parametrize("url", [
    "https://127.0.0.1/push", "https://127.1.2.3:8443/push", "https://10.1.2.3/push", "https://192.168.0.10/",
    "https://172.16.5.4/", "https://169.254.169.254/latest/meta-data/", "https://100.64.0.1/",
    "https://[::1]/push", "https://[::ffff:127.0.0.1]/push", "https://[::ffff:7f00:1]/", "https://[fe80::1%25eth0]/",
    "https://[fc00::1]/", "https://0.0.0.0/", "https://localhost/push", "https://LOCALHOST./push",
    "https://app.localhost:8443/push",
])
async def test_targets_that_are_not_globally_routable_are_refused(start, receiver, url):
    """Loopback, private, link-local, CGNAT, unique-local and mapped IPv4 targets are refused unless
    allow_private_targets; nothing is sent (names are checked again at connect time, see test_push_webhook)."""
    client = await start(allow_private_targets=False)
    result = await create(client, {"deviceClientId": "d", "url": url})
    assert result["notCreated"]["c"]["type"] == "invalidProperties", result
    assert result["notCreated"]["c"]["properties"] == ["url"]
    async with client.app[RUNTIME].db.read() as conn:
        assert await conn.value("SELECT count(*) FROM push_subscriptions") == 0
    assert receiver.requests == []


# --- hostile input -----------------------------------------------------------------------------------------------


P256DH = UserAgent().keys["p256dh"]
AUTH = "AAAAAAAAAAAAAAAAAAAAAA"


@pytest.mark.parametrize("props, bad", [
    ({"url": "https://example.org/"}, ["deviceClientId"]),
    ({"deviceClientId": "d"}, ["url"]),
    ({"deviceClientId": 5, "url": "https://example.org/"}, ["deviceClientId"]),
    ({"deviceClientId": "", "url": "https://example.org/"}, ["deviceClientId"]),
    ({"deviceClientId": "x" * 256, "url": "https://example.org/"}, ["deviceClientId"]),
    ({"deviceClientId": "a\x00b", "url": "https://example.org/"}, ["deviceClientId"]),
    ({"deviceClientId": None, "url": "https://example.org/"}, ["deviceClientId"]),
    ({"deviceClientId": "d", "url": None}, ["url"]),
    ({"deviceClientId": "d", "url": 443}, ["url"]),
    ({"deviceClientId": "d", "url": ""}, ["url"]),
    ({"deviceClientId": "d", "url": "https://"}, ["url"]),
    ({"deviceClientId": "d", "url": "ftp://example.org/"}, ["url"]),
    ({"deviceClientId": "d", "url": "example.org/push"}, ["url"]),
    ({"deviceClientId": "d", "url": "https://user:pw@example.org/"}, ["url"]),
    ({"deviceClientId": "d", "url": "https://example.org/#frag"}, ["url"]),
    ({"deviceClientId": "d", "url": "https://example.org:99999/"}, ["url"]),
    ({"deviceClientId": "d", "url": "https://example.org:0/"}, ["url"]),
    ({"deviceClientId": "d", "url": "https://exa mple.org/"}, ["url"]),
    ({"deviceClientId": "d", "url": "https://exämple.org/"}, ["url"]),
    ({"deviceClientId": "d", "url": "https://example.org/\n"}, ["url"]),
    ({"deviceClientId": "d", "url": "https://example.org/" + "a" * 3000}, ["url"]),
    ({"deviceClientId": "d", "url": "https://[::1/"}, ["url"]),
    ({"deviceClientId": "d", "url": "https://example.org/", "keys": "abc"}, ["keys"]),
    ({"deviceClientId": "d", "url": "https://example.org/", "keys": {"p256dh": P256DH}}, ["keys"]),
    ({"deviceClientId": "d", "url": "https://example.org/", "keys": {"p256dh": P256DH, "auth": AUTH, "x": 1}},
     ["keys"]),
    ({"deviceClientId": "d", "url": "https://example.org/", "keys": {"p256dh": P256DH, "auth": "AAAA"}}, ["keys"]),
    ({"deviceClientId": "d", "url": "https://example.org/", "keys": {"p256dh": "BAAA", "auth": AUTH}}, ["keys"]),
    ({"deviceClientId": "d", "url": "https://example.org/", "keys": {"p256dh": 1, "auth": AUTH}}, ["keys"]),
    ({"deviceClientId": "d", "url": "https://example.org/", "keys": {"p256dh": "!" * 5000, "auth": AUTH}},
     ["keys"]),
    ({"deviceClientId": "d", "url": "https://example.org/", "verificationCode": "abc"}, ["verificationCode"]),
    ({"deviceClientId": "d", "url": "https://example.org/", "expires": "tomorrow"}, ["expires"]),
    ({"deviceClientId": "d", "url": "https://example.org/", "expires": 1700000000}, ["expires"]),
    ({"deviceClientId": "d", "url": "https://example.org/", "expires": "2001-01-01T00:00:00Z"}, ["expires"]),
    ({"deviceClientId": "d", "url": "https://example.org/", "expires": "2030-13-01T00:00:00Z"}, ["expires"]),
    ({"deviceClientId": "d", "url": "https://example.org/", "expires": "2030-01-01T00:00:00+01:00"}, ["expires"]),
    ({"deviceClientId": "d", "url": "https://example.org/", "types": "Email"}, ["types"]),
    ({"deviceClientId": "d", "url": "https://example.org/", "types": [1]}, ["types"]),
    ({"deviceClientId": "d", "url": "https://example.org/", "types": [""]}, ["types"]),
    ({"deviceClientId": "d", "url": "https://example.org/", "types": ["a b"]}, ["types"]),
    ({"deviceClientId": "d", "url": "https://example.org/", "types": ["Email\n"]}, ["types"]),
    ({"deviceClientId": "d", "url": "https://example.org/", "types": ["T"] * 1000}, ["types"]),
    ({"deviceClientId": "d", "url": "https://example.org/", "id": "mine"}, ["id"]),
    ({"deviceClientId": "d", "url": "https://example.org/", "surprise": True}, ["surprise"]),
    ({"deviceClientId": 1, "url": "http://example.org/", "types": 2}, ["deviceClientId", "url", "types"]),
])
async def test_every_property_of_a_create_is_checked(start, props, bad):
    """RFC 8620 §5.3: a bad property is invalidProperties naming it; nothing is stored or sent."""
    client = await start(allow_private_targets=False)
    result = await create(client, props)
    error = result["notCreated"]["c"]
    assert error["type"] == "invalidProperties", error
    assert error["properties"] == bad
    assert result["created"] is None


@pytest.mark.parametrize("method, args, kind", [
    ("PushSubscription/get", {"accountId": "A1"}, "invalidArguments"),
    ("PushSubscription/set", {"accountId": "A1"}, "invalidArguments"),
    ("PushSubscription/set", {"ifInState": "1"}, "invalidArguments"),
    ("PushSubscription/get", {"ids": "all"}, "invalidArguments"),
    ("PushSubscription/get", {"ids": [1]}, "invalidArguments"),
    ("PushSubscription/get", {"ids": ["../etc"]}, "invalidArguments"),
    ("PushSubscription/get", {"properties": "id"}, "invalidArguments"),
    ("PushSubscription/get", {"properties": ["nope"]}, "invalidArguments"),
    ("PushSubscription/get", {"ids": ["x"] * 501}, "requestTooLarge"),
    ("PushSubscription/get", {"sinceState": "1"}, "invalidArguments"),
    ("PushSubscription/set", {"create": []}, "invalidArguments"),
    ("PushSubscription/set", {"update": "x"}, "invalidArguments"),
    ("PushSubscription/set", {"destroy": "x"}, "invalidArguments"),
    ("PushSubscription/set", {"destroy": [{"id": "x"}]}, "invalidArguments"),
    ("PushSubscription/set", {"destroy": ["x"] * 501}, "requestTooLarge"),
    ("PushSubscription/set", {"create": {f"c{n}": {} for n in range(501)}}, "requestTooLarge"),
    ("PushSubscription/changes", {"sinceState": "0"}, "unknownMethod"),
    ("PushSubscription/query", {}, "unknownMethod"),
])
async def test_bad_arguments_fail_the_call(start, method, args, kind):
    """RFC 8620 §7.2.1-2: no accountId and no ifInState; PushSubscription has no /changes (unknownMethod)."""
    client = await start()
    assert (await error(client, method, args))["type"] == kind


async def test_a_lone_surrogate_never_reaches_the_method(start):
    """Text that is not valid Unicode is refused with the request (notJSON), before any handler runs."""
    client = await start()
    body = (b'{"using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:webpush-vapid"], "methodCalls": '
            b'[["PushSubscription/set", {"create": {"c": {"deviceClientId": "\\ud800", "url": "https://x/"}}}, "0"]]}')
    resp = await client.post("/jmap/api", data=body, headers=client.headers({"Content-Type": "application/json"}))
    assert resp.status == 400
    assert (await resp.json(content_type=None))["type"] == "urn:ietf:params:jmap:error:notJSON"


async def test_odd_creation_ids_and_destroy_ids_are_reported_one_by_one(start, receiver):
    client = await start()
    result = await call(client, "PushSubscription/set", {
        "create": {"bad id!": {"deviceClientId": "d", "url": receiver.url("/o")}, "ok": "not an object"},
        "update": {"#unknown": {"types": None}, "nope": {"types": None}},
        "destroy": ["#unknown", "missing"]})
    assert result["created"] is None
    assert result["notCreated"]["bad id!"]["type"] == "invalidProperties"
    assert result["notCreated"]["ok"]["type"] == "invalidProperties"
    assert result["notUpdated"] == {"#unknown": {"type": "notFound"}, "nope": {"type": "notFound"}}
    assert result["notDestroyed"] == {"#unknown": {"type": "notFound"}, "missing": {"type": "notFound"}}


async def test_push_subscription_methods_need_only_the_core_in_using(start):
    """RFC 8620 §7.2: PushSubscription is part of the core capability."""
    client = await start()
    resp = await client.request_json({"using": [CORE], "methodCalls": [["PushSubscription/get", {}, "0"]]})
    assert resp["methodResponses"][0][0] == "PushSubscription/get"


# --- jmapled push ---------------------------------------------------------------------------------------------


async def run_command(client, argv: list[str], capsys) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="jmapled push")
    PUSH_COMMAND.add_arguments(parser)
    capsys.readouterr()
    code = await PUSH_COMMAND.run(parser.parse_args(argv), client.app[RUNTIME])
    out, err = capsys.readouterr()
    return code, out, err


async def test_push_list_show_and_delete(start, receiver, capsys):
    """`jmapled push list|show|delete`: state, expiry, last attempt and status, failures, next retry; never the
    URL's path or the keys."""
    client = await start()
    assert await run_command(client, ["list"], capsys) == (0, "", "no push subscriptions\n")
    ua = UserAgent()
    sub_id = await subscribe(client, receiver, "/secret-path-123", ua=ua, deviceClientId="phone")
    receiver.script["/secret-path-123"] = [500] * 10
    await publish(client, {"Foo": "1"})
    await client.events.wait(sub_id, "failed")
    code, out, _ = await run_command(client, ["list"], capsys)
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:4] == ["ID", "USER", "DEVICE", "TARGET"]
    assert sub_id in row and "alice@example.org" in row and f"127.0.0.1:{receiver.server.port}" in row
    assert "verified" in row and "500" in row
    code, out, _ = await run_command(client, ["show", sub_id], capsys)
    shown = dict(line.split(":", 1) for line in out.splitlines())
    assert shown["state"].strip() == "verified" and shown["failures"].strip() == "1"
    assert shown["credential"].strip() == "password" and shown["encrypted"].strip().startswith("yes")
    assert shown["last status"].strip() == "500" and shown["next retry"].strip() != "-"
    for text in (out, row):
        assert "secret-path" not in text and ua.keys["auth"] not in text and ua.keys["p256dh"] not in text
    assert await run_command(client, ["delete", sub_id], capsys) == (0, f"deleted push subscription {sub_id}\n", "")
    assert (await call(client, "PushSubscription/get", {"ids": None}))["list"] == []
    with pytest.raises(NotFound):
        await run_command(client, ["show", sub_id], capsys)
    with pytest.raises(NotFound):
        await run_command(client, ["delete", sub_id], capsys)


def test_the_push_command_is_part_of_jmapled(capsys, tmp_path):
    """Through jmapled's own parser and runtime (no daemon running)."""
    extra = [p for p in plugins() if p.name == "push"]
    assert main(["--data-dir", str(tmp_path), "push", "list"], plugins=extra) == 0
    assert capsys.readouterr().err == "no push subscriptions\n"
    assert main(["--data-dir", str(tmp_path), "push", "show", "Pnope"], plugins=extra) == 1
    assert "no push subscription 'Pnope'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["show", "delete"])
def test_a_push_subscription_id_that_is_not_utf8_is_one_line(capsys, tmp_path, command):
    """A non-UTF-8 argument arrives as a lone surrogate, which SQLite cannot bind."""
    extra = [p for p in plugins() if p.name == "push"]
    assert main(["--data-dir", str(tmp_path), "push", command, "P\udcff"], plugins=extra) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == "jmapled: error: no push subscription 'P\\udcff' (see `jmapled push list`)"
