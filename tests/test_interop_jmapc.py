"""Interoperability with the third-party jmapc client: session discovery, Core/echo, a plugin's type, auth."""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, TypeVar

import jmapc
import pytest
import requests
import trustme
from aiohttp.test_utils import TestServer
from dataclasses_json import config as json_field
from jmapc.methods.base import Get, GetResponse, Query, QueryResponse, Set, SetResponse
from jmapc.serializer import Model, datetime_decode, datetime_encode

from jmaple.app import make_app
from jmaple.keys import RUNTIME
from jmaple.users import create_user
from notes import NOTES, PLUGIN as NOTES_PLUGIN

LOGIN = "alice@example.org"
PASSWORD = "correct horse battery staple"
T = TypeVar("T")


# The test capability described for jmapc the way jmapc describes its own extensions (jmapc.fastmail):
# a model, then Method/Response subclasses carrying the namespace and the URN to put in `using`.
@dataclass
class Note(Model):
    id: str | None = None
    title: str | None = None
    body: str | None = None
    pinned: bool | None = None
    rank: int | None = None
    parent_id: str | None = None
    tags: dict[str, bool] | None = None
    created_at: datetime | None = field(
        default=None, metadata=json_field(encoder=datetime_encode, decoder=datetime_decode))
    size: int | None = None


class NoteBase:
    method_namespace: ClassVar[str | None] = "Note"
    using: ClassVar[set[str]] = {NOTES}


@dataclass
class NoteGet(NoteBase, Get):
    pass


@dataclass
class NoteGetResponse(NoteBase, GetResponse):
    data: list[Note] = field(metadata=json_field(field_name="list"))


@dataclass
class NoteSet(NoteBase, Set):
    create: dict[str, Note] | None = None


@dataclass
class NoteSetResponse(NoteBase, SetResponse):
    created: dict[str, Note | None] | None


@dataclass
class NoteQuery(NoteBase, Query):
    filter: dict[str, Any] | None = None


@dataclass
class NoteQueryResponse(NoteBase, QueryResponse):
    pass


class NotesClient(jmapc.Client):
    """jmapc takes the account for every call from primaryAccounts core, mail or submission only (and drops
    the other entries when parsing the Session); a client of the Note capability asks for that URN instead."""

    def __init__(self, host: str, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self.discovery_url = f"https://{host}/.well-known/jmap"

    @functools.cached_property
    def account_id(self) -> str:
        response = self.requests_session.get(self.discovery_url, timeout=5)
        response.raise_for_status()
        return response.json()["primaryAccounts"][NOTES]


@dataclass
class Peer:
    """The app served over TLS, and what a jmapc client needs to reach it."""

    server: TestServer
    ca_pem: str
    account_id: str
    clients: list[jmapc.Client] = field(default_factory=list)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def client(self, auth: Any = (LOGIN, PASSWORD), cls: type[jmapc.Client] = NotesClient) -> jmapc.Client:
        client = cls(self.host, auth=auth)
        # Ignore the environment (REQUESTS_CA_BUNDLE, proxies): trust only the throwaway CA.
        client.requests_session.trust_env = False
        client.requests_session.verify = self.ca_pem
        self.clients.append(client)
        return client


async def blocking(fn: Callable[..., T], *args: Any) -> T:
    """jmapc is blocking: run it in a thread so the event loop keeps serving, never for long."""
    async with asyncio.timeout(5):
        return await asyncio.to_thread(fn, *args)


@pytest.fixture
async def peer(aiohttp_server, config, tmp_path) -> AsyncIterator[Peer]:
    ca = trustme.CA()
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ssl)
    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    server = await aiohttp_server(make_app(config, capabilities=[NOTES_PLUGIN]), ssl=server_ssl)
    user = await create_user(server.app[RUNTIME], LOGIN, "Alice", PASSWORD)
    peer = Peer(server, str(ca_pem), user.account_id)
    yield peer
    for client in peer.clients:
        client.requests_session.close()  # its keep-alive connections, before the server goes


async def test_jmapc_discovers_the_session_through_the_well_known_redirect(peer):
    """RFC 8620 §2.2: /.well-known/jmap redirects to the Session, whose URLs are absolute on the same origin."""
    client = peer.client()
    seen: list[tuple[int, str]] = []
    client.requests_session.hooks["response"].append(lambda r, *a, **kw: seen.append((r.status_code, r.url)))

    session = await blocking(lambda: client.jmap_session)
    origin = f"https://{peer.host}"
    assert seen == [(307, f"{origin}/.well-known/jmap"), (200, f"{origin}/jmap/session")]
    assert session.username == LOGIN
    assert session.api_url == f"{origin}/jmap/api"
    assert session.upload_url == f"{origin}/jmap/upload/{{accountId}}/"
    assert session.download_url.startswith(f"{origin}/jmap/download/{{accountId}}/{{blobId}}/{{name}}")
    assert session.event_source_url.startswith(f"{origin}/jmap/eventsource?")
    assert {"urn:ietf:params:jmap:core", NOTES} <= session.capabilities.urns
    assert session.capabilities.core.max_calls_in_request > 0
    assert await blocking(lambda: client.account_id) == peer.account_id


async def test_jmapc_core_echo_returns_what_was_sent(peer):
    client = peer.client()
    sent = {"hello": True, "list": [1, "two", None], "nested": {"é": 1.5}}
    response = await blocking(client.request, jmapc.methods.CoreEcho(data=sent))
    assert response == jmapc.methods.CoreEchoResponse(data=sent)


async def test_jmapc_creates_a_note_and_reads_it_back_through_a_result_reference(peer):
    """A plugin's type works for a client that only knows the RFC 8620 standard methods."""
    client = peer.client()
    created = await blocking(client.request, NoteSet(create={"n1": Note(
        title="Groceries", body="eggs", rank=3, tags={"home": True})}), True, True)
    assert isinstance(created, NoteSetResponse), created
    assert created.account_id == peer.account_id
    assert created.not_created is None
    new = created.created["n1"]
    assert new.id and new.size == 4 and new.created_at is not None

    # One request: create another note, query by tag, and get the query's ids through a back-reference.
    responses = await blocking(client.request, [
        NoteSet(create={"n2": Note(title="Shopping list", tags={"home": True}, pinned=True)}),
        NoteQuery(filter={"hasTag": "home"}),
        NoteGet(ids=jmapc.Ref("/ids"), properties=["title", "body", "pinned", "rank", "tags", "size"]),
    ], True)
    set_response, query_response, get_response = (r.response for r in responses)
    assert [r.id for r in responses] == ["0.Note/set", "1.Note/query", "2.Note/get"]
    assert isinstance(set_response, NoteSetResponse)
    second = set_response.created["n2"].id
    assert isinstance(query_response, NoteQueryResponse)
    assert sorted(query_response.ids) == sorted([new.id, second])
    assert isinstance(get_response, NoteGetResponse)
    assert get_response.not_found == []
    assert sorted(get_response.data, key=lambda n: n.id) == sorted([
        Note(id=new.id, title="Groceries", body="eggs", pinned=False, rank=3, tags={"home": True}, size=4),
        Note(id=second, title="Shopping list", body="", pinned=True, rank=0, tags={"home": True}, size=0),
    ], key=lambda n: n.id)

    got = await blocking(client.request, NoteGet(ids=[new.id, "missing"]), True, True)
    assert got.not_found == ["missing"]
    assert got.data == [Note(id=new.id, title="Groceries", body="eggs", pinned=False, rank=3, parent_id=None,
                             tags={"home": True}, created_at=new.created_at, size=4)]


@pytest.mark.parametrize("auth", [
    pytest.param((LOGIN, "wrong password"), id="wrong-password"),
    pytest.param(("nobody@example.org", PASSWORD), id="unknown-user"),
    pytest.param(jmapc.auth.BearerAuth("not-a-token"), id="bad-bearer-token"),
    pytest.param(None, id="no-credentials"),
])
async def test_jmapc_sees_authentication_failure_as_http_401(peer, auth):
    """The Session needs credentials (RFC 8620 §2); jmapc's raise_for_status surfaces the 401 as HTTPError."""
    client = peer.client(auth)
    try:
        await blocking(lambda: client.jmap_session)
    except requests.HTTPError as exc:
        # Keep the response, not the exception: its traceback would hold the client's socket open until gc.
        response = exc.response
    else:
        pytest.fail("jmapc got a Session without valid credentials")
    assert response.status_code == 401
    assert response.url == f"https://{peer.host}/jmap/session"
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.headers["WWW-Authenticate"].startswith("Basic")
