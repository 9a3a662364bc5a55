"""Benchmark: POST /jmap/api against a bare aiohttp handler returning the same JSON.

Run:  python bench/api.py [--seconds 5] [--connections 8] [--repeat 3]

Starts, each in its own process: the Jmaple server (run as `jmapled serve` runs it: default logging with
the access log, GC tuning; the test capability's Notes, kept in the core's JsonObjects store), a bare
aiohttp server that answers the same bytes, and a load generator: wrk when installed (apt-get install
wrk), else raw asyncio sockets with keep-alive (slower: it may saturate before the bare server does).
The 50 Notes are read over and over, so they come from JsonObjects' memory after the first /get;
with --cold every /get reads them from SQLite, as a /get of objects just changed does. Prints requests/s
for Core/echo and for a /get of 50 objects, each as a ratio to the bare handler, and the median and
99th-percentile latency at one connection. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

EXTRA = orjson.loads(os.environ.get("BENCH_CONFIG", "{}"))
LOGIN, PASSWORD = "bench@example.org", "bench-password"
AUTH = "Basic " + base64.b64encode(f"{LOGIN}:{PASSWORD}".encode()).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:
        os.sched_setaffinity(0, {cpu % os.cpu_count()})


def run_jmaple(data_dir: str, port: int, ready: multiprocessing.Event, cold: bool = False) -> None:
    """The server exactly as `jmapled serve` runs it (logging, access log, GC tuning), with the notes plugin."""
    pin(0)
    import notes
    if cold:
        notes.NOTE.store.cache_bytes = 0   # every /get reads SQLite
    from jmaple.cli import run_server, setup_logging
    from jmaple.config import Config

    config = Config.from_dict({"server": {"data_dir": data_dir, "listen": f"127.0.0.1:{port}"}, **EXTRA})
    setup_logging(config)

    async def started(app: object, urls: list[str]) -> None:
        ready.set()

    asyncio.run(run_server(config, [notes.PLUGIN], started))


def run_bare(port: int, bodies: dict[str, bytes], ready: multiprocessing.Event) -> None:
    pin(0)
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        key = "get" if b"Note/get" in body else "echo"
        return web.Response(body=bodies[key], content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/jmap/api", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def request_bytes(port: int, body: bytes) -> bytes:
    head = (f"POST /jmap/api HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {AUTH}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def one_connection(port: int, payload: bytes, deadline: float, latencies: list[float] | None) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    done = 0
    try:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.decode(errors="replace"))
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if latencies is not None:
                latencies.append(time.perf_counter() - start)
            done += 1
    finally:
        writer.close()
    return done


def load(port: int, body: bytes, connections: int, seconds: float, queue: multiprocessing.Queue) -> None:
    pin(1)

    async def main() -> None:
        payload = request_bytes(port, body)
        await one_connection(port, payload, time.perf_counter() + 0.5, None)   # warm up
        if connections == 1:
            latencies: list[float] = []
            count = await one_connection(port, payload, time.perf_counter() + seconds, latencies)
            latencies.sort()
            queue.put((count / seconds, statistics.median(latencies), latencies[int(len(latencies) * 0.99)]))
            return
        deadline = time.perf_counter() + seconds
        counts = await asyncio.gather(*(one_connection(port, payload, deadline, None) for _ in range(connections)))
        queue.put((sum(counts) / seconds, None, None))

    asyncio.run(main())


def _wrk_time(value: str) -> float:
    for unit, scale in (("us", 1e-6), ("ms", 1e-3), ("s", 1.0)):
        if value.endswith(unit):
            return float(value[: -len(unit)]) * scale
    raise ValueError(value)


def measure_wrk(port: int, body: bytes, connections: int, seconds: float) -> tuple[float, float, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f'wrk.method = "POST"\nwrk.body = {orjson.dumps(body.decode()).decode()}\n'
                     f'wrk.headers["Content-Type"] = "application/json"\n'
                     f'wrk.headers["Authorization"] = "{AUTH}"\n'
                     'function response(status, headers, body)\n'
                     '  if status ~= 200 then error("status " .. status) end\nend\n')
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, int(seconds))}s", "--latency", "-s", script.name,
           f"http://127.0.0.1:{port}/jmap/api"]
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        cmd[:0] = ["taskset", "-c", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    if "Non-2xx" in out:
        raise RuntimeError(out)
    rps = float(next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec")))
    latency = {line.split()[0]: _wrk_time(line.split()[1]) for line in out.splitlines()
               if line.strip().startswith(("50%", "99%"))}
    return rps, latency["50%"], latency["99%"]


def measure_both(server_pid: int, bare_pid: int, jport: int, bport: int, body: bytes,
                 args: argparse.Namespace) -> tuple[float, ...]:
    """One round, bare then Jmaple: req/s and CPU per request of each, then latency at one connection."""
    bare_cpu = cpu_seconds(bare_pid)
    bare_rps, _, _ = measure(bport, body, args.connections, args.seconds)
    bare_cpu = (cpu_seconds(bare_pid) - bare_cpu) / (bare_rps * args.seconds)
    ours_cpu = cpu_seconds(server_pid)
    ours_rps, _, _ = measure(jport, body, args.connections, args.seconds)
    ours_cpu = (cpu_seconds(server_pid) - ours_cpu) / (ours_rps * args.seconds)
    _, bare_med, _ = measure(bport, body, 1, args.seconds / 2)
    _, med, p99 = measure(jport, body, 1, args.seconds / 2)
    return bare_rps, ours_rps, bare_cpu, ours_cpu, med, p99, bare_med


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads (aiosqlite's included)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(port: int, body: bytes, connections: int, seconds: float) -> tuple[float, float | None, float | None]:
    if shutil.which("wrk"):
        return measure_wrk(port, body, connections, seconds)
    queue: multiprocessing.Queue = multiprocessing.Queue()
    proc = multiprocessing.Process(target=load, args=(port, body, connections, seconds, queue))
    proc.start()
    result = queue.get(timeout=seconds + 60)
    proc.join()
    return result


async def prepare(data_dir: str) -> tuple[str, list[str]]:
    import notes
    from jmaple.app import open_runtime
    from jmaple.config import Config
    from jmaple.core.methods import apply_set
    from jmaple.users import create_user

    config = Config.from_dict({"server": {"data_dir": data_dir}})
    async with open_runtime(config, [notes.PLUGIN]) as runtime:
        user = await create_user(runtime, LOGIN, "Bench", PASSWORD)
        from jmaple.core.context import MethodContext, Principal
        principal = Principal(user.id, LOGIN, "", None, {}, 1)
        async with runtime.db.write() as tx:
            ctx = MethodContext(runtime, principal, user.account_id, tx, {}, "0", "Note/set")
            create = {f"n{i}": {"title": f"Note number {i}", "body": "Lorem ipsum dolor sit amet " * 8,
                                "rank": i, "tags": {"bench": True}} for i in range(50)}
            result = await apply_set(ctx, notes.NOTE, None, create, {}, [])
        return user.account_id, [result["created"][f"n{i}"]["id"] for i in range(50)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=8,
                        help="concurrent connections (default: the default maxConcurrentRequests)")
    parser.add_argument("--cold", action="store_true",
                        help="keep no Notes in memory: every /get reads them from SQLite")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds per workload, bare and Jmaple alternating; the medians are printed")
    args = parser.parse_args()
    multiprocessing.set_start_method("spawn")
    with tempfile.TemporaryDirectory() as data_dir:
        account_id, ids = asyncio.run(prepare(data_dir))
        echo = orjson.dumps({"using": ["urn:ietf:params:jmap:core"],
                             "methodCalls": [["Core/echo", {"hello": "world", "n": [1, 2, 3]}, "c0"]]})
        get = orjson.dumps({"using": ["urn:ietf:params:jmap:core", "https://jmaple.test/notes"],
                            "methodCalls": [["Note/get", {"accountId": account_id, "ids": ids}, "c0"]]})
        jport, bport = free_port(), free_port()
        ready = multiprocessing.Event()
        server = multiprocessing.Process(target=run_jmaple, args=(data_dir, jport, ready, args.cold), daemon=True)
        server.start()
        ready.wait(30)
        # The bare handler answers exactly what Jmaple answers.
        bodies = {}
        for key, body in (("echo", echo), ("get", get)):
            with socket.create_connection(("127.0.0.1", jport)) as s:
                s.sendall(request_bytes(jport, body).replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n"))
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            bodies[key] = data.split(b"\r\n\r\n", 1)[1]
            assert orjson.loads(bodies[key])["methodResponses"][0][0] != "error", bodies[key]
        ready2 = multiprocessing.Event()
        bare = multiprocessing.Process(target=run_bare, args=(bport, bodies, ready2), daemon=True)
        bare.start()
        ready2.wait(30)
        print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; server pinned to CPU 0, "
              f"load generator ({'wrk' if shutil.which('wrk') else 'python'}) on CPU 1; "
              f"{args.connections} connections, {args.seconds:.0f} s per run, median of {args.repeat} round(s)")
        for label, body in (("Core/echo", echo), ("Note/get x50", get)):
            rounds = [measure_both(server.pid, bare.pid, jport, bport, body, args) for _ in range(args.repeat)]
            bare_rps, ours_rps, bare_cpu, ours_cpu, med, p99, bare_med = (
                statistics.median(r[i] for r in rounds) for i in range(7))
            print(f"{label:13} bare {bare_rps:8.0f} req/s   jmaple {ours_rps:8.0f} req/s   "
                  f"ratio {ours_rps / bare_rps:5.1%}   latency@1conn median {med * 1000:.3f} ms "
                  f"p99 {p99 * 1000:.3f} ms (bare median {bare_med * 1000:.3f} ms)")
            # CPU time per request is steadier than req/s on a shared machine: its ratio is the
            # throughput ratio the two would reach on a core of their own.
            print(f"{'':13} CPU per request: bare {bare_cpu * 1e6:6.1f} us   jmaple {ours_cpu * 1e6:6.1f} us   "
                  f"ratio {bare_cpu / ours_cpu:5.1%}")
        server.terminate()
        bare.terminate()


if __name__ == "__main__":
    main()
