"""The standard methods /get /changes /set /copy /query /queryChanges (RFC 8620 §5), derived from a DataType."""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Container, Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson

from jmaple.core.capability import REQUIRED, DataType, Method, Property
from jmaple.core.context import MethodContext
from jmaple.core.errors import MethodError, SetFailure, invalid_arguments, invalid_properties
from jmaple.core.pointer import PointerError, apply_patch
from jmaple.store import changes
from jmaple.store.db import Transaction

MAX_INT = 2**53 - 1
ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
UTC_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
COLLATIONS = ("i;ascii-numeric", "i;ascii-casemap", "i;unicode-casemap", "i;octet")
# /query costs grow with the filter and sort given, all evaluated on the event loop: cap them (RFC 8620 §5.5
# lets a server refuse a filter or sort it will not process, with unsupportedFilter / unsupportedSort).
MAX_FILTER_DEPTH = 16
MAX_FILTER_CONDITIONS = 256     # FilterOperators and FilterConditions, counted over the whole tree
MAX_SORT_COMPARATORS = 16


def is_id(value: Any) -> bool:
    # fullmatch: "$" would also match before a trailing newline.
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


# Lists of Ids are checked in one regex over the joined list: the separator cannot occur in an Id, and
# counting it catches an element that smuggles one in. A "#" may prefix creation ids where allowed.
_IDS_RE = re.compile(r"[A-Za-z0-9_-]{1,255}(?:,[A-Za-z0-9_-]{1,255})*")
_IDS_OR_REFS_RE = re.compile(r"#?[A-Za-z0-9_-]{1,255}(?:,#?[A-Za-z0-9_-]{1,255})*")


def are_ids(values: list[Any], creation_refs: bool = False) -> bool:
    """Whether every element is an Id (or, with creation_refs, "#" and a creation id)."""
    if not values:
        return True
    try:
        joined = ",".join(values)
    except TypeError:   # an element that is not a string
        return False
    return (joined.count(",") == len(values) - 1
            and (_IDS_OR_REFS_RE if creation_refs else _IDS_RE).fullmatch(joined) is not None)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -MAX_INT <= value <= MAX_INT


def is_date(value: Any, utc: bool) -> bool:
    if not isinstance(value, str) or not (UTC_DATE_RE if utc else DATE_RE).match(value):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


class Args:
    """A method's arguments, checked one by one; any problem is invalidArguments naming the argument."""

    def __init__(self, args: dict[str, Any], allowed: Iterable[str]):
        if not (allowed if isinstance(allowed, frozenset) else frozenset(allowed)).issuperset(args):
            unknown = sorted(set(args) - set(allowed))
            raise invalid_arguments(f"unknown argument {unknown[0]!r}")
        self.args = args

    def _get(self, name: str, default: Any) -> Any:
        return self.args.get(name, default)

    def id(self, name: str, *, nullable: bool = True, default: Any = None) -> str | None:
        value = self._get(name, default)
        if value is None and nullable:
            return None
        if not is_id(value):
            raise invalid_arguments(f"{name} must be an Id")
        return value

    def ids(self, name: str, *, nullable: bool = True, creation_refs: bool = False) -> list[str] | None:
        value = self._get(name, None)
        if value is None and nullable:
            return None
        if not isinstance(value, list) or not are_ids(value, creation_refs):
            raise invalid_arguments(f"{name} must be a list of Ids")
        return value

    def string(self, name: str, *, nullable: bool = True, default: Any = None) -> str | None:
        value = self._get(name, default)
        if value is None and nullable:
            return None
        if not isinstance(value, str):
            raise invalid_arguments(f"{name} must be a String")
        return value

    def strings(self, name: str, *, nullable: bool = True) -> list[str] | None:
        value = self._get(name, None)
        if value is None and nullable:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise invalid_arguments(f"{name} must be a list of Strings")
        return value

    def int(self, name: str, default: int | None = 0, *, nullable: bool = False, minimum: int = -MAX_INT) -> Any:
        value = self._get(name, default)
        if value is None and nullable:
            return None
        if not is_int(value) or value < minimum:
            raise invalid_arguments(f"{name} must be an Int of at least {minimum}" if minimum > -MAX_INT
                                    else f"{name} must be an Int between -2^53+1 and 2^53-1")
        return value

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self._get(name, default)
        if not isinstance(value, bool):
            raise invalid_arguments(f"{name} must be a Boolean")
        return value

    def object(self, name: str, *, nullable: bool = True) -> dict[str, Any] | None:
        value = self._get(name, None)
        if value is None and nullable:
            return None
        if not isinstance(value, dict):
            raise invalid_arguments(f"{name} must be an object")
        return value


def check_count(ctx: MethodContext, count: int, limit: int, what: str) -> None:
    if count > limit:
        raise MethodError("requestTooLarge", f"{count} {what}; the limit is {limit}")


def state_int(value: str) -> int | None:
    """Our state strings are decimal modseqs; anything else is a state we cannot have issued."""
    # str.isdigit() alone also accepts "²" and other non-ASCII digits; only our own spelling counts.
    if value.isascii() and value.isdigit() and len(value) < 19 and str(int(value)) == value:
        return int(value)
    return None


# /get (RFC 8620 §5.1)

def select_properties(data_type: DataType, properties: list[str] | None) -> list[str]:
    if properties is None:
        return [p.name for p in data_type.properties]
    unknown = [p for p in properties if data_type.prop(p) is None]
    if unknown:
        raise invalid_arguments(f"unknown property {unknown[0]!r}")
    return list(dict.fromkeys(["id", *properties]))


def unique_ids(ctx: MethodContext, ids: list[str]) -> list[str]:
    """Resolve "#creationId"s and drop repeats, keeping the first occurrence (an id asked twice comes once)."""
    if "#" not in "".join(ids):   # no creation ids: the common case, without a call per id
        return list(dict.fromkeys(ids))
    return list(dict.fromkeys(ctx.resolve_id(i) or i for i in ids))


def select(objects: Iterable[dict[str, Any]], properties: list[str]) -> list[dict[str, Any]]:
    """The asked-for properties of stored objects (missing ones as null). An object that has exactly
    those is returned itself, which spares a copy in the common case of a /get without `properties`."""
    wanted = frozenset(properties)
    return [o if o.keys() == wanted else {p: o.get(p) for p in properties} for o in objects]


def not_in(ids: list[str], found: Container[str]) -> list[str]:
    return [i for i in ids if i not in found]


async def standard_get(ctx: MethodContext, args: dict[str, Any], data_type: DataType) -> dict[str, Any]:
    """Foo/get (RFC 8620 §5.1): the objects asked for, or all of them."""
    a = Args(args, _GET_ARGS)
    ids = a.ids("ids", creation_refs=True)
    properties = select_properties(data_type, a.strings("properties"))
    limit = ctx.config.limits.max_objects_in_get
    if ids is not None:
        check_count(ctx, len(ids), limit, "ids")
        ids = unique_ids(ctx, ids)
    get_json = getattr(data_type.store, "get_json", None)
    if get_json is not None and a.args.get("properties") is None and not ctx.referenced:
        # Every property, and nothing will read the list but the serialiser: the stored JSON as it is.
        state, found_ids, encoded = await get_json(ctx.conn, ctx.account_id, ids)
        if ids is None:
            check_count(ctx, len(found_ids), limit, "objects in the account (ids: null)")
        return {
            "accountId": ctx.account_id,
            "state": state,
            "list": orjson.Fragment(encoded),
            "notFound": [] if ids is None or len(found_ids) == len(ids) else not_in(ids, set(found_ids)),
        }
    # The state is read first (so it is never newer than the objects), in the same hop as the store's
    # first statement.
    state_later = changes.state_later(ctx.conn, ctx.account_id, data_type.name)
    objects = await data_type.store.get(ctx.conn, ctx.account_id, ids)
    if ids is None:
        check_count(ctx, len(objects), limit, "objects in the account (ids: null)")
        found = objects
        not_found: list[str] = []
    else:
        by_id = {o["id"]: o for o in objects}
        found = [by_id[i] for i in ids if i in by_id]
        not_found = not_in(ids, by_id) if len(found) < len(ids) else []
    return {
        "accountId": ctx.account_id,
        "state": await state_later,
        "list": select(found, properties),
        "notFound": not_found,
    }


_GET_ARGS = frozenset(("accountId", "ids", "properties"))


# /changes (RFC 8620 §5.2)

async def standard_changes(ctx: MethodContext, args: dict[str, Any], data_type: DataType) -> dict[str, Any]:
    """Foo/changes (RFC 8620 §5.2): what was created, updated and destroyed since a state."""
    a = Args(args, ("accountId", "sinceState", "maxChanges"))
    since_state = a.string("sinceState", nullable=False)
    max_changes = a.int("maxChanges", None, nullable=True, minimum=1)
    return await changes_response(ctx, data_type.name, since_state, max_changes,
                                  counters=data_type.counter_properties)


async def pruned_horizon(ctx: MethodContext, type_name: str, before: int) -> int:
    """The tombstone horizon again, after the change log was read: a prune committed between the first
    read of the horizon and the log read may have removed tombstones the log read then missed."""
    _, horizon = await changes.state_and_horizon_later(ctx.conn, ctx.account_id, type_name)
    return max(before, horizon)


async def changes_response(ctx: MethodContext, type_name: str, since_state: str, max_changes: int | None,
                           counters: Sequence[str] = ()) -> dict[str, Any]:
    """The /changes response for any type kept in the change log.

    At most maxObjectsInGet ids come back, whatever maxChanges asks (RFC 8620 §5.2 lets the server
    return fewer): one response stays bounded, and its ids fit in one /get.
    """
    cap = ctx.config.limits.max_objects_in_get
    max_changes = cap if max_changes is None else min(max_changes, cap)
    since = state_int(since_state)
    if since is None:
        raise MethodError("cannotCalculateChanges", "the state is too old or unknown; fetch everything again")
    # The state is read first, in the same hop as the log; the log read is wasted only on an error.
    state = changes.state_and_horizon_later(ctx.conn, ctx.account_id, type_name)
    rows = await changes.since(ctx.conn, ctx.account_id, type_name, since, max_changes + 1)
    current, horizon = await state
    if since >= horizon:
        horizon = await pruned_horizon(ctx, type_name, horizon)
    if since > current or since < horizon:
        raise MethodError("cannotCalculateChanges", "the state is too old or unknown; fetch everything again")
    has_more = len(rows) > max_changes
    if has_more:
        rows = rows[:max_changes]
    # A page ends where its last object was first seen; every object up to there is in it.
    # Without more to come, the state is the newest change read (rows may be newer than `current`).
    new_state = rows[-1].page_modseq if has_more else max(current, since, *(r.modseq for r in rows))
    created, updated, destroyed = [], [], []
    only_counters = bool(counters)
    for row in rows:
        if row.created_modseq > since:
            # Created and destroyed within this page: the client never needs to hear of it.
            if not (row.is_destroyed and row.modseq <= new_state):
                created.append(row.object_id)
        elif row.is_destroyed:
            destroyed.append(row.object_id)
        else:
            updated.append(row.object_id)
            if row.full_modseq > since:
                only_counters = False
    response = {
        "accountId": ctx.account_id,
        "oldState": since_state,
        "newState": str(new_state),
        "hasMoreChanges": has_more,
        "created": created,
        "updated": updated,
        "destroyed": destroyed,
    }
    if counters:
        response["updatedProperties"] = list(counters) if only_counters and updated and not (
            created or destroyed) else None
    return response


# Value checks for /set and /copy (RFC 8620 §1.1 types)

def _check_type(prop: Property, value: Any, ctx: MethodContext) -> Any:
    """The value to store (creation ids resolved); raises SetFailure invalidProperties."""
    if value is None:
        if prop.nullable:
            return None
        raise invalid_properties(f"{prop.name} must not be null", prop.name)
    kind = prop.type
    bad = invalid_properties(f"{prop.name} must be of type {kind}", prop.name)
    if kind == "Id":
        if isinstance(value, str) and value.startswith("#") and prop.references:
            resolved = ctx.resolve_id(value)
            if resolved is None:
                raise invalid_properties(f"{prop.name}: unknown creation id {value}", prop.name)
            return resolved
        if not is_id(value):
            raise bad
    elif kind == "String":
        if not isinstance(value, str):
            raise bad
        if prop.max_length is not None and len(value) > prop.max_length:
            raise invalid_properties(f"{prop.name} is longer than {prop.max_length}", prop.name)
    elif kind == "Int":
        if not is_int(value):
            raise bad
    elif kind == "UnsignedInt":
        if not is_int(value) or value < 0:
            raise bad
    elif kind == "Number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
    elif kind == "Boolean":
        if not isinstance(value, bool):
            raise bad
    elif kind in ("UTCDate", "Date"):
        if not is_date(value, kind == "UTCDate"):
            raise bad
    elif kind == "Id[]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad
        resolved_ids = [ctx.resolve_id(v) if v.startswith("#") and prop.references else v for v in value]
        if not all(is_id(v) for v in resolved_ids):
            raise invalid_properties(f"{prop.name} must hold Ids of existing or created objects", prop.name)
        return resolved_ids
    elif kind == "String[]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad
    elif kind in ("Id[Boolean]", "String[Boolean]"):
        if not isinstance(value, dict) or not all(v is True for v in value.values()):
            raise bad
        if kind == "Id[Boolean]":
            out = {}
            for key in value:
                resolved = ctx.resolve_id(key) if key.startswith("#") else key
                if resolved is None or not is_id(resolved):
                    raise invalid_properties(f"{prop.name}: {key!r} is not an Id", prop.name)
                out[resolved] = True
            return out
    elif kind == "Object":
        if not isinstance(value, dict):
            raise bad
    return value


def _creation_refs(data_type: DataType, obj: dict[str, Any]) -> set[str]:
    """Creation ids ("#x") an object refers to through its Id-valued properties and Id-keyed maps."""
    refs: set[str] = set()
    for prop in data_type.properties:
        value = obj.get(prop.name)
        if prop.type == "Id" and isinstance(value, str) and value.startswith("#"):
            refs.add(value[1:])
        elif prop.type == "Id[Boolean]" and isinstance(value, dict):
            refs.update(k[1:] for k in value if isinstance(k, str) and k.startswith("#"))
        elif prop.type == "Id[]" and isinstance(value, list):
            refs.update(v[1:] for v in value if isinstance(v, str) and v.startswith("#"))
    return refs


def creation_order(data_type: DataType, create: dict[str, Any]) -> tuple[list[str], set[str]]:
    """Creation ids ordered so referenced creations come first; plus those caught in a cycle."""
    order: list[str] = []
    state: dict[str, int] = {}   # 1 visiting, 2 done
    cyclic: set[str] = set()

    def visit(cid: str, path: list[str]) -> None:
        if state.get(cid) == 2:
            return
        if state.get(cid) == 1:
            cyclic.update(path[path.index(cid):])
            return
        state[cid] = 1
        obj = create[cid]
        if isinstance(obj, dict):
            for ref in sorted(_creation_refs(data_type, obj)):
                if ref in create and ref != cid:
                    visit(ref, [*path, ref])
                elif ref == cid:
                    cyclic.add(cid)
        state[cid] = 2
        order.append(cid)

    for cid in create:
        visit(cid, [cid])
    return order, cyclic


def _check_properties(ctx: MethodContext, data_type: DataType, obj: dict[str, Any],
                      old: dict[str, Any] | None) -> dict[str, Any]:
    """Check a whole new object (after defaults or patching) against the declaration."""
    unknown = [k for k in obj if data_type.prop(k) is None]
    if unknown:
        raise invalid_properties(f"unknown properties: {', '.join(unknown)}", *unknown)
    out: dict[str, Any] = {}
    bad: list[str] = []
    for prop in data_type.properties:
        if prop.name not in obj:
            continue
        value = obj[prop.name]
        if old is not None and prop.name in old and value == old[prop.name]:
            out[prop.name] = value
            continue
        if old is not None and (prop.server_set or prop.immutable):
            bad.append(prop.name)
            continue
        try:
            out[prop.name] = _check_type(prop, value, ctx)
        except SetFailure:
            bad.append(prop.name)
    if bad:
        raise invalid_properties(f"invalid properties: {', '.join(bad)}", *bad)
    return out


def new_object(ctx: MethodContext, data_type: DataType, given: Any) -> dict[str, Any]:
    """Validate a create: no server-set property, every required one present, defaults applied."""
    if not isinstance(given, dict):
        raise invalid_properties("the object to create must be a JSON object")
    server_set = [k for k in given if (p := data_type.prop(k)) is not None and p.server_set]
    if server_set:
        raise invalid_properties(f"server-set properties: {', '.join(server_set)}", *server_set)
    obj = _check_properties(ctx, data_type, given, None)
    missing = []
    for prop in data_type.properties:
        if prop.name in obj:
            continue
        if prop.default is not REQUIRED:
            obj[prop.name] = prop.default
        elif not prop.server_set:
            missing.append(prop.name)
    if missing:
        raise invalid_properties(f"missing properties: {', '.join(missing)}", *missing)
    return obj


def check_size(data_type: DataType, obj: dict[str, Any]) -> None:
    """Raise SetFailure tooLarge when the object's JSON is over the type's max_size."""
    if data_type.max_size is not None:
        size = len(orjson.dumps(obj))
        if size > data_type.max_size:
            raise SetFailure("tooLarge", f"the object is {size} bytes; the limit is {data_type.max_size}",
                             maxSize=data_type.max_size)


def defaults(data_type: DataType) -> dict[str, Any]:
    return {p.name: p.default for p in data_type.properties if p.default is not REQUIRED}


# /set (RFC 8620 §5.3)

async def standard_set(ctx: MethodContext, args: dict[str, Any], data_type: DataType) -> dict[str, Any]:
    """Foo/set (RFC 8620 §5.3): create, update and destroy objects."""
    a = Args(args, ("accountId", "ifInState", "create", "update", "destroy"))
    if_in_state = a.string("ifInState")
    create = a.object("create") or {}
    update = a.object("update") or {}
    destroy = a.ids("destroy", creation_refs=True) or []
    check_count(ctx, len(create) + len(update) + len(destroy), ctx.config.limits.max_objects_in_set,
                "objects to create, update and destroy")
    return await apply_set(ctx, data_type, if_in_state, create, update, destroy)


async def apply_set(ctx: MethodContext, data_type: DataType, if_in_state: str | None, create: dict[str, Any],
                    update: dict[str, Any], destroy: list[str]) -> dict[str, Any]:
    """Create, then update, then destroy, each object on its own; must run inside the write transaction."""
    tx = ctx.conn
    assert isinstance(tx, Transaction)
    old_state = await changes.state(tx, ctx.account_id, data_type.name)
    if if_in_state is not None and if_in_state != old_state:
        raise MethodError("stateMismatch", f"the state is {old_state}, not {if_in_state}")
    store = data_type.store
    created: dict[str, Any] = {}
    not_created: dict[str, Any] = {}
    updated: dict[str, Any] = {}
    not_updated: dict[str, Any] = {}
    destroyed: list[str] = []
    not_destroyed: dict[str, Any] = {}
    log_created: list[str] = []
    log_updated: list[str] = []

    order, cyclic = creation_order(data_type, create)
    existing_count = None
    for cid in order:
        try:
            if not is_id(cid):
                raise invalid_properties(f"creation id {cid!r} is not a valid Id")
            if data_type.singleton:
                raise SetFailure("singleton", f"there is exactly one {data_type.name}; update it instead")
            if cid in cyclic:
                raise invalid_properties("this creation refers to itself through other creations")
            obj = new_object(ctx, data_type, create[cid])
            if data_type.max_objects is not None:
                if existing_count is None:
                    existing_count = len(await store.get(tx, ctx.account_id, None))
                if existing_count >= data_type.max_objects:
                    raise SetFailure("overQuota", f"at most {data_type.max_objects} of these per account")
            obj["id"] = ctx.new_id(data_type.id_prefix)
            sent = set(create[cid])
            if data_type.validate is not None:
                await data_type.validate(ctx, obj, None)
            check_size(data_type, obj)
            await store.insert(tx, ctx.account_id, [obj])
        except SetFailure as exc:
            not_created[cid] = exc.error.to_json()
            continue
        if existing_count is not None:
            existing_count += 1
        ctx.created_ids[cid] = obj["id"]
        log_created.append(obj["id"])
        created[cid] = {k: v for k, v in obj.items() if k not in sent}

    destroy_ids = unique_ids(ctx, destroy)
    if update:
        update_ids = {key: ctx.resolve_id(key) for key in update}
        current = {o["id"]: o for o in await store.get(tx, ctx.account_id,
                                                         [i for i in update_ids.values() if i])}
        defaults_ = defaults(data_type)
        for key, patch in update.items():
            object_id = update_ids[key]
            try:
                if object_id is None or object_id not in current:
                    raise SetFailure("notFound")
                if object_id in destroy_ids and not data_type.singleton:   # a singleton is never destroyed
                    raise SetFailure("willDestroy")
                if not isinstance(patch, dict):
                    raise SetFailure("invalidPatch", "a PatchObject must be a JSON object")
                old = current[object_id]
                try:
                    patched = apply_patch(old, patch, defaults_)
                except PointerError as exc:
                    raise SetFailure("invalidPatch", str(exc)) from None
                new = _check_properties(ctx, data_type, patched, old)
                missing = [p.name for p in data_type.properties
                           if p.name not in new and p.default is REQUIRED and not p.nullable]
                if missing:
                    raise invalid_properties(f"missing properties: {', '.join(missing)}", *missing)
                if data_type.validate is not None:
                    await data_type.validate(ctx, new, old)
                check_size(data_type, new)
                await store.update(tx, ctx.account_id, [new])
            except SetFailure as exc:
                not_updated[key if object_id is None else object_id] = exc.error.to_json()
                continue
            current[object_id] = new
            log_updated.append(object_id)
            patched_keys = {k.split("/", 1)[0] for k in patch}
            extra = {k: v for k, v in new.items() if k not in patched_keys and old.get(k) != v}
            updated[object_id] = extra or None

    if destroy_ids:
        current = {o["id"]: o for o in await store.get(tx, ctx.account_id, destroy_ids)}
        for object_id in destroy_ids:
            try:
                if object_id not in current:
                    raise SetFailure("notFound")
                if data_type.singleton:
                    raise SetFailure("singleton", f"the {data_type.name} cannot be destroyed")
                if data_type.before_destroy is not None:
                    await data_type.before_destroy(ctx, current[object_id])
                await store.delete(tx, ctx.account_id, [object_id])
            except SetFailure as exc:
                not_destroyed[object_id] = exc.error.to_json()
                continue
            destroyed.append(object_id)

    await changes.record(tx, ctx.account_id, data_type.name, created=log_created,
                         updated=[i for i in dict.fromkeys(log_updated) if i not in destroyed
                                  and i not in log_created],
                         destroyed=destroyed)
    return {
        "accountId": ctx.account_id,
        "oldState": old_state,
        "newState": await changes.state(tx, ctx.account_id, data_type.name),
        "created": created or None,
        "updated": updated or None,
        "destroyed": destroyed or None,
        "notCreated": not_created or None,
        "notUpdated": not_updated or None,
        "notDestroyed": not_destroyed or None,
    }


# /copy (RFC 8620 §5.4)

async def standard_copy(ctx: MethodContext, args: dict[str, Any], data_type: DataType) -> dict[str, Any]:
    """Foo/copy (RFC 8620 §5.4): copy objects from another account."""
    a = Args(args, ("fromAccountId", "ifFromInState", "accountId", "ifInState", "create",
                    "onSuccessDestroyOriginal", "destroyFromIfInState"))
    from_account = a.id("fromAccountId", nullable=False)
    if_from_in_state = a.string("ifFromInState")
    if_in_state = a.string("ifInState")
    create = a.object("create", nullable=False)
    destroy_original = a.boolean("onSuccessDestroyOriginal")
    destroy_if_in_state = a.string("destroyFromIfInState")
    if from_account == ctx.account_id:
        raise invalid_arguments("fromAccountId and accountId must differ; use /set within one account")
    check_count(ctx, len(create), ctx.config.limits.max_objects_in_set, "objects to copy")
    tx = ctx.conn
    assert isinstance(tx, Transaction)
    from_state = await changes.state(tx, from_account, data_type.name)
    if if_from_in_state is not None and if_from_in_state != from_state:
        raise MethodError("stateMismatch", f"the state of fromAccountId is {from_state}")
    old_state = await changes.state(tx, ctx.account_id, data_type.name)
    if if_in_state is not None and if_in_state != old_state:
        raise MethodError("stateMismatch", f"the state is {old_state}, not {if_in_state}")
    sources = {}
    wanted = [o.get("id") for o in create.values() if isinstance(o, dict) and is_id(o.get("id"))]
    if wanted:
        sources = {o["id"]: o for o in await data_type.store.get(tx, from_account, wanted)}
    created: dict[str, Any] = {}
    not_created: dict[str, Any] = {}
    copied: list[str] = []
    new_ids: list[str] = []
    for cid, given in create.items():
        try:
            if not is_id(cid):
                raise invalid_properties(f"creation id {cid!r} is not a valid Id")
            if not isinstance(given, dict) or not is_id(given.get("id")):
                raise invalid_properties("each copy must name the original's id", "id")
            source = sources.get(given["id"])
            if source is None:
                raise SetFailure("notFound", f"no {data_type.name} {given['id']} in fromAccountId")
            base = {k: v for k, v in source.items()
                    if (p := data_type.prop(k)) is not None and not p.server_set}
            overrides = {k: v for k, v in given.items() if k != "id"}
            obj = new_object(ctx, data_type, {**base, **overrides})
            obj["id"] = ctx.new_id(data_type.id_prefix)
            if data_type.validate is not None:
                await data_type.validate(ctx, obj, None)
            check_size(data_type, obj)
            await data_type.store.insert(tx, ctx.account_id, [obj])
        except SetFailure as exc:
            not_created[cid] = exc.error.to_json()
            continue
        ctx.created_ids[cid] = obj["id"]
        new_ids.append(obj["id"])
        copied.append(given["id"])
        created[cid] = {k: v for k, v in obj.items() if (p := data_type.prop(k)) is None or p.server_set}
    await changes.record(tx, ctx.account_id, data_type.name, created=new_ids)
    response = {
        "fromAccountId": from_account,
        "accountId": ctx.account_id,
        "oldState": old_state,
        "newState": await changes.state(tx, ctx.account_id, data_type.name),
        "created": created or None,
        "notCreated": not_created or None,
    }
    if destroy_original and copied:
        await implicit_destroy(ctx, data_type.name, from_account, copied, destroy_if_in_state,
                               lambda c: apply_set(c, data_type, destroy_if_in_state, {}, {}, copied))
    return response


async def implicit_destroy(ctx: MethodContext, type_name: str, from_account: str, ids: list[str],
                           if_in_state: str | None, run: Callable[[MethodContext], Any]) -> None:
    """The single Foo/set that onSuccessDestroyOriginal makes in the from account (RFC 8620 §5.4)."""
    name = f"{type_name}/set"
    if not ctx.principal.may_write(from_account):
        ctx.extra_responses.append(("error", {"type": "accountReadOnly"}))
        return
    sub = MethodContext(ctx.runtime, ctx.principal, from_account, ctx.conn, ctx.created_ids,
                        ctx.call_id, name)
    try:
        ctx.extra_responses.append((name, await run(sub)))
    except MethodError as exc:
        ctx.extra_responses.append(("error", exc.to_json()))


# /query (RFC 8620 §5.5)

def _casemap_unicode(value: str) -> str:
    return unicodedata.normalize("NFKD", value).casefold()


def _ascii_numeric(value: str) -> tuple[int, int]:
    # RFC 4790 §9.1: the leading digits as a number; strings without one sort after all numbers.
    match = re.match(r"\d+", value)
    return (0, int(match.group())) if match else (1, 0)


_COLLATE: dict[str, Callable[[str], Any]] = {
    "i;unicode-casemap": _casemap_unicode,
    "i;ascii-casemap": lambda s: s.translate(_ASCII_LOWER),
    "i;octet": lambda s: s.encode("utf-8", "surrogatepass"),
    "i;ascii-numeric": _ascii_numeric,
}
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def parse_filter(data_type: DataType, value: Any) -> Any:
    """Check a FilterOperator/FilterCondition tree; unsupportedFilter for what this type cannot filter on,
    or for a tree deeper than MAX_FILTER_DEPTH or larger than MAX_FILTER_CONDITIONS."""
    if value is None:
        return None
    check_filter_size(value)
    return _parse_filter(data_type, value)


def check_filter_size(value: Any) -> None:
    """unsupportedFilter for a filter nested deeper than MAX_FILTER_DEPTH or with more than
    MAX_FILTER_CONDITIONS operators and conditions in all; checked before any of it is evaluated."""
    total = 1
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_FILTER_DEPTH:
            raise MethodError("unsupportedFilter", f"filters nest at most {MAX_FILTER_DEPTH} deep")
        if isinstance(node, dict) and "operator" in node and isinstance(node.get("conditions"), list):
            total += len(node["conditions"])
            if total > MAX_FILTER_CONDITIONS:
                raise MethodError("unsupportedFilter",
                                  f"a filter has at most {MAX_FILTER_CONDITIONS} operators and conditions in all")
            stack.extend((c, depth + 1) for c in node["conditions"])


def _parse_filter(data_type: DataType, value: Any) -> Any:
    if not isinstance(value, dict):
        raise invalid_arguments("a filter must be a FilterOperator or FilterCondition object")
    if "operator" in value:
        if set(value) != {"operator", "conditions"}:
            raise invalid_arguments("a FilterOperator has exactly operator and conditions")
        if value["operator"] not in ("AND", "OR", "NOT"):
            raise MethodError("unsupportedFilter", f"unknown operator {value['operator']!r}")
        if not isinstance(value["conditions"], list):
            raise invalid_arguments("conditions must be an array")
        return (value["operator"], [_parse_filter(data_type, c) for c in value["conditions"]])
    for name, arg in value.items():
        spec = data_type.filters.get(name)
        if spec is None:
            raise MethodError("unsupportedFilter", f"{data_type.name} cannot be filtered on {name!r}")
        kind, nullable = (spec.type[:-5], True) if spec.type.endswith("|null") else (spec.type, False)
        try:
            _check_type(Property(name, kind, nullable=nullable), arg, _NO_REFS)
        except SetFailure:
            raise invalid_arguments(f"filter {name} must be of type {spec.type}") from None
    return value


def filter_matches(data_type: DataType, tree: Any, obj: dict[str, Any]) -> bool:
    if tree is None:
        return True
    if isinstance(tree, tuple):
        op, conditions = tree
        results = (filter_matches(data_type, c, obj) for c in conditions)
        if op == "AND":
            return all(results)
        if op == "OR":
            return any(results)
        return not any(results)
    return all(data_type.filters[name].matches(obj, arg) for name, arg in tree.items())


def parse_sort(data_type: DataType, value: Any) -> list[tuple[str, bool, str]]:
    """Check a list of Comparators (RFC 8620 §5.5); unsupportedSort for what this type cannot sort by."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid_arguments("sort must be an array of Comparators")
    check_sort_size(value)
    out = []
    for comparator in value:
        if not isinstance(comparator, dict) or not isinstance(comparator.get("property"), str):
            raise invalid_arguments("each Comparator needs a property")
        # RFC 8620 §5.5 lets a data type add Comparator properties, and clients send more (jmapc:
        # anchorOffset, calculateTotal, position): those this type does not use are ignored.
        prop = data_type.prop(comparator["property"])
        if prop is None or not prop.sortable:
            raise MethodError("unsupportedSort", f"{data_type.name} cannot be sorted by {comparator['property']!r}")
        ascending = comparator.get("isAscending", True)
        if not isinstance(ascending, bool):
            raise invalid_arguments("isAscending must be a Boolean")
        collation = comparator.get("collation", "i;unicode-casemap")
        if not isinstance(collation, str):
            raise invalid_arguments("collation must be a String")
        if collation not in COLLATIONS:
            raise MethodError("unsupportedSort", f"unknown collation {collation!r}")
        out.append((prop.name, ascending, collation))
    return out


def check_sort_size(value: list[Any]) -> None:
    """unsupportedSort for more than MAX_SORT_COMPARATORS Comparators."""
    if len(value) > MAX_SORT_COMPARATORS:
        raise MethodError("unsupportedSort", f"at most {MAX_SORT_COMPARATORS} Comparators in a sort")


def sort_objects(objects: list[dict[str, Any]], sort: list[tuple[str, bool, str]]) -> list[dict[str, Any]]:
    """Stable multi-key sort; ties end in id order so the order is stable between calls."""
    result = sorted(objects, key=lambda o: o["id"])
    for name, ascending, collation in reversed(sort):
        collate = _COLLATE[collation]

        def key(obj: dict[str, Any], name: str = name, collate: Callable[[str], Any] = collate) -> Any:
            value = obj.get(name)
            if value is None:
                return (0, 0)
            if isinstance(value, str):
                return (1, collate(value))
            return (1, value)
        result.sort(key=key, reverse=not ascending)
    return result


def window(ids: list[str], position: int, anchor: str | None, anchor_offset: int,
           limit: int | None) -> tuple[int, list[str]]:
    """Apply position or anchor/anchorOffset and limit (RFC 8620 §5.5); raises anchorNotFound."""
    if anchor is not None:
        try:
            position = max(0, ids.index(anchor) + anchor_offset)
        except ValueError:
            raise MethodError("anchorNotFound") from None
    elif position < 0:
        position = max(0, len(ids) + position)
    end = len(ids) if limit is None else position + limit
    return position, ids[position:end]


async def query_ids(ctx: MethodContext, data_type: DataType, filter_tree: Any,
                    sort: list[tuple[str, bool, str]]) -> list[str]:
    objects = await data_type.store.get(ctx.conn, ctx.account_id, None)
    matching = [o for o in objects if filter_matches(data_type, filter_tree, o)]
    return [o["id"] for o in sort_objects(matching, sort)]


class QueryArgs:
    """The arguments /query and /queryChanges share, checked."""

    def __init__(self, ctx: MethodContext, data_type: DataType, a: Args):
        self.filter = parse_filter(data_type, a.args.get("filter"))
        self.sort = parse_sort(data_type, a.args.get("sort"))
        self.calculate_total = a.boolean("calculateTotal")


async def standard_query(ctx: MethodContext, args: dict[str, Any], data_type: DataType) -> dict[str, Any]:
    """Foo/query (RFC 8620 §5.5): the ids matching a filter, sorted and windowed."""
    a = Args(args, ("accountId", "filter", "sort", "position", "anchor", "anchorOffset", "limit",
                    "calculateTotal"))
    q = QueryArgs(ctx, data_type, a)
    position = a.int("position")
    anchor = a.id("anchor")
    anchor_offset = a.int("anchorOffset")
    limit = a.int("limit", None, nullable=True, minimum=0)
    cap = ctx.config.limits.max_query_limit
    clamped = limit is None or limit > cap
    if clamped:
        limit = cap
    state_later = changes.state_later(ctx.conn, ctx.account_id, data_type.name)   # one hop with the objects
    ids = await query_ids(ctx, data_type, q.filter, q.sort)
    state = await state_later
    position, page = window(ids, position, anchor and ctx.resolve_id(anchor), anchor_offset, limit)
    response: dict[str, Any] = {
        "accountId": ctx.account_id,
        "queryState": state,
        "canCalculateChanges": "queryChanges" in data_type.standard_methods,
        "position": position,
        "ids": page,
    }
    if q.calculate_total:
        response["total"] = len(ids)
    if clamped:
        response["limit"] = limit
    return response


# /queryChanges (RFC 8620 §5.6)

async def standard_query_changes(ctx: MethodContext, args: dict[str, Any], data_type: DataType) -> dict[str, Any]:
    """Foo/queryChanges (RFC 8620 §5.6): how a query's results changed since a state."""
    a = Args(args, ("accountId", "filter", "sort", "sinceQueryState", "maxChanges", "upToId", "calculateTotal"))
    q = QueryArgs(ctx, data_type, a)
    since_state = a.string("sinceQueryState", nullable=False)
    max_changes = a.int("maxChanges", None, nullable=True, minimum=0)
    up_to_id = a.id("upToId")
    current, rows = await query_changes_since(ctx, data_type.name, since_state)
    changed = {c.object_id for c in rows}
    ids = await query_ids(ctx, data_type, q.filter, q.sort)
    last = None
    if up_to_id is not None and _immutable_query(data_type, q) and up_to_id in ids:
        last = ids.index(up_to_id)
    return query_changes_response(ctx, since_state, current, changed, ids, max_changes, q.calculate_total, last)


async def query_changes_since(ctx: MethodContext, type_name: str, since_state: str) -> tuple[int, list[Any]]:
    """(current state, change-log rows since the query state); cannotCalculateChanges for a state we
    cannot answer from."""
    since = state_int(since_state)
    if since is None:
        raise MethodError("cannotCalculateChanges", "the query state is too old or unknown; query again")
    state = changes.state_and_horizon_later(ctx.conn, ctx.account_id, type_name)   # one hop with the log
    rows = await changes.since(ctx.conn, ctx.account_id, type_name, since, None)
    current, horizon = await state
    if since >= horizon:
        horizon = await pruned_horizon(ctx, type_name, horizon)
    if since > current or since < horizon:
        raise MethodError("cannotCalculateChanges", "the query state is too old or unknown; query again")
    return current, rows


def query_changes_response(ctx: MethodContext, since_state: str, current: int, changed: set[str], ids: list[str],
                           max_changes: int | None, calculate_total: bool,
                           up_to_index: int | None = None) -> dict[str, Any]:
    """The /queryChanges response from the changed ids and the new results (RFC 8620 §5.6).

    Every changed object may have left or moved: it is reported removed, and added again where it
    now is; the RFC allows this over-reporting. Past `up_to_index` nothing is added.
    """
    added = [{"id": i, "index": n} for n, i in enumerate(ids)
             if i in changed and (up_to_index is None or n <= up_to_index)]
    removed = sorted(changed)
    if max_changes is not None and len(added) + len(removed) > max_changes:
        raise MethodError("tooManyChanges", f"{len(added) + len(removed)} changes, more than maxChanges")
    response: dict[str, Any] = {
        "accountId": ctx.account_id,
        "oldQueryState": since_state,
        "newQueryState": str(current),
        "removed": removed,
        "added": added,
    }
    if calculate_total:
        response["total"] = len(ids)
    return response


def _immutable_query(data_type: DataType, q: QueryArgs) -> bool:
    def names(tree: Any) -> Iterable[str]:
        if isinstance(tree, tuple):
            for c in tree[1]:
                yield from names(c)
        elif isinstance(tree, dict):
            yield from tree
    return all(getattr(data_type.filters[n], "immutable", False) for n in names(q.filter)) and all(
        (p := data_type.prop(name)) is not None and p.immutable for name, _, _ in q.sort)


class _NoRefs:
    """A stand-in context for checking filter values, where creation ids do not apply."""

    def resolve_id(self, value: str) -> None:
        return None


_NO_REFS: Any = _NoRefs()


_STANDARD = {
    "get": (standard_get, False, None),
    "changes": (standard_changes, False, None),
    "set": (standard_set, True, None),
    "copy": (standard_copy, True, "fromAccountId"),
    "query": (standard_query, False, None),
    "queryChanges": (standard_query_changes, False, None),
}


def method_for(data_type: DataType, verb: str, urn: str) -> Method:
    """The generic Foo/<verb> of a data type, bound to it."""
    handler, writes, from_account = _STANDARD[verb]
    bound = functools.partial(handler, data_type=data_type)
    functools.update_wrapper(bound, handler)
    return Method(bound, writes=writes, from_account=from_account, capability=urn)
