"""The `jmapled` command line: serve, dev, user, token, grant, check, and the plugins' own commands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import fcntl
import gc
import getpass
import importlib
import importlib.metadata
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import sqlite3
import ssl
import stat
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from jmaple import __version__, users
from jmaple.api.http import AccessLogger
from jmaple.app import DATABASE_FILE, make_app, open_runtime
from jmaple.config import Config, ConfigError, parse_listen
from jmaple.core.capability import BUILTIN_PLUGINS, ENTRY_POINT_GROUP, Command, Plugin, RegistryError
from jmaple.core.context import Runtime
from jmaple.keys import RUNTIME
from jmaple.store.accounts import Conflict, NotFound
from jmaple.store.db import Busy, MigrationFailed, SchemaTooNew, migration_files

log = logging.getLogger("jmaple.cli")

PROG = "jmapled"
DEFAULT_CONFIG = "/etc/jmaple/config.toml"
LOCK_FILE = "jmapled.lock"
DEV_LOGIN = "demo@example.org"
DEV_LISTEN = "127.0.0.1:8080"
DEV_ORIGINS = ("http://localhost:*", "http://127.0.0.1:*")
DEV_PASSWORD_FILE = "dev-password"
SQLITE_HEADER = b"SQLite format 3\x00"
# In-flight requests get this long to finish after SIGTERM; systemd's stop timeout is longer.
SHUTDOWN_GRACE = 10.0

RuntimeJob = Callable[[argparse.Namespace, Runtime], Awaitable[int]]


class CliError(Exception):
    """An expected failure: printed as one line on stderr, exit status 1."""


def is_text(value: str) -> bool:
    """Whether a string is text: an argument or line that was not UTF-8 comes with lone surrogates."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(value: object) -> str:
    """A value fit for the terminal: control and other non-printable characters (an escape sequence in a
    user's name, a byte that was not UTF-8) are written as Python escapes, never sent as they are."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# The built-in commands' arguments that are text stored in the database or sent out (a plugin command's
# may be file names, which need not be UTF-8).
TEXT_ARGUMENTS = {"login": "LOGIN", "user": "USER", "owner": "OWNER", "credential_id": "CREDENTIAL_ID",
                  "name": "--name", "label": "--label", "listen": "--listen"}


def check_text_arguments(args: argparse.Namespace) -> None:
    """Refuse a built-in command's text argument that is not UTF-8 (SQLite could not store it)."""
    if getattr(getattr(args, "job", None), "plugin_command", False):
        return
    for dest, name in TEXT_ARGUMENTS.items():
        value = getattr(args, dest, None)
        if isinstance(value, str) and not is_text(value):
            raise CliError(f"{name} {shown(value)} is not valid UTF-8 text; give it in UTF-8 (check the "
                           f"encoding of your terminal or script)")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors that point at --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def load_config(args: argparse.Namespace) -> Config:
    """The configuration named by --config or --data-dir, else $JMAPLE_CONFIG, else /etc/jmaple/config.toml."""
    config_path = getattr(args, "config", None)
    data_dir = getattr(args, "data_dir", None)
    if config_path and data_dir:
        raise CliError("give either --config FILE or --data-dir DIR, not both")
    if data_dir:
        # Absolute, so the daemon's lock and files do not depend on the directory it was started from.
        return Config.from_dict({"server": {"data_dir": str(Path(data_dir).absolute())}},
                                source=f"--data-dir {data_dir}")
    path = config_path or os.environ.get("JMAPLE_CONFIG")
    if not path:
        if not Path(DEFAULT_CONFIG).exists():
            raise CliError(f"no configuration: give --config FILE or --data-dir DIR "
                           f"(or create {DEFAULT_CONFIG} from config.example.toml)")
        path = DEFAULT_CONFIG
    return Config.load(path)


def prepare_data_dir(config: Config) -> None:
    """Create a missing data directory (private to its owner); refuse to put root's files in another user's."""
    data_dir = config.data_dir
    try:
        info = data_dir.stat()
    except FileNotFoundError:
        data_dir.mkdir(mode=0o700, parents=True)
        return
    if not stat.S_ISDIR(info.st_mode):
        raise CliError(f"data directory {data_dir} is not a directory; fix [server] data_dir")
    # Files root creates there (the database, its WAL) would lock the daemon's own user out.
    if os.geteuid() == 0 and info.st_uid != 0:
        try:
            owner = pwd.getpwuid(info.st_uid).pw_name
        except KeyError:
            owner = str(info.st_uid)
        raise CliError(f"data directory {data_dir} belongs to {owner}; run this as that user "
                       f"(sudo -u {owner} {PROG} ...) so the files stay theirs")
    database = data_dir / DATABASE_FILE
    try:
        with open(database, "rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return
    # Said plainly here rather than as whatever SQLite reports on its first statement.
    if header and header != SQLITE_HEADER:
        raise CliError(f"{database} is not an SQLite database; restore it from a backup, or move it "
                       f"away to start with an empty one")


@contextlib.contextmanager
def data_dir_lock(config: Config) -> Iterator[None]:
    """Hold a lock on the data directory, so that a second daemon refuses to start on it.

    Raises CliError naming the process holding it. With the in-process broker the lock is exclusive;
    with a shared broker (Redis) several daemons may serve one database, so theirs is shared (and still
    keeps out a daemon with the in-process broker, whose clients would miss their changes).
    """
    shared = config.push.broker != "local"
    path = config.data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            pid = f" (pid {holder})" if holder.isdigit() else ""
            if shared:
                raise CliError(f"data directory {config.data_dir} is in use by a jmapled{pid} with "
                               f'[push] broker = "local"; stop it, or give it this Redis broker too') from None
            raise CliError(f"data directory {config.data_dir} is in use by another jmapled{pid}; stop it "
                           f"first, or give this one another data directory") from None
        # Only a sole holder names itself; shared holders just clear a stale pid left by a former one.
        os.ftruncate(fd, 0)
        if not shared:
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def run_with_runtime(args: argparse.Namespace, plugins: Sequence[Plugin], job: RuntimeJob) -> int:
    """Load the configuration, open (creating and migrating) the data directory, and run job in it."""
    config = load_config(args)
    prepare_data_dir(config)

    async def go() -> int:
        async with open_runtime(config, plugins) as runtime:
            return await job(args, runtime)

    return asyncio.run(go())


def sd_notify(message: str) -> None:
    """Tell systemd about our state (Type=notify) when it asked for it through NOTIFY_SOCKET."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):   # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("could not notify systemd at %s: %s", address, exc)


def setup_logging(config: Config) -> None:
    """Log to stderr at [logging] level; journald adds its own timestamps."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=config.logging.level.upper(), stream=sys.stderr, format=fmt)
    # The access log is switched by access_log alone, whatever the level of the other messages.
    logging.getLogger("aiohttp.access").setLevel(logging.INFO)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server_log.filters):
        server_log.addFilter(MalformedRequestFilter())


class MalformedRequestFilter(logging.Filter):
    """Turn aiohttp's ERROR-with-traceback for a request it could not parse (a NUL in a header, a URL
    over 8190 bytes) into one DEBUG line: it is the client's fault, and any client could flood the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        log.debug("%s: %s", record.getMessage(), exc)
        return False


def tls_context(config: Config) -> ssl.SSLContext | None:
    server = config.server
    if not server.tls_certificate:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(server.tls_certificate, server.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise CliError(f"{config.source}: [server] tls_certificate/tls_key: cannot load "
                       f"{server.tls_certificate} with {server.tls_key}: {exc}") from None
    return context


def _remove_stale_socket(path: str) -> None:
    """A Unix socket left by a daemon that died keeps the next one from binding; nobody listens on it."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return
    except FileNotFoundError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)
        except OSError:
            pass


def _urls(addresses: list[Any], scheme: str) -> list[str]:
    out = []
    for address in addresses:
        if isinstance(address, str):
            out.append(f"unix:{address}")
            continue
        host, port = address[0], address[1]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        out.append(f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}")
    return out


def make_runner(app: web.Application, config: Config) -> web.AppRunner:
    """The runner `serve` uses: our access log (paths without query strings) when [logging] access_log."""
    access_log = logging.getLogger("aiohttp.access") if config.logging.access_log else None
    return web.AppRunner(app, access_log=access_log, access_log_class=AccessLogger,
                         shutdown_timeout=SHUTDOWN_GRACE)


ReadyHook = Callable[[web.Application, list[str]], Awaitable[None]]

LISTEN_BACKLOG = 4096   # the kernel caps it at net.core.somaxconn


def tune_gc() -> None:
    """Make full garbage collections rare and short for a long-running server; call once started.

    Each open push stream holds some 55 tracked objects, so with 10,000 of them a full collection walked
    over half a million objects and paused the loop for 0.4-1.4 s. Freezing moves everything alive at
    startup (modules, the app) out of the collector's sight; a higher first threshold makes collections
    rarer (reference counting still frees almost everything at once).
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


async def run_server(config: Config, plugins: Sequence[Plugin], ready: ReadyHook | None = None) -> int:
    """Serve make_app(config) until SIGTERM or SIGINT, then shut down gracefully."""
    context = tls_context(config)
    app = make_app(config, capabilities=plugins)
    runner = make_runner(app, config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            # Shutdown is stuck and the operator insists: SQLite's journal keeps committed data safe.
            log.warning("second %s: exiting at once", signal.Signals(signum).name)
            os._exit(1)
        log.info("%s received, shutting down", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await runner.setup()
        where = parse_listen(config.server.listen)
        if isinstance(where, str):
            _remove_stale_socket(where)
            site: web.BaseSite = web.UnixSite(runner, where, ssl_context=context, backlog=LISTEN_BACKLOG)
        else:
            # A deep backlog, so that a crowd of clients reconnecting at once (thousands of push streams
            # after a proxy restart) waits to be accepted instead of being refused.
            site = web.TCPSite(runner, where[0], where[1], ssl_context=context, backlog=LISTEN_BACKLOG)
        try:
            await site.start()
        except OSError as exc:
            raise CliError(f"cannot listen on {config.server.listen}: {exc.strerror or exc}; stop whatever "
                           f"uses it, or choose another address with --listen or [server] listen") from None
        if isinstance(where, str):
            # The owner and its group (e.g. a reverse proxy added to it) may connect; others may not.
            os.chmod(where, 0o660)
        urls = _urls(runner.addresses, "https" if context else "http")
        log.info("jmapled %s listening on %s (data directory %s)", __version__, ", ".join(urls), config.data_dir)
        if ready is not None:
            await ready(app, urls)
        tune_gc()
        sd_notify(f"READY=1\nSTATUS=listening on {', '.join(urls)}")
        await stop.wait()
        sd_notify("STOPPING=1")
    finally:
        await runner.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info("stopped")
    return 0


def _checked_listen(listen: str) -> str:
    try:
        parse_listen(listen)
    except ValueError as exc:
        raise CliError(f"--listen {listen}: {exc}") from None
    return listen


def cmd_serve(args: argparse.Namespace, plugins: Sequence[Plugin]) -> int:
    config = load_config(args)
    if args.listen:
        config = config.replace(server={"listen": _checked_listen(args.listen)})
    setup_logging(config)
    prepare_data_dir(config)
    with data_dir_lock(config):
        return asyncio.run(run_server(config, plugins))


async def ensure_demo_user(runtime: Runtime) -> str | None:
    """Create the demo user once and return its password; None when it exists with a password we don't know."""
    remembered = runtime.config.data_dir / DEV_PASSWORD_FILE
    try:
        await users.find_user(runtime, DEV_LOGIN)
    except NotFound:
        password = secrets.token_urlsafe(12)
        await users.create_user(runtime, DEV_LOGIN, "Demo", password)
        # Kept so that `jmapled dev --data-dir DIR` shows the same credentials on every start.
        fd = os.open(remembered, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
        return password
    try:
        return remembered.read_text().strip() or None
    except FileNotFoundError:
        return None


async def seed_dev_data(runtime: Runtime) -> None:
    """Let each plugin fill the demo account (once per data directory: the plugin checks)."""
    user = await users.find_user(runtime, DEV_LOGIN)
    for plugin in runtime.registry.plugins:
        if plugin.dev_seed is not None:
            try:
                await plugin.dev_seed(runtime, user.account_id)
            except Exception:
                # A demo without its sample data is still worth serving.
                log.exception("plugin %s could not add its demo data", plugin.name)


def _dev_banner(config: Config, url: str, password: str | None, throwaway: bool) -> str:
    base_url = config.server.base_url.rstrip("/") or url
    curl = "curl"
    if base_url.startswith("unix:"):
        curl = f"curl --unix-socket {base_url[5:]}"
        base_url = "http://localhost"
    shown = password or f"(unchanged; set one with `{PROG} user passwd {DEV_LOGIN} --data-dir {config.data_dir}`)"
    kept = "throwaway: deleted when this stops" if throwaway else "kept"
    return (f"jmapled dev {__version__}: a JMAP server for trying out clients, not for real mail\n"
            f"  data:     {config.data_dir} ({kept})\n"
            f"  session:  {base_url}/jmap/session\n"
            f"  login:    {DEV_LOGIN}\n"
            f"  password: {shown}\n"
            f"  CORS:     {', '.join(config.server.cors_origins)}\n"
            f"  try:      {curl} -u {DEV_LOGIN}:{password or 'PASSWORD'} {base_url}/jmap/session\n"
            f"Stop it with Ctrl-C.")


def cmd_dev(args: argparse.Namespace, plugins: Sequence[Plugin]) -> int:
    listen = _checked_listen(args.listen) if args.listen else DEV_LISTEN
    # Only an explicit --config or --data-dir: $JMAPLE_CONFIG may well name a production server.
    throwaway = not (args.config or args.data_dir)
    base = None if throwaway else load_config(args)
    temp_dir = tempfile.mkdtemp(prefix="jmaple-dev-") if throwaway else None
    try:
        if base is None:
            # Cheap settings: nothing here outlives the process.
            base = Config.from_dict({"server": {"data_dir": temp_dir}, "storage": {"synchronous": "NORMAL"},
                                     "auth": {"scrypt_n": 1024}}, source="jmapled dev")
        origins = tuple(dict.fromkeys((*base.server.cors_origins, *DEV_ORIGINS)))
        config = base.replace(server={"listen": listen, "cors_origins": origins},
                              push={"allow_private_targets": True}, dev=True, trace=args.trace)
        setup_logging(config)

        async def ready(app: web.Application, urls: list[str]) -> None:
            password = await ensure_demo_user(app[RUNTIME])
            await seed_dev_data(app[RUNTIME])
            print(_dev_banner(config, urls[0], password, throwaway), flush=True)

        prepare_data_dir(config)
        with data_dir_lock(config):
            return asyncio.run(run_server(config, plugins, ready))
    finally:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def read_password(args: argparse.Namespace, login: str) -> str:
    """One line from stdin with --password-stdin, else asked twice on the terminal without echo."""
    not_text = CliError("the password is not valid UTF-8 text; give it in UTF-8 (check the encoding of your "
                        "terminal or of what you pipe in)")
    try:
        if args.password_stdin:
            password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
        else:
            if not sys.stdin.isatty():
                raise CliError("no terminal to ask for the password on; pipe it in with --password-stdin")
            password = getpass.getpass(f"Password for {shown(login)}: ")
            if getpass.getpass("Repeat it: ") != password:
                raise CliError("the two passwords differ; run the command again")
    except UnicodeDecodeError:   # a strict UTF-8 stdin; otherwise the bytes arrive as lone surrogates
        raise not_text from None
    if not password:
        raise CliError("the password is empty; give a non-empty one")
    if not is_text(password):
        raise not_text
    return password


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[shown(cell) for cell in row] for row in (header, *rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


async def cmd_user_add(args: argparse.Namespace, runtime: Runtime) -> int:
    try:
        users.check_login(args.login)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    password = read_password(args, args.login)
    try:
        user = await users.create_user(runtime, args.login, args.name, password)
    except Conflict as exc:
        raise CliError(f"{exc}; to change their password use `{PROG} user passwd {args.login}`") from None
    print(f"added user {shown(user.login)} with account {user.account_id}")
    return 0


async def cmd_user_passwd(args: argparse.Namespace, runtime: Runtime) -> int:
    await users.find_user(runtime, args.login)   # fail before asking for a password
    await users.set_password(runtime, args.login, read_password(args, args.login))
    print(f"changed the password of {shown(args.login)}")
    return 0


async def cmd_user_del(args: argparse.Namespace, runtime: Runtime) -> int:
    if not args.yes:
        raise CliError(f"this deletes {args.login}, their account and everything in it; add --yes to confirm")
    await users.delete_user(runtime, args.login)
    print(f"deleted user {shown(args.login)}")
    return 0


async def cmd_user_list(args: argparse.Namespace, runtime: Runtime) -> int:
    found = await users.list_users(runtime)
    if not found:
        print(f"no users yet; add one with `{PROG} user add LOGIN`", file=sys.stderr)
        return 0
    rows = []
    for user, access in found:
        shared = ", ".join(f"{a.name} ({'read-write' if a.may_write else 'read-only'})"
                           for a in access if not a.is_personal)
        rows.append((user.login, user.account_id, user.name, shared))
    _table(("LOGIN", "ACCOUNT", "NAME", "ALSO USES"), rows)
    return 0


async def cmd_token_create(args: argparse.Namespace, runtime: Runtime) -> int:
    kind = "app-password" if args.app_password else "token"
    credential_id, secret = await users.create_credential(runtime, args.login, kind, args.label)
    how = (f"HTTP Basic as {shown(args.login)} with this password" if args.app_password
           else "Authorization: Bearer with this token")
    print(f"created {kind} {credential_id} for {shown(args.login)}; use {how}; it is shown only this once:",
          file=sys.stderr)
    print(secret)   # alone on stdout, so scripts can capture it
    return 0


async def cmd_token_list(args: argparse.Namespace, runtime: Runtime) -> int:
    found = await users.list_credentials(runtime, args.login)
    if not found:
        print(f"{shown(args.login)} has no tokens or app passwords", file=sys.stderr)
        return 0
    _table(("ID", "KIND", "CREATED", "LABEL"), [(c.id, c.kind, _utc(c.created_at), c.label) for c in found])
    return 0


async def cmd_token_revoke(args: argparse.Namespace, runtime: Runtime) -> int:
    await users.revoke_credential(runtime, args.login, args.credential_id)
    print(f"revoked {shown(args.credential_id)} of {shown(args.login)}")
    return 0


async def cmd_grant(args: argparse.Namespace, runtime: Runtime) -> int:
    account_id = await users.grant(runtime, args.user, args.owner, args.read_write)
    rights = "read and write" if args.read_write else "read"
    print(f"{shown(args.user)} may now {rights} account {account_id} ({shown(args.owner)})")
    return 0


async def cmd_revoke_grant(args: argparse.Namespace, runtime: Runtime) -> int:
    account_id = await users.revoke_grant(runtime, args.user, args.owner)
    print(f"{shown(args.user)} may no longer use account {account_id} ({shown(args.owner)})")
    return 0


async def cmd_check(args: argparse.Namespace, runtime: Runtime) -> int:
    problems: list[str] = []
    print(f"config: {runtime.config.source}: valid")
    versions = await runtime.db.schema_versions()
    for namespace, package in runtime.registry.migrations():
        latest = max(migration_files(package), default=0)
        have = versions.get(namespace, 0)
        if have != latest:
            problems.append(f"schema {namespace!r} is at version {have}, this Jmaple expects {latest}")
    print("schema: " + ", ".join(f"{ns} {v}" for ns, v in sorted(versions.items())))
    async with runtime.db.read() as conn:
        # integrity_check walks every page and index; foreign_key_check finds rows whose parent went.
        integrity = [r[0] for r in await conn.all("PRAGMA integrity_check")]
        foreign = await conn.all("PRAGMA foreign_key_check")
        blob_problems = await runtime.blobs.check(conn)
    if integrity != ["ok"]:
        problems.extend(f"database: {line}" for line in integrity)
    problems.extend(f"database: a row of {table} refers to a missing {parent} row" for table, _, parent, _ in foreign)
    print(f"database: {runtime.db.path}: {'ok' if integrity == ['ok'] and not foreign else 'damaged'}")
    problems.extend(blob_problems)
    print(f"blobs: {runtime.blobs.root}: {'ok' if not blob_problems else f'{len(blob_problems)} problems'}")
    for plugin in runtime.registry.plugins:
        for check in plugin.checks:
            try:
                found = await check(runtime)
            except Exception as exc:
                found = [f"its check failed: {exc!r}"]
            problems.extend(f"{plugin.name}: {p}" for p in found)
    for problem in problems:
        print(f"problem: {problem}")
    if problems:
        raise CliError(f"check found {len(problems)} problem{'s' if len(problems) != 1 else ''} (listed above)")
    print("no problems found")
    return 0


def installed_plugins() -> list[Plugin]:
    """The plugins Registry.load would find, enabled or not (their commands belong in --help either way)."""
    found: dict[str, Plugin] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            found.setdefault(ep.name, ep.load())
        except Exception as exc:
            raise RegistryError(f"plugin {ep.name!r} ({ep.value}) cannot be loaded: {exc}") from exc
    for name, target in BUILTIN_PLUGINS.items():
        if name not in found:
            module, _, attr = target.partition(":")
            found[name] = getattr(importlib.import_module(module), attr)
    return list(found.values())


def _add_location(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # Accepted before and after the command; the subcommand's copy must not overwrite the top one.
    default = None if top else argparse.SUPPRESS
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--config", metavar="FILE", default=default,
                       help=f"configuration file (default: $JMAPLE_CONFIG, else {DEFAULT_CONFIG})")
    group.add_argument("--data-dir", metavar="DIR", default=default,
                       help="use the default configuration with this data directory")


def _plugin_job(plugin_name: str, command: Command) -> RuntimeJob:
    async def job(args: argparse.Namespace, runtime: Runtime) -> int:
        if not any(p.name == plugin_name for p in runtime.registry.plugins):
            raise CliError(f"the {plugin_name} plugin is switched off in {runtime.config.source} "
                           f"([capabilities.{plugin_name}] enabled = false)")
        return await command.run(args, runtime)
    job.plugin_command = True   # type: ignore[attr-defined]  # its arguments are the plugin's to check
    return job


def build_parser(plugins: Sequence[Plugin] = ()) -> argparse.ArgumentParser:
    """The whole command line, built-in commands first, then those of installed and `plugins` plugins."""
    parser = _Parser(prog=PROG, description="Jmaple, a JMAP server: run it, and manage its users.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_location(parser, top=True)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def leaf(group: Any, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        sub = group.add_parser(name, help=help, description=description or help)
        _add_location(sub, top=False)
        return sub

    def password_stdin(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--password-stdin", action="store_true",
                         help="read the password as one line from standard input instead of asking for it")

    sub = leaf(commands, "serve", "run the JMAP server (the daemon)",
               "Run the JMAP server until SIGTERM or SIGINT. It holds a lock on the data directory; "
               "the other commands may run beside it.")
    sub.add_argument("--listen", metavar="HOST:PORT", help="listen here instead of [server] listen "
                     "(HOST:PORT, [V6]:PORT or unix:/path)")
    sub.set_defaults(handler=cmd_serve)

    sub = leaf(commands, "dev", "run a throwaway server with a demo user, for client development",
               f"Run a server for client development: a temporary data directory (unless --data-dir or "
               f"--config), a demo user {DEV_LOGIN} whose password it prints, {DEV_LISTEN} by default, and "
               f"CORS allowed from {' and '.join(DEV_ORIGINS)}.")
    sub.add_argument("--listen", metavar="HOST:PORT", help=f"listen here (default {DEV_LISTEN})")
    sub.add_argument("--trace", action="store_true", help="print every JMAP request and response")
    sub.set_defaults(handler=cmd_dev)

    user = commands.add_parser("user", help="add, change, delete and list users",
                               description="Add, change, delete and list users.")
    user_commands = user.add_subparsers(title="commands", metavar="COMMAND", required=True)
    sub = leaf(user_commands, "add", "add a user with their personal account")
    sub.add_argument("login", metavar="LOGIN", help="the login, usually a mail address")
    sub.add_argument("--name", default="", help="the user's display name")
    password_stdin(sub)
    sub.set_defaults(job=cmd_user_add)
    sub = leaf(user_commands, "passwd", "set a user's password")
    sub.add_argument("login", metavar="LOGIN")
    password_stdin(sub)
    sub.set_defaults(job=cmd_user_passwd)
    sub = leaf(user_commands, "del", "delete a user, their account and everything in it")
    sub.add_argument("login", metavar="LOGIN")
    sub.add_argument("--yes", action="store_true", help="confirm the deletion")
    sub.set_defaults(job=cmd_user_del)
    sub = leaf(user_commands, "list", "list users and the accounts shared with them")
    sub.set_defaults(job=cmd_user_list)

    token = commands.add_parser("token", help="create, list and revoke bearer tokens and app passwords",
                                description="Create, list and revoke bearer tokens and app passwords.")
    token_commands = token.add_subparsers(title="commands", metavar="COMMAND", required=True)
    sub = leaf(token_commands, "create", "create a bearer token (or an app password) and print it once")
    sub.add_argument("login", metavar="LOGIN")
    sub.add_argument("--label", default="", help="what it is for, e.g. the client's name")
    sub.add_argument("--app-password", action="store_true",
                     help="make an app password for HTTP Basic instead of a bearer token")
    sub.set_defaults(job=cmd_token_create)
    sub = leaf(token_commands, "list", "list a user's tokens and app passwords (never their secrets)")
    sub.add_argument("login", metavar="LOGIN")
    sub.set_defaults(job=cmd_token_list)
    sub = leaf(token_commands, "revoke", "revoke a token or app password; it stops working within a second")
    sub.add_argument("login", metavar="LOGIN")
    sub.add_argument("credential_id", metavar="CREDENTIAL_ID", help="as shown by token list")
    sub.set_defaults(job=cmd_token_revoke)

    sub = leaf(commands, "grant", "let a user use another user's account",
               "Let USER use the account of OWNER (a login or an account id), read-only or read-write.")
    sub.add_argument("user", metavar="USER", help="the login of the user given access")
    sub.add_argument("owner", metavar="OWNER", help="the owner's login, or the account id")
    rights = sub.add_mutually_exclusive_group(required=True)
    rights.add_argument("--read-only", action="store_false", dest="read_write", help="read, never write")
    rights.add_argument("--read-write", action="store_true", dest="read_write", help="read and write")
    sub.set_defaults(job=cmd_grant)
    sub = leaf(commands, "revoke-grant", "take back a grant",
               "Take back what `grant USER OWNER` gave; the session shows it within a second.")
    sub.add_argument("user", metavar="USER")
    sub.add_argument("owner", metavar="OWNER", help="the owner's login, or the account id")
    sub.set_defaults(job=cmd_revoke_grant)

    sub = leaf(commands, "check", "check the configuration, the database and the blob files",
               "Check the configuration, the schema versions, the database's integrity, the blob files "
               "and whatever each plugin checks; exit 1 when anything is wrong.")
    sub.set_defaults(job=cmd_check)

    taken = set(commands.choices)
    for plugin in [*installed_plugins(), *plugins]:
        for command in plugin.commands:
            if command.name in taken:
                raise RegistryError(f"plugin {plugin.name!r} adds a command {command.name!r}, "
                                    f"which another part of jmapled already has")
            taken.add(command.name)
            sub = leaf(commands, command.name, command.help)
            command.add_arguments(sub)
            sub.set_defaults(job=_plugin_job(plugin.name, command))
    return parser


def _describe(exc: BaseException) -> str:
    """One line that says what went wrong and what to do next."""
    if isinstance(exc, Busy):
        return ("the database stayed locked by another process longer than [storage] busy_timeout; "
                "try again")
    if isinstance(exc, MigrationFailed):
        return f"{exc}; the database was left as it was; please report this"
    if isinstance(exc, sqlite3.DatabaseError):
        return (f"database {DATABASE_FILE}: {exc}; run `{PROG} check`, and restore a backup "
                f"if the file is damaged")
    if isinstance(exc, OSError) and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror or exc}"
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            text += "; run as the user that owns the data directory, or fix its permissions"
        return text
    return str(exc)


EXPECTED = (CliError, ConfigError, RegistryError, NotFound, Conflict, SchemaTooNew, MigrationFailed, Busy,
            sqlite3.DatabaseError, OSError)


def main(argv: Sequence[str] | None = None, *, plugins: Sequence[Plugin] = ()) -> int:
    """Run one `jmapled` command; returns the exit status. `plugins` are added beside the installed ones."""
    try:
        parser = build_parser(plugins)
    except RegistryError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:   # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 0
    try:
        check_text_arguments(args)
        if hasattr(args, "job"):
            return run_with_runtime(args, plugins, args.job)
        return args.handler(args, plugins)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except EXPECTED as exc:
        message = shown(" ".join(_describe(exc).split("\n")))
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
