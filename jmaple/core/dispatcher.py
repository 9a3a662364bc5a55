"""The Dispatcher: method calls, result references, createdIds, errors, publish (RFC 8620 §3)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from jmaple.core.capability import CORE, Method
from jmaple.core.context import MethodContext, Principal, Runtime
from jmaple.core.errors import MethodError, RequestError, invalid_arguments
from jmaple.core.methods import is_id
from jmaple.core.pointer import PointerError, evaluate
from jmaple.core.publisher import StatePublisher
from jmaple.core.session import session_state
from jmaple.store.db import Busy

log = logging.getLogger(__name__)

Response = dict[str, Any]

# Arguments nested deeper than this are refused: orjson writes at most 254 levels, and a response
# wraps a method's arguments in a few more (Core/echo sends them straight back).
MAX_ARGUMENT_DEPTH = 128


def nesting_depth(value: Any, limit: int) -> int:
    """How deep arrays and objects nest in value, counting no further than limit + 1 (no recursion)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if depth > limit:
            break
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def parse_request(body: Any, known: Callable[[str], bool], max_calls: int) -> tuple[list[str], list[Any], Any]:
    """Check the Request object (RFC 8620 §3.3); raises RequestError before anything runs."""
    if not isinstance(body, dict):
        raise RequestError("notRequest", 400, "the request must be a JSON object")
    using = body.get("using")
    calls = body.get("methodCalls")
    created_ids = body.get("createdIds")
    if not isinstance(using, list):
        raise RequestError("notRequest", 400, "using must be an array of capability URIs")
    for urn in using:
        if not isinstance(urn, str):
            raise RequestError("notRequest", 400, "using must be an array of capability URIs")
    if not isinstance(calls, list):
        raise RequestError("notRequest", 400, "methodCalls must be an array")
    for call in calls:
        if not (type(call) is list and len(call) == 3 and type(call[0]) is str   # parsed JSON: exact types
                and type(call[1]) is dict and type(call[2]) is str):
            raise RequestError("notRequest", 400,
                               "each method call must be [name (String), arguments (Object), call id (String)]")
    if created_ids is not None and not (isinstance(created_ids, dict) and all(
            is_id(k) and is_id(v) for k, v in created_ids.items())):
        raise RequestError("notRequest", 400, "createdIds must map creation ids (Ids) to Ids")
    for urn in using:
        if not known(urn):
            raise RequestError("unknownCapability", 400, f"the server does not support {urn}")
    if len(calls) > max_calls:
        raise RequestError("limit", 400, f"at most {max_calls} method calls per request",
                           limit="maxCallsInRequest")
    return using, calls, created_ids


def resolve_references(args: dict[str, Any], responses: list[list[Any]]) -> dict[str, Any]:
    """Replace "#name" arguments by the values they point at in earlier responses (RFC 8620 §3.7)."""
    for key in args:
        if key[:1] == "#":
            break
    else:
        return args   # no reference: the usual case, without a generator per call
    out = dict(args)
    for key, ref in args.items():
        if not key.startswith("#"):
            continue
        name = key[1:]
        if name in args:
            raise invalid_arguments(f"both {name!r} and {key!r} are given")
        if not (isinstance(ref, dict) and set(ref) == {"resultOf", "name", "path"}
                and all(isinstance(v, str) for v in ref.values())):
            raise MethodError("invalidResultReference", f"{key} must be a ResultReference")
        source = next((r for r in responses if r[2] == ref["resultOf"]), None)
        if source is None:
            raise MethodError("invalidResultReference", f"no earlier response with call id {ref['resultOf']!r}")
        if source[0] != ref["name"]:
            raise MethodError("invalidResultReference",
                              f"call {ref['resultOf']!r} answered {source[0]!r}, not {ref['name']!r}")
        try:
            out[name] = evaluate(source[1], ref["path"])
        except PointerError as exc:
            raise MethodError("invalidResultReference", f"path {ref['path']!r}: {exc}") from None
        del out[key]
    return out


def referenced_calls(calls: list[Any]) -> set[str]:
    """The call ids that result references of the request point at (RFC 8620 §3.7)."""
    out = set()
    for _, args, _ in calls:
        for key, ref in args.items():
            if key[:1] == "#" and isinstance(ref, dict) and isinstance(source := ref.get("resultOf"), str):
                out.add(source)
    return out


class Dispatcher:
    """Runs the method calls of one Request for one Principal, on whichever transport carried it."""

    def __init__(self, runtime: Runtime, publisher: StatePublisher,
                 trace: Callable[[str, Any], None] | None = None):
        self.runtime = runtime
        self.registry = runtime.registry
        self.publisher = publisher
        self.trace = trace

    def knows(self, urn: str) -> bool:
        return urn in self.registry.capabilities

    async def handle(self, principal: Principal, body: Any, max_depth: int | None = None) -> Response:
        """Answer a parsed Request; raises RequestError if it cannot be processed at all.

        `max_depth` is what the transport knows of the body's nesting at most (e.g. its count of
        brackets); within MAX_ARGUMENT_DEPTH, no call's arguments need walking to check it.
        """
        check_depth = max_depth is None or max_depth > MAX_ARGUMENT_DEPTH
        using, calls, created_in = parse_request(body, self.knows, self.runtime.config.limits.max_calls_in_request)
        if self.trace is not None:
            self._trace("request", body)
        created_ids: dict[str, str] = dict(created_in or {})
        used = set(using)
        # Only a later call can refer to a result: a request of one call needs no scan.
        referenced = referenced_calls(calls) if len(calls) > 1 else set()
        responses: list[list[Any]] = []
        for name, args, call_id in calls:
            try:
                method = self.registry.methods.get(name)
                if method is None or method.capability not in used:
                    raise MethodError("unknownMethod", f"{name} is not a method of the capabilities in using")
                if check_depth and nesting_depth(args, MAX_ARGUMENT_DEPTH) > MAX_ARGUMENT_DEPTH:
                    raise invalid_arguments(f"the arguments nest deeper than {MAX_ARGUMENT_DEPTH} levels")
                args = resolve_references(args, responses)
                result, extra = await self._call(principal, method, name, args, call_id, created_ids,
                                                 call_id in referenced)
            except MethodError as exc:
                responses.append(["error", exc.to_json(), call_id])
                continue
            responses.append([name, result, call_id])
            responses.extend([extra_name, extra_args, call_id] for extra_name, extra_args in extra)
        response: Response = {"methodResponses": responses, "sessionState": session_state(self.runtime, principal)}
        if created_in is not None:
            response["createdIds"] = created_ids
        if self.trace is not None:
            self._trace("response", response)
        return response

    def _trace(self, kind: str, body: Any) -> None:
        """Hand a request or response to the tracer, which must never fail the request (e.g. on a body
        too deep to serialise)."""
        assert self.trace is not None
        try:
            self.trace(kind, body)
        except Exception:
            log.exception("tracing the %s failed", kind)

    def _check_account(self, principal: Principal, method: Method, args: dict[str, Any], arg: str,
                       prefix: str) -> str:
        account_id = args.get(arg)
        if account_id is None:
            raise invalid_arguments(f"{arg} is required")
        if not isinstance(account_id, str):
            raise invalid_arguments(f"{arg} must be an Id")
        access = principal.accounts.get(account_id)
        if access is None:
            raise MethodError(f"{prefix}AccountNotFound" if prefix else "accountNotFound")
        if method.capability != CORE and self.registry.account_capability(
                self.runtime.config, access, method.capability) is None:
            raise MethodError(f"{prefix}AccountNotSupportedByMethod" if prefix else "accountNotSupportedByMethod")
        return account_id

    async def _call(self, principal: Principal, method: Method, name: str, args: dict[str, Any], call_id: str,
                    created_ids: dict[str, str],
                    referenced: bool = True) -> tuple[Response, list[tuple[str, dict[str, Any]]]]:
        account_id = ""
        if method.account is not None:
            account_id = self._check_account(principal, method, args, method.account, "")
        if method.from_account is not None:
            self._check_account(principal, method, args, method.from_account, "from")
        if method.writes and method.account is not None and not method.checks_write_access \
                and not principal.may_write(account_id):
            raise MethodError("accountReadOnly", "this account is shared with you read-only")
        db = self.runtime.db
        # The call works on a copy of the creation ids: a call that fails leaves no ids of objects
        # that were rolled back (RFC 8620 §3.6.2: a failed method changes nothing).
        created = dict(created_ids)
        changed: dict[str, dict[str, int]] = {}
        try:
            if method.writes:
                async with db.write() as tx:
                    ctx = MethodContext(self.runtime, principal, account_id, tx, created, call_id, name,
                                        referenced=referenced)
                    result = await method.handler(ctx, args)
                    changed = tx.changed
            elif not method.uses_db:
                ctx = MethodContext(self.runtime, principal, account_id, None, created, call_id, name,
                                    referenced=referenced)
                result = await method.handler(ctx, args)
            else:
                async with db.read() as conn:
                    ctx = MethodContext(self.runtime, principal, account_id, conn, created, call_id, name,
                                        referenced=referenced)
                    result = await method.handler(ctx, args)
        except MethodError:
            raise
        except Busy:
            log.warning("%s (call %s): database busy", name, call_id)
            raise MethodError("serverUnavailable", "the database is busy; try again shortly") from None
        except Exception:
            log.exception("%s (call %s) failed", name, call_id)
            raise MethodError("serverFail", "an internal error occurred; it has been logged") from None
        created_ids.update(created)
        if changed:
            try:
                await self.publisher.publish(changed)
            except Exception:
                # Committed already: the call succeeded, and a push failure must not turn it into an error.
                log.exception("%s (call %s): publishing %s failed", name, call_id, changed)
        return result, ctx.extra_responses
