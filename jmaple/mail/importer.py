"""`jmapled import USER PATH`: a Maildir (Maildir++ folders) or an mbox file into an account (RFC 8621 §4.8)."""

from __future__ import annotations

import argparse
import email.utils
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from jmaple.core.capability import Command
from jmaple.core.context import Runtime
from jmaple.mail import mailbox, storage
from jmaple.mail.ingest import ImportItem, import_messages, keyword
from jmaple.store import changes
from jmaple.store.blobs import blob_id_of
from jmaple.store.db import Transaction

BATCH = 200   # messages per write transaction: a running daemon pushes each batch as it commits

# Special-use folder names (what IMAP servers and clients commonly call them) -> RFC 8621 roles.
SPECIAL_USE = {
    "inbox": "inbox",
    "sent": "sent", "sent items": "sent", "sent messages": "sent", "sent mail": "sent",
    "drafts": "drafts", "draft": "drafts",
    "trash": "trash", "deleted items": "trash", "deleted messages": "trash",
    "junk": "junk", "spam": "junk", "junk e-mail": "junk",
    "archive": "archive", "archives": "archive",
}
# Maildir info flags (the "2," part of a file name) -> keywords; T (trashed) is handled apart.
FLAG_KEYWORDS = {"S": "$seen", "R": "$answered", "F": "$flagged", "D": "$draft", "P": "$forwarded"}
_MBOX_FROM = re.compile(rb"^From (?:\S*)\s+(.*)$")
_ESCAPED_FROM = re.compile(rb"^>(>*From )", re.MULTILINE)
_SKIPPED_NAMES = {"dovecot-keywords", "dovecot-uidlist", "dovecot-uidvalidity", "dovecot.index", "maildirfolder",
                  "subscriptions", "courierimapkeywords", "courierimapuiddb"}


def is_keyword(word: str) -> bool:
    """RFC 8621 §4.1.1, as Email/set and Email/import check it."""
    return keyword(word) is not None


# --- sources --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Folder:
    """One Maildir folder: its place in the tree (() for INBOX) and its Dovecot keyword letters."""

    path: tuple[str, ...]
    directory: Path
    keyword_letters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Source:
    """One message found: where it comes from (for reports), which folder, its flags and date."""

    where: str
    folder: tuple[str, ...]
    keywords: tuple[str, ...] = ()
    to_trash: bool = False
    received_at: float | None = None
    file: Path | None = None        # Maildir: read when imported
    raw: bytes | None = None        # mbox: already read


def decode_mutf7(name: str) -> str:
    """IMAP modified UTF-7 (RFC 3501 §5.1.3), how Maildir++ folder names hold non-ASCII; bad input is kept."""
    if "&" not in name:
        return name

    def one(m: re.Match[str]) -> str:
        body = m.group(1)
        if not body:
            return "&"
        import base64
        try:
            data = base64.b64decode(body.replace(",", "/") + "=" * (-len(body) % 4))
            return data.decode("utf-16-be")
        except ValueError:
            return m.group(0)

    return re.sub(r"&([A-Za-z0-9+,]*)-", one, name)


def read_keyword_letters(directory: Path) -> dict[str, str]:
    """Dovecot's dovecot-keywords file: "0 $Label1" lines; letter a is keyword 0, b is 1, ... z is 25."""
    try:
        text = (directory / "dovecot-keywords").read_text("utf-8", "replace")
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        number, _, word = line.strip().partition(" ")
        if number.isdigit() and int(number) < 26 and word:
            out[chr(ord("a") + int(number))] = word
    return out


def is_maildir(directory: Path) -> bool:
    return (directory / "cur").is_dir() or (directory / "new").is_dir()


def maildir_folders(root: Path) -> list[Folder]:
    """The root (INBOX) and its Maildir++ subfolders (".Sent", ".Lists.Work"), parents before children."""
    folders = [Folder((), root, read_keyword_letters(root))] if is_maildir(root) else []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if not entry.name.startswith(".") or entry.name in (".", "..") or not entry.is_dir() or not is_maildir(entry):
            continue
        parts = tuple(decode_mutf7(p) for p in entry.name[1:].split("."))
        if not all(parts):
            continue
        if parts[0].upper() == "INBOX":    # some servers write INBOX's children as ".INBOX.x"
            parts = parts[1:]
        if parts:
            folders.append(Folder(parts, entry, read_keyword_letters(entry)))
    folders.sort(key=lambda f: (len(f.path), f.path))
    return folders


def maildir_flags(filename: str, letters: dict[str, str]) -> tuple[tuple[str, ...], bool]:
    """(keywords, trashed) from a Maildir file name's info part ("...:2,FRS", or "!2," where ":" is not allowed)."""
    for separator in (":2,", "!2,"):
        head, found, flags = filename.rpartition(separator)
        if found:
            break
    else:
        return (), False
    keywords = []
    for letter in flags:
        if letter in FLAG_KEYWORDS:
            keywords.append(FLAG_KEYWORDS[letter])
        elif letter in letters and is_keyword(letters[letter]):
            keywords.append(letters[letter].lower())
    return tuple(dict.fromkeys(keywords)), "T" in flags


def maildir_sources(root: Path) -> tuple[list[Folder], list[Source], list[str]]:
    """Every message of a Maildir tree, oldest first within each folder; also the files skipped."""
    folders = maildir_folders(root)
    sources: list[Source] = []
    skipped: list[str] = []
    for folder in folders:
        for sub in ("cur", "new"):
            directory = folder.directory / sub
            try:
                entries = sorted(directory.iterdir(), key=lambda p: p.name)
            except OSError:
                continue
            found = []
            for path in entries:
                if path.name.startswith(".") or path.name in _SKIPPED_NAMES:
                    continue
                try:
                    info = path.stat()
                except OSError as exc:
                    skipped.append(f"{path}: {exc.strerror}")
                    continue
                if not path.is_file():
                    skipped.append(f"{path}: not a file")
                    continue
                if info.st_size == 0:
                    skipped.append(f"{path}: empty")
                    continue
                keywords, trashed = maildir_flags(path.name, folder.keyword_letters) if sub == "cur" else ((), False)
                found.append(Source(str(path), folder.path, keywords, trashed, info.st_mtime, file=path))
            found.sort(key=lambda s: (s.received_at or 0, s.where))
            sources += found
    return folders, sources, skipped


def _mbox_date(line: bytes) -> float | None:
    """The date of an mbox "From sender date" line (asctime format), as Unix seconds UTC."""
    m = _MBOX_FROM.match(line.rstrip(b"\r\n"))
    if not m:
        return None
    text = m.group(1).decode("ascii", "replace").strip()
    parsed = email.utils.parsedate_tz(text)
    if parsed is None:
        return None
    try:
        return float(email.utils.mktime_tz(parsed))
    except (OverflowError, ValueError):
        return None


def _mbox_keywords(raw: bytes) -> tuple[str, ...]:
    """Flags mail programs keep in mbox headers: Status R (read), X-Status A F T (answered, flagged, draft)."""
    end = raw.find(b"\n\n")
    head = raw[:end if end >= 0 else len(raw)]
    keywords = []
    for name, table in ((rb"Status", {"R": "$seen"}),
                        (rb"X-Status", {"A": "$answered", "F": "$flagged", "T": "$draft"})):
        m = re.search(rb"^" + name + rb":[ \t]*([A-Za-z]*)", head, re.MULTILINE)
        if m:
            keywords += [table[c] for c in m.group(1).decode() if c in table]
    return tuple(dict.fromkeys(keywords))


def split_mbox(stream: IO[bytes]) -> Iterator[tuple[int, bytes, float | None]]:
    """(message number from 1, raw message, From-line date) of each message of an mbox.

    Messages start at "From " lines; ">From " (and mboxrd's ">>From ") lose one ">". A file that does
    not start with a From line is taken as one message.
    """
    number = 0
    lines: list[bytes] = []
    date: float | None = None
    started = False
    for line in stream:
        if line.startswith(b"From "):
            if started or any(line.strip() for line in lines):
                number += 1
                yield number, _unescape(lines), date
            lines, date, started = [], _mbox_date(line), True
            continue
        lines.append(line)
    if started or any(line.strip() for line in lines):
        number += 1
        yield number, _unescape(lines), date


def _unescape(lines: list[bytes]) -> bytes:
    raw = b"".join(lines)
    # The blank line that separates a message from the next From line belongs to the mbox, not the message.
    if raw.endswith(b"\r\n\r\n"):
        raw = raw[:-2]
    elif raw.endswith(b"\n\n"):
        raw = raw[:-1]
    return _ESCAPED_FROM.sub(rb"\1", raw)


def count_mbox(path: Path) -> int:
    count = 0
    with open(path, "rb") as fh:
        first = True
        for line in fh:
            if line.startswith(b"From ") or (first and line.strip()):
                count += 1
            first = False
    return count


def mbox_sources(path: Path, folder: tuple[str, ...]) -> Iterator[Source]:
    with open(path, "rb") as fh:
        for number, raw, date in split_mbox(fh):
            yield Source(f"{path} message {number}", folder, _mbox_keywords(raw), False, date, raw=raw)


# --- mailboxes ------------------------------------------------------------------------------------

async def create_mailbox(tx: Transaction, runtime: Runtime, account_id: str, name: str, parent_id: str | None,
                         role: str | None, sort_order: int = 0) -> str:
    """Create one mailbox, subscribed for the account's owner, and log it; returns its id.

    Runs inside a write transaction; the caller has checked the name and that the role is free.
    """
    mailbox_id = mailbox.MAILBOX.id_prefix + runtime.config.new_id()
    await storage.insert_mailboxes(tx, account_id, [(mailbox_id, name, parent_id, role, sort_order)])
    owner = await storage.account_owner(tx, account_id)
    if owner is not None:
        await storage.set_subscribed(tx, owner, account_id, [mailbox_id], True)
    await changes.record(tx, account_id, mailbox.MAILBOX.name, created=[mailbox_id])
    return mailbox_id


def folder_role(path: tuple[str, ...]) -> str | None:
    """The role a folder's name implies: only top-level folders ("Lists/Sent" is just a list's folder)."""
    if len(path) != 1:
        return None
    return SPECIAL_USE.get(path[0].strip().lower())


class MailboxMap:
    """Folder paths -> mailbox ids of one account, reusing mailboxes by role, then by name; creating the rest."""

    def __init__(self, runtime: Runtime, account_id: str):
        self.runtime = runtime
        self.account_id = account_id
        self.ids: dict[tuple[str, ...], str] = {}
        self.created: list[str] = []
        self.errors: dict[tuple[str, ...], str] = {}

    async def resolve(self, tx: Transaction, path: tuple[str, ...]) -> str:
        """The mailbox for a folder path (() is the inbox); raises ValueError when one cannot be made."""
        if path in self.errors:
            raise ValueError(self.errors[path])
        if path in self.ids:
            return self.ids[path]
        try:
            found = await self._resolve(tx, path)
        except ValueError as exc:
            self.errors[path] = str(exc)
            raise
        self.ids[path] = found
        return found

    async def _resolve(self, tx: Transaction, path: tuple[str, ...]) -> str:
        roles = await storage.mailbox_ids_by_role(tx, self.account_id)
        if not path:
            if "inbox" in roles:
                return roles["inbox"]
            for name in ("Inbox", "INBOX"):
                existing = await storage.sibling_named(tx, self.account_id, None, name)
                if existing:
                    return existing
            return await self._create(tx, "Inbox", None, "inbox", 1)
        role = folder_role(path)
        if role is not None and role in roles:
            return roles[role]
        parent_id = await self.resolve(tx, path[:-1]) if len(path) > 1 else None
        settings = mailbox.settings(self.runtime)
        name = mailbox.check_name(path[-1], settings.max_size_mailbox_name, f"folder {'/'.join(path)!r}")
        existing = await storage.sibling_named(tx, self.account_id, parent_id, name)
        if existing:
            return existing
        if settings.max_mailbox_depth is not None and len(path) > settings.max_mailbox_depth:
            raise ValueError(f"folder {'/'.join(path)!r} is deeper than maxMailboxDepth "
                             f"({settings.max_mailbox_depth})")
        return await self._create(tx, name, parent_id, role if role not in roles else None, 0)

    async def trash(self, tx: Transaction) -> str:
        """The account's trash (by role), created at the top level when there is none."""
        return await self.resolve(tx, ("Trash",))

    async def _create(self, tx: Transaction, name: str, parent_id: str | None, role: str | None,
                      sort_order: int) -> str:
        mailbox_id = await create_mailbox(tx, self.runtime, self.account_id, name, parent_id, role, sort_order)
        self.created.append(mailbox_id)
        return mailbox_id


# --- progress and the import itself ---------------------------------------------------------------

class Progress:
    """count/total and rate on stderr: redrawn in place on a terminal, else a line now and then."""

    def __init__(self, stream: IO[str], total: int, *, every: float = 5.0):
        self.stream = stream
        self.total = total
        self.done = 0
        self.start = time.monotonic()
        self.last = 0.0
        self.every = every
        self.is_tty = bool(getattr(stream, "isatty", lambda: False)())

    def _line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        percent = f" ({100 * self.done // self.total}%)" if self.total else ""
        if self.is_tty:
            width = 30
            filled = width * self.done // self.total if self.total else width
            bar = "#" * filled + "-" * (width - filled)
            return f"\r[{bar}] {self.done}/{self.total}{percent} {rate:.0f} msg/s\x1b[K"
        return f"{self.done}/{self.total}{percent} {rate:.0f} msg/s\n"

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= (0.1 if self.is_tty else self.every):
            self.last = now
            self.stream.write(self._line())
            self.stream.flush()

    def finish(self) -> None:
        self.stream.write(self._line() + ("\n" if self.is_tty else ""))
        self.stream.flush()


@dataclass
class Report:
    """What an import did, for the summary."""

    imported: int = 0
    skipped: list[str] = field(default_factory=list)
    already_there: int = 0     # the same octets are already an email in the target mailbox
    failed: list[str] = field(default_factory=list)
    mailboxes_created: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        rate = f" in {self.seconds:.1f} s ({self.imported / self.seconds:.0f}/s)" if self.seconds > 0 else ""
        skipped = f"skipped {len(self.skipped) + self.already_there}"
        if self.already_there:
            skipped += f" ({self.already_there} already there)"
        lines = [f"imported {self.imported}, {skipped}, failed {len(self.failed)}{rate}; "
                 f"{self.mailboxes_created} mailbox{'es' if self.mailboxes_created != 1 else ''} created"]
        lines += [f"  skipped {s}" for s in self.skipped]
        lines += [f"  failed {f}" for f in self.failed]
        return "\n".join(lines)


def _reason(error: Any) -> str:
    description = getattr(error, "description", None)
    kind = getattr(error, "type", None)
    if kind and description:
        return f"{kind}: {description}"
    return str(kind or description or error)


async def import_sources(runtime: Runtime, account_id: str, sources: Sequence[Source] | Iterator[Source],
                         report: Report, progress: Progress | None = None, batch: int = BATCH) -> None:
    """Import messages in batches, one write transaction each; a failing message is reported, never fatal."""
    # An account created while the capability was disabled gets its default mailboxes first, as the
    # daemon would give them on its next start: the import then fills them rather than making its own.
    async with runtime.db.write() as tx:
        await mailbox.provision(tx, account_id, runtime)
    boxes = MailboxMap(runtime, account_id)
    pending: list[Source] = []
    for source in sources:
        pending.append(source)
        if len(pending) >= batch:
            await _import_batch(runtime, account_id, boxes, pending, report, progress)
            pending = []
    if pending:
        await _import_batch(runtime, account_id, boxes, pending, report, progress)
    report.mailboxes_created += len(boxes.created)


async def _import_batch(runtime: Runtime, account_id: str, boxes: MailboxMap, sources: list[Source],
                        report: Report, progress: Progress | None) -> None:
    ready: list[tuple[Source, bytes]] = []
    for source in sources:
        raw = source.raw
        if raw is None:
            assert source.file is not None
            try:
                raw = source.file.read_bytes()
            except OSError as exc:
                report.failed.append(f"{source.where}: {exc.strerror or exc}")
                continue
        ready.append((source, raw))
    if ready:
        try:
            await _write(runtime, account_id, boxes, ready, report)
        except Exception as exc:
            if len(ready) == 1:
                report.failed.append(f"{ready[0][0].where}: {type(exc).__name__}: {exc}")
            else:
                # Something besides a per-message SetError broke the batch (and rolled it back):
                # import one by one, so that only the culprit fails.
                for one in ready:
                    try:
                        await _write(runtime, account_id, boxes, [one], report)
                    except Exception as exc:   # reported and skipped: the rest still imports
                        report.failed.append(f"{one[0].where}: {type(exc).__name__}: {exc}")
    if progress is not None:
        progress.advance(len(sources))


async def _write(runtime: Runtime, account_id: str, boxes: MailboxMap, ready: list[tuple[Source, bytes]],
                 report: Report) -> None:
    snapshot = (dict(boxes.ids), list(boxes.created), dict(boxes.errors))
    failed: list[str] = []
    imported = already_there = 0
    # Email/import drops NUL octets before storing (RFC 5322 §2.1): hash what it will store.
    blob_ids = [blob_id_of(raw.replace(b"\x00", b"")) for _, raw in ready]
    try:
        async with runtime.db.write() as tx:
            # An import run again (after an interruption, say) skips what is already in place.
            present = await storage.blob_mailboxes(tx, account_id, blob_ids)
            items, kept = [], []
            for (source, raw), blob_id in zip(ready, blob_ids):
                try:
                    target = await boxes.trash(tx) if source.to_trash else await boxes.resolve(tx, source.folder)
                except ValueError as exc:
                    failed.append(f"{source.where}: {exc}")
                    continue
                if target in present.get(blob_id, ()):
                    already_there += 1
                    continue
                present.setdefault(blob_id, set()).add(target)
                items.append(ImportItem(raw=raw, mailbox_ids=(target,), keywords=source.keywords,
                                        received_at=source.received_at))
                kept.append(source)
            results = await import_messages(tx, runtime, account_id, items) if items else []
            for source, result in zip(kept, results):
                if hasattr(result, "blob_id"):
                    imported += 1
                else:
                    failed.append(f"{source.where}: {_reason(result)}")
    except BaseException:
        # Mailboxes made in the rolled-back transaction are gone with it.
        boxes.ids, boxes.created, boxes.errors = snapshot
        raise
    # Counted only once committed: a rolled-back batch is retried message by message.
    report.imported += imported
    report.already_there += already_there
    report.failed += failed


async def run_import(runtime: Runtime, account_id: str, path: Path, *, mailbox_path: tuple[str, ...] | None = None,
                     err: IO[str] | None = None, batch: int = BATCH) -> Report:
    """Import a Maildir directory or an mbox file into the account; raises ValueError for an unusable path."""
    err = err if err is not None else sys.stderr
    report = Report()
    start = time.monotonic()
    if path.is_dir():
        if not is_maildir(path) and not any(is_maildir(p) for p in path.glob(".*")):
            raise ValueError(f"{path} is neither a Maildir (no cur/ or new/) nor an mbox file")
        _, sources, skipped = maildir_sources(path)
        if mailbox_path is not None:
            sources = [Source(s.where, mailbox_path + s.folder, s.keywords, s.to_trash, s.received_at, s.file)
                       for s in sources]
        report.skipped += skipped
        progress = Progress(err, len(sources))
        await import_sources(runtime, account_id, sources, report, progress, batch)
    elif path.is_file():
        progress = Progress(err, count_mbox(path))
        await import_sources(runtime, account_id, mbox_sources(path, mailbox_path or ()), report, progress, batch)
    else:
        raise ValueError(f"{path}: no such file or directory")
    progress.finish()
    report.seconds = time.monotonic() - start
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user", metavar="USER", help="the login of the user whose account receives the mail")
    parser.add_argument("path", metavar="PATH", type=Path,
                        help="a Maildir (with Maildir++ folders such as .Sent, .Lists.Work) or an mbox file")
    parser.add_argument("--mailbox", metavar="NAME",
                        help="put the mail in (or under) this mailbox, '/' between levels "
                             "(default: an mbox goes to the Inbox, a Maildir keeps its folders)")


async def run(args: argparse.Namespace, runtime: Runtime) -> int:
    from jmaple import users

    user = await users.find_user(runtime, args.user)
    mailbox_path = tuple(p for p in args.mailbox.split("/") if p) if args.mailbox else None
    try:
        report = await run_import(runtime, user.account_id, args.path, mailbox_path=mailbox_path)
    except ValueError as exc:
        print(f"jmapled import: error: {exc}", file=sys.stderr)
        return 1
    print(report.summary(), flush=True)
    return 1 if report.failed else 0


command = Command(
    name="import",
    help="import a Maildir or an mbox file into a user's account",
    add_arguments=add_arguments,
    run=run,
)
