"""Benchmark: Email/import through HTTP against the bare stdlib parse rate, and Email/get latency.

Run:  python bench/mail.py [--messages 600] [--connections 4] [--batch 10]

Generates the same 5-50 KB messages every run (plain text, often an HTML alternative, sometimes an
attachment), then prints, in one run:
- the bare rate at which the standard library (`email`, policy.default) parses them while extracting
  what Email/import needs: every header field, the convenience headers, the body structure with each
  leaf's type, charset, disposition, name and decoded size, and the preview;
- the Email/import rate through the real HTTP API (upload each message, then Email/import them in
  batches) of a server running in another process (pinned to CPU 0, the client to CPU 1), with the ratio;
- Email/get latency at one connection for 50 emails, with the default properties and with
  fetchAllBodyValues (median and 99th percentile), through HTTP and, to tell the method's own cost
  from serialising and compressing the response, through the Dispatcher in process.
Nothing here is a test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import email.parser
import email.policy
import logging
import multiprocessing
import os
import platform
import random
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

LOGIN, PASSWORD = "bench@example.org", "bench-password"
AUTH = "Basic " + base64.b64encode(f"{LOGIN}:{PASSWORD}".encode()).decode()
USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"]
WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et "
         "dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip ex ea "
         "commodo consequat duis aute irure in reprehenderit voluptate velit esse cillum fugiat nulla").split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:
        os.sched_setaffinity(0, {cpu % os.cpu_count()})


def _text(rng: random.Random, size: int) -> str:
    lines, total = [], 0
    while total < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 12))).capitalize() + "."
        lines.append(line)
        total += len(line) + 2
    return "\r\n".join(lines)


def generate(count: int, seed: int = 5322) -> list[bytes]:
    """Typical messages of 5-50 KB, the same for the same arguments."""
    rng = random.Random(seed)
    out = []
    for n in range(count):
        size = int(5000 * 10 ** rng.uniform(0, 0.95))       # log-uniform, 5 to 50 KB once encoded
        head = (f"From: Sender {n % 37} <sender{n % 37}@example.com>\r\n"
                f"To: Bench <{LOGIN}>, Someone Else <else@example.net>\r\n"
                f"Cc: =?utf-8?q?J=C3=BCrgen?= <jurgen@example.de>\r\n"
                f"Subject: {'Re: ' if n % 3 else ''}Message number {n // 3} about {rng.choice(WORDS)}\r\n"
                f"Date: Tue, 03 Mar 2026 {n % 24:02d}:{n % 60:02d}:00 +0100\r\n"
                f"Message-ID: <bench.{n}@example.com>\r\n"
                + (f"In-Reply-To: <bench.{n - 1}@example.com>\r\nReferences: <bench.{n - 1}@example.com>\r\n"
                   if n % 3 else "")
                + "Received: from mx.example.com by mail.example.org; Tue, 03 Mar 2026 10:00:00 +0100\r\n"
                  "MIME-Version: 1.0\r\n")
        attachment = rng.random() < 0.3
        text_size = size // 2 if attachment else size
        html = rng.random() < 0.6
        text = _text(rng, text_size // 2 if html else text_size)
        plain = f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{text}\r\n"
        if html:
            body_html = "".join(f"<p>{line}</p>\r\n" for line in text.split("\r\n"))
            body = (f"Content-Type: multipart/alternative; boundary=alt{n}\r\n\r\n--alt{n}\r\n{plain}--alt{n}\r\n"
                    f"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                    f"<html><body>{body_html}</body></html>\r\n--alt{n}--\r\n")
        else:
            body = plain
        if attachment:
            data = base64.encodebytes(rng.randbytes(size * 3 // 8)).decode().replace("\n", "\r\n")
            body = (f"Content-Type: multipart/mixed; boundary=mix{n}\r\n\r\n--mix{n}\r\n{body}--mix{n}\r\n"
                    f"Content-Type: application/pdf; name=\"report-{n}.pdf\"\r\n"
                    f"Content-Disposition: attachment; filename=\"report-{n}.pdf\"\r\n"
                    f"Content-Transfer-Encoding: base64\r\n\r\n{data}--mix{n}--\r\n")
        out.append((head + body).encode())
    return out


def bare_parse(raw: bytes) -> dict:
    """What Email/import needs, extracted with the standard library alone."""
    msg = email.parser.BytesParser(policy=email.policy.default).parsebytes(raw)
    headers = [(name, str(value)) for name, value in msg.items()]
    date = msg["Date"]
    convenience = {
        "subject": str(msg["Subject"] or ""),
        "from": [a.addr_spec for a in msg["From"].addresses] if msg["From"] else [],
        "to": [a.addr_spec for a in msg["To"].addresses] if msg["To"] else [],
        "messageId": str(msg["Message-ID"] or ""),
        "inReplyTo": str(msg["In-Reply-To"] or ""),
        "sentAt": date.datetime if date is not None else None,
    }
    parts = []
    for part in msg.walk():
        if part.is_multipart():
            parts.append((part.get_content_type(), None, None, None, 0))
            continue
        payload = part.get_payload(decode=True) or b""
        parts.append((part.get_content_type(), part.get_content_charset(), part.get_content_disposition(),
                      part.get_filename(), len(payload)))
    body = msg.get_body(("plain", "html"))
    preview = " ".join(body.get_content().split())[:256] if body is not None else ""
    return {"headers": headers, "convenience": convenience, "parts": parts, "preview": preview}


def run_server(data_dir: str, port: int, ready: multiprocessing.Event) -> None:
    pin(0)
    from aiohttp import web

    from jmaple.app import make_app
    from jmaple.config import Config

    config = Config.from_dict({"server": {"data_dir": data_dir, "listen": f"127.0.0.1:{port}"}})
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    app = make_app(config)

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


async def prepare(data_dir: str) -> str:
    from jmaple.app import open_runtime
    from jmaple.config import Config
    from jmaple.users import create_user

    config = Config.from_dict({"server": {"data_dir": data_dir}})
    async with open_runtime(config) as runtime:
        user = await create_user(runtime, LOGIN, "Bench", PASSWORD)
    return user.account_id


GET_CASES = (("default properties", {}), ("fetchAllBodyValues", {"fetchAllBodyValues": True}))


async def measure_in_process(data_dir: str, messages: list[bytes],
                             batch: int = 50) -> tuple[float, dict[str, list[float]]]:
    """import_messages called directly, in batches of one write transaction: the cost without HTTP; then
    Email/get of 50 of them through the Dispatcher, without HTTP (no serialising, no compression)."""
    from jmaple.app import open_runtime
    from jmaple.config import Config
    from jmaple.core.context import Principal
    from jmaple.core.dispatcher import Dispatcher
    from jmaple.core.publisher import StatePublisher
    from jmaple.mail import storage
    from jmaple.mail.ingest import ImportItem, import_messages
    from jmaple.store import accounts
    from jmaple.users import create_user

    config = Config.from_dict({"server": {"data_dir": data_dir}})
    async with open_runtime(config) as runtime:
        user = await create_user(runtime, LOGIN, "Bench", PASSWORD)
        async with runtime.db.read() as conn:
            inbox = (await storage.mailbox_ids_by_role(conn, user.account_id))["inbox"]
            access = await accounts.access(conn, user.id)
        ids: list[str] = []
        start = time.perf_counter()
        for i in range(0, len(messages), batch):
            async with runtime.db.write() as tx:
                results = await import_messages(tx, runtime, user.account_id,
                                                [ImportItem(raw, (inbox,)) for raw in messages[i:i + batch]])
            ids += [r.id for r in results]   # type: ignore[union-attr]
        rate = len(messages) / (time.perf_counter() - start)

        principal = Principal(user.id, user.login, user.name, None, {a.account_id: a for a in access}, user.version)
        dispatcher = Dispatcher(runtime, StatePublisher(runtime.db, runtime.broker))
        latencies: dict[str, list[float]] = {}
        for label, extra in GET_CASES:
            body = {"using": USING, "methodCalls": [["Email/get", {"accountId": user.account_id, "ids": ids[:50],
                                                                   **extra}, "g"]]}
            for _ in range(20):
                await dispatcher.handle(principal, body)     # warm up
            times = []
            for _ in range(200):
                t = time.perf_counter()
                response = await dispatcher.handle(principal, body)
                times.append(time.perf_counter() - t)
                if len(response["methodResponses"][0][1]["list"]) != 50:
                    raise RuntimeError(str(response)[:500])
            latencies[label] = sorted(times)
        return rate, latencies


async def measure_http(port: int, account_id: str, messages: list[bytes], connections: int,
                       batch: int) -> tuple[float, list[str], dict[str, list[float]]]:
    import aiohttp

    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": AUTH}
    async with aiohttp.ClientSession(headers=headers) as http:
        async def api(calls: list) -> list:
            async with http.post(f"{base}/jmap/api", data=orjson.dumps({"using": USING, "methodCalls": calls}),
                                 headers={"Content-Type": "application/json"}) as resp:
                body = orjson.loads(await resp.read())
                if resp.status != 200:
                    raise RuntimeError(body)
                return body["methodResponses"]

        boxes = (await api([["Mailbox/get", {"accountId": account_id, "properties": ["role"]}, "m"]]))[0][1]
        inbox = next(m["id"] for m in boxes["list"] if m["role"] == "inbox")
        chunks = [messages[i:i + batch] for i in range(0, len(messages), batch)]
        ids: list[str] = []

        async def worker() -> None:
            while chunks:
                chunk = chunks.pop(0)
                emails = {}
                for n, raw in enumerate(chunk):
                    async with http.post(f"{base}/jmap/upload/{account_id}/", data=raw,
                                         headers={"Content-Type": "message/rfc822"}) as resp:
                        emails[f"e{n}"] = {"blobId": (await resp.json())["blobId"], "mailboxIds": {inbox: True}}
                result = (await api([["Email/import", {"accountId": account_id, "emails": emails}, "i"]]))[0]
                if result[0] != "Email/import" or result[1].get("notCreated"):
                    raise RuntimeError(result)
                ids.extend(c["id"] for c in result[1]["created"].values())

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        rate = len(messages) / (time.perf_counter() - start)

        latencies: dict[str, list[float]] = {}
        sample = ids[:50]
        for label, extra in GET_CASES:
            call = [["Email/get", {"accountId": account_id, "ids": sample, **extra}, "g"]]
            for _ in range(20):
                await api(call)     # warm up
            times = []
            for _ in range(200):
                t = time.perf_counter()
                result = (await api(call))[0]
                times.append(time.perf_counter() - t)
                if result[0] != "Email/get" or len(result[1]["list"]) != len(sample):
                    raise RuntimeError(str(result)[:500])
            latencies[label] = sorted(times)
        return rate, ids, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--connections", type=int, default=4, help="concurrent clients uploading and importing")
    parser.add_argument("--batch", type=int, default=10, help="emails per Email/import call")
    args = parser.parse_args()
    multiprocessing.set_start_method("spawn")
    messages = generate(args.messages)
    sizes = sorted(len(m) for m in messages)
    pin(1)
    bare_rates = []
    for _ in range(3):
        start = time.perf_counter()
        for raw in messages:
            bare_parse(raw)
        bare_rates.append(len(messages) / (time.perf_counter() - start))
    bare = max(bare_rates)
    with tempfile.TemporaryDirectory() as data_dir:
        direct, direct_latencies = asyncio.run(measure_in_process(data_dir, messages))
    with tempfile.TemporaryDirectory() as data_dir:
        account_id = asyncio.run(prepare(data_dir))
        port = free_port()
        ready = multiprocessing.Event()
        server = multiprocessing.Process(target=run_server, args=(data_dir, port, ready), daemon=True)
        server.start()
        try:
            ready.wait(30)
            rate, _, latencies = asyncio.run(measure_http(port, account_id, messages, args.connections, args.batch))
        finally:
            server.terminate()
            server.join()
    print(f"command: python bench/mail.py --messages {args.messages} --connections {args.connections} "
          f"--batch {args.batch}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {sys.version.split()[0]}, SQLite {__import__('sqlite3').sqlite_version}; "
          f"server on CPU 0, client and bare parse on CPU 1")
    print(f"messages: {len(messages)}, {sizes[0] / 1000:.1f}-{sizes[-1] / 1000:.1f} KB, "
          f"median {statistics.median(sizes) / 1000:.1f} KB")
    print(f"bare stdlib parse      {bare:8.0f} messages/s (best of 3)")
    print(f"import_messages direct {direct:8.0f} messages/s (in process, 50 per transaction)   "
          f"ratio {direct / bare:5.1%}")
    print(f"Email/import via HTTP  {rate:8.0f} messages/s (upload + import, {args.connections} clients, "
          f"{args.batch} per call)   ratio {rate / bare:5.1%} (target >= 60%)")
    for where, found in (("via HTTP", latencies), ("in process", direct_latencies)):
        for label, times in found.items():
            print(f"Email/get x50 {where:10} {label:20} median {statistics.median(times) * 1000:7.2f} ms   "
                  f"p99 {times[int(len(times) * 0.99)] * 1000:7.2f} ms")


if __name__ == "__main__":
    main()
