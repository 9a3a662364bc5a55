"""Authentication: HTTP Basic (password, app password), Bearer tokens, the credential cache, slow-down."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import sqlite3
import time

import pytest

from conftest import NOTES, PASSWORD, USING, add_user, basic, logged_in, share
from jmaple.app import DATABASE_FILE
from jmaple.auth import Authenticator, hash_password, verify_password
from jmaple.config import Config
from jmaple.keys import AUTHENTICATOR, RUNTIME
from jmaple.store import accounts
from jmaple.users import create_credential, delete_user, set_password

WWW_AUTHENTICATE = 'Basic realm="jmaple", Bearer'
# With [auth] failure_delay_max = 0.3: an answer that was not slowed down, and one that was held the maximum.
FAST = 0.2
SLOW = 0.28


async def make_client(aiohttp_client, tmp_path, **raw):
    """An app of its own with Config.for_tests(**raw), logged in as alice@example.org."""
    config = Config.for_tests(data_dir=tmp_path / "own", **raw)
    return await logged_in(aiohttp_client, config)


async def session_as(client, auth: str | None, **headers: str):
    if auth is not None:
        headers["Authorization"] = auth
    return await client.get("/jmap/session", headers=headers)


async def assert_unauthorized(resp) -> None:
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == WWW_AUTHENTICATE
    assert resp.content_type == "application/problem+json"
    body = await resp.json(content_type=None)
    assert body["status"] == 401
    assert body["type"] == "about:blank"
    assert "detail" in body


async def wait_for_status(client, auth: str, status: int, timeout: float = 4.0) -> float:
    """Poll the session with auth until it answers status; returns how long that took."""
    start = time.monotonic()
    async with asyncio.timeout(timeout):
        while True:
            resp = await session_as(client, auth)
            await resp.read()
            if resp.status == status:
                return time.monotonic() - start
            await asyncio.sleep(0.05)


async def revoke(client, login: str, credential_id: str) -> None:
    runtime = client.app[RUNTIME]
    async with runtime.db.read() as conn:
        user = await accounts.user_by_login(conn, login)
    async with runtime.db.write() as tx:
        await accounts.revoke_credential(tx, user.id, credential_id)


# --- accepted credentials --------------------------------------------------------------------------


async def test_basic_with_the_users_password_is_accepted(client):
    resp = await session_as(client, basic("alice@example.org"))
    assert resp.status == 200
    assert (await resp.json())["username"] == "alice@example.org"


async def test_basic_with_an_app_password_is_accepted(client):
    _, secret = await create_credential(client.app[RUNTIME], "alice@example.org", "app-password", "phone")
    resp = await session_as(client, basic("alice@example.org", secret))
    assert resp.status == 200
    assert (await resp.json())["username"] == "alice@example.org"
    result = await client.request_json({"using": USING, "methodCalls": [["Core/echo", {"x": 1}, "c"]]},
                                       auth=basic("alice@example.org", secret))
    assert result["methodResponses"] == [["Core/echo", {"x": 1}, "c"]]


async def test_a_bearer_token_is_accepted(client):
    _, token = await create_credential(client.app[RUNTIME], "alice@example.org", "token", "script")
    resp = await session_as(client, f"Bearer {token}")
    assert resp.status == 200
    assert (await resp.json())["username"] == "alice@example.org"
    # The scheme name is case-insensitive (RFC 9110 §11.1).
    assert (await session_as(client, f"bearer {token}")).status == 200


async def test_a_password_with_a_colon_and_non_ascii_characters_works(app_client):
    password = "pä:ss wörd:€"
    await add_user(app_client, "carol@example.org", password)
    auth = "Basic " + base64.b64encode(f"carol@example.org:{password}".encode()).decode()
    assert (await session_as(app_client, auth)).status == 200


async def test_the_same_credentials_sent_concurrently_all_succeed(client):
    responses = await asyncio.gather(*(session_as(client, basic("alice@example.org")) for _ in range(20)))
    assert [r.status for r in responses] == [200] * 20


async def test_a_client_giving_up_does_not_fail_others_sending_the_same_credentials(client):
    authenticator = client.app[AUTHENTICATOR]
    header = basic("alice@example.org")
    first = asyncio.create_task(authenticator.authenticate(header))
    second = asyncio.create_task(authenticator.authenticate(header))
    await asyncio.sleep(0)      # both are now waiting on the one verification
    first.cancel()
    async with asyncio.timeout(5):
        principal = await second
    assert principal is not None and principal.login == "alice@example.org"
    assert first.cancelled()


async def test_app_passwords_and_tokens_are_not_interchangeable(client, bob):
    runtime = client.app[RUNTIME]
    _, app_password = await create_credential(runtime, "alice@example.org", "app-password", "phone")
    _, token = await create_credential(runtime, "alice@example.org", "token", "script")
    await assert_unauthorized(await session_as(client, f"Bearer {app_password}"))
    await assert_unauthorized(await session_as(client, basic("alice@example.org", token)))
    # An app password is bound to its user: it does not log in as anyone else.
    await assert_unauthorized(await session_as(client, basic("bob@example.org", app_password)))


# --- refused credentials ---------------------------------------------------------------------------


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize("auth", [
    basic("alice@example.org", "wrong password"),
    basic("alice@example.org", ""),
    basic("nobody@example.org"),
    basic("", PASSWORD),
    "Basic " + b64(b"alice@example.org"),                             # no colon
    "Basic " + b64(b"alice@example.org:\xff\xfe" + PASSWORD.encode()),   # bad UTF-8
    "Basic !!!not-base64!!!",
    "Basic " + b64(f"alice@example.org:{PASSWORD}".encode())[:-2],     # bad padding
    "Basic",
    "Basic ",
    "Bearer",
    "Bearer jmat_doesnotexist",
    "Digest username=\"alice@example.org\"",
    "Negotiate YIIBhwYGKwYBBQUCoIIBezCCAXegDTAL",
    "",
    " ",
    "x" * 4000,
], ids=["wrong-password", "empty-password", "unknown-user", "empty-login", "no-colon", "bad-utf8",
        "bad-base64", "bad-padding", "basic-alone", "basic-space", "bearer-alone", "unknown-token", "digest",
        "negotiate", "empty", "blank", "long-junk"])
async def test_bad_credentials_are_refused_with_a_challenge(client, auth):
    """RFC 8620 §1.4 / RFC 9110 §11.6.1: a 401 names the schemes the server accepts."""
    await assert_unauthorized(await session_as(client, auth))


async def test_a_password_is_not_accepted_as_a_bearer_token(client):
    await assert_unauthorized(await session_as(client, f"Bearer {PASSWORD}"))


@pytest.mark.parametrize("method, path", [
    ("GET", "/jmap/session"),
    ("POST", "/jmap/api"),
    ("POST", "/jmap/upload/A1/"),
    ("GET", "/jmap/download/A1/B1/x.txt"),
    ("GET", "/jmap/eventsource"),
    ("GET", "/jmap/ws"),
    ("GET", "/nope"),
    ("GET", "/"),
    ("POST", "/.well-known/jmap"),
    ("POST", "/healthz"),
    ("DELETE", "/jmap/session"),
    ("GET", "/.well-known/jmap/x"),
])
async def test_without_credentials_everything_else_is_401(app_client, method, path):
    resp = await app_client.request(method, path)
    await assert_unauthorized(resp)


async def test_without_credentials_the_discovery_redirect_answers(app_client):
    """RFC 8620 §2.2: /.well-known/jmap leads to the session resource."""
    resp = await app_client.get("/.well-known/jmap", allow_redirects=False)
    assert resp.status in (301, 302, 307, 308)
    assert resp.headers["Location"] == f"http://{app_client.host}:{app_client.port}/jmap/session"


async def test_without_credentials_healthz_answers_status_only(app_client):
    resp = await app_client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_without_credentials_a_cors_preflight_answers(app_client):
    resp = await app_client.options("/jmap/api", headers={"Origin": "https://app.example.org",
                                                          "Access-Control-Request-Method": "POST"})
    assert resp.status == 204


# --- the credential cache --------------------------------------------------------------------------


async def test_a_revoked_token_stops_working_within_a_second(client):
    credential_id, token = await create_credential(client.app[RUNTIME], "alice@example.org", "token", "script")
    assert (await session_as(client, f"Bearer {token}")).status == 200   # now cached
    await revoke(client, "alice@example.org", credential_id)
    assert await wait_for_status(client, f"Bearer {token}", 401) < 1.5


async def test_a_revoked_app_password_stops_working_within_a_second(client):
    runtime = client.app[RUNTIME]
    credential_id, secret = await create_credential(runtime, "alice@example.org", "app-password", "phone")
    auth = basic("alice@example.org", secret)
    assert (await session_as(client, auth)).status == 200
    await revoke(client, "alice@example.org", credential_id)
    assert await wait_for_status(client, auth, 401) < 1.5
    assert (await session_as(client, basic("alice@example.org"))).status == 200   # the password still works


async def test_a_changed_password_takes_effect_within_a_second(client):
    assert (await session_as(client, basic("alice@example.org"))).status == 200
    await set_password(client.app[RUNTIME], "alice@example.org", "new secret")
    assert await wait_for_status(client, basic("alice@example.org"), 401) < 1.5
    assert (await session_as(client, basic("alice@example.org", "new secret"))).status == 200


async def test_a_deleted_user_is_refused_within_a_second(client, bob):
    assert (await session_as(client, basic("bob@example.org"))).status == 200
    await delete_user(client.app[RUNTIME], "bob@example.org")
    assert await wait_for_status(client, basic("bob@example.org"), 401) < 1.5


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def own_authenticator(client) -> tuple[Authenticator, Clock]:
    """An Authenticator on the app's database with a hand-moved clock, so its cache never expires unasked."""
    runtime = client.app[RUNTIME]
    clock = Clock()
    return Authenticator(runtime.db, runtime.config.auth, clock), clock


@contextlib.contextmanager
def statements_on_readers(client):
    """The SQL the reader connections run meanwhile (a list filled in as they run)."""
    readers = client.app[RUNTIME].db._all_readers
    seen: list[str] = []
    for reader in readers:
        reader.raw.set_trace_callback(seen.append)
    try:
        yield seen
    finally:
        for reader in readers:
            reader.raw.set_trace_callback(None)


@contextlib.asynccontextmanager
async def all_readers_taken(client):
    """Hold every reader connection, so that reads started meanwhile wait together until the block ends."""
    runtime = client.app[RUNTIME]
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(len(runtime.db._all_readers)):
            await stack.enter_async_context(runtime.db.read())
        yield


async def test_revalidate_sees_a_change_the_cache_still_hides_and_refreshes_the_cache(client, bob):
    authenticator, _ = own_authenticator(client)
    header = basic("bob@example.org")
    before = await authenticator.authenticate(header)
    assert list(before.accounts) == [bob.account_id]
    await share(client, "bob@example.org", "alice@example.org", False)
    assert await authenticator.authenticate(header) is before             # cached: the clock did not move
    fresh = await authenticator.revalidate(header)
    assert set(fresh.accounts) == {bob.account_id, client.account_id}
    assert await authenticator.authenticate(header) is fresh              # the cache entry was refreshed


async def test_revalidate_refuses_revoked_credentials_and_drops_them_from_the_cache(client):
    authenticator, _ = own_authenticator(client)
    credential_id, token = await create_credential(client.app[RUNTIME], "alice@example.org", "token", "script")
    assert await authenticator.authenticate(f"Bearer {token}") is not None
    await revoke(client, "alice@example.org", credential_id)
    assert await authenticator.revalidate(f"Bearer {token}") is None
    assert await authenticator.authenticate(f"Bearer {token}") is None


async def test_concurrent_revalidations_of_the_same_credentials_verify_once(client):
    authenticator, _ = own_authenticator(client)
    _, token = await create_credential(client.app[RUNTIME], "alice@example.org", "token", "script")
    with statements_on_readers(client) as seen:
        async with all_readers_taken(client):
            tasks = [asyncio.create_task(authenticator.revalidate(f"Bearer {token}")) for _ in range(20)]
            await asyncio.sleep(0)
        async with asyncio.timeout(5):
            principals = await asyncio.gather(*tasks)
    assert all(p is not None and p.login == "alice@example.org" for p in principals)
    assert sum("FROM credentials" in sql for sql in seen) == 1


async def test_a_crowd_with_the_same_stale_credentials_rereads_the_version_once(client):
    """A reconnect storm: every client's cache entry went stale at once; one version read serves them."""
    authenticator, clock = own_authenticator(client)
    header = basic("alice@example.org")
    first = await authenticator.authenticate(header)
    clock.now += 5
    with statements_on_readers(client) as seen:
        async with all_readers_taken(client):
            tasks = [asyncio.create_task(authenticator.authenticate(header)) for _ in range(50)]
            await asyncio.sleep(0)
        async with asyncio.timeout(5):
            principals = await asyncio.gather(*tasks)
    assert all(p is first for p in principals)
    assert sum(sql.startswith("SELECT version FROM users") for sql in seen) == 1


async def test_a_stale_entry_of_a_changed_user_is_verified_again(client):
    authenticator, clock = own_authenticator(client)
    assert await authenticator.authenticate(basic("alice@example.org")) is not None
    await set_password(client.app[RUNTIME], "alice@example.org", "new secret")
    clock.now += 5
    results = await asyncio.gather(*(authenticator.authenticate(basic("alice@example.org")) for _ in range(5)))
    assert results == [None] * 5
    assert await authenticator.authenticate(basic("alice@example.org", "new secret")) is not None


def test_a_password_with_a_lone_surrogate_is_refused_at_hash_time_and_never_verifies(client):
    config = client.app[RUNTIME].config.auth
    with pytest.raises(ValueError, match="lone surrogate"):
        hash_password("pass\udc80word", config)
    stored = hash_password("password", config)
    assert verify_password("pass\udc80word", stored) is False
    assert verify_password("\ud800", stored) is False
    assert verify_password("password", stored) is True


# --- slowing down repeated failures ----------------------------------------------------------------


async def timed(client, auth: str, **headers: str) -> tuple[int, float]:
    start = time.monotonic()
    resp = await session_as(client, auth, **headers)
    await resp.read()
    return resp.status, time.monotonic() - start


async def test_repeated_failures_are_slowed_down_but_a_success_is_not(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, auth={"failure_delay_max": 0.3})
    wrong = basic("alice@example.org", "guess")
    timings = [await timed(client, wrong) for _ in range(6)]
    assert [status for status, _ in timings] == [401] * 6
    assert timings[0][1] < FAST
    assert timings[-1][1] >= SLOW
    status, elapsed = await timed(client, basic("alice@example.org"))
    assert status == 200 and elapsed < FAST


async def test_missing_credentials_are_not_counted_as_failures(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, auth={"failure_delay_max": 0.3})
    timings = [await timed(client, None) for _ in range(6)]
    assert all(status == 401 and elapsed < FAST for status, elapsed in timings)


async def test_behind_a_trusted_proxy_the_forwarded_address_is_tracked(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, auth={"failure_delay_max": 0.3},
                               server={"trusted_proxies": ["127.0.0.1/32", "10.0.0.0/8"]})
    wrong = basic("alice@example.org", "guess")
    for _ in range(5):
        await timed(client, wrong, **{"X-Forwarded-For": "203.0.113.7"})
    # The same client through a chain of trusted proxies is still the same client.
    status, elapsed = await timed(client, wrong, **{"X-Forwarded-For": "203.0.113.7, 10.1.2.3"})
    assert status == 401 and elapsed >= SLOW
    # Another client behind the same proxy is not slowed down.
    status, elapsed = await timed(client, wrong, **{"X-Forwarded-For": "203.0.113.8"})
    assert status == 401 and elapsed < FAST
    # Nor is the slowed-down client's correct password.
    status, elapsed = await timed(client, basic("alice@example.org"), **{"X-Forwarded-For": "203.0.113.7"})
    assert status == 200 and elapsed < FAST


async def test_without_trusted_proxies_a_forwarded_address_is_ignored(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, auth={"failure_delay_max": 0.3})
    wrong = basic("alice@example.org", "guess")
    for n in range(5):
        await timed(client, wrong, **{"X-Forwarded-For": f"203.0.113.{n}"})
    status, elapsed = await timed(client, wrong, **{"X-Forwarded-For": "198.51.100.1"})
    assert status == 401 and elapsed >= SLOW


# --- what is stored --------------------------------------------------------------------------------


def database_bytes(client) -> bytes:
    path = client.app[RUNTIME].config.data_dir / DATABASE_FILE
    return b"".join(p.read_bytes() for p in path.parent.glob(DATABASE_FILE + "*"))


async def test_passwords_are_scrypt_hashed_with_a_salt_per_user(client, bob):
    path = client.app[RUNTIME].config.data_dir / DATABASE_FILE
    with sqlite3.connect(path) as db:
        hashes = dict(db.execute("SELECT login, password_hash FROM users").fetchall())
    alice, bob_hash = hashes["alice@example.org"], hashes["bob@example.org"]
    assert alice.startswith("scrypt$") and bob_hash.startswith("scrypt$")
    assert alice.split("$")[4] != bob_hash.split("$")[4]          # the salts
    assert alice != bob_hash                                      # same password, different hashes
    assert verify_password(PASSWORD, alice) and not verify_password("wrong", alice)
    assert PASSWORD.encode() not in database_bytes(client)


async def test_app_passwords_and_tokens_are_stored_only_as_sha256(client):
    runtime = client.app[RUNTIME]
    secrets = [(await create_credential(runtime, "alice@example.org", kind, "label"))[1]
               for kind in ("app-password", "token")]
    assert all(len(secret) >= 22 for secret in secrets)    # at least 128 random bits
    assert (await session_as(client, basic("alice@example.org", secrets[0]))).status == 200
    assert (await session_as(client, f"Bearer {secrets[1]}")).status == 200
    path = runtime.config.data_dir / DATABASE_FILE
    with sqlite3.connect(path) as db:
        stored = {row[0] for row in db.execute("SELECT secret_hash FROM credentials")}
    assert stored == {hashlib.sha256(s.encode()).digest() for s in secrets}
    raw = database_bytes(client)
    for secret in secrets:
        assert secret.encode() not in raw


# --- isolation -------------------------------------------------------------------------------------


async def test_one_account_never_sees_another_without_a_grant(client, bob):
    bob_auth = basic("bob@example.org")
    await client.call("Note/set", {"create": {"n": {"title": "alice's secret"}}})
    blob = await client.upload(b"alice's attachment")
    body = {"using": USING, "methodCalls": [
        ["Note/get", {"accountId": client.account_id, "ids": None}, "0"],
        ["Note/query", {"accountId": client.account_id}, "1"],
        ["Note/changes", {"accountId": client.account_id, "sinceState": "0"}, "2"],
        ["Note/set", {"accountId": client.account_id, "create": {"x": {"title": "bob was here"}}}, "3"],
        ["Blob/copy", {"fromAccountId": client.account_id, "accountId": bob.account_id,
                       "blobIds": [blob["blobId"]]}, "4"],
    ]}
    result = await client.request_json(body, auth=bob_auth)
    assert result["methodResponses"] == [
        ["error", {"type": "accountNotFound"}, "0"],
        ["error", {"type": "accountNotFound"}, "1"],
        ["error", {"type": "accountNotFound"}, "2"],
        ["error", {"type": "accountNotFound"}, "3"],
        ["error", {"type": "fromAccountNotFound"}, "4"],
    ]
    for path in (f"/jmap/download/{client.account_id}/{blob['blobId']}/a.txt",
                 f"/jmap/download/{bob.account_id}/{blob['blobId']}/a.txt"):
        resp = await client.get(path, headers={"Authorization": bob_auth})
        assert resp.status == 404
    resp = await client.post(f"/jmap/upload/{client.account_id}/", data=b"x", headers={"Authorization": bob_auth})
    assert resp.status == 404
    session = await (await session_as(client, bob_auth)).json()
    assert list(session["accounts"]) == [bob.account_id]
    # Alice's own view is untouched.
    notes = await client.call("Note/get", {"ids": None})
    assert [n["title"] for n in notes["list"]] == ["alice's secret"]


async def test_a_grant_opens_exactly_the_granted_account(client, bob):
    carol = await add_user(client, "carol@example.org")
    await share(client, "bob@example.org", "alice@example.org", False)
    await client.call("Note/set", {"create": {"n": {"title": "shared"}}})
    bob_auth = basic("bob@example.org")
    result = await client.request_json({"using": [NOTES], "methodCalls": [
        ["Note/get", {"accountId": client.account_id, "ids": None, "properties": ["title"]}, "0"],
        ["Note/get", {"accountId": carol.account_id, "ids": None}, "1"],
        ["Note/set", {"accountId": client.account_id, "create": {"x": {"title": "no"}}}, "2"],
    ]}, auth=bob_auth)
    (name, got, _), carol_error, write_error = result["methodResponses"]
    assert name == "Note/get" and [n["title"] for n in got["list"]] == ["shared"]
    assert carol_error == ["error", {"type": "accountNotFound"}, "1"]
    assert write_error[0] == "error" and write_error[1]["type"] == "accountReadOnly"
