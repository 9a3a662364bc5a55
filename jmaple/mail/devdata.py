"""The demo mailbox of `jmapled dev`: the same few hundred generated messages in every data directory."""

from __future__ import annotations

import base64
import hashlib
import logging
import random
import struct
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime

from jmaple.core.context import Runtime
from jmaple.mail import importer, mailbox, storage
from jmaple.store import changes

log = logging.getLogger(__name__)

SEED = 8621                    # the RFC's number: any fixed value gives the same mail every run
THREADS = 150                  # about 2.7 messages each
BASE_DATE = datetime(2026, 3, 2, 9, 30, tzinfo=timezone.utc).timestamp()   # the newest message is near this
DAY = 86400.0
ME = ("Demo User", "demo@example.org")
PEOPLE = [
    ("Alice Martin", "alice@example.com"), ("Bob Okafor", "bob.okafor@example.net"),
    ("Chloé Dubois", "chloe@example.fr"), ("Dmitri Ivanov", "dmitri@example.org"),
    ("Eva Lindqvist", "eva.lindqvist@example.se"), ("Farid Haddad", "farid@example.com"),
    ("Grace Chen", "grace.chen@example.net"), ("Hiroshi Tanaka", "hiroshi@example.jp"),
    ("Isabel Moreno", "isabel@example.es"), ("Jonas Weber", "jonas.weber@example.de"),
    ("Kwame Mensah", "kwame@example.com"), ("Lena Novak", "lena.novak@example.cz"),
    ("Marco Rossi", "marco@example.it"), ("Nadia Karimi", "nadia@example.org"),
    ("Oliver Smith", "oliver.smith@example.co.uk"), ("Priya Patel", "priya@example.in"),
]
TOPICS = [
    "Quarterly planning", "Lunch on Friday?", "Release 2.4 checklist", "Invoice #{n}", "Design review notes",
    "Trip to Lisbon", "Server migration window", "Welcome to the team!", "Budget for next year",
    "Conference talk proposal", "Broken build on main", "Photos from the weekend", "Contract renewal",
    "Interview schedule", "Offsite agenda", "Feedback on the draft", "Printer on the 3rd floor",
    "Weekly sync", "Customer escalation: order {n}", "Security audit findings", "New laptop request",
    "Holiday rota", "Book club: next pick", "Migration to JMAP", "Apartment viewing", "Dinner reservations",
    "Your receipt {n}", "Board meeting minutes", "Hackathon ideas", "Garden plans for spring",
]
WORDS = ("the a we our it this that next plan team time week meeting update project draft review budget "
         "question idea client report issue change release note detail schedule office version data server "
         "mail calendar contract design feedback agenda travel ticket invoice quarter goal risk test build "
         "deploy share send check confirm agree think need want move start finish look discuss prepare "
         "quickly soon today tomorrow later again also maybe really probably certainly").split()
GREETINGS = ("Hi {name},", "Hello {name},", "Dear {name},", "{name},", "Hey {name}!")
SIGN_OFFS = ("Thanks,", "Best,", "Cheers,", "Kind regards,", "See you,")


@dataclass(frozen=True)
class DevMessage:
    """One generated message and where it goes."""

    raw: bytes
    folder: tuple[str, ...]        # () is the inbox; ("Archive",) and ("Sent",) map to their roles
    keywords: tuple[str, ...]
    received_at: float


def _address(person: tuple[str, str]) -> str:
    name, addr = person
    return f'"{name}" <{addr}>' if any(c in name for c in ",.;:") else f"{name} <{addr}>"


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 16))]
    return " ".join(words).capitalize() + rng.choice((".", ".", ".", "?", "!"))


def _paragraphs(rng: random.Random, count: int) -> list[str]:
    return [" ".join(_sentence(rng) for _ in range(rng.randint(2, 5))) for _ in range(count)]


def _wrap(text: str, width: int = 72) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "\n".join(lines)


def make_png(rng: random.Random, size: int = 24) -> bytes:
    """A small valid PNG: a two-colour gradient."""
    a = [rng.randrange(256) for _ in range(3)]
    b = [rng.randrange(256) for _ in range(3)]
    rows = b"".join(b"\x00" + bytes(
        int(a[c] + (b[c] - a[c]) * (x + y) / (2 * size - 2)) for x in range(size) for c in range(3))
        for y in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def make_pdf(text: str) -> bytes:
    """A small one-page PDF showing one line of text."""
    stream = f"BT /F1 14 Tf 72 720 Td ({text.replace('(', '[').replace(')', ']')}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
               b" /Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return out


def _b64(data: bytes) -> str:
    text = base64.b64encode(data).decode()
    return "\n".join(text[i:i + 76] for i in range(0, len(text), 76))


def _html(paragraphs: list[str], greeting: str, sign_off: str, name: str) -> str:
    body = "".join(f"<p>{p}</p>\n" for p in paragraphs)
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head>\n'
            f'<body style="font-family: sans-serif">\n<p>{greeting}</p>\n{body}<p>{sign_off}<br>\n'
            f"<b>{name}</b></p>\n</body></html>")


def _message(rng: random.Random, *, sender: tuple[str, str], to: list[tuple[str, str]], subject: str,
             date: float, message_id: str, parents: list[str], quote: str | None, n: int) -> bytes:
    """One RFC 5322 message: plain text, sometimes with an HTML alternative, sometimes an attachment."""
    greeting = rng.choice(GREETINGS).format(name=to[0][0].split()[0])
    sign_off = rng.choice(SIGN_OFFS)
    paragraphs = _paragraphs(rng, rng.randint(1, 4))
    plain = "\n\n".join([greeting, *(_wrap(p) for p in paragraphs), f"{sign_off}\n{sender[0]}"])
    if quote:
        plain += "\n\n" + "\n".join("> " + line for line in _wrap(quote).splitlines())
    headers = [
        ("From", _address(sender)),
        ("To", ", ".join(_address(p) for p in to)),
        ("Subject", subject),
        ("Date", format_datetime(datetime.fromtimestamp(date, timezone.utc))),
        ("Message-ID", f"<{message_id}>"),
    ]
    if parents:
        headers += [("In-Reply-To", f"<{parents[-1]}>"), ("References", " ".join(f"<{p}>" for p in parents[-8:]))]
    headers.append(("MIME-Version", "1.0"))
    text_part = f'Content-Type: text/plain; charset="utf-8"\nContent-Transfer-Encoding: 8bit\n\n{plain}\n'
    if rng.random() < 0.4:
        html = _html(paragraphs, greeting, sign_off, sender[0])
        boundary = f"alt-{n:05d}"
        body_part = (f'Content-Type: multipart/alternative; boundary="{boundary}"\n\n'
                     f"--{boundary}\n{text_part}\n--{boundary}\n"
                     f'Content-Type: text/html; charset="utf-8"\nContent-Transfer-Encoding: 8bit\n\n{html}\n'
                     f"--{boundary}--\n")
    else:
        body_part = text_part
    if rng.random() < 0.12:
        if rng.random() < 0.5:
            name, ctype, data = f"{subject.split(':')[-1].strip().replace(' ', '-').lower()[:24]}.pdf", \
                "application/pdf", make_pdf(subject)
        else:
            name, ctype, data = f"IMG_{1000 + n}.png", "image/png", make_png(rng)
        boundary = f"mixed-{n:05d}"
        body = (f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n'
                f"--{boundary}\n{body_part}\n--{boundary}\n"
                f'Content-Type: {ctype}; name="{name}"\nContent-Disposition: attachment; filename="{name}"\n'
                f"Content-Transfer-Encoding: base64\n\n{_b64(data)}\n--{boundary}--\n")
    else:
        body = body_part
    head = "".join(f"{k}: {v}\n" for k, v in headers)
    return (head + body).replace("\n", "\r\n").encode("utf-8")


def generate(seed: int = SEED, threads: int = THREADS) -> list[DevMessage]:
    """The demo messages, oldest first: the same bytes for the same arguments."""
    rng = random.Random(seed)
    out: list[DevMessage] = []
    n = 0
    for t in range(threads):
        topic = rng.choice(TOPICS).format(n=rng.randint(1000, 9999))
        others = rng.sample(PEOPLE, rng.choice((1, 1, 2, 3)))
        participants = [ME, *others]
        length = rng.choices((1, 2, 3, 4, 5, 6, 8), weights=(35, 20, 15, 12, 8, 6, 4))[0]
        date = BASE_DATE - rng.uniform(0, 120) * DAY
        parents: list[str] = []
        last_paragraph: str | None = None
        thread: list[tuple[tuple[str, str], float, bytes]] = []
        sender = rng.choice(others) if rng.random() < 0.8 else ME
        for i in range(length):
            if i:
                sender = rng.choice([p for p in participants if p != sender])
                date += rng.uniform(0.01, 1.5) * DAY
            to = [p for p in participants if p != sender]
            subject = topic if i == 0 else f"Re: {topic}"
            digest = hashlib.sha1(f"{seed}.{t}.{i}".encode()).hexdigest()[:12]
            message_id = f"{digest}.{t}.{i}@{sender[1].split('@')[1]}"
            raw = _message(rng, sender=sender, to=to, subject=subject, date=date, message_id=message_id,
                           parents=parents, quote=last_paragraph if rng.random() < 0.6 else None, n=n)
            n += 1
            parents = [*parents, message_id]
            last_paragraph = _sentence(rng)
            thread.append((sender, date, raw))
        archived = BASE_DATE - thread[-1][1] > 75 * DAY
        for i, (sender, date, raw) in enumerate(thread):
            answered = any(s == ME for s, _, _ in thread[i + 1:])
            if sender == ME:
                folder: tuple[str, ...] = ("Sent",)
                keywords = ["$seen"]
            else:
                folder = ("Archive",) if archived else ()
                keywords = [] if not archived and rng.random() < 0.35 else ["$seen"]
                if answered:
                    keywords.append("$answered")
                if rng.random() < 0.06:
                    keywords.append("$flagged")
            out.append(DevMessage(raw, folder, tuple(keywords), date))
    out.sort(key=lambda m: m.received_at)
    return out


async def seed(runtime: Runtime, account_id: str) -> int:
    """Fill the account with the demo messages once per data directory; returns how many were imported.

    A marker (mail_accounts.demo_seeded_at) records the seeding, so a demo account the user has emptied
    stays empty across restarts. An account whose Email state has moved before there was a marker was
    seeded by an earlier version (or holds mail of its own): it is only marked.
    """
    async with runtime.db.read() as conn:
        if await storage.is_demo_seeded(conn, account_id):
            return 0
        had_mail = await changes.state(conn, account_id, "Email") != "0"
    if had_mail:
        async with runtime.db.write() as tx:
            await mailbox.provision(tx, account_id, runtime)
            await storage.mark_demo_seeded(tx, account_id)
        return 0
    messages = generate()
    sources = [importer.Source(f"demo message {n}", m.folder, m.keywords, False, m.received_at, raw=m.raw)
               for n, m in enumerate(messages, 1)]
    report = importer.Report()
    await importer.import_sources(runtime, account_id, sources, report)
    for failure in report.failed:
        log.warning("demo data: %s", failure)
    log.info("demo data: %d messages imported", report.imported)
    async with runtime.db.write() as tx:
        await storage.mark_demo_seeded(tx, account_id)   # import_sources provisioned the account
    return report.imported
