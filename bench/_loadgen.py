"""Load generator processes for bench/push.py: many raw-socket SSE / WebSocket clients, and a webhook receiver.

Each generator runs in its own process (multiprocessing, spawn) and obeys commands sent over a Pipe.
Every wait here is bounded; a generator also exits by itself after LIFETIME seconds.
"""

from __future__ import annotations

import asyncio
import base64
import os
import resource
import ssl
import struct
import time
from typing import Any

LIFETIME = 420.0   # seconds: a generator left behind ends itself


def raise_nofile() -> int:
    """RLIMIT_NOFILE soft limit raised to the hard limit; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {cpu % (os.cpu_count() or 1)})


def self_destruct(seconds: float) -> None:
    asyncio.get_running_loop().call_later(seconds, os._exit, 3)


class Client(asyncio.Protocol):
    """Common part: wait for the response head, then count events, recording time.time() of each."""

    def __init__(self, request: bytes, expect: bytes, gen: Generator):
        self.request = request
        self.expect = expect
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.headers_at: float | None = None
        self.head = b""
        self.failed: str | None = None
        self.done = asyncio.get_running_loop().create_future()   # head received (or failure)
        self.events: list[float] = []
        self.last_id: str | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport   # type: ignore[assignment]
        transport.write(self.request)   # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.done.done():
            self.failed = f"connection lost before the head: {exc}"
            self.done.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if self.headers_at is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, rest = self.head[:end], self.head[end + 4:]
            self.head = b""
            self.headers_at = now
            if not head.startswith(self.expect):
                self.failed = head.split(b"\r\n", 1)[0].decode(errors="replace")
            if not self.done.done():   # cancelled when the open timed out
                self.done.set_result(None)
            if rest:
                self.body(rest, now)
            return
        self.body(data, now)

    def body(self, data: bytes, now: float) -> None:
        raise NotImplementedError

    def event(self, now: float) -> None:
        if not self.events:
            self.gen.reached()
        self.events.append(now)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()


class SSEClient(Client):
    """GET /jmap/eventsource; the chunked stream is read line by line."""

    def __init__(self, request: bytes, gen: Generator):
        super().__init__(request, b"HTTP/1.1 200", gen)
        self.buf = b""

    def body(self, data: bytes, now: float) -> None:
        buf = self.buf + data
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            line = buf[start:end]
            start = end + 1
            if line == b"event: state":
                self.event(now)
            elif line.startswith(b"id: "):
                self.last_id = line[4:].decode()
        self.buf = buf[start:]


def _frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 §5.2)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


PUSH_ENABLE = _frame(0x1, b'{"@type":"WebSocketPushEnable","dataTypes":null}')


class WSClient(Client):
    """GET /jmap/ws with a minimal RFC 6455 handshake; enables push, answers pings, counts StateChanges."""

    def __init__(self, request: bytes, gen: Generator):
        super().__init__(request, b"HTTP/1.1 101", gen)
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        first = self.headers_at is None
        super().data_received(data)
        if first and self.headers_at is not None and not self.failed and self.transport is not None:
            self.transport.write(PUSH_ENABLE)

    def body(self, data: bytes, now: float) -> None:
        buf = self.buf + data
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            n, pos = b1 & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, pos = struct.unpack("!H", buf[2:4])[0], 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, pos = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < pos + n:
                break
            payload, buf = buf[pos:pos + n], buf[pos + n:]
            opcode = b0 & 0x0F
            if opcode == 0x9 and self.transport is not None:     # ping -> pong
                self.transport.write(_frame(0xA, payload))
            elif opcode == 0x1 and b'"StateChange"' in payload:
                self.event(now)
            elif opcode == 0x8:
                self.close()
        self.buf = buf


def sse_request(port: int, auth: str, last_id: str | None = None) -> bytes:
    extra = f"Last-Event-ID: {last_id}\r\n" if last_id else ""
    return (f"GET /jmap/eventsource?types=*&closeafter=no&ping=0 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: {auth}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n{extra}\r\n"
            ).encode()


def ws_request(port: int, auth: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /jmap/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {auth}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: jmap\r\n\r\n").encode()


class Generator:
    def __init__(self, port: int, auth: str):
        self.port = port
        self.auth = auth
        self.clients: list[Client] = []
        self.count = 0                    # clients with an event since the last "arm"
        self.everyone = asyncio.Event()   # set when that is all of them

    async def connect(self, kind: str, last_id: str | None, sem: asyncio.Semaphore | None,
                      made: list[Client]) -> Client:
        loop = asyncio.get_running_loop()
        request = sse_request(self.port, self.auth, last_id) if kind == "sse" else ws_request(self.port, self.auth)
        client: Client = SSEClient(request, self) if kind == "sse" else WSClient(request, self)
        made.append(client)
        try:
            if sem is None:
                await loop.create_connection(lambda: client, "127.0.0.1", self.port)
            else:
                async with sem:
                    await loop.create_connection(lambda: client, "127.0.0.1", self.port)
                    await client.done
        except OSError as exc:
            client.failed = f"connect: {exc}"
            if not client.done.done():
                client.done.set_result(None)
        return client

    async def open(self, kind: str, n: int, parallel: int | None, timeout: float,
                   last_ids: list[str | None] | None = None) -> dict[str, Any]:
        sem = asyncio.Semaphore(parallel) if parallel else None
        ids = last_ids or [None] * n
        new: list[Client] = []
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(self.connect(kind, ids[i], sem, new) for i in range(n)))
                await asyncio.gather(*(c.done for c in new))
        except TimeoutError:
            pass
        self.clients.extend(new)
        ok = [c for c in new if c.headers_at is not None and not c.failed]
        for c in new:
            if not c.done.done():
                c.done.cancel()
        errors = sorted({c.failed for c in new if c.failed})[:3]
        return {"ok": len(ok), "failed": n - len(ok), "errors": errors,
                "last_headers": max((c.headers_at for c in ok), default=None)}

    async def storm(self, at: float, timeout: float) -> dict[str, Any]:
        """At wall-clock `at`, every client disconnects; then all reconnect at once (with Last-Event-ID)."""
        await asyncio.sleep(max(0.0, at - time.time()))
        old, self.clients = self.clients, []
        kind = "sse" if isinstance(old[0], SSEClient) else "ws"
        last_ids = [c.last_id for c in old]
        for c in old:
            c.close()
        start = time.time()
        result = await self.open(kind, len(old), None, timeout, last_ids)
        result["start"] = start
        return result

    def arm(self) -> None:
        for c in self.clients:
            c.events.clear()
        self.count = 0
        self.everyone.clear()

    def reached(self) -> None:
        # Counted as events arrive: polling every client while they arrive would steal the CPU that
        # receiving them needs, and the figures would measure this process rather than the server.
        self.count += 1
        if self.count >= len(self.clients):
            self.everyone.set()

    async def wait(self, timeout: float) -> list[float | None]:
        """Until every client has an event since the last arm: each one's first receive time (None if not)."""
        if self.count < len(self.clients):
            try:
                async with asyncio.timeout(timeout):
                    await self.everyone.wait()
            except TimeoutError:
                pass
        return [c.events[0] if c.events else None for c in self.clients]

    def keep(self, n: int) -> int:
        # Healthy clients (headers received, still open) are kept first.
        self.clients.sort(key=lambda c: c.headers_at is None or bool(c.failed) or c.closed)
        for c in self.clients[n:]:
            c.close()
        del self.clients[n:]
        return len(self.clients)

    def close_all(self) -> int:
        return self.keep(0)


def generator_main(pipe: Any, port: int, auth: str, cpu: int) -> None:
    pin(cpu)
    limit = raise_nofile()

    async def main() -> None:
        self_destruct(LIFETIME)
        loop = asyncio.get_running_loop()
        gen = Generator(port, auth)
        pipe.send(("ready", limit))
        while True:
            cmd, *args = await loop.run_in_executor(None, pipe.recv)
            if cmd == "open":
                pipe.send(await gen.open(*args))
            elif cmd == "storm":
                pipe.send(await gen.storm(*args))
            elif cmd == "arm":
                gen.arm()
                pipe.send(True)
            elif cmd == "wait":
                pipe.send(await gen.wait(*args))
            elif cmd == "keep":
                pipe.send(gen.keep(*args))
            elif cmd == "alive":
                pipe.send(sum(1 for c in gen.clients if not c.closed))
            elif cmd == "quit":
                gen.close_all()
                await asyncio.sleep(0.2)
                pipe.send(True)
                return

    asyncio.run(main())


def receiver_main(pipe: Any, port: int, cert_pem: bytes, key_pem: bytes, cpu: int) -> None:
    """An HTTPS webhook receiver on 127.0.0.1:port: records the receive time of every StateChange POST."""
    pin(cpu)
    limit = raise_nofile()
    import tempfile

    from aiohttp import web

    seen: list[tuple[float, str]] = []
    other: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        if b'"StateChange"' in body:
            seen.append((now, request.path))
        else:
            other.append(body[:80].decode(errors="replace"))
        return web.Response(status=201)

    async def main() -> None:
        self_destruct(LIFETIME)
        loop = asyncio.get_running_loop()
        with tempfile.NamedTemporaryFile(suffix=".pem") as cert, tempfile.NamedTemporaryFile(suffix=".pem") as key:
            cert.write(cert_pem)
            cert.flush()
            key.write(key_pem)
            key.flush()
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert.name, key.name)
        app = web.Application()
        app.router.add_post("/push/{n}", hook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context, backlog=1024).start()
        pipe.send(("ready", limit))
        while True:
            cmd, *args = await loop.run_in_executor(None, pipe.recv)
            if cmd == "arm":
                seen.clear()
                other.clear()
                pipe.send(True)
            elif cmd == "wait":
                n, timeout = args
                deadline = time.monotonic() + timeout
                while len(seen) < n and time.monotonic() < deadline:
                    await asyncio.sleep(0.001)
                pipe.send({"times": [t for t, _ in seen], "paths": len({p for _, p in seen}), "other": other[:3]})
            elif cmd == "quit":
                pipe.send(True)
                await runner.cleanup()
                return

    asyncio.run(main())
