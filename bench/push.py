"""Benchmark: push (SSE, WebSocket, webhooks) for one Jmaple server process.

Run:  python bench/push.py [--connections 10000] [--generators 1] [--mutations 20] [--backlog N] [--gc-threshold a,b,c]

Starts, each in its own process (multiprocessing, spawn): the Jmaple server (make_app, default config;
the access log off for the connection-count servers, on for the webhook one), load generators holding
raw asyncio sockets (SSE read line by line, WebSocket by a minimal hand-made RFC 6455 client), and an
HTTPS webhook receiver (aiohttp, trustme certificate for 127.0.0.1). RLIMIT_NOFILE is raised to the hard
limit in every process. Prints:

- resident memory (VmRSS of the server) per idle SSE connection and per idle WebSocket, at --connections;
- time from one Note/set (POST /jmap/api, the test capability tests/notes.py) to the StateChange having
  reached all of 10,000 and of 1,000 SSE clients (median, p99 over --mutations), and the latency with 100;
- time for all --connections SSE clients to disconnect and reconnect at once (with Last-Event-ID, as
  EventSource does), until every one has its response headers;
- time from one Note/set to a StateChange POST having reached each of 1,000 verified webhooks.

Clients and mutator share the machine's clock (time.time()). Every wait is bounded; the whole run
stops by itself (SIGALRM) after --max-seconds. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from _loadgen import generator_main, pin, raise_nofile, receiver_main  # noqa: E402

LOGIN = "bench@example.org"
KiB = 1024
TARGETS = {"sse_mem": 16 * KiB, "ws_mem": 24 * KiB, "reach_1k": 0.025, "reach_10k": 0.200, "worst": 0.500,
           "p99_100": 0.010, "webhooks": 1.0, "storm": 5.0}
CHILDREN: list[multiprocessing.Process] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_config(data_dir: str, port: int, access_log: bool, push: dict[str, Any] | None = None) -> Any:
    from jmaple.config import Config

    raw: dict[str, Any] = {"server": {"data_dir": data_dir, "listen": f"127.0.0.1:{port}"},
                           "logging": {"access_log": access_log}}
    if push:
        raw["push"] = push
    return Config.from_dict(raw)


def run_jmaple(data_dir: str, port: int, access_log: bool, push: dict[str, Any] | None,
               backlog: int | None, gc_threshold: tuple[int, ...] | None, ready: Any) -> None:
    pin(0)
    limit = raise_nofile()
    from aiohttp import web

    import notes
    from jmaple.app import make_app
    from jmaple.cli import LISTEN_BACKLOG, make_runner, setup_logging, tune_gc

    config = server_config(data_dir, port, access_log, push)
    setup_logging(config)
    app = make_app(config, capabilities=[notes.PLUGIN])

    async def main() -> None:
        asyncio.get_running_loop().call_later(400, os._exit, 3)   # never outlive the benchmark
        runner = make_runner(app, config)
        await runner.setup()
        # The TCPSite and garbage-collector tuning of `jmapled serve`, unless --backlog / --gc-threshold
        # say otherwise.
        await web.TCPSite(runner, "127.0.0.1", port, backlog=backlog or LISTEN_BACKLOG).start()
        tune_gc()
        if gc_threshold:
            import gc
            gc.set_threshold(*gc_threshold)
        ready.send(limit)
        await asyncio.Event().wait()

    asyncio.run(main())


async def prepare(data_dir: str, webhooks: int = 0, receiver_port: int = 0) -> tuple[str, str]:
    """One user with a bearer token (and `webhooks` verified PushSubscriptions); (account id, token)."""
    import secrets

    import notes
    from jmaple.app import open_runtime
    from jmaple.config import Config
    from jmaple.store import push as push_store
    from jmaple.users import create_credential, create_user

    config = Config.from_dict({"server": {"data_dir": data_dir}})
    async with open_runtime(config, [notes.PLUGIN]) as runtime:
        user = await create_user(runtime, LOGIN, "Bench", "bench-password")
        credential_id, token = await create_credential(runtime, LOGIN, "token", "bench")
        if webhooks:
            now = int(time.time())
            expires = now + 5 * 86400
            async with runtime.db.write() as tx:
                for i in range(webhooks):
                    sub = push_store.Subscription(
                        id=f"Pbench{i}", user_id=user.id, credential_id=credential_id, device_client_id=f"dev{i}",
                        url=f"https://127.0.0.1:{receiver_port}/push/{i}", p256dh=None, auth=None,
                        verification_code=secrets.token_urlsafe(24), is_verified=True, verification_sent=True,
                        expires=expires, types=None, created_at=now)
                    await push_store.insert(tx, sub)
                    await push_store.update(tx, sub.id, expires=expires, types=None, is_verified=True)
        return user.account_id, token


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process used so far (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listen_drops() -> tuple[int, int]:
    """The kernel's TcpExt ListenOverflows and ListenDrops counters (the whole machine)."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines, lines[1:]):
        if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], map(int, values.split()[1:])))
            return table.get("ListenOverflows", 0), table.get("ListenDrops", 0)
    return 0, 0


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Server:
    def __init__(self, data_dir: str, access_log: bool, push: dict[str, Any] | None = None,
                 backlog: int | None = None, gc_threshold: tuple[int, ...] | None = None):
        self.port = free_port()
        parent, child = multiprocessing.Pipe()
        self.proc = multiprocessing.Process(
            target=run_jmaple, args=(data_dir, self.port, access_log, push, backlog, gc_threshold, child), daemon=True)
        self.proc.start()
        CHILDREN.append(self.proc)
        if not parent.poll(60):
            raise RuntimeError("the server did not start")
        self.nofile = parent.recv()

    def rss(self) -> int:
        return rss_kib(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(15)
        if self.proc.is_alive():
            self.proc.kill()


class Generators:
    """`count` generator processes, connections split evenly between them."""

    def __init__(self, count: int, port: int, auth: str):
        self.pipes = []
        self.procs = []
        self.nofile = []
        for i in range(count):
            parent, child = multiprocessing.Pipe()
            proc = multiprocessing.Process(target=generator_main, args=(child, port, auth, 1), daemon=True)
            proc.start()
            CHILDREN.append(proc)
            self.pipes.append(parent)
            self.procs.append(proc)
        for pipe in self.pipes:
            if not pipe.poll(60):
                raise RuntimeError("a load generator did not start")
            self.nofile.append(pipe.recv()[1])

    def call(self, cmd: str, *args: Any, per: list[Any] | None = None, timeout: float = 120) -> list[Any]:
        for i, pipe in enumerate(self.pipes):
            pipe.send((cmd, *(per[i] if per is not None else args)))
        out = []
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise RuntimeError(f"a load generator did not answer {cmd!r} within {timeout} s")
            out.append(pipe.recv())
        return out

    def split(self, n: int) -> list[int]:
        k = len(self.pipes)
        return [n // k + (1 if i < n % k else 0) for i in range(k)]

    def open(self, kind: str, n: int, parallel: int | None = 64, timeout: float = 60) -> dict[str, Any]:
        results = self.call("open", per=[(kind, m, parallel, timeout) for m in self.split(n)], timeout=timeout + 30)
        return {"ok": sum(r["ok"] for r in results), "failed": sum(r["failed"] for r in results),
                "errors": sorted({e for r in results for e in r["errors"]})[:3]}

    def keep(self, n: int) -> int:
        return sum(self.call("keep", per=[(m,) for m in self.split(n)]))

    def quit(self) -> None:
        try:
            self.call("quit", timeout=10)
        except (RuntimeError, OSError, EOFError):
            pass
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()


class Mutator:
    """Note/set over one keep-alive connection; returns the time.time() the request was sent."""

    def __init__(self, port: int, auth: str, account_id: str):
        self.port, self.auth, self.account_id = port, auth, account_id
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.n = 0

    def mutate(self) -> float:
        self.n += 1
        body = orjson.dumps({"using": ["urn:ietf:params:jmap:core", "https://jmaple.test/notes"],
                             "methodCalls": [["Note/set", {"accountId": self.account_id, "create": {
                                 "n": {"title": f"bench {self.n}", "body": "x", "rank": self.n}}}, "c0"]]})
        data = (f"POST /jmap/api HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nAuthorization: {self.auth}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        sent = time.time()
        self.sock.sendall(data)
        status = self.file.readline()
        length = 0
        while (line := self.file.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        reply = self.file.read(length)
        if not status.startswith(b"HTTP/1.1 200") or b'"created"' not in reply:
            raise RuntimeError(f"Note/set failed: {status!r} {reply[:300]!r}")
        return sent

    def close(self) -> None:
        self.sock.close()


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1000:.1f} ms"


def verdict(ok: bool) -> str:
    return "OK  " if ok else "MISS"


def reach(gens: Generators, mutator: Mutator, n: int, mutations: int, timeout: float = 5.0
          ) -> tuple[list[float], list[float], int]:
    """Per mutation: the time until all n clients had the StateChange; also every client's latency."""
    reach_all: list[float] = []
    every: list[float] = []
    missing = 0
    for _ in range(mutations):
        gens.call("arm")
        sent = mutator.mutate()
        times = [t for r in gens.call("wait", timeout, timeout=timeout + 30) for t in r]
        got = [t - sent for t in times if t is not None]
        missing += len(times) - len(got)
        if len(got) == len(times) == n:
            reach_all.append(max(got))
        every.extend(got)
        time.sleep(0.02)
    return reach_all, every, missing


def phase_sse(args: argparse.Namespace, tmp: str) -> None:
    data_dir = os.path.join(tmp, "sse")
    account_id, token = asyncio.run(prepare(data_dir))
    auth = f"Bearer {token}"
    server = Server(data_dir, access_log=False, backlog=args.backlog, gc_threshold=args.gc_threshold)
    gens = Generators(args.generators, server.port, auth)
    print(f"listen backlog: {args.backlog or 'as jmapled serve (4096, capped by somaxconn)'}; garbage "
          f"collector: {args.gc_threshold or 'as jmapled serve (frozen after start, thresholds 50000,20,10)'}",
          flush=True)
    print(f"RLIMIT_NOFILE: server {server.nofile}, load generators {gens.nofile[0]} each "
          f"({args.generators} generators)", flush=True)
    mutator = Mutator(server.port, auth, account_id)
    # Warm up: a few connections and mutations, so code paths and caches exist before the baseline.
    gens.open("sse", 50)
    reach(gens, mutator, 50, 3)
    gens.keep(0)
    time.sleep(1.0)
    n = args.connections
    before = server.rss()
    t0 = time.time()
    opened = gens.open("sse", n, parallel=64, timeout=120)
    took = time.time() - t0
    time.sleep(2.0)
    after = server.rss()
    per = (after - before) * KiB / max(1, opened["ok"])
    print(f"SSE idle connections: {opened['ok']} open ({opened['failed']} failed {opened['errors']}) in {took:.1f} s; "
          f"server RSS {before / KiB:.1f} -> {after / KiB:.1f} MiB", flush=True)
    print(f"  [{verdict(per <= TARGETS['sse_mem'])}] memory per idle SSE connection: {per / KiB:.1f} KiB "
          f"(target <= 16 KiB)", flush=True)

    for count in (n, 1000, 100):
        if count != n:
            if count == 1000 and args.storm:
                storm(gens, server, n, args)
            before = server.rss()
            count = gens.keep(count)
            time.sleep(1.0)
            # The server releases closed SSE connections within about a second; one mutation (not counted
            # below) shows what the first fan-out after the closes costs.
            cpu = cpu_seconds(server.proc.pid)
            reach(gens, mutator, count, 1)
            print(f"  closing down to {count} clients: server RSS {before / KiB:.1f} -> {server.rss() / KiB:.1f} MiB "
                  f"1 s later; the next mutation cost the server {(cpu_seconds(server.proc.pid) - cpu) * 1000:.0f} ms "
                  f"CPU (not counted below)", flush=True)
        mutations = args.mutations if count > 100 else max(args.mutations, 200)
        cpu = cpu_seconds(server.proc.pid)
        reach_all, every, missing = reach(gens, mutator, count, mutations)
        cpu = (cpu_seconds(server.proc.pid) - cpu) / mutations
        if not reach_all:
            print(f"  {count} clients: no mutation reached all ({missing} misses)", flush=True)
            continue
        med, p99, worst = statistics.median(reach_all), pct(reach_all, 99), max(reach_all)
        if count == 100:
            ok = pct(every, 99) <= TARGETS["p99_100"]
            print(f"  [{verdict(ok)}] {count} subscribers, mutation-to-event latency over {mutations} mutations: "
                  f"p50 {ms(statistics.median(every))}, p99 {ms(pct(every, 99))} (target p99 < 10 ms); "
                  f"reach-all p50 {ms(med)} p99 {ms(p99)}, {missing} missed", flush=True)
        else:
            target = TARGETS["reach_1k"] if count <= 1000 else TARGETS["reach_10k"]
            ok = med <= target and worst < TARGETS["worst"]
            print(f"  [{verdict(ok)}] Note/set -> StateChange at all {count} SSE clients over {len(reach_all)} mutations: "
                  f"median {ms(med)}, p99 {ms(p99)}, worst {ms(worst)} (target median <= {ms(target)}, worst < 500 ms)"
                  f"; per-client p50 {ms(statistics.median(every))}, {missing} missed; "
                  f"server CPU {cpu * 1000:.0f} ms per mutation", flush=True)
    mutator.close()
    gens.quit()
    server.stop()


def storm(gens: Generators, server: Server, n: int, args: argparse.Namespace) -> None:
    at = time.time() + 0.3
    drops = listen_drops()
    results = gens.call("storm", at, args.storm_timeout, timeout=args.storm_timeout + 60)
    drops = tuple(b - a for a, b in zip(drops, listen_drops()))
    ok = sum(r["ok"] for r in results)
    failed = sum(r["failed"] for r in results)
    last = max((r["last_headers"] for r in results if r["last_headers"]), default=None)
    took = None if last is None else last - at
    good = ok == n and took is not None and took <= TARGETS["storm"]
    errors = sorted({e for r in results for e in r["errors"]})[:3]
    print(f"  [{verdict(good)}] reconnect storm: {n} SSE clients disconnect and reconnect at once (Last-Event-ID): "
          f"{ok} back, {failed} failed {errors}; all headers in {ms(took)} (target <= 5 s)", flush=True)
    time.sleep(1.0)
    print(f"  during the storm the kernel counted {drops[0]} listen-queue overflows and {drops[1]} listen drops "
          f"(TcpExt ListenOverflows/ListenDrops)", flush=True)
    print(f"  after the storm: server RSS {server.rss() / KiB:.1f} MiB", flush=True)


def phase_ws(args: argparse.Namespace, tmp: str) -> None:
    data_dir = os.path.join(tmp, "ws")
    account_id, token = asyncio.run(prepare(data_dir))
    auth = f"Bearer {token}"
    server = Server(data_dir, access_log=False)
    gens = Generators(args.generators, server.port, auth)
    mutator = Mutator(server.port, auth, account_id)
    gens.open("ws", 50)
    time.sleep(0.3)
    reach(gens, mutator, 50, 3)
    gens.keep(0)
    time.sleep(1.0)
    n = args.connections
    before = server.rss()
    t0 = time.time()
    opened = gens.open("ws", n, parallel=64, timeout=120)
    took = time.time() - t0
    time.sleep(2.0)
    after = server.rss()
    per = (after - before) * KiB / max(1, opened["ok"])
    print(f"WebSocket idle connections (push enabled): {opened['ok']} open ({opened['failed']} failed "
          f"{opened['errors']}) in {took:.1f} s; server RSS {before / KiB:.1f} -> {after / KiB:.1f} MiB", flush=True)
    print(f"  [{verdict(per <= TARGETS['ws_mem'])}] memory per idle WebSocket: {per / KiB:.1f} KiB "
          f"(target <= 24 KiB)", flush=True)
    reach_all, every, missing = reach(gens, mutator, opened["ok"], min(args.mutations, 5))
    if reach_all:
        print(f"  (check) Note/set -> StateChange at all {opened['ok']} WebSockets: median "
              f"{ms(statistics.median(reach_all))}, worst {ms(max(reach_all))}, {missing} missed", flush=True)
    else:
        print(f"  (check) no mutation reached all WebSockets ({missing} missed)", flush=True)
    mutator.close()
    gens.quit()
    server.stop()


def phase_webhooks(args: argparse.Namespace, tmp: str) -> None:
    import trustme

    data_dir = os.path.join(tmp, "hooks")
    ca = trustme.CA()
    ca_file = os.path.join(tmp, "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    cert = ca.issue_cert("127.0.0.1")
    rport = free_port()
    parent, child = multiprocessing.Pipe()
    receiver = multiprocessing.Process(target=receiver_main, args=(
        child, rport, b"".join(b.bytes() for b in cert.cert_chain_pems), cert.private_key_pem.bytes(), 1), daemon=True)
    receiver.start()
    CHILDREN.append(receiver)
    if not parent.poll(60):
        raise RuntimeError("the webhook receiver did not start")
    parent.recv()
    n = args.webhooks
    t0 = time.time()
    account_id, token = asyncio.run(prepare(data_dir, n, rport))
    auth = f"Bearer {token}"
    server = Server(data_dir, access_log=True,
                    push={"allow_private_targets": True, "extra_ca_file": ca_file})
    print(f"Webhooks: {n} verified PushSubscriptions inserted and server started in {time.time() - t0:.1f} s "
          f"(default [push] concurrency 64, access log on)", flush=True)
    mutator = Mutator(server.port, auth, account_id)
    rounds = []
    for i in range(args.webhook_rounds):
        parent.send(("arm",))
        parent.recv()
        sent = mutator.mutate()
        parent.send(("wait", n, 20.0))
        if not parent.poll(60):
            raise RuntimeError("the receiver did not answer")
        got = parent.recv()
        times = got["times"]
        took = (max(times) - sent) if len(times) >= n else None
        first = (min(times) - sent) if times else None
        rounds.append(took)
        label = "first (new TLS connections)" if i == 0 else f"round {i + 1}"
        print(f"  [{verdict(took is not None and took <= TARGETS['webhooks'])}] {label}: one Note/set -> "
              f"{len(times)}/{n} webhooks ({got['paths']} distinct) in {ms(took)}; first after {ms(first)} "
              f"(target <= 1 s){'; other bodies: ' + str(got['other']) if got['other'] else ''}", flush=True)
        time.sleep(0.5)
    done = [r for r in rounds if r is not None]
    if done:
        print(f"  webhook fan-out median {ms(statistics.median(done))} over {len(done)} rounds", flush=True)
    mutator.close()
    parent.send(("quit",))
    parent.poll(10)
    receiver.join(10)
    server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--generators", type=int, default=1,
                        help="load generator processes; all share CPU 1, so more only add context switches")
    parser.add_argument("--mutations", type=int, default=20, help="mutations per reach measurement")
    parser.add_argument("--webhooks", type=int, default=1000)
    parser.add_argument("--webhook-rounds", type=int, default=5)
    parser.add_argument("--backlog", type=int, default=None,
                        help="listen backlog of the SSE server (default: as jmapled serve)")
    parser.add_argument("--gc-threshold", type=lambda v: tuple(int(x) for x in v.split(",")), default=None,
                        help="gc.set_threshold() of the SSE server, e.g. 50000,20,10 (default: Python's, as "
                             "jmapled serve)")
    parser.add_argument("--storm-timeout", type=float, default=20.0)
    parser.add_argument("--no-storm", dest="storm", action="store_false")
    parser.add_argument("--phases", default="sse,ws,webhooks")
    parser.add_argument("--max-seconds", type=int, default=330, help="the whole run stops by itself after this")
    args = parser.parse_args()
    multiprocessing.set_start_method("spawn")
    limit = raise_nofile()
    pin(1)

    def give_up(signum: int, frame: Any) -> None:
        print(f"stopping: --max-seconds {args.max_seconds} reached", flush=True)
        for proc in CHILDREN:
            if proc.is_alive():
                proc.kill()
        os._exit(2)

    signal.signal(signal.SIGALRM, give_up)
    signal.alarm(args.max_seconds)
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, RLIMIT_NOFILE {limit} (hard limit); "
          f"server pinned to CPU 0, load generators, receiver and mutator on CPU 1", flush=True)
    started = time.time()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            phases = args.phases.split(",")
            if "sse" in phases:
                phase_sse(args, tmp)
            if "ws" in phases:
                phase_ws(args, tmp)
            if "webhooks" in phases:
                phase_webhooks(args, tmp)
    finally:
        for proc in CHILDREN:
            if proc.is_alive():
                proc.kill()
    print(f"total {time.time() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
