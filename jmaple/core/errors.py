"""Request-level (RFC 7807 problem+json) and method-level errors (RFC 8620 §3.6), and SetError (§5.3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROBLEM_PREFIX = "urn:ietf:params:jmap:error:"


class RequestError(Exception):
    """The whole HTTP request is refused; answered as application/problem+json."""

    def __init__(self, type: str, status: int, detail: str, **extra: object):
        super().__init__(detail)
        self.type = type if ":" in type or type == "about:blank" else PROBLEM_PREFIX + type
        self.status = status
        self.detail = detail
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "status": self.status, "detail": self.detail, **self.extra}


class MethodError(Exception):
    """One method call fails: ["error", {"type": ...}, callId]; the next calls still run."""

    def __init__(self, type: str, description: str | None = None, **extra: object):
        super().__init__(description or type)
        self.type = type
        self.description = description
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type}
        if self.description:
            body["description"] = self.description
        body.update(self.extra)
        return body


def invalid_arguments(description: str) -> MethodError:
    return MethodError("invalidArguments", description)


@dataclass(frozen=True)
class SetError:
    """One object in notCreated / notUpdated / notDestroyed; returned, never raised."""

    type: str
    description: str | None = None
    properties: tuple[str, ...] = ()
    extra: tuple[tuple[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type}
        if self.description:
            body["description"] = self.description
        if self.properties:
            body["properties"] = list(self.properties)
        body.update(self.extra)
        return body


class SetFailure(Exception):
    """Raised inside a type's hooks to reject one object; the generic /set turns it into its SetError."""

    def __init__(self, type: str, description: str | None = None, properties: tuple[str, ...] = (), **extra: Any):
        super().__init__(description or type)
        self.error = SetError(type, description, tuple(properties), tuple(extra.items()))


def invalid_properties(description: str, *properties: str) -> SetFailure:
    return SetFailure("invalidProperties", description, properties)
