"""HTTP plumbing: CORS, gzip, request limits, unknown paths and hostile input."""

from __future__ import annotations

import asyncio
import gzip

import orjson
import pytest

from conftest import CORE, USING, add_user, basic
from jmaple.api.http import GZIP_OFFLOAD_MIN
from jmaple.app import make_app
from jmaple.config import Config
from jmaple.core.capability import Capability, Method, Plugin
from jmaple.keys import LIMITER, RUNTIME
from jmaple.store.accounts import user_by_login
from notes import PLUGIN as NOTES_PLUGIN

ORIGINS = ["https://app.example.org", "http://localhost:*"]
HOLD = "https://jmaple.test/hold"


async def make_client(aiohttp_client, tmp_path, plugins=(), **raw):
    """An app of its own with Config.for_tests(**raw), logged in as alice@example.org."""
    config = Config.for_tests(data_dir=tmp_path / "own", **raw)
    client = await aiohttp_client(make_app(config, capabilities=[NOTES_PLUGIN, *plugins]))
    user = await add_user(client, "alice@example.org")
    client.auth = basic("alice@example.org")
    client.account_id = user.account_id
    return client


@pytest.fixture
async def cors_client(aiohttp_client, tmp_path):
    return await make_client(aiohttp_client, tmp_path, server={"cors_origins": ORIGINS})


async def echo(client, args: dict, headers: dict | None = None, **kwargs):
    body = orjson.dumps({"using": [CORE], "methodCalls": [["Core/echo", args, "0"]]})
    return await client.post("/jmap/api", data=body,
                             headers=client.headers({"Content-Type": "application/json", **(headers or {})}),
                             **kwargs)


async def assert_problem(resp, status: int, **fields) -> dict:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body = await resp.json(content_type=None)
    assert body["status"] == status
    for key, value in fields.items():
        assert body[key] == value
    return body


# --- CORS ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["https://app.example.org", "http://localhost:5173", "http://localhost",
                                    "http://localhost:8080"])
async def test_a_preflight_from_an_allowed_origin_is_answered_without_credentials(cors_client, origin):
    resp = await cors_client.options("/jmap/api", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == origin
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert "authorization" in resp.headers["Access-Control-Allow-Headers"].lower()
    assert "Origin" in resp.headers["Vary"]
    assert "WWW-Authenticate" not in resp.headers


@pytest.mark.parametrize("origin", ["https://evil.example.org", "http://app.example.org", "https://localhost:5173",
                                    "http://localhost.evil.example:80", "http://localhost:abc",
                                    "http://localhost:5173/path", "null", "https://app.example.org.evil.example"])
async def test_a_disallowed_origin_gets_no_cors_headers(cors_client, origin):
    preflight = await cors_client.options("/jmap/api", headers={"Origin": origin,
                                                                "Access-Control-Request-Method": "POST"})
    assert preflight.status == 204
    assert not any(h.startswith("Access-Control-") for h in preflight.headers)
    resp = await echo(cors_client, {}, {"Origin": origin})
    assert resp.status == 200
    assert not any(h.startswith("Access-Control-") for h in resp.headers)


async def test_a_response_to_an_allowed_origin_carries_cors_headers(cors_client):
    resp = await echo(cors_client, {"a": 1}, {"Origin": "https://app.example.org"})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.org"
    assert "Origin" in resp.headers.getall("Vary")
    exposed = resp.headers["Access-Control-Expose-Headers"]
    assert "WWW-Authenticate" in exposed and "Content-Disposition" in exposed


async def test_a_401_still_carries_cors_headers_so_a_browser_can_read_it(cors_client):
    resp = await cors_client.get("/jmap/session", headers={"Origin": "http://localhost:3000"})
    assert resp.status == 401
    assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="jmaple", Bearer'


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/nope", 404), ("GET", "/jmap/api", 405), ("GET", "/.well-known/jmap", 307),
])
async def test_errors_and_redirects_carry_cors_headers(cors_client, method, path, status):
    resp = await cors_client.request(method, path, allow_redirects=False,
                                     headers=cors_client.headers({"Origin": "https://app.example.org"}))
    assert resp.status == status
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example.org"


async def test_without_configured_origins_nothing_is_allowed(client):
    resp = await client.options("/jmap/api", headers={"Origin": "http://localhost:5173",
                                                      "Access-Control-Request-Method": "POST"})
    assert resp.status == 204
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_a_wildcard_allows_any_origin(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, server={"cors_origins": ["*"]})
    resp = await echo(client, {}, {"Origin": "https://anything.example"})
    assert resp.headers["Access-Control-Allow-Origin"] == "https://anything.example"


# --- gzip ------------------------------------------------------------------------------------------


BIG = {"text": "a fairly compressible sentence, repeated. " * 200}


@pytest.mark.parametrize("accept_encoding", ["gzip", "gzip, deflate, br", "deflate, gzip;q=0.5", "*", "GZIP"])
async def test_a_large_json_response_is_gzipped_when_accepted(client, accept_encoding):
    resp = await echo(client, BIG, {"Accept-Encoding": accept_encoding}, auto_decompress=False)
    assert resp.status == 200
    assert resp.headers["Content-Encoding"] == "gzip"
    assert resp.headers["Content-Type"].startswith("application/json")
    assert "Accept-Encoding" in resp.headers["Vary"]
    raw = await resp.read()
    assert len(raw) < len(orjson.dumps(BIG))
    assert orjson.loads(gzip.decompress(raw))["methodResponses"] == [["Core/echo", BIG, "0"]]


async def test_a_very_large_json_response_is_still_valid_gzip_of_the_same_json(client):
    """Past GZIP_OFFLOAD_MIN the body is compressed on a worker thread at a faster level: same JSON."""
    rows = [{"id": f"M{n}", "text": f"message {n}: " + "some quoted reply text, " * (n % 50)} for n in range(3000)]
    huge = {"rows": rows}
    assert len(orjson.dumps(huge)) > 4 * GZIP_OFFLOAD_MIN
    resp = await echo(client, huge, {"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert resp.status == 200
    assert resp.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in resp.headers["Vary"]
    raw = await resp.read()
    assert int(resp.headers["Content-Length"]) == len(raw)
    assert len(raw) < len(orjson.dumps(huge)) / 4
    assert orjson.loads(gzip.decompress(raw))["methodResponses"] == [["Core/echo", huge, "0"]]


async def test_a_large_compressed_response_and_a_small_one_in_flight_together_each_get_their_own(client):
    huge = {"text": [f"line {n} of a long, long body" for n in range(40_000)]}
    big = asyncio.ensure_future(echo(client, huge, {"Accept-Encoding": "gzip"}))
    small = await echo(client, {"small": True})
    assert small.status == 200
    resp = await big
    assert (await resp.json())["methodResponses"] == [["Core/echo", huge, "0"]]


@pytest.mark.parametrize("accept_encoding", [None, "identity", "br", "gzip;q=0", "deflate, *;q=0", "gzip;q=0, *"])
async def test_a_json_response_is_not_gzipped_unless_accepted(client, accept_encoding):
    headers = {} if accept_encoding is None else {"Accept-Encoding": accept_encoding}
    skip = ["Accept-Encoding"] if accept_encoding is None else []
    resp = await echo(client, BIG, headers, auto_decompress=False, skip_auto_headers=skip)
    assert resp.status == 200
    assert "Content-Encoding" not in resp.headers
    assert orjson.loads(await resp.read())["methodResponses"] == [["Core/echo", BIG, "0"]]


async def test_a_small_json_response_is_not_worth_compressing(client):
    resp = await echo(client, {"small": True}, {"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert resp.status == 200
    assert "Content-Encoding" not in resp.headers
    assert orjson.loads(await resp.read())["methodResponses"] == [["Core/echo", {"small": True}, "0"]]


# --- limits ----------------------------------------------------------------------------------------


def hold_plugin(release: asyncio.Event) -> Plugin:
    """A capability whose one method waits until the test releases it."""

    async def hold_wait(ctx, args):
        """Hold/wait: return once the test sets the event."""
        await release.wait()
        return {}

    return Plugin(name="hold", capabilities=(Capability(HOLD, methods={
        "Hold/wait": Method(hold_wait, account=None)}),))


async def test_max_concurrent_requests_is_enforced_per_user_without_waiting(aiohttp_client, tmp_path):
    release = asyncio.Event()
    client = await make_client(aiohttp_client, tmp_path, plugins=[hold_plugin(release)],
                               limits={"max_concurrent_requests": 2})
    await add_user(client, "bob@example.org")
    async with client.app[RUNTIME].db.read() as conn:
        alice_id = (await user_by_login(conn, "alice@example.org")).id
    body = {"using": [HOLD], "methodCalls": [["Hold/wait", {}, "h"]]}
    held = [asyncio.create_task(client.request_json(body)) for _ in range(2)]
    async with asyncio.timeout(5):
        while client.app[LIMITER].in_progress(alice_id, "maxConcurrentRequests") < 2:
            await asyncio.sleep(0.01)
        resp = await echo(client, {})
        await assert_problem(resp, 400, type="urn:ietf:params:jmap:error:limit", limit="maxConcurrentRequests")
        # Another user has slots of their own.
        result = await client.request_json({"using": [CORE], "methodCalls": [["Core/echo", {}, "0"]]},
                                           auth=basic("bob@example.org"))
        assert result["methodResponses"] == [["Core/echo", {}, "0"]]
        release.set()
        for response in await asyncio.gather(*held):
            assert response["methodResponses"] == [["Hold/wait", {}, "h"]]
    assert client.app[LIMITER].in_progress(alice_id, "maxConcurrentRequests") == 0
    assert (await echo(client, {})).status == 200


async def test_a_request_over_max_size_request_is_refused(client):
    limit = client.app[RUNTIME].config.limits.max_size_request
    resp = await echo(client, {"pad": "x" * limit})
    await assert_problem(resp, 400, type="urn:ietf:params:jmap:error:limit", limit="maxSizeRequest")


async def test_a_streamed_request_over_max_size_request_is_refused(client):
    limit = client.app[RUNTIME].config.limits.max_size_request

    async def body():
        yield b'{"using": [], "methodCalls": [], "pad": "'
        for _ in range(limit // 10_000 + 2):
            yield b"x" * 10_000
        yield b'"}'

    resp = await client.post("/jmap/api", data=body(), headers=client.headers({"Content-Type": "application/json"}))
    await assert_problem(resp, 400, limit="maxSizeRequest")


# --- request parsing (RFC 8620 §3.6.1) -------------------------------------------------------------


@pytest.mark.parametrize("content_type, body, problem", [
    ("application/json", b"{not json", "notJSON"),
    ("application/json", b"\xff\xfe", "notJSON"),
    ("application/json", b"", "notJSON"),
    ("application/json", b"[" * 5000 + b"]" * 5000, "notJSON"),
    ("text/plain", orjson.dumps({"using": [], "methodCalls": []}), "notJSON"),
    ("application/json", b"[]", "notRequest"),
    ("application/json", b'{"using": [], "methodCalls": {}}', "notRequest"),
    ("application/json", b'{"using": "x", "methodCalls": []}', "notRequest"),
    ("application/json", b'{"using": ["urn:nope"], "methodCalls": []}', "unknownCapability"),
])
async def test_a_bad_request_is_a_400_problem(client, content_type, body, problem):
    resp = await client.post("/jmap/api", data=body, headers=client.headers({"Content-Type": content_type}))
    await assert_problem(resp, 400, type=f"urn:ietf:params:jmap:error:{problem}")


async def test_a_json_content_type_with_parameters_is_fine(client):
    resp = await client.post("/jmap/api", data=orjson.dumps({"using": USING, "methodCalls": []}),
                             headers=client.headers({"Content-Type": "application/json; charset=utf-8"}))
    assert resp.status == 200
    assert (await resp.json())["methodResponses"] == []


# --- unknown paths and hostile input ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/jmap", "/jmap/", "/jmap/api/extra", "/jmap/download/a/b",
                                  "/jmap/upload/A1", "/%ff", "/jmap/download/%ZZ/%00/x", "/jmap/%0Aapi", "/%0D%0A"])
async def test_unknown_paths_are_404_with_credentials_and_401_without(client, path):
    await assert_problem(await client.get(path, headers=client.headers()), 404)
    assert (await client.get(path)).status == 401


async def test_a_wrong_method_is_405_with_allow(client):
    resp = await client.get("/jmap/api", headers=client.headers())
    await assert_problem(resp, 405)
    assert "POST" in resp.headers["Allow"]


async def test_huge_headers_are_refused_not_crashed(client):
    resp = await client.get("/jmap/session", headers=client.headers({"X-Huge": "x" * 100_000}))
    assert 400 <= resp.status < 500
    resp = await client.get("/jmap/session", headers={"Authorization": "Basic " + "A" * 100_000})
    assert 400 <= resp.status < 500
    # The server is still fine afterwards.
    assert (await client.get("/jmap/session", headers=client.headers())).status == 200


async def test_many_headers_are_refused_not_crashed(client):
    headers = client.headers({f"X-H{n}": "v" for n in range(500)})
    resp = await client.get("/jmap/session", headers=headers)
    assert resp.status in (200, 400, 431)
    assert (await client.get("/jmap/session", headers=client.headers())).status == 200


async def test_a_huge_content_length_is_refused_at_once(client):
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(b"POST /jmap/api HTTP/1.1\r\nHost: x\r\nAuthorization: " + client.auth.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(5):
            status_line = await reader.readline()
    finally:
        writer.close()
    assert status_line.split()[1] == b"400"


async def raw_request(client, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; returns the status, headers and body of the answer."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
            body = await reader.readexactly(int(headers.get("Content-Length", "0")))
    finally:
        writer.close()
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("auth", [b"Basic \xff\xfe\xfd", b"Bearer \xc3\x28", b"\xff", b"Basic " + b"\x80" * 100])
async def test_bad_bytes_in_the_authorization_header_are_401(client, auth):
    status, headers, body = await raw_request(
        client, b"GET /jmap/session HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: " + auth + b"\r\n\r\n")
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Basic realm="jmaple", Bearer'


async def test_without_a_host_header_urls_use_the_address_the_request_came_in_on(client):
    status, headers, _ = await raw_request(client, b"GET /.well-known/jmap HTTP/1.0\r\n\r\n")
    assert status == 307
    assert headers["Location"] == f"http://{client.host}:{client.port}/jmap/session"


@pytest.mark.parametrize("host, expected", [
    (b"mail.example.org:8443", "http://mail.example.org:8443/jmap/session"),
    (b"[::1]:8080", "http://[::1]:8080/jmap/session"),
    (b"evil.example/phish?x=", None),
    (b"a b", None),
    (b"x\"onload=", None),
])
async def test_only_a_well_formed_host_header_is_echoed_into_urls(client, host, expected):
    status, headers, _ = await raw_request(
        client, b"GET /.well-known/jmap HTTP/1.1\r\nConnection: close\r\nHost: " + host + b"\r\n\r\n")
    assert status == 307
    assert headers["Location"] == (expected or f"http://{client.host}:{client.port}/jmap/session")


# --- the access log ---------------------------------------------------------------------------------


async def test_the_access_log_writes_a_line_per_request_without_query_or_line_breaks(aiohttp_server, tmp_path,
                                                                                     caplog, capsys):
    """The server's own access log (as `jmapled serve` runs it): one line per request, the path as sent
    (a "%0A" cannot start a forged line) and without its query string (a ?ticket= is a credential);
    aiohttp makes a logger per connection, and connections must not pile up in memory."""
    import atexit
    import logging

    import aiohttp

    from jmaple.api.http import AccessLogger

    caplog.set_level(logging.INFO, logger="aiohttp.access")
    config = Config.for_tests(data_dir=tmp_path / "own")
    server = await aiohttp_server(make_app(config, capabilities=[NOTES_PLUGIN]),
                                  access_log=logging.getLogger("aiohttp.access"), access_log_class=AccessLogger)
    callbacks = atexit._ncallbacks()
    capsys.readouterr()
    forged = "/jmap/%0Aaccess%20127.0.0.1%20GET%20/forged%20200?ticket=s3cret"
    for n in range(10):   # each on a connection of its own
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            for path in (forged if n == 0 else "/healthz?ticket=s3cret", "/healthz?x=%0D%0Ay"):
                async with session.get(server.make_url("/").with_path(path, encoded=True).with_query(
                        path.partition("?")[2]), allow_redirects=False) as resp:
                    await resp.read()
    AccessLogger(logging.getLogger("aiohttp.access"), "").flush()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 20
    assert lines[0].endswith("ms") and " access 127.0.0.1 GET /jmap/%0Aaccess%20127.0.0.1%20GET%20/forged%20200 401 " \
        in lines[0]
    assert " access 127.0.0.1 GET /healthz 200 " in lines[1]
    assert not any("s3cret" in line or "forged 200" in line for line in lines)
    assert atexit._ncallbacks() <= callbacks + 1
