"""`jmapled import`: Maildir++ trees and mbox files, through the real CLI on real SQLite."""

from __future__ import annotations

import asyncio
import io
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from jmaple.app import open_runtime
from jmaple.cli import main
from jmaple.config import Config
from jmaple.mail import importer, storage
from jmaple.mail.importer import (
    Progress, Report, decode_mutf7, is_keyword, maildir_flags, maildir_folders, split_mbox,
)

LOGIN = "ann@example.org"


@pytest.fixture(autouse=True)
def no_ambient_config(monkeypatch):
    monkeypatch.delenv("JMAPLE_CONFIG", raising=False)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)


def message(subject: str, body: str = "Hello there.\n", message_id: str | None = None) -> bytes:
    mid = message_id or re.sub(r"\W", "", subject) + "@example.org"
    return (f"From: Bob <bob@example.org>\r\nTo: Ann <ann@example.org>\r\nSubject: {subject}\r\n"
            f"Date: Tue, 03 Mar 2026 10:00:00 +0000\r\nMessage-ID: <{mid}>\r\n\r\n{body}").encode()


def put(folder: Path, sub: str, name: str, raw: bytes, mtime: float = 1_770_000_000.0) -> Path:
    path = folder / sub / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    os.utime(path, (mtime, mtime))
    return path


def make_maildir(root: Path) -> Path:
    for folder in (root, root / ".Sent", root / ".Lists", root / ".Lists.Work", root / ".Spam",
                   root / ".&AMk-t&AOk-"):
        for sub in ("cur", "new", "tmp"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
    (root / "dovecot-keywords").write_text("0 $Label1\n1 Important\n2 bad(keyword\n")
    put(root, "new", "1001.M1.host", message("Unread new"), 1_770_000_100)
    put(root, "cur", "1002.M2.host:2,S", message("Seen"), 1_770_000_200)
    put(root, "cur", "1003.M3.host:2,FRS", message("Flagged answered"), 1_770_000_300)
    put(root, "cur", "1004.M4.host:2,PSab", message("Forwarded with keywords"), 1_770_000_400)
    put(root, "cur", "1005.M5.host:2,ST", message("Deleted"), 1_770_000_500)
    put(root, "cur", "1006.M6.host:2,Sc", message("Bad keyword dropped"), 1_770_000_600)
    put(root / ".Sent", "cur", "2001.M1.host:2,S", message("Sent one"), 1_770_001_000)
    put(root / ".Lists.Work", "cur", "3001.M1.host:2,", message("Work list"), 1_770_002_000)
    put(root / ".Lists.Work", "cur", "3002.M2.host:2,D", message("Work draft"), 1_770_002_100)
    put(root / ".Spam", "new", "4001.M1.host", message("Buy now"), 1_770_003_000)
    put(root / ".&AMk-t&AOk-", "cur", "5001.M1.host:2,S", message("Summer"), 1_770_004_000)
    (root / "dovecot-uidlist").write_text("3 V1 N1\n")
    return root


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def add_user(capsys, data_dir: Path, login: str = LOGIN) -> None:
    saved = sys.stdin
    sys.stdin = io.StringIO("secret\n")
    try:
        code, _, err = run(capsys, "user", "add", login, "--password-stdin", "--data-dir", str(data_dir))
    finally:
        sys.stdin = saved
    assert code == 0, err


async def account_view(data_dir: Path, login: str = LOGIN) -> dict[str, Any]:
    """Mailbox paths -> (role, counts, {receivedAt: keywords}) as stored."""
    from jmaple import users
    config = Config.from_dict({"server": {"data_dir": str(data_dir)}})
    async with open_runtime(config) as runtime:
        user = await users.find_user(runtime, login)
        async with runtime.db.read() as conn:
            rows = await storage.mailboxes(conn, user.account_id, None)
            by_id = {r.id: r for r in rows}

            def path(row: storage.MailboxRow) -> str:
                return row.name if row.parent_id is None else path(by_id[row.parent_id]) + "/" + row.name

            out = {}
            for row in rows:
                ids = await storage.mailbox_email_ids(conn, user.account_id, row.id)
                states = await storage.email_states(conn, user.account_id, ids)
                out[path(row)] = {"role": row.role, "total": row.total_emails, "unread": row.unread_emails,
                                  "emails": sorted((s.received_at, sorted(s.keywords)) for s in states.values())}
            assert await storage.problems(conn) == []
            return out


def test_maildir_flags_map_to_keywords_and_trash():
    letters = {"a": "$Label1", "b": "Important", "c": "bad(keyword"}
    assert maildir_flags("1.M1.host:2,FRS", letters) == (("$flagged", "$answered", "$seen"), False)
    assert maildir_flags("1.M1.host:2,DPTab", letters) == (("$draft", "$forwarded", "$label1", "important"), True)
    assert maildir_flags("1.M1.host!2,S", letters) == (("$seen",), False)
    assert maildir_flags("1.M1.host:2,c", letters) == ((), False)     # not a valid keyword: dropped
    assert maildir_flags("1.M1.host", letters) == ((), False)
    assert maildir_flags("1.M1.host:2,z", letters) == ((), False)     # a letter the file does not define


@pytest.mark.parametrize("word,valid", [
    ("$seen", True), ("Important", True), ("x" * 255, True), ("~|}'&#!", True),
    ("", False), ("x" * 256, False), ("$seen\n", False), ("a\nb", False), ("bad(keyword", False),
    ("a b", False), ("é", False), ("a]", False), ("a\\", False), ('a"', False), ("a%", False), ("a*", False),
    ("a{", False),
])
def test_is_keyword_follows_rfc_8621_and_refuses_a_trailing_newline(word, valid):
    """RFC 8621 §4.1.1: 1-255 characters of %x21-%x7E except ( ) { ] % * " \\; all of the word must be."""
    assert is_keyword(word) is valid
    assert maildir_flags("1.M1.host:2,a", {"a": word}) == (((word.lower(),) if valid else ()), False)


def test_maildir_folders_form_a_tree_with_decoded_names(tmp_path):
    root = make_maildir(tmp_path / "Maildir")
    (root / ".NotAMaildir").mkdir()
    folders = maildir_folders(root)
    assert [f.path for f in folders] == [(), ("Lists",), ("Sent",), ("Spam",), ("Été",), ("Lists", "Work")]
    assert folders[0].keyword_letters == {"a": "$Label1", "b": "Important", "c": "bad(keyword"}


def test_modified_utf7_names_decode_and_bad_ones_stay():
    assert decode_mutf7("&AMk-t&AOk-") == "Été"
    assert decode_mutf7("Tom &- Jerry") == "Tom & Jerry"
    assert decode_mutf7("plain") == "plain"
    assert decode_mutf7("&!!!-") == "&!!!-"


def test_mbox_splits_on_from_lines_and_unescapes():
    data = (b"From bob@example.org Tue Mar  3 10:00:00 2026\n"
            b"Subject: one\n\nFirst body\n>From the start\n>>From mboxrd\n\n"
            b"From alice@example.org Wed Mar  4 11:30:00 2026\n"
            b"Subject: two\nStatus: RO\nX-Status: AF\n\nSecond body\n")
    messages = list(split_mbox(io.BytesIO(data)))
    assert [(n, raw) for n, raw, _ in messages] == [
        (1, b"Subject: one\n\nFirst body\nFrom the start\n>From mboxrd\n"),
        (2, b"Subject: two\nStatus: RO\nX-Status: AF\n\nSecond body\n"),
    ]
    assert [date for _, _, date in messages] == [1772532000.0, 1772623800.0]
    assert importer._mbox_keywords(messages[1][1]) == ("$seen", "$answered", "$flagged")


def test_mbox_without_a_from_line_is_one_message():
    assert list(split_mbox(io.BytesIO(b"Subject: lone\n\nbody\n"))) == [(1, b"Subject: lone\n\nbody\n", None)]
    assert list(split_mbox(io.BytesIO(b""))) == []
    assert list(split_mbox(io.BytesIO(b"\n\nFrom a Tue Mar  3 10:00:00 2026\r\nSubject: x\r\n\r\nbody\r\n"))) == \
        [(1, b"Subject: x\r\n\r\nbody\r\n", 1772532000.0)]


def test_progress_writes_lines_when_not_a_terminal():
    stream = io.StringIO()
    progress = Progress(stream, 400, every=0.0)
    progress.advance(200)
    progress.advance(200)
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert [line.split(" msg/s")[0].rsplit(" ", 1)[0] for line in lines] == \
        ["200/400 (50%)", "400/400 (100%)", "400/400 (100%)"]
    assert "\r" not in stream.getvalue()


def test_progress_redraws_in_place_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    progress = Progress(stream, 10)
    progress.advance(5)
    progress.advance(5)    # within a tenth of a second: not drawn
    progress.finish()
    text = stream.getvalue()
    assert text.startswith("\r[###############---------------] 5/10 (50%)")
    assert text.count("\r") == 2 and text.endswith(" msg/s\x1b[K\n")
    assert "\r[##############################] 10/10 (100%)" in text


def test_report_summary_names_every_failure():
    report = Report(imported=3, skipped=["a: empty"], failed=["b: invalidEmail: no header"], mailboxes_created=1)
    assert report.summary() == ("imported 3, skipped 1, failed 1; 1 mailbox created\n"
                                "  skipped a: empty\n  failed b: invalidEmail: no header")


def test_import_maildir_builds_the_tree_with_roles_flags_and_trash(capsys, tmp_path):
    data_dir = tmp_path / "data"
    add_user(capsys, data_dir)
    root = make_maildir(tmp_path / "Maildir")
    put(root, "cur", "1007.M7.host:2,S", b"")    # empty: skipped
    code, out, err = run(capsys, "import", LOGIN, str(root), "--data-dir", str(data_dir))
    assert code == 0, out + err
    assert out.startswith("imported 11, skipped 1, failed 0")
    assert "3 mailboxes created" in out
    assert re.search(r"skipped .*1007\.M7\.host:2,S: empty", out)
    assert re.search(r"^11/11 \(100%\) \d+ msg/s$", err, re.MULTILINE)
    view = await_view(data_dir)
    assert {path: (v["role"], v["total"], v["unread"]) for path, v in view.items()} == {
        "Inbox": ("inbox", 5, 1), "Drafts": ("drafts", 0, 0), "Sent": ("sent", 1, 0),
        "Archive": ("archive", 0, 0), "Junk": ("junk", 1, 1), "Trash": ("trash", 1, 0),
        "Lists": (None, 0, 0), "Lists/Work": (None, 2, 1), "Été": (None, 1, 0),
    }
    assert view["Inbox"]["emails"] == [
        (1770000100, []), (1770000200, ["$seen"]), (1770000300, ["$answered", "$flagged", "$seen"]),
        (1770000400, ["$forwarded", "$label1", "$seen", "important"]), (1770000600, ["$seen"])]
    assert view["Trash"]["emails"] == [(1770000500, ["$seen"])]
    assert view["Lists/Work"]["emails"] == [(1770002000, []), (1770002100, ["$draft"])]

    # Run again, the import skips what is in place; new files go into the same mailboxes.
    put(root / ".Lists.Work", "cur", "3003.M3.host:2,S", message("Work later"), 1_770_002_200)
    put(root / ".Lists.Work", "cur", "3004.M4.host:2,S", message("Work later"), 1_770_002_300)   # a copy
    code, out, _ = run(capsys, "import", LOGIN, str(root), "--data-dir", str(data_dir))
    assert code == 0 and out.startswith("imported 1, skipped 13 (12 already there), failed 0")
    assert "0 mailboxes created" in out
    assert await_view(data_dir)["Lists/Work"]["total"] == 3
    # Into another mailbox, the same messages are new.
    code, out, _ = run(capsys, "import", LOGIN, str(root / ".Lists.Work"), "--mailbox", "Lists/Old",
                       "--data-dir", str(data_dir))
    assert code == 0 and out.startswith("imported 3, skipped 1 (1 already there), failed 0")
    assert "1 mailbox created" in out
    assert await_view(data_dir)["Lists/Old"]["total"] == 3


def test_import_mbox_unescapes_and_reports_a_broken_message(capsys, tmp_path):
    data_dir = tmp_path / "data"
    add_user(capsys, data_dir)
    mbox = tmp_path / "old.mbox"
    mbox.write_bytes(b"From bob@example.org Tue Mar  3 10:00:00 2026\n" + message("One").replace(b"\r\n", b"\n")
                     + b">From here on\n\n"
                     + b"From nobody Tue Mar  3 11:00:00 2026\n\x00\x01 no header at all\n\n"
                     + b"From alice@example.org Wed Mar  4 11:30:00 2026\n"
                     + message("Two").replace(b"\r\n", b"\n").replace(b"\n\n", b"\nStatus: RO\n\n", 1))
    code, out, err = run(capsys, "import", LOGIN, str(mbox), "--mailbox", "Old mail", "--data-dir", str(data_dir))
    assert code == 1, out + err
    assert out.startswith("imported 2, skipped 0, failed 1")
    assert re.search(r"^  failed .*old\.mbox message 2: \S+", out, re.MULTILINE)
    view = await_view(data_dir)
    assert view["Old mail"]["emails"] == [(1772532000, []), (1772623800, ["$seen"])]


def test_import_of_a_missing_path_is_a_one_line_error(capsys, tmp_path):
    data_dir = tmp_path / "data"
    add_user(capsys, data_dir)
    code, out, err = run(capsys, "import", LOGIN, str(tmp_path / "nope"), "--data-dir", str(data_dir))
    assert code == 1 and out == ""
    assert err.strip().endswith("nope: no such file or directory")
    code, out, err = run(capsys, "import", "who@example.org", str(tmp_path), "--data-dir", str(data_dir))
    assert code == 1 and "no user 'who@example.org'" in err


def await_view(data_dir: Path) -> dict[str, Any]:
    import asyncio
    return asyncio.run(account_view(data_dir))


async def test_a_running_daemon_pushes_what_an_import_commits(aiohttp_client, tmp_path):
    """DESIGN: the import commits batch by batch from its own runtime; the daemon publishes each commit."""
    from jmaple.app import make_app
    from jmaple.keys import RUNTIME
    from jmaple.users import create_user

    config = Config.for_tests(data_dir=tmp_path / "data")
    client = await aiohttp_client(make_app(config))
    user = await create_user(client.app[RUNTIME], LOGIN, "Ann", "secret")
    root = make_maildir(tmp_path / "Maildir")
    with client.app[RUNTIME].broker.subscribe([user.account_id], ["Email", "Mailbox", "EmailDelivery"]) as sub:
        async with open_runtime(Config.for_tests(data_dir=tmp_path / "data")) as other:
            report = await importer.run_import(other, user.account_id, root, err=io.StringIO(), batch=4)
        assert (report.imported, report.failed) == (11, [])
        seen: dict[str, str] = {}
        async with asyncio.timeout(5):
            while "Email" not in seen or "EmailDelivery" not in seen or "Mailbox" not in seen:
                seen.update((await sub.next())[user.account_id])


def test_a_folder_that_cannot_be_a_mailbox_fails_its_messages_only(capsys, tmp_path):
    data_dir = tmp_path / "data"
    add_user(capsys, data_dir)
    root = tmp_path / "Maildir"
    put(root, "cur", "1.M1.host:2,S", message("Fine"))
    put(root / ".Bad\tName", "cur", "2.M2.host:2,S", message("Lost"))
    put(root / ".Bad\tName", "cur", "3.M3.host:2,S", message("Lost too"))
    code, out, _ = run(capsys, "import", LOGIN, str(root), "--data-dir", str(data_dir))
    assert code == 1
    assert out.startswith("imported 1, skipped 0, failed 2")
    assert out.count("must not contain control characters") == 2
    assert await_view(data_dir)["Inbox"]["total"] == 1
