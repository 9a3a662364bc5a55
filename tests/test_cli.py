"""The `jmapled` command line, run for real: in-process main() and subprocesses beside a running daemon."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jmaple.app import open_runtime
from jmaple.auth import verify_password
from jmaple.cli import main
from jmaple.config import Config
from jmaple.core.capability import Command, Plugin
from jmaple.store import accounts
from jmaple.store import push as push_store

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = ROOT / "jmapled"
# Nothing from the caller's environment may point the CLI at a real server or at systemd.
ENV = {k: v for k, v in os.environ.items() if k not in ("JMAPLE_CONFIG", "NOTIFY_SOCKET", "JOURNAL_STREAM")}
# urllib would go through $http_proxy; the daemon is on loopback.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(autouse=True)
def no_ambient_config(monkeypatch):
    monkeypatch.delenv("JMAPLE_CONFIG", raising=False)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


def run(capsys, *args: str, stdin: str | None = None, **kwargs: Any) -> tuple[int, str, str]:
    """main() in this process; returns (exit status, stdout, stderr)."""
    saved = sys.stdin
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    try:
        code = main(list(args), **kwargs)
    finally:
        sys.stdin = saved
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    """The single line a failing command prints on stderr."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.match(r"^jmapled( [a-z-]+)*: error: ", lines[0]), lines[0]
    return lines[0]


def add_user(capsys, data_dir: Path, login: str, password: str = "secret") -> str:
    """Add a user through the CLI; returns their account id."""
    code, out, err = run(capsys, "user", "add", login, "--password-stdin", "--data-dir", str(data_dir),
                         stdin=password + "\n")
    assert code == 0, err
    return re.search(r"with account (\S+)", out).group(1)


def stored_user(data_dir: Path, login: str) -> accounts.User | None:
    async def look() -> accounts.User | None:
        async with open_runtime(Config.from_dict({"server": {"data_dir": str(data_dir)}})) as runtime:
            async with runtime.db.read() as conn:
                return await accounts.user_by_login(conn, login)
    return asyncio.run(look())


COMMANDS = [[], ["serve"], ["dev"], ["user"], ["user", "add"], ["user", "passwd"], ["user", "del"],
            ["user", "list"], ["token"], ["token", "create"], ["token", "list"], ["token", "revoke"],
            ["grant"], ["revoke-grant"], ["check"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "jmapled")
def test_every_command_has_help(capsys, command):
    code, out, err = run(capsys, *command, "--help")
    assert code == 0, err
    assert out.startswith(f"usage: {' '.join(['jmapled', *command])}")


def test_a_usage_error_is_one_line_pointing_at_help(capsys):
    code, out, err = run(capsys, "user", "add")
    assert code == 2
    assert "LOGIN" in one_line_error(err) and "--help" in err


def test_users_are_added_listed_changed_and_deleted(capsys, data_dir):
    account = add_user(capsys, data_dir, "alice@example.org")
    code, out, err = run(capsys, "user", "add", "bob@example.org", "--name", "Bob Example", "--password-stdin",
                         "--data-dir", str(data_dir), stdin="hunter2\n")
    assert code == 0, err
    code, out, err = run(capsys, "--data-dir", str(data_dir), "user", "list")   # options before the command too
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["LOGIN", "ACCOUNT", "NAME", "ALSO", "USES"]
    assert lines[1].split() == ["alice@example.org", account]
    assert lines[2].split()[0] == "bob@example.org" and "Bob Example" in lines[2]

    code, out, err = run(capsys, "user", "passwd", "alice@example.org", "--password-stdin", "--data-dir",
                         str(data_dir), stdin="new password\r\n")
    assert code == 0, err
    assert verify_password("new password", stored_user(data_dir, "alice@example.org").password_hash)

    code, out, err = run(capsys, "user", "del", "alice@example.org", "--yes", "--data-dir", str(data_dir))
    assert code == 0, err
    assert stored_user(data_dir, "alice@example.org") is None
    assert stored_user(data_dir, "bob@example.org") is not None


def test_user_errors_are_one_line_that_say_what_to_do(capsys, data_dir):
    add_user(capsys, data_dir, "alice@example.org")
    d = ("--data-dir", str(data_dir))
    cases = [
        (("user", "add", "alice@example.org", "--password-stdin", *d), "x\n", "already exists.*user passwd"),
        (("user", "add", "bad login", "--password-stdin", *d), "x\n", "not a valid login"),
        (("user", "add", "carol@example.org", "--password-stdin", *d), "\n", "password is empty"),
        (("user", "add", "carol@example.org", *d), "x\n", "--password-stdin"),   # stdin is no terminal
        (("user", "passwd", "nobody@example.org", "--password-stdin", *d), "x\n", "no user.*user list"),
        (("user", "del", "alice@example.org", *d), None, "--yes"),
        (("user", "del", "nobody@example.org", "--yes", *d), None, "no user"),
    ]
    for args, stdin, reason in cases:
        code, out, err = run(capsys, *args, stdin=stdin)
        assert code == 1, args
        assert re.search(reason, one_line_error(err)), (args, err)
    assert stored_user(data_dir, "alice@example.org") is not None
    assert stored_user(data_dir, "carol@example.org") is None


def test_tokens_are_created_once_listed_and_revoked(capsys, data_dir):
    add_user(capsys, data_dir, "alice@example.org")
    d = ("--data-dir", str(data_dir))
    code, out, err = run(capsys, "token", "create", "alice@example.org", "--label", "phone", *d)
    assert code == 0, err
    token = out.strip()
    assert token.startswith("jmat_") and "\n" not in token   # the secret alone on stdout
    token_id = re.search(r"created token (\S+) ", err).group(1)
    code, out, err = run(capsys, "token", "create", "alice@example.org", "--app-password", *d)
    assert code == 0, err
    assert out.strip().startswith("jmap_")
    app_id = re.search(r"created app-password (\S+) ", err).group(1)

    code, out, err = run(capsys, "token", "list", "alice@example.org", *d)
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["ID", "KIND", "CREATED", "LABEL"]
    assert {(r[0], r[1]) for r in rows[1:]} == {(token_id, "token"), (app_id, "app-password")}
    assert token not in out

    code, out, err = run(capsys, "token", "revoke", "alice@example.org", token_id, *d)
    assert code == 0, err
    code, out, err = run(capsys, "token", "list", "alice@example.org", *d)
    assert [line.split()[0] for line in out.splitlines()[1:]] == [app_id]
    code, out, err = run(capsys, "token", "revoke", "alice@example.org", token_id, *d)
    assert code == 1
    assert "token list" in one_line_error(err)
    code, out, err = run(capsys, "token", "create", "nobody@example.org", *d)
    assert code == 1
    assert "no user" in one_line_error(err)


def test_grants_are_given_listed_and_taken_back(capsys, data_dir):
    add_user(capsys, data_dir, "alice@example.org")
    bob_account = add_user(capsys, data_dir, "bob@example.org")
    d = ("--data-dir", str(data_dir))
    code, out, err = run(capsys, "grant", "alice@example.org", "bob@example.org", "--read-only", *d)
    assert code == 0, err
    code, out, err = run(capsys, "user", "list", *d)
    assert "bob@example.org (read-only)" in out.splitlines()[1]
    # OWNER may also be the account id; a second grant replaces the first.
    code, out, err = run(capsys, "grant", "alice@example.org", bob_account, "--read-write", *d)
    assert code == 0, err
    code, out, err = run(capsys, "user", "list", *d)
    assert "bob@example.org (read-write)" in out.splitlines()[1]

    code, out, err = run(capsys, "revoke-grant", "alice@example.org", "bob@example.org", *d)
    assert code == 0, err
    code, out, err = run(capsys, "user", "list", *d)
    assert "bob@example.org" not in out.splitlines()[1]

    for args, status, reason in [
        (("revoke-grant", "alice@example.org", "bob@example.org"), 1, "no grant"),
        (("grant", "alice@example.org", "alice@example.org", "--read-write"), 1, "own account"),
        (("grant", "alice@example.org", "nobody@example.org", "--read-only"), 1, "no user or account"),
        (("grant", "alice@example.org", "bob@example.org"), 2, "--read-only --read-write"),
        (("grant", "alice@example.org", "bob@example.org", "--read-only", "--read-write"), 2, "not allowed"),
    ]:
        code, out, err = run(capsys, *args, *d)
        assert code == status, args
        assert reason in one_line_error(err), err


def test_check_passes_on_a_sound_data_directory(capsys, data_dir):
    add_user(capsys, data_dir, "alice@example.org")
    code, out, err = run(capsys, "check", "--data-dir", str(data_dir))
    assert code == 0, out + err
    assert re.search(r"^schema: core \d+", out, re.M)
    assert out.strip().endswith("no problems found")


def test_check_reports_missing_and_damaged_blob_files(capsys, data_dir):
    add_user(capsys, data_dir, "alice@example.org")
    user = stored_user(data_dir, "alice@example.org")

    async def upload() -> list[str]:
        async with open_runtime(Config.from_dict({"server": {"data_dir": str(data_dir)}})) as runtime:
            ids = []
            for data in (b"first blob", b"second blob"):
                stored = await runtime.blobs.upload(runtime.db, user.account_id, user.id, data, "text/plain")
                ids.append(stored.blob_id)
            return ids

    missing, damaged = asyncio.run(upload())
    blob_root = data_dir / "blobs"
    (blob_root / missing[1:3] / missing).unlink()
    (blob_root / damaged[1:3] / damaged).write_bytes(b"short")
    code, out, err = run(capsys, "check", "--data-dir", str(data_dir))
    assert code == 1
    problems = [line for line in out.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 2, out
    assert any(missing in p and "missing" in p for p in problems)
    assert any(damaged in p and "5 bytes, expected 11" in p for p in problems)
    assert "2 problems" in one_line_error(err)


def test_check_on_a_file_that_is_no_database(capsys, data_dir):
    data_dir.mkdir()
    (data_dir / "jmaple.sqlite3").write_bytes(b"this is not SQLite, just garbage " * 200)
    code, out, err = run(capsys, "check", "--data-dir", str(data_dir))
    assert code == 1
    assert "is not an SQLite database; restore it from a backup" in one_line_error(err)


def test_a_database_from_a_newer_jmaple_is_refused(capsys, data_dir):
    add_user(capsys, data_dir, "alice@example.org")
    with sqlite3.connect(data_dir / "jmaple.sqlite3") as db:
        db.execute("INSERT INTO schema_migrations VALUES ('core', 99, '0099_future.sql', 0)")
    code, out, err = run(capsys, "user", "list", "--data-dir", str(data_dir))
    assert code == 1
    assert "newer jmapled" in one_line_error(err)


def test_configuration_errors_name_the_file_and_the_key(capsys, tmp_path, data_dir):
    config = tmp_path / "config.toml"
    config.write_text(f"[server]\ndata_dir = '{data_dir}'\n[storage]\nreaders = 'many'\n")
    code, out, err = run(capsys, "check", "--config", str(config))
    assert code == 1
    assert f"{config}: [storage] readers: must be an integer" in one_line_error(err)

    config.write_text(f"[server]\ndata_dir = '{data_dir}'\n[capabilities.nope]\nsetting = 1\n")
    code, out, err = run(capsys, "check", "--config", str(config))
    assert code == 1
    assert "[capabilities.nope]: no such plugin" in one_line_error(err)

    code, out, err = run(capsys, "user", "list")
    assert code == 1
    assert "--config FILE or --data-dir DIR" in one_line_error(err)
    code, out, err = run(capsys, "--config", str(config), "user", "list", "--data-dir", str(data_dir))
    assert code == 1
    assert "not both" in one_line_error(err)
    code, out, err = run(capsys, "serve", "--data-dir", str(data_dir), "--listen", "nowhere")
    assert code == 1
    assert "--listen nowhere" in one_line_error(err)


def test_a_config_file_names_the_data_directory(capsys, tmp_path):
    (tmp_path / "etc").mkdir()
    config = tmp_path / "etc" / "config.toml"
    config.write_text("[server]\ndata_dir = '../state'\n")
    add_user(capsys, tmp_path / "state", "alice@example.org")
    code, out, err = run(capsys, "user", "list", "--config", str(config))
    assert code == 0, err
    assert "alice@example.org" in out


def test_tls_files_that_cannot_be_loaded_stop_serve_with_one_line(capsys, tmp_path, data_dir):
    config = tmp_path / "config.toml"
    config.write_text(f"[server]\ndata_dir = '{data_dir}'\ntls_certificate = 'missing.pem'\n"
                      f"tls_key = 'missing.key'\n[logging]\nlevel = 'error'\n")
    code, out, err = run(capsys, "serve", "--config", str(config))
    assert code == 1
    assert "[server] tls_certificate/tls_key: cannot load" in one_line_error(err)


def test_plugins_bring_their_own_commands(capsys, data_dir):
    async def hello(args: Any, runtime: Any) -> int:
        print(f"hello {args.who}, from {runtime.registry.plugins[-1].name}")
        return 3

    plugin = Plugin(name="greeter", commands=(
        Command("hello", "greet someone", lambda p: p.add_argument("--who", default="world"), hello),))
    code, out, err = run(capsys, "--help", plugins=[plugin])
    assert "hello" in out and "greet someone" in out
    code, out, err = run(capsys, "hello", "--who", "alice", "--data-dir", str(data_dir), plugins=[plugin])
    assert (code, out) == (3, "hello alice, from greeter\n")
    clash = Plugin(name="clash", commands=(Command("user", "clash", lambda p: None, hello),))
    code, out, err = run(capsys, "--help", plugins=[clash])
    assert code == 1
    assert "'user'" in one_line_error(err)


def test_the_launcher_runs_the_cli_from_the_checkout(tmp_path):
    assert LAUNCHER.read_text().startswith("#!/usr/bin/env python3\n")
    assert os.access(LAUNCHER, os.X_OK)
    done = subprocess.run([sys.executable, str(LAUNCHER), "user", "add", "alice@example.org", "--password-stdin",
                           "--data-dir", str(tmp_path / "data")], input="pw\n", capture_output=True, text=True,
                          env=ENV, cwd=tmp_path, timeout=30)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([sys.executable, str(LAUNCHER), "user", "list", "--data-dir", str(tmp_path / "data")],
                          capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "alice@example.org" in done.stdout


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.rst").read_text()
    command = next(line.strip() for line in readme.splitlines() if "pytest" in line and "venv" in line)
    ci = (ROOT / ".ci" / "run").read_text()
    assert command in ci.splitlines()
    assert os.access(ROOT / ".ci" / "run", os.X_OK)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def jmapled(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process, as an operator runs it next to the daemon."""
    return subprocess.run([sys.executable, "-m", "jmaple.cli", *args], input=stdin, capture_output=True,
                          text=True, env=ENV, timeout=30)


def get(url: str, auth: str | None = None, headers: dict[str, str] | None = None,
        method: str = "GET") -> tuple[int, Any, dict[str, str]]:
    request = urllib.request.Request(url, headers={**({"Authorization": auth} if auth else {}), **(headers or {})},
                                     method=method)
    try:
        with HTTP.open(request, timeout=5) as response:
            body = response.read()
            return response.status, json.loads(body) if body else None, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, None, dict(exc.headers)


def basic(login: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()


def eventually(check: Callable[[], bool], within: float, what: str) -> float:
    """Poll check until it holds; returns how long that took, or fails after `within` seconds."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > within:
            pytest.fail(f"not within {within} s: {what}")
        time.sleep(0.02)
    return time.monotonic() - start


# The daemon must see what the CLI did within 1 s; the margin covers polling on a loaded CI machine.
WITHIN = 1.25


class Daemon:
    """`jmapled ARGS --listen 127.0.0.1:PORT` in its own process, its output in a file."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"jmapled-{self.port}.log"
        self.out_path = tmp_path / f"jmapled-{self.port}.out"
        with open(self.log_path, "w") as log, open(self.out_path, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jmaple.cli", *args, "--listen", f"127.0.0.1:{self.port}"],
                stdout=out, stderr=log, env={**ENV, **(env or {})})

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self) -> None:
        def healthy() -> bool:
            assert self.proc.poll() is None, f"jmapled exited early:\n{self.log}"
            try:
                return get(self.url + "/healthz")[0] == 200
            except OSError:
                return False
        eventually(healthy, 20, "jmapled answers /healthz")

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=20)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()


def test_the_daemon_sees_what_the_cli_does_within_a_second(tmp_path, daemons):
    data = str(tmp_path / "data")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(20)
    daemon = Daemon(tmp_path, "serve", "--data-dir", data, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    daemons.append(daemon)
    daemon.wait_ready()
    assert b"READY=1" in notify.recv(4096)
    session = daemon.url + "/jmap/session"
    alice = basic("alice@example.org", "first password")

    assert get(session, alice)[0] == 401
    done = jmapled("user", "add", "alice@example.org", "--password-stdin", "--data-dir", data,
                   stdin="first password\n")
    assert done.returncode == 0, done.stderr
    eventually(lambda: get(session, alice)[0] == 200, WITHIN, "a new user can log in")
    assert get(session, alice)[1]["username"] == "alice@example.org"

    done = jmapled("token", "create", "alice@example.org", "--data-dir", data)
    assert done.returncode == 0, done.stderr
    bearer = "Bearer " + done.stdout.strip()
    token_id = re.search(r"created token (\S+) ", done.stderr).group(1)
    assert get(session, bearer)[0] == 200
    done = jmapled("token", "revoke", "alice@example.org", token_id, "--data-dir", data)
    assert done.returncode == 0, done.stderr
    eventually(lambda: get(session, bearer)[0] == 401, WITHIN, "a revoked token stops working")

    done = jmapled("user", "add", "bob@example.org", "--password-stdin", "--data-dir", data, stdin="bob\n")
    assert done.returncode == 0, done.stderr
    bob_account = re.search(r"with account (\S+)", done.stdout).group(1)
    assert bob_account not in get(session, alice)[1]["accounts"]
    done = jmapled("grant", "alice@example.org", "bob@example.org", "--read-only", "--data-dir", data)
    assert done.returncode == 0, done.stderr
    eventually(lambda: bob_account in get(session, alice)[1]["accounts"], WITHIN, "a new grant is in the session")
    assert get(session, alice)[1]["accounts"][bob_account]["isReadOnly"] is True

    done = jmapled("user", "passwd", "alice@example.org", "--password-stdin", "--data-dir", data,
                   stdin="second password\n")
    assert done.returncode == 0, done.stderr
    eventually(lambda: get(session, alice)[0] == 401, WITHIN, "the old password stops working")
    assert get(session, basic("alice@example.org", "second password"))[0] == 200

    done = jmapled("check", "--data-dir", data)
    assert done.returncode == 0, done.stdout + done.stderr

    second = jmapled("serve", "--data-dir", data, "--listen", f"127.0.0.1:{free_port()}")
    assert second.returncode == 1
    assert f"in use by another jmapled (pid {daemon.proc.pid})" in one_line_error(second.stderr)

    assert daemon.stop() == 0
    assert notify.recv(4096) == b"STOPPING=1"
    notify.close()
    assert "SIGTERM received, shutting down" in daemon.log
    assert "Traceback" not in daemon.log


def test_serve_on_a_port_in_use_says_so(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = jmapled("serve", "--data-dir", str(tmp_path / "data"), "--listen", f"127.0.0.1:{port}")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"jmapled: error: cannot listen on 127.0.0.1:{port}: "), done.stderr
    assert "Traceback" not in done.stderr


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_malformed_request_is_answered_400_without_an_error_in_the_log(tmp_path, daemons):
    """Any client can send these, so each is one DEBUG line, not an ERROR with a traceback."""
    daemon = Daemon(tmp_path, "serve", "--data-dir", str(tmp_path / "data"))
    daemons.append(daemon)
    daemon.wait_ready()
    for raw in (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\n\r\n",
                b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
            sock.sendall(raw)
            assert re.match(rb"HTTP/1\.[01] 400 ", recv_all(sock))
    assert get(daemon.url + "/healthz")[0] == 200
    assert daemon.stop() == 0
    assert "ERROR" not in daemon.log and "Traceback" not in daemon.log, daemon.log


@pytest.mark.skipif(not shutil.which("ss"), reason="needs ss(8)")
def test_serve_listens_with_a_deep_backlog(tmp_path, daemons):
    """Thousands of push clients reconnecting at once wait in the accept queue rather than being refused."""
    daemon = Daemon(tmp_path, "serve", "--data-dir", str(tmp_path / "data"))
    daemons.append(daemon)
    daemon.wait_ready()
    listing = subprocess.run(["ss", "-Hltn", f"sport = :{daemon.port}"], capture_output=True, text=True,
                             check=True).stdout.split()
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert int(listing[2]) == min(4096, somaxconn)   # a listening socket's Send-Q is its backlog


def test_serve_on_a_unix_socket(tmp_path, daemons):
    path = tmp_path / "api.sock"
    proc = subprocess.Popen([sys.executable, "-m", "jmaple.cli", "serve", "--data-dir", str(tmp_path / "data"),
                             "--listen", f"unix:{path}"], stderr=subprocess.DEVNULL, env=ENV)

    def healthz() -> bytes:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            sock.sendall(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            return sock.recv(4096)

    def answers() -> bool:
        assert proc.poll() is None
        try:
            return healthz().startswith(b"HTTP/1.0 200")
        except OSError:
            return False

    try:
        eventually(answers, 20, "jmapled answers on its Unix socket")
        assert path.stat().st_mode & 0o777 == 0o660
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_dev_prints_working_credentials_and_cleans_up(tmp_path, daemons):
    daemon = Daemon(tmp_path, "dev")
    daemons.append(daemon)
    daemon.wait_ready()
    eventually(lambda: "Stop it with Ctrl-C." in daemon.out_path.read_text(), 5, "dev prints its banner")
    banner = daemon.out_path.read_text()
    password = re.search(r"password: (\S+)", banner).group(1)
    data_dir = Path(re.search(r"data: +(\S+)", banner).group(1))
    assert f"curl -u demo@example.org:{password} {daemon.url}/jmap/session" in banner
    assert data_dir.is_dir()
    status, body, _ = get(daemon.url + "/jmap/session", basic("demo@example.org", password))
    assert status == 200 and body["username"] == "demo@example.org"
    status, _, headers = get(daemon.url + "/jmap/api", method="OPTIONS",
                             headers={"Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST"})
    assert headers.get("Access-Control-Allow-Origin") == "http://localhost:5173"
    assert daemon.stop(signal.SIGINT) == 0
    assert not data_dir.exists()


def test_dev_with_a_data_dir_keeps_data_and_credentials(tmp_path, daemons):
    data = tmp_path / "data"
    first = Daemon(tmp_path, "dev", "--data-dir", str(data))
    daemons.append(first)
    first.wait_ready()
    eventually(lambda: "password:" in first.out_path.read_text(), 5, "dev prints its banner")
    password = re.search(r"password: (\S+)", first.out_path.read_text()).group(1)
    assert first.stop() == 0
    second = Daemon(tmp_path, "dev", "--data-dir", str(data), "--trace")
    daemons.append(second)
    second.wait_ready()
    eventually(lambda: "password:" in second.out_path.read_text(), 5, "dev prints its banner")
    assert f"password: {password}\n" in second.out_path.read_text()
    assert get(second.url + "/jmap/session", basic("demo@example.org", password))[0] == 200
    # --trace prints every JMAP request and response.
    body = json.dumps({"using": ["urn:ietf:params:jmap:core"],
                       "methodCalls": [["Core/echo", {"traced": "yes-9731"}, "t0"]]}).encode()
    call = urllib.request.Request(second.url + "/jmap/api", data=body, method="POST", headers={
        "Authorization": basic("demo@example.org", password), "Content-Type": "application/json"})
    with HTTP.open(call, timeout=5) as response:
        assert json.loads(response.read())["methodResponses"] == [["Core/echo", {"traced": "yes-9731"}, "t0"]]
    eventually(lambda: second.out_path.read_text().count("yes-9731") >= 2, 5, "the traced request and response")
    out = second.out_path.read_text()
    assert "--- request" in out and "--- response" in out
    assert second.stop() == 0
    assert (data / "jmaple.sqlite3").exists()


# --- hostile input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("login", ["eve@example.org\n", "eve@example.org\r\n", "\neve@example.org",
                                   "eve@example.org\u200b", "eve@exa\u202emple.org", "eve\udcff@example.org"],
                         ids=repr)
def test_a_login_with_a_newline_or_invisible_characters_is_refused(capsys, data_dir, login):
    """The login pattern once ended in "$" with .match, which lets a trailing newline through."""
    code, out, err = run(capsys, "user", "add", login, "--password-stdin", "--data-dir", str(data_dir),
                         stdin="pw\n")
    assert code == 1
    line = one_line_error(err)
    assert re.search(r"not (a valid login|valid UTF-8)", line), line
    assert "\x1b" not in err and "\u202e" not in err
    code, out, err = run(capsys, "user", "list", "--data-dir", str(data_dir))
    assert code == 0 and out == ""


@pytest.mark.parametrize("password", ["\udcff\udcfe", "ok\udc80"], ids=repr)
def test_a_password_that_is_not_utf8_is_refused_in_one_line(capsys, data_dir, password):
    """What a non-UTF-8 stdin decodes to with surrogateescape: hashing it once raised UnicodeEncodeError."""
    code, out, err = run(capsys, "user", "add", "alice@example.org", "--password-stdin", "--data-dir",
                         str(data_dir), stdin=password + "\n")
    assert code == 1
    assert "password is not valid UTF-8" in one_line_error(err)
    assert stored_user(data_dir, "alice@example.org") is None
    add_user(capsys, data_dir, "alice@example.org")
    code, out, err = run(capsys, "user", "passwd", "alice@example.org", "--password-stdin", "--data-dir",
                         str(data_dir), stdin=password + "\n")
    assert code == 1
    assert "password is not valid UTF-8" in one_line_error(err)
    assert verify_password("secret", stored_user(data_dir, "alice@example.org").password_hash)


@pytest.mark.parametrize("env", [{}, {"PYTHONUTF8": "1"}, {"LC_ALL": "C", "PYTHONCOERCECLOCALE": "0"}],
                         ids=["locale", "utf8-mode", "c-locale"])
def test_a_password_piped_in_as_bytes_that_are_not_utf8_is_one_line(tmp_path, env):
    """`printf '\\xff\\xfe\\n' | jmapled user add a@x --password-stdin`, however Python decodes stdin."""
    done = subprocess.run([sys.executable, str(LAUNCHER), "user", "add", "a@example.org", "--password-stdin",
                           "--data-dir", str(tmp_path / "data")], input=b"\xff\xfe\n", capture_output=True,
                          env={**ENV, **env}, cwd=tmp_path, timeout=30)
    assert done.returncode == 1
    assert "password is not valid UTF-8" in one_line_error(done.stderr.decode())


def test_arguments_that_are_not_utf8_are_refused_in_one_line(capsys, data_dir):
    """A non-UTF-8 argv byte arrives as a lone surrogate, which SQLite cannot bind."""
    add_user(capsys, data_dir, "alice@example.org")
    d = ("--data-dir", str(data_dir))
    for args, name in [
        (("user", "del", "al\udcffice@example.org", "--yes"), "LOGIN"),
        (("user", "passwd", "al\udcffice@example.org", "--password-stdin"), "LOGIN"),
        (("user", "add", "carol@example.org", "--name", "Ca\udce9rol", "--password-stdin"), "--name"),
        (("grant", "alice@example.org", "b\udcffob@example.org", "--read-only"), "OWNER"),
        (("grant", "al\udcffice@example.org", "bob@example.org", "--read-only"), "USER"),
        (("revoke-grant", "alice@example.org", "b\udcffob@example.org"), "OWNER"),
        (("token", "create", "alice@example.org", "--label", "ph\udcffone"), "--label"),
        (("token", "list", "al\udcffice@example.org"), "LOGIN"),
        (("token", "revoke", "alice@example.org", "c\udcff"), "CREDENTIAL_ID"),
    ]:
        code, out, err = run(capsys, *args, *d, stdin="pw\n")
        assert code == 1, (args, err)
        line = one_line_error(err)
        assert f"{name} " in line and "is not valid UTF-8 text" in line and "\\udcff" in line.replace(
            "\\udce9", "\\udcff"), line
    assert stored_user(data_dir, "carol@example.org") is None


def test_user_and_token_lists_escape_control_characters(capsys, data_dir):
    """A name or label holding an escape sequence must not reach the terminal as one."""
    d = ("--data-dir", str(data_dir))
    code, out, err = run(capsys, "user", "add", "alice@example.org", "--name", "\x1b[2J\x1b]0;pwned\x07Alice",
                         "--password-stdin", *d, stdin="pw\n")
    assert code == 0, err
    code, out, err = run(capsys, "token", "create", "alice@example.org", "--label", "phone\r\x1b[31m", *d)
    assert code == 0, err
    code, out, err = run(capsys, "user", "list", *d)
    assert code == 0, err
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[2J\\x1b]0;pwned\\x07Alice" in out
    code, out, err = run(capsys, "token", "list", "alice@example.org", *d)
    assert code == 0, err
    assert "\x1b" not in out and "\r" not in out
    assert "phone\\r\\x1b[31m" in out


def test_an_error_message_never_carries_control_characters(capsys, data_dir):
    code, out, err = run(capsys, "user", "del", "x\x1b[31m@example.org", "--data-dir", str(data_dir))
    assert code == 1
    assert "\x1b" not in err and "\\x1b[31m" in one_line_error(err)


def test_a_config_file_that_is_not_utf8_is_one_line_naming_it(capsys, tmp_path, data_dir):
    config = tmp_path / "config.toml"
    config.write_bytes(b"[server]\ndata_dir = '" + str(data_dir).encode() + b"'\n# caf\xe9\n")
    code, out, err = run(capsys, "user", "list", "--config", str(config))
    assert code == 1
    line = one_line_error(err)
    assert f"{config}: not UTF-8 text" in line and "byte" in line


@pytest.mark.parametrize("table, key", [('data_dir = "/tmp/a\\u0000b"', "data_dir"),
                                        ('listen = "unix:/run/a\\u0000b.sock"', "listen"),
                                        ('tls_certificate = "a\\u0000"\ntls_key = "b"', "tls_certificate")])
def test_a_nul_character_in_a_path_is_one_line_naming_the_key(capsys, tmp_path, table, key):
    config = tmp_path / "config.toml"
    config.write_text(f"[server]\n{table}\n")
    code, out, err = run(capsys, "check", "--config", str(config))
    assert code == 1
    assert f"{config}: [server] {key}: must not contain a NUL character" in one_line_error(err)


def test_changing_the_password_destroys_the_push_subscriptions_it_created(capsys, data_dir):
    """RFC 8620 §7.2: a subscription is tied to the credentials that created it; when they are changed or
    revoked it is destroyed. A token's subscriptions outlive a password change."""
    add_user(capsys, data_dir, "alice@example.org")
    code, out, err = run(capsys, "token", "create", "alice@example.org", "--data-dir", str(data_dir))
    token_id = re.search(r"created token (\S+) ", err).group(1)
    user = stored_user(data_dir, "alice@example.org")
    config = Config.from_dict({"server": {"data_dir": str(data_dir)}})

    def subscription(sub_id: str, credential_id: str | None) -> push_store.Subscription:
        return push_store.Subscription(
            id=sub_id, user_id=user.id, credential_id=credential_id, device_client_id="d",
            url=f"https://push.example/{sub_id}-secret-path", p256dh=None, auth=None, verification_code="c",
            is_verified=True, verification_sent=True, expires=int(time.time()) + 86400, types=None,
            created_at=int(time.time()))

    async def insert() -> None:
        async with open_runtime(config) as runtime:
            async with runtime.db.write() as tx:
                await push_store.insert(tx, subscription("Ppassword", None))
                await push_store.insert(tx, subscription("Ptoken", token_id))

    async def remaining() -> list[str]:
        async with open_runtime(config) as runtime:
            async with runtime.db.read() as conn:
                return [r[0] for r in await conn.all("SELECT id FROM push_subscriptions ORDER BY id")]

    asyncio.run(insert())
    code, out, err = run(capsys, "user", "passwd", "alice@example.org", "--password-stdin", "--data-dir",
                         str(data_dir), stdin="a new one\n")
    assert code == 0, err
    assert asyncio.run(remaining()) == ["Ptoken"]
    code, out, err = run(capsys, "token", "revoke", "alice@example.org", token_id, "--data-dir", str(data_dir))
    assert code == 0, err
    assert asyncio.run(remaining()) == []
    for name in ("jmaple.sqlite3", "jmaple.sqlite3-wal"):
        path = data_dir / name
        assert not path.exists() or b"secret-path" not in path.read_bytes(), name
