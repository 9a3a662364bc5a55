"""The plugin contract and the registry (entry-point group "jmaple.capabilities")."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from jmaple.config import Config, ConfigError

if TYPE_CHECKING:
    from jmaple.core.context import MethodContext, Runtime
    from jmaple.store.accounts import Access
    from jmaple.store.db import Conn, Transaction

log = logging.getLogger(__name__)

CORE = "urn:ietf:params:jmap:core"
ENTRY_POINT_GROUP = "jmaple.capabilities"
# Used when the package is run from a checkout without being installed (the `jmapled` launcher).
BUILTIN_PLUGINS = {"core": "jmaple.core.core:PLUGIN", "mail": "jmaple.mail:PLUGIN",
                   "push": "jmaple.push.subscription:PLUGIN"}

Handler = Callable[["MethodContext", dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Method:
    """A method handler and what the Dispatcher must prepare for it."""

    handler: Handler
    writes: bool = False                 # runs inside the write transaction
    account: str | None = "accountId"    # the argument naming the account, None when there is none
    from_account: str | None = None      # /copy: the argument naming the account read from
    capability: str = ""                 # filled in by the registry
    uses_db: bool = True                 # False: no connection is taken for it (Core/echo)
    # True: the handler enforces write access itself, so a read-only account reaches it (Mailbox/set lets a
    # read-only grantee change isSubscribed, which is per user); otherwise the Dispatcher answers
    # accountReadOnly for a write to a read-only account before the handler runs.
    checks_write_access: bool = False


class Missing:
    """The absence of a default: the property must be given on create."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = Missing()


@dataclass(frozen=True)
class Property:
    """One property of a data type, as RFC 8620 §1.1 annotates it."""

    name: str
    type: str = "String"   # Id String Int UnsignedInt Number Boolean UTCDate Date Id[] String[] Id[Boolean] Object *
    nullable: bool = False
    server_set: bool = False
    immutable: bool = False
    default: Any = REQUIRED
    sortable: bool = False
    counter: bool = False  # a server-maintained count: updates of counters alone set updatedProperties
    max_length: int | None = None
    references: str | None = None  # the data type an Id (or Id[...] keys) points to


@dataclass(frozen=True)
class Filter:
    """One FilterCondition property of a generic /query: the value's type and a predicate on the object."""

    type: str                 # a Property type, optionally "X|null"
    matches: Callable[[dict[str, Any], Any], bool]
    immutable: bool = False   # filters only on immutable properties let /queryChanges honour upToId


class Store(Protocol):
    """What the generic standard methods need of a type's storage; plain dicts in and out.

    A store may also have `get_json(conn, account_id, ids) -> (state, ids found, JSON array)`: what get()
    answers, still encoded (every object with exactly the type's properties), and the type's state as of
    that data (never newer). The standard /get then sends that JSON as it is (an orjson.Fragment in its
    "list") when a request asks for all properties and no later call refers to the result: a method that
    wraps standard_get and edits the list must name the properties (jmaple.store.objects.JsonObjects has
    get_json). `check_type(data_type) -> reason | None`, if a store has it, runs when the registry loads.
    """

    async def get(self, conn: Conn, account_id: str, ids: Sequence[str] | None) -> list[dict[str, Any]]: ...
    async def insert(self, tx: Transaction, account_id: str, objects: list[dict[str, Any]]) -> None: ...
    async def update(self, tx: Transaction, account_id: str, objects: list[dict[str, Any]]) -> None: ...
    async def delete(self, tx: Transaction, account_id: str, ids: list[str]) -> None: ...


SetHook = Callable[["MethodContext", dict[str, Any], "dict[str, Any] | None"], Awaitable[None]]
DestroyHook = Callable[["MethodContext", dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class DataType:
    """A JMAP data type; core/methods.py derives its standard methods from this declaration."""

    name: str
    properties: tuple[Property, ...]
    store: Store
    standard_methods: tuple[str, ...] = ("get", "changes", "set", "query", "queryChanges", "copy")
    filters: Mapping[str, Filter] = field(default_factory=dict)
    id_prefix: str = ""
    # Raise SetFailure to reject; called with (ctx, new object, old object or None) before it is written.
    # It may fill in server-set properties but must not write: a later check (tooLarge) can still refuse
    # the object, so side effects such as counters belong in the store's insert/update/delete.
    validate: SetHook | None = None
    before_destroy: DestroyHook | None = None
    max_objects: int | None = None       # per account: beyond it a create is overQuota
    max_size: int | None = None          # bytes of an object's JSON: beyond it a create/update is tooLarge
    # One object per account with the id "singleton" (RFC 8620 §5.3): create and destroy are refused
    # with the SetError "singleton"; the store answers for it even before it was first written.
    singleton: bool = False

    def prop(self, name: str) -> Property | None:
        return self._by_name.get(name)

    @property
    def _by_name(self) -> dict[str, Property]:
        cached = self.__dict__.get("_props")
        if cached is None:
            cached = {p.name: p for p in self.properties}
            object.__setattr__(self, "_props", cached)
        return cached

    @property
    def counter_properties(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.properties if p.counter)


AccountInfo = Callable[["Config", "Access"], "dict[str, Any] | None"]


@dataclass(frozen=True)
class Capability:
    """One capability URN: its session object, its account object, its types and methods."""

    urn: str
    session_info: Callable[[Config], dict[str, Any]] | None = None
    # The object in an account's accountCapabilities: None here lists {} for every account when the
    # capability has types or methods (else it is server-wide only); a function returning None means
    # that account does not have the capability (accountNotSupportedByMethod).
    account_info: AccountInfo | None = None
    shareable: bool = True                     # available on accounts granted to other users
    data_types: tuple[DataType, ...] = ()
    methods: Mapping[str, Method] = field(default_factory=dict)


@dataclass(frozen=True)
class Command:
    """A `jmapled` subcommand brought by a plugin."""

    name: str
    help: str
    add_arguments: Callable[[Any], None]
    run: Callable[[Any, Runtime], Awaitable[int]]


AccountHook = Callable[["Transaction", str, "Runtime"], Awaitable[None]]


@dataclass(frozen=True)
class Plugin:
    """What a package registers under the entry-point group "jmaple.capabilities"."""

    name: str
    capabilities: tuple[Capability, ...] = ()
    push_types: tuple[str, ...] = ()
    migrations: str | None = None          # a package holding 0001_*.sql …
    parse_config: Callable[[Mapping[str, Any]], Any] | None = None   # raise ValueError("key: reason")
    on_account_created: AccountHook | None = None
    on_account_deleted: AccountHook | None = None
    # Runs in whichever process opens the store (the daemon and every CLI command), after the migrations and
    # before anything else uses it; it must be idempotent and cheap when there is nothing to do.
    after_migrate: Callable[[Runtime], Awaitable[Any]] | None = None
    services: tuple[Callable[[Runtime], Any], ...] = ()   # each returns an async context manager
    commands: tuple[Command, ...] = ()
    checks: tuple[Callable[[Runtime], Awaitable[list[str]]], ...] = ()
    dev_seed: Callable[[Runtime, str], Awaitable[Any]] | None = None   # `jmapled dev`: fill the demo account


class RegistryError(Exception):
    """Two plugins claim the same name, or a plugin cannot be loaded."""


_PLUGIN_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Registry:
    """Every enabled plugin, with their capabilities, methods and types indexed by name."""

    def __init__(self, plugins: Sequence[Plugin], config: Config):
        self.plugins = tuple(plugins)
        self.capabilities: dict[str, Capability] = {}
        self.methods: dict[str, Method] = {}
        self.types: dict[str, DataType] = {}
        self.type_capability: dict[str, str] = {}
        self.push_types: dict[str, str] = {}          # type name -> capability URN
        self.plugin_config: dict[str, Any] = {}
        owners: dict[tuple[str, str], str] = {}
        from jmaple.core import methods as standard   # methods imports this module

        def claim(kind: str, name: str, plugin: Plugin) -> None:
            other = owners.get((kind, name))
            if other is not None:
                raise RegistryError(f"{kind} {name!r} is provided by both plugin {other!r} and {plugin.name!r}")
            owners[(kind, name)] = plugin.name

        for plugin in self.plugins:
            if not _PLUGIN_NAME.fullmatch(plugin.name):   # "$" alone would let a trailing newline through
                raise RegistryError(f"plugin name {plugin.name!r} must match {_PLUGIN_NAME.pattern}")
            claim("plugin", plugin.name, plugin)
            for cap in plugin.capabilities:
                claim("capability", cap.urn, plugin)
                self.capabilities[cap.urn] = cap
                for data_type in cap.data_types:
                    claim("type", data_type.name, plugin)
                    check_type = getattr(data_type.store, "check_type", None)
                    problem = check_type(data_type) if check_type is not None else None
                    if problem:
                        raise RegistryError(f"plugin {plugin.name!r}, type {data_type.name!r}: {problem}")
                    self.types[data_type.name] = data_type
                    self.type_capability[data_type.name] = cap.urn
                    self.push_types[data_type.name] = cap.urn
                    for verb in data_type.standard_methods:
                        name = f"{data_type.name}/{verb}"
                        if name not in cap.methods:
                            claim("method", name, plugin)
                            self.methods[name] = standard.method_for(data_type, verb, cap.urn)
                for name, method in cap.methods.items():
                    claim("method", name, plugin)
                    self.methods[name] = dataclasses.replace(method, capability=method.capability or cap.urn)
            for name in plugin.push_types:
                claim("type", name, plugin)
                self.push_types[name] = plugin.capabilities[0].urn if plugin.capabilities else CORE
        installed = {p.name for p in self.plugins}
        for name in config.capabilities:
            if name not in installed and _enabled(config, name):
                raise ConfigError(f"{config.source}: [capabilities.{name}]: no such plugin is installed "
                                  f"(installed: {', '.join(p.name for p in self.plugins)})")
        for plugin in self.plugins:
            table = {k: v for k, v in config.capabilities.get(plugin.name, {}).items() if k != "enabled"}
            if plugin.parse_config is not None:
                try:
                    self.plugin_config[plugin.name] = plugin.parse_config(table)
                except ValueError as exc:
                    raise ConfigError(f"{config.source}: [capabilities.{plugin.name}] {exc}") from None
            elif table:
                raise ConfigError(f"{config.source}: [capabilities.{plugin.name}] {next(iter(table))}: "
                                  f"unknown key (this plugin takes no settings)")

    @classmethod
    def load(cls, config: Config, extra: Sequence[Plugin] = ()) -> Registry:
        """Installed plugins (entry points, or the built-ins from a checkout) plus `extra`, minus disabled ones.

        Raises RegistryError for a plugin that cannot be loaded or a name claimed twice, and ConfigError
        for a bad [capabilities.<name>] table.
        """
        found: dict[str, Plugin] = {}
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                plugin = ep.load()
            except Exception as exc:
                raise RegistryError(f"plugin {ep.name!r} ({ep.value}) cannot be loaded: {exc}") from exc
            if not isinstance(plugin, Plugin):
                raise RegistryError(f"plugin {ep.name!r} ({ep.value}) is not a jmaple Plugin")
            found.setdefault(plugin.name, plugin)
        for name, target in BUILTIN_PLUGINS.items():
            if name not in found:
                module, _, attr = target.partition(":")
                found[name] = getattr(importlib.import_module(module), attr)
        plugins = sorted(found.values(), key=lambda p: (p.name != "core", p.name))
        if not _enabled(config, "core"):
            raise ConfigError(f"{config.source}: [capabilities.core] enabled: the core cannot be switched off")
        return cls([p for p in [*plugins, *extra] if _enabled(config, p.name)], config)

    def migrations(self) -> list[tuple[str, str]]:
        return [(p.name, p.migrations) for p in self.plugins if p.migrations]

    def account_capability(self, config: Config, access: Access, urn: str) -> dict[str, Any] | None:
        """The capability's object for this account, or None when the account does not support it."""
        cap = self.capabilities[urn]
        if not (access.is_personal or cap.shareable):
            return None
        if cap.account_info is None:
            # RFC 8620 §2: accountCapabilities names capabilities with methods to use on the account;
            # one that only describes the server (RFC 8887 WebSocket, say) is not listed.
            return {} if cap.data_types or cap.methods else None
        return cap.account_info(config, access)

    def account_capabilities(self, config: Config, access: Access) -> dict[str, Any]:
        """The accountCapabilities of one account (RFC 8620 §2); the core is implied, never listed."""
        out: dict[str, Any] = {}
        for urn in self.capabilities:
            if urn == CORE:
                continue
            info = self.account_capability(config, access, urn)
            if info is not None:
                out[urn] = info
        return out


def _enabled(config: Config, name: str) -> bool:
    """[capabilities.<name>] enabled, true unless set; raises ConfigError for a value that is not a Boolean."""
    value = config.capabilities.get(name, {}).get("enabled", True)
    if not isinstance(value, bool):
        raise ConfigError(f"{config.source}: [capabilities.{name}] enabled: must be true or false, got {value!r}")
    return value
