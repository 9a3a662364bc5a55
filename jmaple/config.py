"""Configuration: TOML -> frozen dataclasses; every bad value is an error naming the key."""

from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import re
import secrets
import time
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class ConfigError(Exception):
    """A configuration value is missing, unknown, of the wrong type or impossible."""


# JMAP numbers are I-JSON safe integers (RFC 8620 §1.3); a limit the session advertises must fit.
MAX_SAFE_INT = 2**53 - 1
# The maxmem auth.py passes to hashlib.scrypt; a cost beyond it would fail on every login.
SCRYPT_MAX_MEMORY = 256 * 1024 * 1024


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def parse_listen(value: str) -> tuple[str, int] | str:
    """`HOST:PORT`, `[V6]:PORT` or `unix:/path` -> (host, port) or the socket path."""
    if value.startswith("unix:"):
        path = value[5:]
        _check(path.startswith("/"), "a Unix socket must be an absolute path, e.g. unix:/run/jmaple/api.sock")
        _check("\0" not in path, "a Unix socket path cannot contain a NUL character")
        return path
    host, sep, port = value.rpartition(":")
    _check(bool(sep) and port.isdigit() and 0 <= int(port) <= 65535,
           "must be HOST:PORT (e.g. 127.0.0.1:8080) or unix:/path")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    _check(bool(host), "the host part is empty")
    return host, int(port)


@dataclass(frozen=True)
class ServerConfig:
    listen: str = "127.0.0.1:8080"
    base_url: str = ""
    tls_certificate: str = ""
    tls_key: str = ""
    trusted_proxies: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    data_dir: str = "/var/lib/jmaple"

    def validate(self) -> None:
        _field("listen", lambda: parse_listen(self.listen))
        if self.base_url:
            parts = urlsplit(self.base_url)
            _field("base_url", lambda: _check(
                parts.scheme in ("http", "https") and bool(parts.netloc) and not parts.query and not parts.fragment,
                "must be an absolute http(s) URL without query, e.g. https://mail.example.org"))
        _field("tls_key", lambda: _check(bool(self.tls_certificate) == bool(self.tls_key),
                                          "tls_certificate and tls_key must be given together"))
        for value in self.trusted_proxies:
            _field("trusted_proxies", lambda: ipaddress.ip_network(value, strict=False))
        for origin in self.cors_origins:
            _field("cors_origins", lambda: _check(
                origin == "*" or (urlsplit(origin).scheme in ("http", "https") and origin.count("/") == 2),
                f"{origin!r} is not an origin like https://app.example.org or http://localhost:*"))
        _field("data_dir", lambda: _check(bool(self.data_dir), "must not be empty"))
        _field("data_dir", lambda: _check("\0" not in self.data_dir, "a path cannot contain a NUL character"))

    @property
    def proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(p, strict=False) for p in self.trusted_proxies)


@dataclass(frozen=True)
class StorageConfig:
    synchronous: str = "FULL"
    readers: int = 3
    busy_timeout: float = 5.0
    changes_horizon_days: int = 30

    def validate(self) -> None:
        _field("synchronous", lambda: _check(self.synchronous in ("FULL", "NORMAL", "EXTRA"),
                                              "must be FULL, NORMAL or EXTRA"))
        _field("readers", lambda: _check(1 <= self.readers <= 32, "must be between 1 and 32"))
        _field("busy_timeout", lambda: _check(0 < self.busy_timeout <= 600, "must be between 0 and 600 seconds"))
        _field("changes_horizon_days", lambda: _check(
            self.changes_horizon_days >= 30, "must be at least 30 (days of /changes history kept)"))


@dataclass(frozen=True)
class LimitsConfig:
    max_size_upload: int = 50_000_000
    max_concurrent_upload: int = 4
    max_size_request: int = 10_000_000
    max_concurrent_requests: int = 8
    max_calls_in_request: int = 32
    max_objects_in_get: int = 500
    max_objects_in_set: int = 500
    max_query_limit: int = 1000
    upload_quota: int = 500_000_000
    upload_lifetime_hours: int = 24

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            _field(f.name, lambda: _check(1 <= getattr(self, f.name) <= MAX_SAFE_INT,
                                          f"must be between 1 and {MAX_SAFE_INT}"))
        _field("max_size_request", lambda: _check(self.max_size_request >= 10_000, "must be at least 10000"))
        _field("upload_quota", lambda: _check(self.upload_quota >= self.max_size_upload,
                                              "must be at least max_size_upload"))


@dataclass(frozen=True)
class AuthConfig:
    scrypt_n: int = 2**14
    scrypt_r: int = 8
    scrypt_p: int = 1
    failure_delay_max: float = 5.0

    def validate(self) -> None:
        _field("scrypt_n", lambda: _check(self.scrypt_n >= 2 and self.scrypt_n & (self.scrypt_n - 1) == 0,
                                           "must be a power of two"))
        _field("scrypt_r", lambda: _check(self.scrypt_r >= 1, "must be at least 1"))
        _field("scrypt_p", lambda: _check(1 <= self.scrypt_p <= 64, "must be between 1 and 64"))
        # OpenSSL's scrypt needs 128*r*(N+2) + 128*r*p bytes; beyond the cap every hash would fail.
        memory = 128 * self.scrypt_r * (self.scrypt_n + 2 + self.scrypt_p)
        _field("scrypt_n", lambda: _check(memory <= SCRYPT_MAX_MEMORY,
                                           f"with scrypt_r = {self.scrypt_r} needs {memory >> 20} MiB per hash, "
                                           f"more than the {SCRYPT_MAX_MEMORY >> 20} MiB allowed; lower it"))
        _field("failure_delay_max", lambda: _check(0 <= self.failure_delay_max <= 60,
                                                   "must be between 0 and 60 seconds"))


@dataclass(frozen=True)
class PushConfig:
    broker: str = "local"
    ping_min: int = 10
    ping_max: int = 600
    websocket_heartbeat: float = 30.0
    # Webhooks (PushSubscription, RFC 8620 §7.2).
    allow_private_targets: bool = False
    extra_ca_file: str = ""
    vapid_contact: str = "mailto:postmaster@localhost"
    max_expiry_days: int = 7
    max_per_user: int = 50
    creations_per_hour: int = 30
    concurrency: int = 64
    timeout: float = 10.0
    ttl: int = 86400
    backoff_initial: float = 1.0
    backoff_max: float = 3600.0
    give_up_after: float = 86400.0

    def validate(self) -> None:
        _field("broker", lambda: _check(
            self.broker == "local" or self.broker.startswith(("redis://", "rediss://", "unix://")),
            'must be "local" or a redis://, rediss:// or unix:// URL'))
        if self.broker != "local":
            _field("broker", lambda: _check(importlib.util.find_spec("redis") is not None,
                                            "a Redis broker needs the redis package: pip install 'jmaple[redis]'"))
        # RFC 8620 §7.3: clients ask for a ping interval; ours is clamped into [ping_min, ping_max].
        _field("ping_min", lambda: _check(1 <= self.ping_min <= 30, "must be between 1 and 30 (seconds)"))
        _field("ping_max", lambda: _check(300 <= self.ping_max <= 86400, "must be between 300 and 86400 (seconds)"))
        _field("websocket_heartbeat", lambda: _check(
            1 <= self.websocket_heartbeat <= 600, "must be between 1 and 600 (seconds between WebSocket pings)"))
        _field("extra_ca_file", lambda: _check(not self.extra_ca_file or Path(self.extra_ca_file).is_file(),
                                               f"no such file: {self.extra_ca_file}"))
        _field("vapid_contact", lambda: _check(
            re.fullmatch(r"(mailto:[^@\s]+@[^@\s]+|https://[^\s]+)", self.vapid_contact) is not None,
            "must be a mailto: address or an https:// URL"))
        # RFC 8620 §7.2: the maximum expiry must be at least 48 hours.
        _field("max_expiry_days", lambda: _check(2 <= self.max_expiry_days <= 366, "must be between 2 and 366"))
        _field("max_per_user", lambda: _check(1 <= self.max_per_user <= 10_000, "must be between 1 and 10000"))
        _field("creations_per_hour", lambda: _check(1 <= self.creations_per_hour <= 100_000,
                                                    "must be between 1 and 100000"))
        _field("concurrency", lambda: _check(1 <= self.concurrency <= 10_000, "must be between 1 and 10000"))
        _field("timeout", lambda: _check(0 < self.timeout <= 300, "must be more than 0 and at most 300 seconds"))
        _field("ttl", lambda: _check(0 <= self.ttl <= 2**31, "must be between 0 and 2147483648"))
        _field("backoff_initial", lambda: _check(0 < self.backoff_initial <= 86400,
                                                 "must be more than 0 and at most 86400"))
        _field("backoff_max", lambda: _check(self.backoff_initial <= self.backoff_max <= 7 * 86400,
                                             "must be at least backoff_initial and at most 604800"))
        _field("give_up_after", lambda: _check(0 < self.give_up_after <= 30 * 86400,
                                               "must be more than 0 and at most 2592000"))


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    access_log: bool = True

    def validate(self) -> None:
        _field("level", lambda: _check(self.level in ("debug", "info", "warning", "error"),
                                        "must be debug, info, warning or error"))


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = False

    def validate(self) -> None:
        pass


def _default_ids() -> str:
    return secrets.token_urlsafe(12)


@dataclass(frozen=True)
class Config:
    """The whole configuration. `clock` and `new_id` are injected (tests), never read from TOML."""

    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    push: PushConfig = field(default_factory=PushConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    capabilities: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source: str = "<defaults>"
    dev: bool = False
    trace: bool = False
    clock: Callable[[], float] = time.time
    new_id: Callable[[], str] = _default_ids

    @property
    def data_dir(self) -> Path:
        return Path(self.server.data_dir)

    @classmethod
    def load(cls, path: str | Path) -> Config:
        """Read and validate a TOML file; raises ConfigError naming the file and the key."""
        path = Path(path)
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file (copy config.example.toml and edit it)") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start} cannot be decoded); TOML files must be "
                              f"UTF-8, so convert it, e.g. with iconv") from None
        config = cls.from_dict(raw, source=str(path))
        return config.with_paths_under(path.parent)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, source: str = "<config>", **overrides: Any) -> Config:
        sections = {f.name: f for f in dataclasses.fields(cls) if f.name in _SECTIONS}
        values: dict[str, Any] = {}
        for key, table in raw.items():
            if key == "capabilities":
                if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
                    raise ConfigError(f"{source}: [capabilities] must hold one table per capability")
                values["capabilities"] = table
                continue
            if key not in sections:
                raise ConfigError(f"{source}: unknown section [{key}] "
                                  f"(known: {', '.join(sorted(_SECTIONS))}, capabilities.NAME)")
            if not isinstance(table, dict):
                raise ConfigError(f"{source}: [{key}] must be a table")
            values[key] = _build_section(_SECTIONS[key], table, f"{source}: [{key}]")
        return cls(source=source, **values, **overrides)

    @classmethod
    def for_tests(cls, data_dir: str | Path, **raw: Any) -> Config:
        """A fast, permissive configuration for the test suite (cheap scrypt, no access log)."""
        tables: dict[str, Any] = {
            "server": {"data_dir": str(data_dir)},
            "storage": {"synchronous": "NORMAL"},
            "auth": {"scrypt_n": 16, "failure_delay_max": 0.2},
            "logging": {"access_log": False},
        }
        overrides = {k: raw.pop(k) for k in ("clock", "new_id", "dev", "trace") if k in raw}
        for section, table in raw.items():
            tables.setdefault(section, {}).update(table)
        return cls.from_dict(tables, source="<tests>", **overrides)

    def with_paths_under(self, directory: Path) -> Config:
        """Relative file paths ([server] data_dir and TLS files, [push] extra_ca_file) taken relative to `directory`."""
        server = self.server
        changes = {}
        for key in ("data_dir", "tls_certificate", "tls_key"):
            value = getattr(server, key)
            if value and not Path(value).is_absolute():
                changes[key] = str((directory / value).absolute())
        push = self.push
        if push.extra_ca_file and not Path(push.extra_ca_file).is_absolute():
            push = dataclasses.replace(push, extra_ca_file=str((directory / push.extra_ca_file).absolute()))
        if not changes and push is self.push:
            return self
        return dataclasses.replace(self, server=dataclasses.replace(server, **changes), push=push)

    def replace(self, **sections: Any) -> Config:
        """A copy with whole sections or section keys replaced: `replace(server={"listen": ...})`."""
        changes: dict[str, Any] = {}
        for name, value in sections.items():
            if name in _SECTIONS and isinstance(value, dict):
                current = dataclasses.asdict(getattr(self, name))
                current.update(value)
                value = _build_section(_SECTIONS[name], current, f"{self.source}: [{name}]")
            changes[name] = value
        return dataclasses.replace(self, **changes)


_SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "storage": StorageConfig,
    "limits": LimitsConfig,
    "auth": AuthConfig,
    "push": PushConfig,
    "logging": LoggingConfig,
    "metrics": MetricsConfig,
}


class _FieldError(Exception):
    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _field(key: str, check: Callable[[], object]) -> None:
    try:
        check()
    except ValueError as exc:
        raise _FieldError(key, str(exc)) from None


def _build_section(cls: type, table: Mapping[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            raise ConfigError(f"{where} {key}: unknown key (known: {', '.join(fields)})")
        kwargs[key] = _coerce(hints[key], value, f"{where} {key}")
    section = cls(**kwargs)
    try:
        section.validate()
    except _FieldError as exc:
        raise ConfigError(f"{where} {exc.key}: {exc}") from None
    return section


def _no_nul(value: str, where: str) -> None:
    # TOML allows "\u0000"; no path, address or name we use may hold it (the OS refuses it with a ValueError).
    if "\0" in value:
        raise ConfigError(f"{where}: must not contain a NUL character (\\u0000), got {value!r}")


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: must be a string, got {value!r}")
        _no_nul(value, where)
        return value
    if typing.get_origin(hint) is tuple:
        # TOML gives lists; Config.replace() hands back the tuples a section already holds.
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: must be a list of strings, got {value!r}")
        for item in value:
            _no_nul(item, where)
        return tuple(value)
    raise AssertionError(f"unsupported config type {hint}")
