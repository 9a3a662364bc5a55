"""Mailbox (RFC 8621 §2): the data type, its rules, its methods and the default mailboxes of an account."""

from __future__ import annotations

import dataclasses
import functools
import logging
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jmaple.core.capability import DataType, Filter, Property
from jmaple.core.context import MethodContext, Runtime
from jmaple.core.errors import SetFailure, invalid_properties
from jmaple.core.methods import (
    Args, apply_set, check_count, defaults, filter_matches, new_object, parse_filter, parse_sort, sort_objects,
    query_changes_response, query_changes_since, standard_get, window,
)
from jmaple.core.pointer import PointerError, apply_patch
from jmaple.mail import storage
from jmaple.store import changes
from jmaple.store.accounts import Access
from jmaple.store.db import Conn, Transaction

if TYPE_CHECKING:
    from jmaple.mail import MailConfig

log = logging.getLogger(__name__)

PLUGIN_NAME = "mail"

# RFC 8621 §2: a role is the lower-cased name of a mailbox attribute in the IANA "IMAP Mailbox Name
# Attributes" registry (RFC 8457, RFC 6154, RFC 8621 §10.5.1 for inbox). Only the attributes that
# name a purpose are roles here; those that describe a state (noselect, haschildren, marked,
# subscribed, remote, ...) are refused.
ROLES = frozenset({"all", "archive", "drafts", "flagged", "important", "inbox", "junk", "memos", "scheduled",
                   "sent", "snoozed", "trash"})
MAX_SORT_ORDER = 2**31 - 1     # §2: 0 <= sortOrder < 2^31
RIGHTS = ("mayReadItems", "mayAddItems", "mayRemoveItems", "maySetSeen", "maySetKeywords", "mayCreateChild",
          "mayRename", "mayDelete", "maySubmit")
# Characters a mailbox name may not hold (RFC 5198 Net-Unicode has no control characters).
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


def settings(runtime: Runtime) -> MailConfig:
    """The parsed [capabilities.mail] table."""
    return runtime.registry.plugin_config[PLUGIN_NAME]


def rights(access: Access | None, role: str | None) -> dict[str, bool]:
    """myRights (§2) of a mailbox for a user with this access to its account.

    Whoever may write the account may do everything except destroy the inbox (where delivery goes);
    a read-only grant may only read.
    """
    if access is None or not access.may_write:
        return {name: name == "mayReadItems" for name in RIGHTS}
    return {name: not (name == "mayDelete" and role == "inbox") for name in RIGHTS}


def check_name(name: str, max_octets: int, key: str = "name") -> str:
    """The name in NFC; raises ValueError when it is empty, too long or holds control characters."""
    name = unicodedata.normalize("NFC", name)
    if not name:
        raise ValueError(f"{key}: must not be empty")
    if any(unicodedata.category(c) in _FORBIDDEN_CATEGORIES for c in name):
        raise ValueError(f"{key}: must not contain control characters or line separators")
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > max_octets:
        raise ValueError(f"{key}: {size} octets of UTF-8, more than maxSizeMailboxName ({max_octets})")
    return name


class MailboxStore:
    """Mailboxes as one user sees them (isSubscribed and myRights are theirs); bound per method call.

    Within Mailbox/set (`batch` given) updates are written together by the batch (see _SetBatch).
    """

    def __init__(self, user_id: str | None = None, access: Access | None = None, *,
                 runtime: Runtime | None = None, remove_emails: bool = False, batch: _SetBatch | None = None):
        self.user_id = user_id
        self.access = access
        self.runtime = runtime
        self.remove_emails = remove_emails
        self.batch = batch

    def _object(self, row: storage.MailboxRow) -> dict[str, Any]:
        return {
            "id": row.id,
            "name": row.name,
            "parentId": row.parent_id,
            "role": row.role,
            "sortOrder": row.sort_order,
            "totalEmails": row.total_emails,
            "unreadEmails": row.unread_emails,
            "totalThreads": row.total_threads,
            "unreadThreads": row.unread_threads,
            "myRights": rights(self.access, row.role),
            "isSubscribed": row.is_subscribed,
        }

    async def get(self, conn: Conn, account_id: str, ids: Sequence[str] | None) -> list[dict[str, Any]]:
        if self.batch is not None and isinstance(conn, Transaction):
            await self.batch.flush(conn)
        return [self._object(r) for r in await storage.mailboxes(conn, account_id, self.user_id, ids)]

    async def insert(self, tx: Transaction, account_id: str, objects: list[dict[str, Any]]) -> None:
        await storage.insert_mailboxes(tx, account_id, [
            (o["id"], o["name"], o["parentId"], o["role"], o["sortOrder"]) for o in objects])
        if self.batch is not None:
            self.batch.written(objects)
        # §2: isSubscribed as given (true by default) for whoever creates it; when someone else creates
        # a mailbox in an account, its owner is subscribed too (it is their personal account).
        if self.user_id is not None:
            await storage.set_subscribed(tx, self.user_id, account_id,
                                         [o["id"] for o in objects if o["isSubscribed"]], True)
        if self.access is None or not self.access.is_personal:
            owner = await storage.account_owner(tx, account_id)
            if owner is not None and owner != self.user_id:
                await storage.set_subscribed(tx, owner, account_id, [o["id"] for o in objects], True)

    async def update(self, tx: Transaction, account_id: str, objects: list[dict[str, Any]]) -> None:
        rows = [(o["id"], o["name"], o["parentId"], o["role"], o["sortOrder"]) for o in objects]
        is_read_only = self.access is not None and not self.access.may_write
        # A read-only grantee's update changes only isSubscribed (_check_read_only): the rows stay as they are.
        if self.batch is not None and not is_read_only:
            self.batch.buffer(rows)
            self.batch.written(objects)
        elif not is_read_only:
            await storage.update_mailboxes(tx, account_id, rows)
        if self.user_id is not None:
            for subscribed in (True, False):
                await storage.set_subscribed(tx, self.user_id, account_id,
                                             [o["id"] for o in objects if o["isSubscribed"] is subscribed], subscribed)

    async def delete(self, tx: Transaction, account_id: str, ids: list[str]) -> None:
        if self.batch is not None:
            await self.batch.flush(tx)
            self.batch.deleted(ids)
        if self.remove_emails:
            for mailbox_id in ids:
                destroyed, _ = await storage.remove_mailbox_emails(tx, account_id, mailbox_id)
                if destroyed and self.runtime is not None:
                    await self.runtime.blobs.drop_refs(tx, account_id, map(storage.email_blob_owner, destroyed))
        await storage.delete_mailboxes(tx, account_id, ids)


# /set rules (§2, §2.5)

def _depths(tree: dict[str, str | None]) -> dict[str, int]:
    """Each mailbox's depth (1 at the top level); a mailbox caught in a loop counts as infinitely deep."""
    depths: dict[str, int] = {}
    for start in tree:
        path: list[str] = []
        node: str | None = start
        while node is not None and node not in depths and node in tree and node not in path:
            path.append(node)
            node = tree[node]
        base = 0 if node is None or node not in tree else depths.get(node, 10**9)
        for n in reversed(path):
            base += 1
            depths[n] = base
    return depths


def _subtree_height(tree: dict[str, str | None], root: str) -> int:
    """1 for a mailbox without children, else one more than its tallest child."""
    children: dict[str, list[str]] = {}
    for child, parent in tree.items():
        if parent is not None:
            children.setdefault(parent, []).append(child)
    height, level, seen = 0, [root], {root}
    while level:
        height += 1
        level = [c for n in level for c in children.get(n, ()) if c not in seen]
        seen.update(level)
    return height


@dataclass(frozen=True)
class _Node:
    """A mailbox as the /set rules see it: where it is, its name and its role."""

    parent_id: str | None
    name: str
    role: str | None

    @property
    def sibling_key(self) -> tuple[str, str]:
        return self.parent_id or "", self.name


def _node(obj: dict[str, Any]) -> _Node:
    return _Node(obj["parentId"], obj["name"], obj["role"])


def _check_rules(config: MailConfig, access: Access | None, new: dict[str, Any], old: dict[str, Any] | None,
                 nodes: dict[str, _Node]) -> None:
    """Every rule of §2 on a mailbox to create (old None) or its updated form, except that names and roles
    are unique; `nodes` are the account's mailboxes as they stand. Raises SetFailure; puts the name in NFC
    and sets myRights for a new role."""
    moved = old is None or new["parentId"] != old["parentId"]
    renamed = old is None or new["name"] != old["name"]
    if old is not None and (moved or renamed) and not old["myRights"]["mayRename"]:
        raise SetFailure("forbidden", "you may not rename or move this mailbox")
    if new["sortOrder"] > MAX_SORT_ORDER:
        raise invalid_properties("sortOrder must be below 2^31", "sortOrder")
    if renamed:
        try:
            new["name"] = check_name(new["name"], config.max_size_mailbox_name)
        except ValueError as exc:
            raise invalid_properties(str(exc), "name") from None
    if moved:
        parent_id = new["parentId"]
        if parent_id is None:
            if not (config.may_create_top_level_mailbox and access is not None and access.may_write):
                raise SetFailure("forbidden", "mayCreateTopLevelMailbox is false: give a parentId")
        else:
            tree = {mailbox_id: n.parent_id for mailbox_id, n in nodes.items()}
            if parent_id not in tree:
                raise invalid_properties(f"parentId: no mailbox {parent_id}", "parentId")
            node: str | None = parent_id
            seen: set[str] = set()
            while node is not None and node not in seen:
                if node == new["id"]:
                    raise invalid_properties("parentId would make the mailbox its own ancestor", "parentId")
                seen.add(node)
                node = tree.get(node)
            if not rights(access, nodes[parent_id].role)["mayCreateChild"]:
                raise SetFailure("forbidden", "you may not create mailboxes under this parent")
            limit = config.max_mailbox_depth
            if limit is not None:
                height = 1 if old is None else _subtree_height(tree, new["id"])
                deepest = _depths(tree)[parent_id] + height
                if deepest > limit:
                    raise invalid_properties(f"the mailbox tree would be {deepest} deep; maxMailboxDepth is {limit}",
                                             "parentId")
    role = new["role"]
    if old is None or role != old["role"]:
        if role is not None and role not in ROLES:
            raise invalid_properties(f"role must be null or one of {', '.join(sorted(ROLES))}", "role")
        new["myRights"] = rights(access, role)


def _name_taken(existing: str) -> SetFailure:
    return SetFailure("alreadyExists", "a sibling mailbox has this name", existingId=existing)


def _role_taken(existing: str, role: str) -> SetFailure:
    return invalid_properties(f"mailbox {existing} already has the role {role}", "role")


def _collisions(final: dict[str, _Node], before: dict[str, _Node], order: list[str]) -> dict[str, SetFailure]:
    """The updates (ids in `order`, request order) to refuse so that `final` has unique names and roles.

    Where an update takes a name or role another mailbox keeps, the update is refused; where several
    updates take the same one, the first keeps it.
    """
    refused: dict[str, SetFailure] = {}
    rank = {mailbox_id: n for n, mailbox_id in enumerate(order)}
    for kind in ("name", "role"):
        groups: dict[Any, list[str]] = {}
        for mailbox_id, node in final.items():
            key = node.sibling_key if kind == "name" else node.role
            if key is not None:
                groups.setdefault(key, []).append(mailbox_id)
        for key, members in groups.items():
            if len(members) < 2:
                continue
            before_key = {m: (before[m].sibling_key if kind == "name" else before[m].role) if m in before else None
                          for m in members}
            takers = sorted((m for m in members if m in rank and before_key[m] != key), key=rank.__getitem__)
            keepers = [m for m in members if m not in takers]
            holder = keepers[0] if keepers else takers.pop(0)
            for m in takers:
                refused.setdefault(m, _name_taken(holder) if kind == "name" else _role_taken(holder, key))
    return refused


class _SetBatch:
    """One Mailbox/set call: its updates are checked for unique names and roles against the state the whole
    call leaves (RFC 8620 §5.3: "the final state MUST be valid"), so two mailboxes may swap names or pass a
    role between them in one call, whatever the order.

    Creations come first and are checked one by one against what exists. Before the first update, every
    update of the call is simulated in order with the same rules, and those that would leave two mailboxes
    with one name or role are refused (an update taking what another mailbox keeps; the later of two taking
    the same); repeated until the result is valid. The updates are then written together when the call
    needs the stored state (before destroying, and at its end), so that no intermediate state collides.
    """

    def __init__(self, ctx: MethodContext, update: dict[str, Any], destroy: list[str]):
        self.ctx = ctx
        self.config = settings(ctx.runtime)
        self.access = ctx.principal.accounts.get(ctx.account_id)
        self.update = update
        self.destroy = {ctx.resolve_id(i) or i for i in destroy}
        self.nodes: dict[str, _Node] | None = None       # the mailboxes as they stand within the call
        self.final: dict[str, _Node] | None = None       # what the planned updates make of their mailboxes
        self.refused: dict[str, SetFailure] = {}
        self.pending: set[str] = set()                   # planned updates not processed yet
        self.rows: dict[str, tuple[str, str, str | None, str | None, int]] = {}

    async def _load(self) -> dict[str, _Node]:
        if self.nodes is None:
            rows = await storage.mailboxes(self.ctx.conn, self.ctx.account_id, None)
            self.nodes = {r.id: _Node(r.parent_id, r.name, r.role) for r in rows}
        return self.nodes

    def written(self, objects: list[dict[str, Any]]) -> None:
        if self.nodes is not None:
            for obj in objects:
                self.nodes[obj["id"]] = _node(obj)

    def deleted(self, ids: list[str]) -> None:
        for mailbox_id in ids:
            if self.nodes is not None:
                self.nodes.pop(mailbox_id, None)
            self.pending.discard(mailbox_id)

    def buffer(self, rows: list[tuple[str, str, str | None, str | None, int]]) -> None:
        for row in rows:
            self.rows[row[0]] = row

    async def flush(self, tx: Transaction) -> None:
        """Write the updates processed so far, all at once."""
        if self.rows:
            rows, self.rows = list(self.rows.values()), {}
            await storage.update_mailboxes(tx, self.ctx.account_id, rows)

    async def validate(self, ctx: MethodContext, new: dict[str, Any], old: dict[str, Any] | None) -> None:
        """The DataType hook: every rule of §2, with names and roles unique in the call's final state."""
        if self.access is None or not self.access.may_write:
            _check_read_only(new, old)
            return
        nodes = await self._load()
        if old is not None and self.final is None:
            await self._plan(ctx, nodes)
        self.pending.discard(new["id"])
        _check_rules(self.config, self.access, new, old, nodes)
        if new["id"] in self.refused:
            raise self.refused[new["id"]]
        final = self.final or {}
        view = {m: final[m] if m in self.pending else n for m, n in nodes.items() if m != new["id"]}
        mine = _node(new)
        if old is None or mine.sibling_key != _node(old).sibling_key:
            taken = next((m for m, n in view.items() if n.sibling_key == mine.sibling_key), None)
            if taken is not None:
                raise _name_taken(taken)
        if mine.role is not None and (old is None or mine.role != old["role"]):
            taken = next((m for m, n in view.items() if n.role == mine.role), None)
            if taken is not None:
                raise _role_taken(taken, mine.role)

    async def _plan(self, ctx: MethodContext, nodes: dict[str, _Node]) -> None:
        """Simulate the call's updates (see the class) and settle which are refused for uniqueness."""
        objects = {o["id"]: o for o in await MailboxStore(ctx.principal.user_id, self.access).get(
            ctx.conn, ctx.account_id, None)}
        planned: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        for key, patch in self.update.items():
            mailbox_id = ctx.resolve_id(key)
            if mailbox_id is None or mailbox_id not in objects or mailbox_id in self.destroy \
                    or not isinstance(patch, dict):
                continue
            new = _patched(ctx, objects[mailbox_id], patch)
            if new is not None:
                planned.append((mailbox_id, objects[mailbox_id], new))
        order = [mailbox_id for mailbox_id, _, _ in planned]
        while True:
            state = dict(nodes)
            applied: list[str] = []
            for mailbox_id, old, new in planned:
                if mailbox_id in self.refused:
                    continue
                trial = dict(new)
                try:
                    _check_rules(self.config, self.access, trial, old, state)
                except SetFailure:
                    continue
                state[mailbox_id] = _node(trial)
                applied.append(mailbox_id)
            refused = _collisions(state, nodes, [m for m in order if m in applied])
            if not refused:
                break
            self.refused.update(refused)
        self.final = {m: state[m] for m in applied}
        self.pending = set(applied)


def _check_read_only(new: dict[str, Any], old: dict[str, Any] | None) -> None:
    """A read-only grantee may change only isSubscribed, which is theirs (§2); anything else is forbidden."""
    if old is None:
        raise SetFailure("forbidden", "this account is shared with you read-only: you may not create mailboxes")
    changed = sorted(name for name in _SHARED_PROPERTIES if new[name] != old[name])
    if changed:
        raise SetFailure("forbidden", f"this account is shared with you read-only: you may change isSubscribed, "
                                      f"not {', '.join(changed)}")


def _patched(ctx: MethodContext, old: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any] | None:
    """A mailbox after an update's patch, checked as Foo/set checks it (RFC 8620 §5.3); None when that
    update will be refused anyway (then it changes nothing)."""
    try:
        patched = apply_patch(old, patch, defaults(MAILBOX))
    except PointerError:
        return None
    for name, value in patched.items():
        prop = MAILBOX.prop(name)
        if prop is None or ((prop.server_set or prop.immutable) and value != old.get(name)):
            return None
    try:
        new = new_object(ctx, MAILBOX, {k: v for k, v in patched.items()
                                        if not MAILBOX.prop(k).server_set})   # type: ignore[union-attr]
    except SetFailure:
        return None
    return {**old, **new}


async def before_destroy(ctx: MethodContext, obj: dict[str, Any], *, remove_emails: bool) -> None:
    """§2.5: mailboxHasChild first (then nothing is touched), mailboxHasEmail unless onDestroyRemoveEmails."""
    if not obj["myRights"]["mayDelete"]:
        raise SetFailure("forbidden", "you may not destroy this mailbox")
    if await storage.has_children(ctx.conn, ctx.account_id, obj["id"]):
        raise SetFailure("mailboxHasChild", "destroy or move its child mailboxes first")
    if not remove_emails and await storage.has_emails(ctx.conn, ctx.account_id, obj["id"]):
        raise SetFailure("mailboxHasEmail", "it holds emails; pass onDestroyRemoveEmails to remove them")


# /query filters (§2.3)

def _name_contains(obj: dict[str, Any], value: str) -> bool:
    return value.casefold() in obj["name"].casefold()




# What a mailbox is to every user of its account, as opposed to isSubscribed (per user) and the
# server-set counts and myRights.
_SHARED_PROPERTIES = ("name", "parentId", "role", "sortOrder")

MAILBOX = DataType(
    name="Mailbox",
    id_prefix="M",
    properties=(
        Property("id", "Id", server_set=True, immutable=True),
        Property("name", "String", sortable=True),
        Property("parentId", "Id", nullable=True, default=None, references="Mailbox"),
        Property("role", "String", nullable=True, default=None),
        Property("sortOrder", "UnsignedInt", default=0, sortable=True),
        Property("totalEmails", "UnsignedInt", server_set=True, default=0, counter=True),
        Property("unreadEmails", "UnsignedInt", server_set=True, default=0, counter=True),
        Property("totalThreads", "UnsignedInt", server_set=True, default=0, counter=True),
        Property("unreadThreads", "UnsignedInt", server_set=True, default=0, counter=True),
        Property("myRights", "Object", server_set=True),
        Property("isSubscribed", "Boolean", default=True),
    ),
    store=MailboxStore(),
    standard_methods=("get", "changes", "set", "query", "queryChanges"),
    filters={
        "parentId": Filter("Id|null", lambda o, v: o["parentId"] == v),
        "name": Filter("String", _name_contains),
        "role": Filter("String|null", lambda o, v: o["role"] == v),
        "hasAnyRole": Filter("Boolean", lambda o, v: (o["role"] is not None) is v),
        "isSubscribed": Filter("Boolean", lambda o, v: o["isSubscribed"] is v),
    },
)


def bound_type(ctx: MethodContext, *, remove_emails: bool = False, batch: _SetBatch | None = None) -> DataType:
    """MAILBOX as the calling user sees it in this call's account; with the rules of §2 for Mailbox/set."""
    store = MailboxStore(ctx.principal.user_id, ctx.principal.accounts.get(ctx.account_id),
                         runtime=ctx.runtime, remove_emails=remove_emails, batch=batch)
    return dataclasses.replace(MAILBOX, store=store, validate=batch.validate if batch is not None else None,
                               before_destroy=functools.partial(before_destroy, remove_emails=remove_emails))


# Methods

async def mailbox_get(ctx: MethodContext, args: dict[str, Any]) -> dict[str, Any]:
    """Mailbox/get (RFC 8621 §2.1): mailboxes with this user's myRights and isSubscribed."""
    return await standard_get(ctx, args, bound_type(ctx))


async def mailbox_set(ctx: MethodContext, args: dict[str, Any]) -> dict[str, Any]:
    """Mailbox/set (RFC 8621 §2.5): create, update and destroy mailboxes; onDestroyRemoveEmails."""
    a = Args(args, ("accountId", "ifInState", "create", "update", "destroy", "onDestroyRemoveEmails"))
    if_in_state = a.string("ifInState")
    create = a.object("create") or {}
    update = a.object("update") or {}
    destroy = a.ids("destroy", creation_refs=True) or []
    remove_emails = a.boolean("onDestroyRemoveEmails")
    check_count(ctx, len(create) + len(update) + len(destroy), ctx.config.limits.max_objects_in_set,
                "objects to create, update and destroy")
    if destroy:
        # Children before their parents, so that a whole subtree can go in one call.
        depths = _depths(await storage.mailbox_tree(ctx.conn, ctx.account_id))
        destroy = sorted(destroy, key=lambda i: -depths.get(ctx.resolve_id(i) or i, 0))
    batch = _SetBatch(ctx, update, destroy)
    result = await apply_set(ctx, bound_type(ctx, remove_emails=remove_emails, batch=batch), if_in_state, create,
                             update, destroy)
    assert isinstance(ctx.conn, Transaction)
    await batch.flush(ctx.conn)
    result["newState"] = await changes.state(ctx.conn, ctx.account_id, MAILBOX.name)   # after the flush
    # A name is stored in NFC: say so when that is not how it was sent.
    for cid, created in (result["created"] or {}).items():
        sent = create[cid].get("name")
        if isinstance(sent, str) and "name" not in created and unicodedata.normalize("NFC", sent) != sent:
            created["name"] = unicodedata.normalize("NFC", sent)
    for key, patch in update.items():
        object_id = ctx.resolve_id(key)
        if (result["updated"] or {}).keys() >= {object_id} and isinstance(patch.get("name"), str):
            normal = unicodedata.normalize("NFC", patch["name"])
            if normal != patch["name"]:
                result["updated"][object_id] = {**(result["updated"][object_id] or {}), "name": normal}
    return result


def _effective_sort(sort: list[tuple[str, bool, str]]) -> list[tuple[str, bool, str]]:
    """Ties fall back on the name, as §2 asks clients to show mailboxes of equal sortOrder."""
    if not sort:
        return [("sortOrder", True, "i;unicode-casemap"), ("name", True, "i;unicode-casemap")]
    if all(name != "name" for name, _, _ in sort):
        return [*sort, ("name", True, "i;unicode-casemap")]
    return sort


def _parents(objects: list[dict[str, Any]]) -> dict[str, str | None]:
    ids = {o["id"] for o in objects}
    return {o["id"]: o["parentId"] if o["parentId"] in ids else None for o in objects}


def _tree_order(ordered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """§2.3 sortAsTree: parents before their children, siblings in the order given."""
    parents = _parents(ordered)
    children: dict[str | None, list[dict[str, Any]]] = {}
    for obj in ordered:
        children.setdefault(parents[obj["id"]], []).append(obj)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    stack = list(reversed(children.get(None, [])))
    while stack:
        obj = stack.pop()
        if obj["id"] in seen:
            continue
        seen.add(obj["id"])
        out.append(obj)
        stack.extend(reversed(children.get(obj["id"], [])))
    out.extend(o for o in ordered if o["id"] not in seen)   # only a corrupt tree has loops
    return out


def _ancestors(parents: dict[str, str | None], mailbox_id: str) -> list[str]:
    out: list[str] = []
    node = parents.get(mailbox_id)
    while node is not None and node not in out and node != mailbox_id:
        out.append(node)
        node = parents.get(node)
    return out


class _MailboxQuery:
    """The arguments Mailbox/query and /queryChanges share (RFC 8621 §2.3), checked."""

    def __init__(self, data_type: DataType, a: Args):
        self.filter = parse_filter(MAILBOX, a.args.get("filter"))
        self.sort = _effective_sort(parse_sort(data_type, a.args.get("sort")))
        self.calculate_total = a.boolean("calculateTotal")
        self.sort_as_tree = a.boolean("sortAsTree")
        self.filter_as_tree = a.boolean("filterAsTree")

    async def run(self, ctx: MethodContext, data_type: DataType) -> tuple[list[str], dict[str, str | None]]:
        """The ids of the results in order, and every mailbox's parent (for /queryChanges)."""
        objects = await data_type.store.get(ctx.conn, ctx.account_id, None)
        parents = _parents(objects)
        matching = {o["id"] for o in objects if filter_matches(data_type, self.filter, o)}
        if self.filter_as_tree:
            matching = {i for i in matching if all(p in matching for p in _ancestors(parents, i))}
        ordered = sort_objects(objects, self.sort)
        if self.sort_as_tree:
            ordered = _tree_order(ordered)
        return [o["id"] for o in ordered if o["id"] in matching], parents


async def mailbox_query(ctx: MethodContext, args: dict[str, Any]) -> dict[str, Any]:
    """Mailbox/query (RFC 8621 §2.3): with sortAsTree and filterAsTree."""
    a = Args(args, ("accountId", "filter", "sort", "position", "anchor", "anchorOffset", "limit",
                    "calculateTotal", "sortAsTree", "filterAsTree"))
    data_type = bound_type(ctx)
    q = _MailboxQuery(data_type, a)
    position = a.int("position")
    anchor = a.id("anchor")
    anchor_offset = a.int("anchorOffset")
    limit = a.int("limit", None, nullable=True, minimum=0)
    cap = ctx.config.limits.max_query_limit
    clamped = limit is None or limit > cap
    if clamped:
        limit = cap
    state = await changes.state(ctx.conn, ctx.account_id, MAILBOX.name)
    ids, _ = await q.run(ctx, data_type)
    position, page = window(ids, position, anchor, anchor_offset, limit)
    response: dict[str, Any] = {
        "accountId": ctx.account_id,
        "queryState": state,
        "canCalculateChanges": True,
        "position": position,
        "ids": page,
    }
    if q.calculate_total:
        response["total"] = len(ids)
    if clamped:
        response["limit"] = limit
    return response


async def mailbox_query_changes(ctx: MethodContext, args: dict[str, Any]) -> dict[str, Any]:
    """Mailbox/queryChanges (RFC 8621 §2.4): every mailbox whose place may have moved, removed and re-added."""
    a = Args(args, ("accountId", "filter", "sort", "sinceQueryState", "maxChanges", "upToId", "calculateTotal",
                    "sortAsTree", "filterAsTree"))
    data_type = bound_type(ctx)
    q = _MailboxQuery(data_type, a)
    since_state = a.string("sinceQueryState", nullable=False)
    max_changes = a.int("maxChanges", None, nullable=True, minimum=0)
    a.id("upToId")   # checked, then ignored: name, role and the tree are all mutable
    current, rows = await query_changes_since(ctx, MAILBOX.name, since_state)
    # Counts are neither filtered nor sorted on: a change to counts alone moves nothing.
    since = int(since_state)   # checked by query_changes_since
    changed = {c.object_id for c in rows if c.created_modseq > since or c.is_destroyed or c.full_modseq > since}
    ids, parents = await q.run(ctx, data_type)
    if changed and (q.sort_as_tree or q.filter_as_tree):
        # A mailbox renamed, moved or no longer matching carries its whole subtree with it.
        changed |= {i for i in parents if any(p in changed for p in _ancestors(parents, i))}
    return query_changes_response(ctx, since_state, current, changed, ids, max_changes, q.calculate_total)


# Accounts

async def provision(tx: Transaction, account_id: str, runtime: Runtime) -> list[str]:
    """Give the account its default mailboxes ([capabilities.mail] default_mailboxes), subscribed for its
    owner, once: an account already provisioned is left alone. Returns the ids created.

    Runs inside a write transaction. A default whose role or top-level name an existing mailbox already
    has (one `jmapled import` made, say) is skipped: names and roles stay unique (§2).
    """
    if await storage.is_provisioned(tx, account_id):
        return []
    existing = await storage.mailboxes(tx, account_id, None)
    roles = {r.role for r in existing if r.role is not None}
    names = {r.name for r in existing if r.parent_id is None}
    rows = [(MAILBOX.id_prefix + runtime.config.new_id(), d.name, None, d.role, d.sort_order)
            for d in settings(runtime).default_mailboxes if d.name not in names and d.role not in roles]
    if rows:
        await storage.insert_mailboxes(tx, account_id, rows)
        owner = await storage.account_owner(tx, account_id)
        if owner is not None:
            await storage.set_subscribed(tx, owner, account_id, [r[0] for r in rows], True)
        await changes.record(tx, account_id, MAILBOX.name, created=[r[0] for r in rows])
    await storage.mark_provisioned(tx, account_id)
    return [r[0] for r in rows]


async def create_defaults(tx: Transaction, account_id: str, runtime: Runtime) -> None:
    """The account-creation hook: a new account is provisioned at once, in the transaction creating it."""
    await provision(tx, account_id, runtime)


PROVISION_BATCH = 100   # accounts per write transaction


async def provision_accounts(runtime: Runtime) -> int:
    """Provision every account that is not yet (created before the capability was installed, or while it
    was disabled); returns how many were. Each batch is one write transaction.

    The plugin's after_migrate hook: it runs whenever a process opens the store, so it costs one indexed
    read when every account is provisioned, and takes no write lock then."""
    async with runtime.db.read() as conn:
        pending = await storage.unprovisioned_accounts(conn)
    for start in range(0, len(pending), PROVISION_BATCH):
        async with runtime.db.write() as tx:
            for account_id in pending[start:start + PROVISION_BATCH]:
                await provision(tx, account_id, runtime)
    if pending:
        log.info("gave %d account%s the default mailboxes", len(pending), "" if len(pending) == 1 else "s")
    return len(pending)


async def check(runtime: Runtime) -> list[str]:
    """`jmapled check`: maintained counts and flags that disagree with the emails."""
    async with runtime.db.read() as conn:
        return await storage.problems(conn)
