"""The Session resource (RFC 8620 §2)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from jmaple.core.capability import CORE
from jmaple.core.context import Principal, Runtime


@dataclass(frozen=True)
class SessionUrl:
    """A URL in a capability's session object, made absolute under the server's base URL."""

    path: str
    websocket: bool = False

    def absolute(self, base_url: str) -> str:
        if self.websocket:
            base_url = "ws" + base_url[4:] if base_url.startswith("http") else base_url
        return base_url + self.path


def _capabilities(runtime: Runtime, base_url: str) -> dict[str, Any]:
    out = {}
    for urn, cap in runtime.registry.capabilities.items():
        info = cap.session_info(runtime.config) if cap.session_info else {}
        out[urn] = {k: v.absolute(base_url) if isinstance(v, SessionUrl) else v for k, v in info.items()}
    return out


def session_object(runtime: Runtime, principal: Principal, base_url: str) -> dict[str, Any]:
    """The Session for a principal, with every URL absolute under base_url (no trailing slash)."""
    registry = runtime.registry
    config = runtime.config
    capabilities = _capabilities(runtime, base_url)
    accounts = {}
    primary: dict[str, str] = {}
    for access in principal.accounts.values():
        account_caps = registry.account_capabilities(config, access)
        accounts[access.account_id] = {
            "name": access.name,
            "isPersonal": access.is_personal,
            "isReadOnly": not access.may_write,
            "accountCapabilities": account_caps,
        }
        if access.is_personal:
            # RFC 8620 §2: primaryAccounts never names the core capability.
            primary.update({urn: access.account_id for urn in account_caps if urn != CORE})
    session = {
        "capabilities": capabilities,
        "accounts": accounts,
        "primaryAccounts": primary,
        "username": principal.login,
        "apiUrl": f"{base_url}/jmap/api",
        "downloadUrl": f"{base_url}/jmap/download/{{accountId}}/{{blobId}}/{{name}}?accept={{type}}",
        "uploadUrl": f"{base_url}/jmap/upload/{{accountId}}/",
        "eventSourceUrl": f"{base_url}/jmap/eventsource?types={{types}}&closeafter={{closeafter}}&ping={{ping}}",
    }
    session["state"] = session_state(runtime, principal)
    return session


def session_state(runtime: Runtime, principal: Principal) -> str:
    """Changes when the principal's accounts or rights change, or the server's capabilities do."""
    cached = principal.__dict__.get("_session_state")
    if cached is not None:
        return cached
    digest = runtime.extra.get("session_digest")
    if digest is None:
        described = _capabilities(runtime, "")
        digest = runtime.extra["session_digest"] = hashlib.sha256(
            orjson.dumps(described, option=orjson.OPT_SORT_KEYS)).hexdigest()
    state = hashlib.sha256(f"{digest}:{principal.access_digest}".encode()).hexdigest()[:16]
    object.__setattr__(principal, "_session_state", state)   # principals are immutable and short-lived
    return state
