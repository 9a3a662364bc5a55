"""Who is calling (Principal), the long-lived parts (Runtime) and one call's context (MethodContext)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from jmaple.core.errors import MethodError

if TYPE_CHECKING:
    from jmaple.config import Config
    from jmaple.core.capability import Registry
    from jmaple.push.broker import PushBroker
    from jmaple.store.accounts import Access
    from jmaple.store.blobs import BlobStore
    from jmaple.store.db import Conn, Database


@dataclass(frozen=True)
class Principal:
    """An authenticated user, the credential used, and the accounts they may use right now."""

    user_id: str
    login: str
    name: str
    credential_id: str | None      # an app password or token; None for the user's own password
    accounts: Mapping[str, Access]
    version: int

    @property
    def personal_account_id(self) -> str:
        return next(a.account_id for a in self.accounts.values() if a.is_personal)

    def may_read(self, account_id: str) -> bool:
        return account_id in self.accounts

    def may_write(self, account_id: str) -> bool:
        access = self.accounts.get(account_id)
        return access is not None and access.may_write

    @property
    def access_digest(self) -> str:
        """Changes whenever the set of accounts or their rights change (part of the session state)."""
        cached = self.__dict__.get("_digest")
        if cached is None:
            blob = orjson.dumps(sorted((a.account_id, a.name, a.is_personal, a.may_write)
                                       for a in self.accounts.values()))
            cached = hashlib.sha256(blob + self.login.encode()).hexdigest()[:16]
            object.__setattr__(self, "_digest", cached)
        return cached


@dataclass
class Runtime:
    """The long-lived parts lifespan() opens; what the Dispatcher, services and commands work with."""

    config: Config
    registry: Registry
    db: Database
    broker: PushBroker
    blobs: BlobStore
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class MethodContext:
    """One method call: who, which account, the connection or transaction, and the request's created ids."""

    runtime: Runtime
    principal: Principal
    account_id: str
    conn: Conn                    # None for a method declared uses_db=False
    created_ids: dict[str, str]
    call_id: str
    method: str
    # Responses to append after this one, e.g. the implicit Foo/set of Foo/copy (RFC 8620 §5.4).
    extra_responses: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # Whether a later call of the request refers to this call's result (RFC 8620 §3.7): if not, the
    # result may hold pre-encoded JSON (orjson.Fragment), which only serialising reads.
    referenced: bool = True

    @property
    def config(self) -> Config:
        return self.runtime.config

    def new_id(self, prefix: str = "") -> str:
        return prefix + self.runtime.config.new_id()

    def resolve_id(self, value: str) -> str | None:
        """An id, or the real id behind "#creationId" (RFC 8620 §5.3); None for an unknown creation id."""
        if value.startswith("#"):
            return self.created_ids.get(value[1:])
        return value

    def require_write(self, account_id: str) -> None:
        if not self.principal.may_write(account_id):
            raise MethodError("accountReadOnly")
