"""PushSubscription/get and /set (RFC 8620 §7.2), the VAPID capability (RFC 9749) and `jmapled push`."""

from __future__ import annotations

import argparse
import functools
import hmac
import re
import sys
import time
import urllib.parse
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from jmaple.config import Config
from jmaple.config import PushConfig
from jmaple.core.capability import CORE, Capability, Command, Method, Plugin
from jmaple.core.context import MethodContext, Runtime
from jmaple.core.errors import MethodError, SetFailure, invalid_arguments, invalid_properties
from jmaple.core.methods import Args, check_count, is_date, is_id, unique_ids
from jmaple.core.pointer import PointerError, apply_patch
from jmaple.push import webpush
from jmaple.push.webhook import (VAPID_FILE, check_target_url, engine_of, erase_destroyed,
                                 new_verification_code, settings_of)
from jmaple.store import push as store
from jmaple.store.accounts import NotFound
from jmaple.store.db import Transaction

VAPID_URN = "urn:ietf:params:jmap:webpush-vapid"
PROPERTIES = ("id", "deviceClientId", "url", "keys", "verificationCode", "expires", "types")
PRIVATE = ("url", "keys")   # RFC 8620 §7.2.1: never returned; asking for them is forbidden
DEFAULT_PROPERTIES = tuple(p for p in PROPERTIES if p not in PRIVATE)
MAX_DEVICE_CLIENT_ID = 255
MAX_TYPES = 256
TYPE_NAME = re.compile(r"[!-~]{1,255}")   # printable ASCII without spaces; fullmatch (no "$" newline)


def _utc_date(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _no_account(args: dict[str, Any]) -> None:
    if "accountId" in args:
        raise invalid_arguments("PushSubscription methods take no accountId: subscriptions belong to the "
                                "credential, not to an account (RFC 8620 §7.2.1)")


def _visible(sub: store.Subscription) -> dict[str, Any]:
    """The object as /get shows it: no url or keys, and the code only once the client proved it has it."""
    return {
        "id": sub.id,
        "deviceClientId": sub.device_client_id,
        # Shown before verification, the code would let anyone who can call /get verify a URL they
        # cannot read, which is what verification exists to prevent.
        "verificationCode": sub.verification_code if sub.is_verified else None,
        "expires": _utc_date(sub.expires),
        "types": None if sub.types is None else list(sub.types),
    }


async def push_subscription_get(ctx: MethodContext, args: dict[str, Any]) -> dict[str, Any]:
    """PushSubscription/get (RFC 8620 §7.2.1): the subscriptions this credential created, without url or keys."""
    _no_account(args)
    a = Args(args, ("ids", "properties"))
    ids = a.ids("ids", creation_refs=True)
    properties = a.strings("properties")
    if properties is not None:
        private = [p for p in properties if p in PRIVATE]
        if private:
            raise MethodError("forbidden", f"{private[0]} is never returned (RFC 8620 §7.2.1)")
        unknown = [p for p in properties if p not in PROPERTIES]
        if unknown:
            raise invalid_arguments(f"unknown property {unknown[0]!r}")
        selected = list(dict.fromkeys(["id", *properties]))
    else:
        selected = list(DEFAULT_PROPERTIES)
    if ids is not None:
        check_count(ctx, len(ids), ctx.config.limits.max_objects_in_get, "ids")
        ids = unique_ids(ctx, ids)
    principal = ctx.principal
    found = await store.for_credential(ctx.conn, principal.user_id, principal.credential_id, ctx.config.clock(),
                                       [i for i in ids if is_id(i)] if ids is not None else None)
    by_id = {s.id: _visible(s) for s in found}
    order = ids if ids is not None else list(by_id)
    return {
        "list": [{p: by_id[i][p] for p in selected} for i in order if i in by_id],
        "notFound": [i for i in ids if i not in by_id] if ids is not None else [],
    }


def _expires(value: Any, now: float, settings: PushConfig) -> int:
    """The expiry to use: the client's (a UTCDate in the future) or the server's maximum, whichever is sooner."""
    limit = int(now) + settings.max_expiry_days * 86400
    if value is None:
        return limit
    if not is_date(value, True):
        raise invalid_properties("expires must be a UTCDate such as 2030-01-02T03:04:05Z", "expires")
    when = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    if when <= now:
        raise invalid_properties("expires must be in the future", "expires")
    return min(int(when), limit)


def _types(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_TYPES or not all(
            isinstance(t, str) and TYPE_NAME.fullmatch(t) for t in value):
        raise invalid_properties(f"types must be null or a list of at most {MAX_TYPES} type names", "types")
    return tuple(value)


def _device_client_id(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_DEVICE_CLIENT_ID or not value.isprintable():
        raise invalid_properties(f"deviceClientId must be a string of 1 to {MAX_DEVICE_CLIENT_ID} printable "
                                 f"characters", "deviceClientId")
    return value


def _url(value: Any, settings: PushConfig) -> str:
    check_target_url(value, allow_private=settings.allow_private_targets)   # ValueError says why
    return value


def _keys(value: Any) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    if not isinstance(value, dict) or set(value) != {"p256dh", "auth"}:
        raise invalid_properties("keys must be null or an object with exactly p256dh and auth", "keys")
    try:
        webpush.validate_keys(value["p256dh"], value["auth"])
    except ValueError as exc:
        raise invalid_properties(f"keys: {exc}", "keys") from None
    return value["p256dh"], value["auth"]


def _check_create(ctx: MethodContext, given: Any, settings: PushConfig, now: float) -> store.Subscription:
    """A new subscription from a create, every property checked; raises SetFailure."""
    if not isinstance(given, dict):
        raise invalid_properties("the object to create must be a JSON object")
    bad: list[str] = []
    reasons: list[str] = []
    unknown = [k for k in given if k not in PROPERTIES]
    if unknown:
        raise invalid_properties(f"unknown properties: {', '.join(unknown)}", *unknown)
    if "id" in given:
        raise invalid_properties("id is set by the server", "id")
    if "deviceClientId" not in given:
        bad.append("deviceClientId")
        reasons.append("deviceClientId is required")
    if "url" not in given:
        bad.append("url")
        reasons.append("url is required")
    values: dict[str, Any] = {}
    checks = {
        "deviceClientId": _device_client_id,
        "url": lambda v: _url(v, settings),
        "keys": _keys,
        "expires": lambda v: _expires(v, now, settings),
        "types": _types,
    }
    for name, check in checks.items():
        if name not in given:
            continue
        try:
            values[name] = check(given[name])
        except SetFailure as exc:
            bad.append(name)
            reasons.append(exc.error.description or name)
        except ValueError as exc:
            bad.append(name)
            reasons.append(str(exc))
    if given.get("verificationCode") is not None:
        bad.append("verificationCode")
        reasons.append("verificationCode must be null on create (RFC 8620 §7.2)")
    if bad:
        raise invalid_properties("; ".join(reasons), *bad)
    p256dh, auth = values.get("keys", (None, None))
    principal = ctx.principal
    return store.Subscription(
        id=ctx.new_id("P"), user_id=principal.user_id, credential_id=principal.credential_id,
        device_client_id=values["deviceClientId"], url=values["url"], p256dh=p256dh, auth=auth,
        verification_code=new_verification_code(), is_verified=False, verification_sent=False,
        expires=values.get("expires", _expires(None, now, settings)), types=values.get("types"),
        created_at=int(now))


def _check_update(sub: store.Subscription, patch: Any, settings: PushConfig,
                  now: float) -> tuple[int, tuple[str, ...] | None, bool, dict[str, Any] | None]:
    """(expires, types, is_verified, what to report in updated) after a patch; raises SetFailure."""
    if not isinstance(patch, dict):
        raise SetFailure("invalidPatch", "a PatchObject must be a JSON object")
    touched = {k.split("/", 1)[0] for k in patch}
    private = [p for p in PRIVATE if p in touched]
    if private:
        raise invalid_properties(f"{', '.join(private)} cannot be changed: destroy the subscription and create "
                                 f"a new one (RFC 8620 §7.2.2)", *private)
    old = _visible(sub)
    try:
        new = apply_patch(old, patch, {"types": None, "expires": None, "verificationCode": None})
    except PointerError as exc:
        raise SetFailure("invalidPatch", str(exc)) from None
    unknown = [k for k in new if k not in PROPERTIES]
    if unknown:
        raise invalid_properties(f"unknown properties: {', '.join(unknown)}", *unknown)
    immutable = [k for k in ("id", "deviceClientId") if new.get(k) != old[k]]
    if immutable:
        raise invalid_properties(f"{', '.join(immutable)} cannot be changed", *immutable)
    is_verified = sub.is_verified
    code = new.get("verificationCode")
    if code != old["verificationCode"]:
        # RFC 8620 §7.2.2: a wrong code is invalidProperties. Compared in constant time.
        if not isinstance(code, str) or not hmac.compare_digest(code.encode("utf-8", "surrogatepass"),
                                                                 sub.verification_code.encode()):
            raise invalid_properties("verificationCode is not the code that was pushed", "verificationCode")
        is_verified = True
    expires = sub.expires
    report: dict[str, Any] | None = None
    if "expires" in touched:
        expires = _expires(new.get("expires"), now, settings)
        report = {"expires": _utc_date(expires)}
    types = sub.types
    if "types" in touched:
        types = _types(new.get("types"))
    return expires, types, is_verified, report


async def push_subscription_set(ctx: MethodContext, args: dict[str, Any]) -> dict[str, Any]:
    """PushSubscription/set (RFC 8620 §7.2.2): create (then verify), update and destroy subscriptions."""
    _no_account(args)
    a = Args(args, ("create", "update", "destroy"))
    create = a.object("create") or {}
    update = a.object("update") or {}
    destroy = a.ids("destroy", creation_refs=True) or []
    check_count(ctx, len(create) + len(update) + len(destroy), ctx.config.limits.max_objects_in_set,
                "objects to create, update and destroy")
    tx = ctx.conn
    assert isinstance(tx, Transaction)
    settings = settings_of(ctx.runtime)
    principal = ctx.principal
    now = ctx.config.clock()
    created: dict[str, Any] = {}
    not_created: dict[str, Any] = {}
    updated: dict[str, Any] = {}
    not_updated: dict[str, Any] = {}
    destroyed: list[str] = []
    not_destroyed: dict[str, Any] = {}
    new_ids: list[str] = []

    if create:
        count = await store.count_for_user(tx, principal.user_id, now)
        recent = await store.creations_since(tx, principal.user_id, now - store.CREATION_WINDOW)
    for cid, given in create.items():
        try:
            if not is_id(cid):
                raise invalid_properties(f"creation id {cid!r} is not a valid Id")
            sub = _check_create(ctx, given, settings, now)
            if count >= settings.max_per_user:
                raise SetFailure("overQuota", f"at most {settings.max_per_user} push subscriptions per user")
            if recent >= settings.creations_per_hour:
                raise SetFailure("rateLimit", f"at most {settings.creations_per_hour} push subscriptions may be "
                                              f"created per hour; try again later")
            await store.insert(tx, sub)
        except SetFailure as exc:
            not_created[cid] = exc.error.to_json()
            continue
        count += 1
        recent += 1
        new_ids.append(sub.id)
        ctx.created_ids[cid] = sub.id
        reply: dict[str, Any] = {"id": sub.id, "verificationCode": None, "expires": _utc_date(sub.expires)}
        for name in ("keys", "types"):
            if name not in given:
                reply[name] = None
        created[cid] = reply

    destroy_ids = unique_ids(ctx, destroy)
    if update:
        update_ids = {key: ctx.resolve_id(key) for key in update}
        wanted = [i for i in update_ids.values() if i and is_id(i)]
        current = {s.id: s for s in await store.for_credential(tx, principal.user_id, principal.credential_id,
                                                                now, wanted)}
        for key, patch in update.items():
            object_id = update_ids[key]
            try:
                if object_id is None or object_id not in current:
                    raise SetFailure("notFound")
                if object_id in destroy_ids:
                    raise SetFailure("willDestroy")
                expires, types, is_verified, report = _check_update(current[object_id], patch, settings, now)
                await store.update(tx, object_id, expires=expires, types=types, is_verified=is_verified)
            except SetFailure as exc:
                not_updated[key if object_id is None else object_id] = exc.error.to_json()
                continue
            updated[object_id] = report

    if destroy_ids:
        valid = [i for i in destroy_ids if is_id(i)]
        mine = {s.id for s in await store.for_credential(tx, principal.user_id, principal.credential_id, now,
                                                         valid)}
        for object_id in destroy_ids:
            if object_id in mine:
                destroyed.append(object_id)
            else:
                not_destroyed[object_id] = {"type": "notFound"}
        await store.delete(tx, destroyed)

    engine = engine_of(ctx.runtime)
    if destroyed and engine is not None:
        # RFC 8620 §7.2: the URL and keys leave storage as soon as possible; the WAL still holds copies.
        tx.after_commit(engine.erase_soon)
    if new_ids and engine is not None:
        # RFC 8620 §7.2.2: push the PushVerification at once, but only once the subscription is committed
        # (the client may answer before this response reaches it).
        def verify() -> None:
            for sub_id in new_ids:
                engine.kick(sub_id)

        tx.after_commit(verify)
    return {
        "created": created or None,
        "updated": updated or None,
        "destroyed": destroyed or None,
        "notCreated": not_created or None,
        "notUpdated": not_updated or None,
        "notDestroyed": not_destroyed or None,
    }


# --- the session ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _application_server_key(path: Path) -> str:
    return webpush.VapidKey.load_or_create(path).application_server_key


def vapid_session_info(config: Config) -> dict[str, Any]:
    """RFC 9749 §3: the VAPID public key push services will see our messages signed with."""
    return {"applicationServerKey": _application_server_key(config.data_dir / VAPID_FILE)}


# --- jmapled push ---------------------------------------------------------------------------------------


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True, dest="push_command")
    commands.add_parser("list", help="list every push subscription and its delivery state",
                        description="List every push subscription and its delivery state.")
    sub = commands.add_parser("show", help="show one push subscription in full (never its URL or keys)",
                              description="Show one push subscription in full (never its URL or keys).")
    sub.add_argument("id", metavar="ID", help="as shown by push list")
    sub = commands.add_parser("delete", help="destroy a push subscription; nothing more is sent to it",
                              description="Destroy a push subscription; nothing more is sent to it.")
    sub.add_argument("id", metavar="ID", help="as shown by push list")


def _when(timestamp: float | None) -> str:
    return "-" if timestamp is None else _utc_date(timestamp)


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def _target(url: str) -> str:
    """The URL's host and port: enough to recognise a push service, without the secret path."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or "?"
        return f"[{host}]:{parts.port}" if ":" in host and parts.port else \
            f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "?"


def _status(sub: store.Subscription, now: float) -> str:
    if sub.expires <= now:
        return "expired"
    if sub.is_verified:
        return "verified"
    return "awaiting verification" if sub.verification_sent else "verification not yet sent"


async def _run(args: argparse.Namespace, runtime: Runtime) -> int:
    now = runtime.config.clock()
    if args.push_command != "list" and not is_id(args.id):   # a non-UTF-8 argument could not even be looked up
        raise NotFound(f"no push subscription {args.id!r} (see `jmapled push list`)")
    if args.push_command == "delete":
        async with runtime.db.write() as tx:
            if not await store.delete(tx, [args.id]):
                raise NotFound(f"no push subscription {args.id!r} (see `jmapled push list`)")
        await erase_destroyed(runtime)
        print(f"deleted push subscription {args.id}")
        return 0
    async with runtime.db.read() as conn:
        found = await store.listing(conn, args.id if args.push_command == "show" else None)
    if args.push_command == "show":
        if not found:
            raise NotFound(f"no push subscription {args.id!r} (see `jmapled push list`)")
        item = found[0]
        sub = item.sub
        for label, value in (
                ("id", sub.id), ("user", _printable(item.login)),
                ("credential", sub.credential_id or "password"),
                ("device client id", _printable(sub.device_client_id)), ("target", _target(sub.url)),
                ("encrypted", "yes (RFC 8291)" if sub.has_keys else "no"), ("state", _status(sub, now)),
                ("types", "all" if sub.types is None else ", ".join(sub.types)),
                ("created", _when(sub.created_at)), ("expires", _when(sub.expires)),
                ("last attempt", _when(sub.last_attempt_at)), ("last status", sub.last_status or "-"),
                ("failures", str(sub.failures)), ("failing since", _when(sub.failing_since)),
                ("next retry", _when(sub.next_attempt_at)), ("pending changes", str(item.pending))):
            print(f"{label + ':':<17} {value}")
        return 0
    if not found:
        print("no push subscriptions", file=sys.stderr)
        return 0
    header = ("ID", "USER", "DEVICE", "TARGET", "STATE", "EXPIRES", "LAST ATTEMPT", "LAST STATUS", "FAILURES",
              "NEXT RETRY", "PENDING")
    rows = [(i.sub.id, _printable(i.login), _printable(i.sub.device_client_id)[:32], _target(i.sub.url),
             _status(i.sub, now), _when(i.sub.expires), _when(i.sub.last_attempt_at),
             _printable(i.sub.last_status or "-")[:40], str(i.sub.failures), _when(i.sub.next_attempt_at),
             str(i.pending)) for i in found]
    _table(header, rows)
    return 0


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


PUSH_COMMAND = Command(
    name="push",
    help="list, show and delete webhook push subscriptions (PushSubscription)",
    add_arguments=_add_arguments,
    run=_run,
)

PLUGIN = Plugin(
    name="push",
    capabilities=(
        Capability(
            VAPID_URN,
            session_info=vapid_session_info,
            # Not an account capability: PushSubscription belongs to the credential (RFC 8620 §7.2).
            account_info=lambda config, access: None,
            # RFC 8620 §7.2 makes these core methods: a client names only the core in `using`.
            methods={
                "PushSubscription/get": Method(push_subscription_get, account=None, capability=CORE),
                "PushSubscription/set": Method(push_subscription_set, writes=True, account=None, capability=CORE),
            },
        ),
    ),
    commands=(PUSH_COMMAND,),
)
