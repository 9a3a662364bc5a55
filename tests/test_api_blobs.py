"""Uploading and downloading binary data, Blob/copy (RFC 8620 §6)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
import re
import sqlite3

import pytest

from conftest import CORE, add_user, basic, logged_in, share
from jmaple.app import DATABASE_FILE
from jmaple.config import Config
from jmaple.keys import LIMITER, RUNTIME
from jmaple.store.accounts import user_by_login
from test_store_blobs import Clock

ID = re.compile(r"[A-Za-z0-9_-]{1,255}")
IMMUTABLE = "private, immutable, max-age=31536000"


def download_path(account_id: str, blob_id: str, name: str = "file.bin", accept: str | None = None) -> str:
    path = f"/jmap/download/{account_id}/{blob_id}/{name}"
    return path if accept is None else f"{path}?accept={accept}"


async def assert_problem(resp, status: int, **fields) -> dict:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body = await resp.json(content_type=None)
    assert body["status"] == status
    for key, value in fields.items():
        assert body[key] == value
    return body


async def add_ref(client, account_id: str, owner: str, blob_id: str) -> None:
    runtime = client.app[RUNTIME]
    async with runtime.db.write() as tx:
        await runtime.blobs.add_refs(tx, account_id, owner, [blob_id])


async def make_client(aiohttp_client, tmp_path, **raw):
    config = Config.for_tests(data_dir=tmp_path / "own", **raw)
    return await logged_in(aiohttp_client, config)


# --- upload ----------------------------------------------------------------------------------------


async def test_an_upload_answers_account_blob_type_and_size(client):
    """RFC 8620 §6.1: 201 with accountId, blobId, type (the request's Content-Type) and size."""
    data = b"\x00\x01binary\xff" * 100
    resp = await client.post(f"/jmap/upload/{client.account_id}/", data=data,
                             headers=client.headers({"Content-Type": "image/png"}))
    assert resp.status == 201
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body == {"accountId": client.account_id, "blobId": body["blobId"], "type": "image/png",
                    "size": len(data)}
    assert ID.fullmatch(body["blobId"])


async def test_an_upload_keeps_media_type_parameters(client):
    body = await client.upload(b"hello", "text/plain; charset=utf-8")
    assert body["type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize("content_type", ["not a media type", "text/", "/plain", "text/plain; x", "a/b;c=\"é\""])
async def test_an_unusable_content_type_is_stored_as_octet_stream(client, content_type):
    resp = await client.post(f"/jmap/upload/{client.account_id}/", data=b"x",
                             headers=client.headers({"Content-Type": content_type}))
    assert resp.status == 201
    assert (await resp.json())["type"] == "application/octet-stream"


async def test_an_upload_without_content_type_is_octet_stream(client):
    resp = await client.post(f"/jmap/upload/{client.account_id}/", data=b"x", headers=client.headers(),
                             skip_auto_headers=["Content-Type"])
    assert resp.status == 201
    assert (await resp.json())["type"] == "application/octet-stream"


async def test_an_empty_upload_is_a_blob_of_size_zero(client):
    body = await client.upload(b"")
    assert body["size"] == 0
    resp = await client.get(download_path(client.account_id, body["blobId"]), headers=client.headers())
    assert resp.status == 200 and await resp.read() == b""


async def test_the_same_bytes_uploaded_twice_give_the_same_blob(client):
    first = await client.upload(b"same", "text/plain")
    second = await client.upload(b"same", "application/json")
    assert first["blobId"] == second["blobId"]
    assert second["type"] == "application/json"


async def test_an_upload_larger_than_max_size_upload_is_refused(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, limits={"max_size_upload": 1000})
    resp = await client.post(f"/jmap/upload/{client.account_id}/", data=b"x" * 1001, headers=client.headers())
    await assert_problem(resp, 400, type="urn:ietf:params:jmap:error:limit", limit="maxSizeUpload")
    # Exactly the limit is fine.
    assert (await client.upload(b"x" * 1000))["size"] == 1000


async def test_a_streamed_upload_is_cut_off_at_max_size_upload(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, limits={"max_size_upload": 1000})

    async def body():
        for _ in range(10):
            yield b"y" * 300

    resp = await client.post(f"/jmap/upload/{client.account_id}/", data=body(), headers=client.headers())
    await assert_problem(resp, 400, limit="maxSizeUpload")


async def test_uploads_over_max_concurrent_upload_are_refused_at_once(aiohttp_client, tmp_path):
    client = await make_client(aiohttp_client, tmp_path, limits={"max_concurrent_upload": 1})
    bob = await add_user(client, "bob@example.org")
    limiter = client.app[LIMITER]
    async with client.app[RUNTIME].db.read() as conn:
        user_id = (await user_by_login(conn, "alice@example.org")).id
    release = asyncio.Event()

    async def slow_body():
        yield b"first part, "
        await release.wait()
        yield b"last part"

    held = asyncio.create_task(client.post(f"/jmap/upload/{client.account_id}/", data=slow_body(),
                                           headers=client.headers()))
    async with asyncio.timeout(5):
        while limiter.in_progress(user_id, "maxConcurrentUpload") == 0:
            await asyncio.sleep(0.01)
        # Over the limit: answered immediately, not queued behind the held upload.
        resp = await client.post(f"/jmap/upload/{client.account_id}/", data=b"second", headers=client.headers())
        await assert_problem(resp, 400, type="urn:ietf:params:jmap:error:limit", limit="maxConcurrentUpload")
        # Another user is not affected.
        resp = await client.post(f"/jmap/upload/{bob.account_id}/", data=b"bob's",
                                 headers={"Authorization": basic("bob@example.org")})
        assert resp.status == 201
        release.set()
        first = await held
    assert first.status == 201
    assert (await first.json())["size"] == len(b"first part, last part")
    assert (await client.upload(b"now there is room"))["size"] == 17


async def test_uploading_to_an_unknown_account_is_404(client):
    resp = await client.post("/jmap/upload/Anope/", data=b"x", headers=client.headers())
    await assert_problem(resp, 404)


async def test_uploading_to_a_read_only_account_is_403(client, bob):
    await share(client, "bob@example.org", "alice@example.org", False)
    resp = await client.post(f"/jmap/upload/{client.account_id}/", data=b"x",
                             headers={"Authorization": basic("bob@example.org")})
    await assert_problem(resp, 403)


# --- download --------------------------------------------------------------------------------------


async def test_a_download_serves_exactly_the_bytes_with_name_and_type(client):
    """RFC 8620 §6.2: the type from ?accept=, the name as filename, immutable caching."""
    data = bytes(range(256)) * 50
    blob = await client.upload(data, "application/x-whatever")
    resp = await client.get(download_path(client.account_id, blob["blobId"], "report.pdf", "application/pdf"),
                            headers=client.headers())
    assert resp.status == 200
    assert await resp.read() == data
    assert resp.headers["Content-Type"] == "application/pdf"
    assert resp.headers["Content-Disposition"] == (
        "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf")
    assert resp.headers["Cache-Control"] == IMMUTABLE
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert int(resp.headers["Content-Length"]) == len(data)


async def test_a_download_is_never_content_encoded(client):
    data = b"very compressible " * 10000
    blob = await client.upload(data, "text/plain")
    resp = await client.get(download_path(client.account_id, blob["blobId"], "a.txt", "text/plain"),
                            headers=client.headers({"Accept-Encoding": "gzip, deflate, br"}))
    assert resp.status == 200
    assert "Content-Encoding" not in resp.headers
    assert int(resp.headers["Content-Length"]) == len(data)
    assert await resp.read() == data


async def test_a_download_without_accept_is_octet_stream(client):
    blob = await client.upload(b"abc", "text/plain")
    resp = await client.get(download_path(client.account_id, blob["blobId"]), headers=client.headers())
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/octet-stream"


@pytest.mark.parametrize("name, fallback, encoded", [
    ("r%C3%A9sum%C3%A9%20%E2%82%AC.txt", "r_sum_ _.txt", "r%C3%A9sum%C3%A9%20%E2%82%AC.txt"),
    ("%E6%97%A5%E6%9C%AC.txt", "__.txt", "%E6%97%A5%E6%9C%AC.txt"),
    ("a%22b%5Cc.txt", "a_b_c.txt", "a%22b%5Cc.txt"),
    ("line%0D%0Abreak", "line__break", "line%0D%0Abreak"),
    ("semi%3B%20x%3Dy", "semi; x=y", "semi%3B%20x%3Dy"),
])
async def test_a_download_name_is_given_exactly_in_utf8(client, name, fallback, encoded):
    """RFC 8620 §6.2: the server MUST return `name` as the filename (RFC 6266 filename* for UTF-8)."""
    blob = await client.upload(b"abc")
    resp = await client.get(download_path(client.account_id, blob["blobId"], name), headers=client.headers())
    assert resp.status == 200
    assert resp.headers["Content-Disposition"] == (
        f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")


@pytest.mark.parametrize("name", ["%ZZ", "%", "%FF%FE", "%C3", "..", "%2e%2e", "a%2Fb", "%00"])
async def test_hostile_download_names_never_break_the_server(client, name):
    blob = await client.upload(b"abc")
    resp = await client.get(download_path(client.account_id, blob["blobId"], name), headers=client.headers())
    assert resp.status in (200, 404), await resp.text()
    if resp.status == 200:
        assert await resp.read() == b"abc"
        assert "\n" not in resp.headers["Content-Disposition"]


@pytest.mark.parametrize("accept", [
    "text/html%0D%0AX-Injected:%20yes", "text/plain%0A", "garbage", "", "a/b/c", "x" * 300 + "/y",
    "text/plain;%20name=%22a%0Ab%22", "%FF/%FE",
])
async def test_bad_accept_values_are_not_reflected(client, accept):
    blob = await client.upload(b"abc")
    resp = await client.get(download_path(client.account_id, blob["blobId"], "a", accept),
                            headers=client.headers())
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert "X-Injected" not in resp.headers


async def test_an_unknown_blob_is_a_404_problem(client):
    missing = "B" + hashlib.sha256(b"never uploaded").hexdigest()
    resp = await client.get(download_path(client.account_id, missing), headers=client.headers())
    await assert_problem(resp, 404)


@pytest.mark.parametrize("account, blob", [
    ("Anope", "VALID"), ("VALID", "nope"), ("VALID", "B" + "0" * 64), ("VALID", "B" + "A" * 64),
    ("VALID", "B" + "0" * 65), ("%FF", "VALID"), ("VALID", "%00"), ("a" * 300, "b" * 300),
])
async def test_bad_account_and_blob_ids_in_paths_are_404(client, account, blob):
    uploaded = await client.upload(b"abc")
    account = client.account_id if account == "VALID" else account
    blob = uploaded["blobId"] if blob == "VALID" else blob
    resp = await client.get(download_path(account, blob), headers=client.headers())
    await assert_problem(resp, 404)


async def test_another_user_cannot_download_without_a_grant(client, bob):
    blob = await client.upload(b"private")
    bob_headers = {"Authorization": basic("bob@example.org")}
    for account_id in (client.account_id, bob.account_id):
        resp = await client.get(download_path(account_id, blob["blobId"]), headers=bob_headers)
        await assert_problem(resp, 404)
    # Uploading the same bytes gives bob his own copy; alice's upload stays hers.
    resp = await client.post(f"/jmap/upload/{bob.account_id}/", data=b"private", headers=bob_headers)
    assert (await resp.json())["blobId"] == blob["blobId"]
    resp = await client.get(download_path(bob.account_id, blob["blobId"]), headers=bob_headers)
    assert resp.status == 200 and await resp.read() == b"private"
    resp = await client.get(download_path(client.account_id, blob["blobId"]), headers=bob_headers)
    assert resp.status == 404


async def test_an_unreferenced_upload_is_readable_only_by_its_uploader_even_when_shared(client, bob):
    """RFC 8620 §6.1: unreferenced blobs are accessible only to the uploader, even in shared accounts."""
    await share(client, "bob@example.org", "alice@example.org", True)
    bob_headers = {"Authorization": basic("bob@example.org")}
    resp = await client.post(f"/jmap/upload/{client.account_id}/", data=b"bob's draft", headers=bob_headers)
    assert resp.status == 201
    blob_id = (await resp.json())["blobId"]
    mine = await client.upload(b"alice's draft")
    path = download_path(client.account_id, blob_id)
    assert (await client.get(path, headers=bob_headers)).status == 200
    await assert_problem(await client.get(path, headers=client.headers()), 404)
    await assert_problem(await client.get(download_path(client.account_id, mine["blobId"]),
                                          headers=bob_headers), 404)
    # Once an object of the account holds it, everyone who may read the account may read it.
    await add_ref(client, client.account_id, "Note:N1", mine["blobId"])
    resp = await client.get(download_path(client.account_id, mine["blobId"]), headers=bob_headers)
    assert resp.status == 200 and await resp.read() == b"alice's draft"


async def test_two_users_uploading_the_same_bytes_to_a_shared_account_each_keep_their_upload(client, bob):
    """RFC 8620 §6.1: an upload is the uploader's; a second user uploading identical content to the same
    shared account does not take the first one's upload away."""
    await share(client, "bob@example.org", "alice@example.org", True)
    bob_headers = {"Authorization": basic("bob@example.org")}
    mine = await client.upload(b"same bytes")
    resp = await client.post(f"/jmap/upload/{client.account_id}/", data=b"same bytes", headers=bob_headers)
    assert resp.status == 201 and (await resp.json())["blobId"] == mine["blobId"]
    path = download_path(client.account_id, mine["blobId"])
    for headers in (client.headers(), bob_headers):
        resp = await client.get(path, headers=headers)
        assert resp.status == 200 and await resp.read() == b"same bytes"


async def test_a_read_only_grant_can_download_referenced_blobs(client, bob):
    await share(client, "bob@example.org", "alice@example.org", False)
    blob = await client.upload(b"attachment")
    await add_ref(client, client.account_id, "Note:N1", blob["blobId"])
    resp = await client.get(download_path(client.account_id, blob["blobId"]),
                            headers={"Authorization": basic("bob@example.org")})
    assert resp.status == 200 and await resp.read() == b"attachment"


# --- Blob/copy -------------------------------------------------------------------------------------


async def blob_copy(client, args: dict, auth: str | None = None) -> list:
    result = await client.request_json({"using": [CORE], "methodCalls": [["Blob/copy", args, "0"]]}, auth=auth)
    return result["methodResponses"]


async def test_blob_copy_copies_readable_blobs_and_reports_the_rest(client, bob):
    """RFC 8620 §6.3: copied maps old to new ids; notCopied holds a SetError per blob."""
    await share(client, "alice@example.org", "bob@example.org", True)
    first = await client.upload(b"one")
    second = await client.upload(b"two")
    unknown = "B" + hashlib.sha256(b"unknown").hexdigest()
    responses = await blob_copy(client, {"fromAccountId": client.account_id, "accountId": bob.account_id,
                                         "blobIds": [first["blobId"], unknown, second["blobId"], "weird-id"]})
    assert responses == [["Blob/copy", {
        "fromAccountId": client.account_id,
        "accountId": bob.account_id,
        "copied": {first["blobId"]: first["blobId"], second["blobId"]: second["blobId"]},
        "notCopied": {unknown: {"type": "blobNotFound"}, "weird-id": {"type": "blobNotFound"}},
    }, "0"]]
    # Bob can now read the copy in his account (alice uploaded it there: it is hers to read).
    resp = await client.get(download_path(bob.account_id, first["blobId"]), headers=client.headers())
    assert resp.status == 200 and await resp.read() == b"one"


async def test_blob_copy_with_nothing_copied_answers_null(client, bob):
    await share(client, "alice@example.org", "bob@example.org", True)
    unknown = "B" + hashlib.sha256(b"unknown").hexdigest()
    responses = await blob_copy(client, {"fromAccountId": client.account_id, "accountId": bob.account_id,
                                         "blobIds": [unknown]})
    assert responses[0][1]["copied"] is None
    assert responses[0][1]["notCopied"] == {unknown: {"type": "blobNotFound"}}
    responses = await blob_copy(client, {"fromAccountId": client.account_id, "accountId": bob.account_id,
                                         "blobIds": []})
    assert responses[0][1]["copied"] is None and responses[0][1]["notCopied"] is None


async def test_blob_copy_from_a_shared_account_copies_only_what_the_caller_may_read(client, bob):
    await share(client, "bob@example.org", "alice@example.org", False)
    bob_auth = basic("bob@example.org")
    referenced = await client.upload(b"held by a note")
    await add_ref(client, client.account_id, "Note:N1", referenced["blobId"])
    unreferenced = await client.upload(b"alice's own upload")
    responses = await blob_copy(client, {"fromAccountId": client.account_id, "accountId": bob.account_id,
                                         "blobIds": [referenced["blobId"], unreferenced["blobId"]]}, bob_auth)
    assert responses[0][1]["copied"] == {referenced["blobId"]: referenced["blobId"]}
    assert responses[0][1]["notCopied"] == {unreferenced["blobId"]: {"type": "blobNotFound"}}
    resp = await client.get(download_path(bob.account_id, referenced["blobId"]), headers={"Authorization": bob_auth})
    assert resp.status == 200 and await resp.read() == b"held by a note"


async def test_blob_copy_errors(client, bob):
    blob = await client.upload(b"x")
    responses = await blob_copy(client, {"fromAccountId": bob.account_id, "accountId": client.account_id,
                                         "blobIds": [blob["blobId"]]})
    assert responses == [["error", {"type": "fromAccountNotFound"}, "0"]]
    responses = await blob_copy(client, {"fromAccountId": client.account_id, "accountId": bob.account_id,
                                         "blobIds": [blob["blobId"]]})
    assert responses == [["error", {"type": "accountNotFound"}, "0"]]


async def test_blob_copy_with_bad_arguments_is_invalid_arguments(client, bob):
    await share(client, "alice@example.org", "bob@example.org", False)
    for args in ({"fromAccountId": client.account_id, "accountId": client.account_id, "blobIds": []},
                 {"fromAccountId": bob.account_id, "accountId": client.account_id, "blobIds": "nope"},
                 {"fromAccountId": bob.account_id, "accountId": client.account_id, "blobIds": [1]},
                 {"fromAccountId": bob.account_id, "accountId": client.account_id},
                 {"fromAccountId": bob.account_id, "accountId": client.account_id, "blobIds": [], "x": 1}):
        responses = await blob_copy(client, args)
        assert responses[0][0] == "error" and responses[0][1]["type"] == "invalidArguments", (args, responses)
    responses = await blob_copy(client, {"accountId": client.account_id, "blobIds": []})
    assert responses[0][0] == "error" and responses[0][1]["type"] == "invalidArguments"


async def test_blob_copy_into_a_read_only_account_is_refused(client, bob):
    await share(client, "alice@example.org", "bob@example.org", False)
    blob = await client.upload(b"x")
    responses = await blob_copy(client, {"fromAccountId": client.account_id, "accountId": bob.account_id,
                                         "blobIds": [blob["blobId"]]})
    assert responses[0][0] == "error" and responses[0][1]["type"] == "accountReadOnly"


async def test_a_compressed_upload_body_is_bounded_by_its_decoded_size(aiohttp_client, tmp_path):
    """A gzip bomb cannot get past maxSizeUpload: the limit applies to the decoded bytes."""
    client = await make_client(aiohttp_client, tmp_path, limits={"max_size_upload": 1000})
    bomb = gzip.compress(b"\0" * 5_000_000)
    resp = await client.post(f"/jmap/upload/{client.account_id}/", data=bomb,
                             headers=client.headers({"Content-Encoding": "gzip"}))
    await assert_problem(resp, 400, limit="maxSizeUpload")


async def test_blob_copy_counts_against_the_upload_quota(aiohttp_client, tmp_path):
    """RFC 8620 §6.1 and §5.3: a copy is an upload into the target account, so it counts against the
    quota: older unreferenced uploads make room, and what cannot fit is notCopied with overQuota."""
    clock = Clock()
    client = await make_client(aiohttp_client, tmp_path, clock=clock,
                               limits={"max_size_upload": 100, "upload_quota": 250})
    bob = await add_user(client, "bob@example.org")
    await share(client, "alice@example.org", "bob@example.org", True)
    old = await client.upload(b"o" * 100, account_id=bob.account_id)      # alice's upload in bob's account
    clock.now += 10
    first = await client.upload(b"1" * 100)
    clock.now += 10
    responses = await blob_copy(client, {"fromAccountId": client.account_id, "accountId": bob.account_id,
                                         "blobIds": [first["blobId"]]})
    assert responses[0][1]["copied"] == {first["blobId"]: first["blobId"]}
    # 300 octets in a 250-octet quota: the oldest upload made room for the copy.
    assert (await client.get(download_path(bob.account_id, old["blobId"]), headers=client.headers())).status == 404
    for account_id in (client.account_id, bob.account_id):
        resp = await client.get(download_path(account_id, first["blobId"]), headers=client.headers())
        assert resp.status == 200
    # Three referenced 100-octet blobs copied at once: only two fit, however much is evicted.
    held = []
    for n in b"abc":
        blob = await client.upload(bytes([n]) * 100)
        await add_ref(client, client.account_id, f"Note:N{n}", blob["blobId"])
        held.append(blob["blobId"])
    responses = await blob_copy(client, {"fromAccountId": client.account_id, "accountId": bob.account_id,
                                         "blobIds": held})
    result = responses[0][1]
    assert result["copied"] == {held[0]: held[0], held[1]: held[1]}
    assert result["notCopied"] == {held[2]: {"type": "overQuota",
                                             "description": "the copy does not fit in your upload quota"}}
    resp = await client.get(download_path(bob.account_id, held[2]), headers=client.headers())
    assert resp.status == 404


async def test_an_upload_while_another_process_holds_the_database_is_503_without_a_traceback(
        aiohttp_client, tmp_path, caplog):
    """A database locked past [storage] busy_timeout is a passing condition: 503 problem+json with
    Retry-After, nothing logged as an error; the same upload succeeds once the lock is gone."""
    config = Config.for_tests(tmp_path / "data", storage={"busy_timeout": 0.1})
    client = await logged_in(aiohttp_client, config)
    other = sqlite3.connect(config.data_dir / DATABASE_FILE, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        resp = await client.post(f"/jmap/upload/{client.account_id}/", data=b"hello",
                                 headers=client.headers({"Content-Type": "text/plain"}))
        await assert_problem(resp, 503, type="about:blank")
        assert resp.headers["Retry-After"].isdigit()
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.records
    assert (await client.upload(b"hello", "text/plain"))["size"] == 5
