"""Shared fixtures: the real app on real SQLite under tmp_path, and a JMAP-speaking test client."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from jmaple.app import make_app
from jmaple.config import Config
from jmaple.keys import RUNTIME
from jmaple.users import create_user, grant
from notes import NOTES, PLUGIN as NOTES_PLUGIN

CORE = "urn:ietf:params:jmap:core"
USING = [CORE, NOTES]
PASSWORD = "correct horse battery staple"


def basic(login: str, password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()


class JmapClient(TestClient):
    """aiohttp's TestClient plus JMAP helpers; `auth` is the Authorization header it sends."""

    auth: str | None = None
    account_id: str = ""

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        out = {"Authorization": self.auth} if self.auth else {}
        out.update(extra or {})
        return out

    async def request_json(self, body: Any, *, auth: str | None = None, status: int = 200) -> dict[str, Any]:
        headers = self.headers({"Content-Type": "application/json"})
        if auth is not None:
            headers["Authorization"] = auth
        resp = await self.post("/jmap/api", data=orjson.dumps(body), headers=headers)
        assert resp.status == status, await resp.text()
        return await resp.json(content_type=None)

    async def calls(self, *calls: tuple[str, dict[str, Any]] | list[Any], using: list[str] | None = None,
                    **extra: Any) -> list[list[Any]]:
        method_calls = [list(c) if len(c) == 3 else [c[0], c[1], str(n)] for n, c in enumerate(calls)]
        body = {"using": USING if using is None else using, "methodCalls": method_calls, **extra}
        return (await self.request_json(body))["methodResponses"]

    async def call(self, method: str, args: dict[str, Any], *, using: list[str] | None = None,
                   account: bool = True) -> dict[str, Any]:
        """One call; returns its arguments, or raises AssertionError showing an unexpected error."""
        if account and "accountId" not in args and not method.startswith("Core/"):
            args = {"accountId": self.account_id, **args}
        (name, result, _), *rest = await self.calls((method, args), using=using)
        assert name == method, (name, result)
        return result

    async def error(self, method: str, args: dict[str, Any], *, using: list[str] | None = None) -> dict[str, Any]:
        """One call expected to fail; returns its error object."""
        (name, result, _), *rest = await self.calls((method, args), using=using)
        assert name == "error", (name, result)
        return result

    async def upload(self, data: bytes, content_type: str = "application/octet-stream",
                     account_id: str | None = None) -> dict[str, Any]:
        resp = await self.post(f"/jmap/upload/{account_id or self.account_id}/", data=data,
                               headers=self.headers({"Content-Type": content_type}))
        assert resp.status == 201, await resp.text()
        return await resp.json()


@pytest.fixture
def aiohttp_client_cls() -> type[TestClient]:
    return JmapClient


@pytest.fixture
def config(tmp_path) -> Config:
    return Config.for_tests(data_dir=tmp_path / "data")


@pytest.fixture
async def app_client(aiohttp_client, config) -> JmapClient:
    """The app with the test capability, no user logged in."""
    return await aiohttp_client(make_app(config, capabilities=[NOTES_PLUGIN]))


async def add_user(client: JmapClient, login: str, password: str = PASSWORD) -> Any:
    return await create_user(client.app[RUNTIME], login, login.split("@")[0].title(), password)


async def log_in_alice(client: JmapClient) -> JmapClient:
    """Add alice@example.org and log the client in as her; her personal account is client.account_id."""
    user = await add_user(client, "alice@example.org")
    client.auth = basic("alice@example.org")
    client.account_id = user.account_id
    return client


async def logged_in(aiohttp_client: Any, config: Config) -> JmapClient:
    """The app (with the test capability) on this configuration, logged in as alice."""
    return await log_in_alice(await aiohttp_client(make_app(config, capabilities=[NOTES_PLUGIN])))


@pytest.fixture
async def client(app_client) -> JmapClient:
    """Logged in as alice@example.org, whose personal account is client.account_id."""
    return await log_in_alice(app_client)


@pytest.fixture
async def bob(client) -> Any:
    """A second user, bob@example.org, on the same server (client stays logged in as alice)."""
    return await add_user(client, "bob@example.org")


async def share(client: JmapClient, login: str, owner: str, may_write: bool) -> str:
    return await grant(client.app[RUNTIME], login, owner, may_write)
