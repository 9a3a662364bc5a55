"""The mail capability and accounts (RFC 8621 §1.3.1, §1.4, §1.5, §2): settings, new, granted and old accounts."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from conftest import add_user, basic, share
from jmaple.app import make_app, open_runtime
from jmaple.config import Config, ConfigError
from jmaple.core.capability import Registry
from jmaple.keys import RUNTIME
from jmaple.mail import MAIL, PLUGIN as MAIL_PLUGIN, MailConfig
from jmaple.mail import importer, storage
from jmaple.store import changes
from jmaple.users import create_user, delete_user
from test_mail_mailbox import (
    ALL_RIGHTS, MAIL_USING, add_emails, assert_counts_consistent, call, email, error, ids_by_name, mail_client,
    mail_plugins, mailboxes,
)

MAIL_PLUGIN_MIGRATIONS = Path(importer.__file__).parent / "migrations"
READ_ONLY_RIGHTS = {name: name == "mayReadItems" for name in ALL_RIGHTS}


@pytest.fixture
async def mail(aiohttp_client, tmp_path):
    return await mail_client(aiohttp_client, tmp_path)


async def get_session(client, auth: str | None = None) -> dict[str, Any]:
    resp = await client.get("/jmap/session", headers={"Authorization": auth or client.auth})
    assert resp.status == 200, await resp.text()
    return await resp.json()


# The capability (§1.3.1)

async def test_the_session_lists_the_mail_capability_and_its_account_limits(mail):
    """RFC 8621 §1.3.1: {} in the session; the account object has every limit; primaryAccounts names it."""
    session = await get_session(mail)
    assert session["capabilities"][MAIL] == {}
    assert session["accounts"][mail.account_id]["accountCapabilities"][MAIL] == {
        "maxMailboxesPerEmail": 100,
        "maxMailboxDepth": 16,
        "maxSizeMailboxName": 255,
        "maxSizeAttachmentsPerEmail": 50_000_000,
        "emailQuerySortOptions": ["receivedAt"],
        "mayCreateTopLevelMailbox": True,
    }
    assert session["primaryAccounts"][MAIL] == mail.account_id


async def test_every_limit_comes_from_the_configuration(aiohttp_client, tmp_path):
    mail = await mail_client(aiohttp_client, tmp_path, max_mailboxes_per_email=0, max_mailbox_depth=0,
                             max_size_mailbox_name=100, max_size_attachments_per_email=1000,
                             may_create_top_level_mailbox=False)
    info = (await get_session(mail))["accounts"][mail.account_id]["accountCapabilities"][MAIL]
    assert {k: v for k, v in info.items() if k != "emailQuerySortOptions"} == {
        "maxMailboxesPerEmail": None, "maxMailboxDepth": None, "maxSizeMailboxName": 100,
        "maxSizeAttachmentsPerEmail": 1000, "mayCreateTopLevelMailbox": False}
    # No depth limit: a tall tree is fine.
    parent = None
    for n in range(20):
        args = {"name": f"L{n}", "parentId": parent or (await ids_by_name(mail))["Inbox"]}
        result = await call(mail, "Mailbox/set", {"create": {"x": args}})
        parent = result["created"]["x"]["id"]


@pytest.mark.parametrize("table, key", [
    ({"colour": "red"}, "colour"),
    ({"max_mailbox_depth": "3"}, "max_mailbox_depth"),
    ({"max_mailbox_depth": -1}, "max_mailbox_depth"),
    ({"max_mailbox_depth": True}, "max_mailbox_depth"),
    ({"max_mailboxes_per_email": 2.5}, "max_mailboxes_per_email"),
    ({"max_size_mailbox_name": 99}, "max_size_mailbox_name"),
    ({"max_size_attachments_per_email": 0}, "max_size_attachments_per_email"),
    ({"max_size_attachments_per_email": 2**60}, "max_size_attachments_per_email"),
    ({"may_create_top_level_mailbox": "yes"}, "may_create_top_level_mailbox"),
    ({"default_mailboxes": "Inbox"}, "default_mailboxes"),
    ({"default_mailboxes": ["Inbox"]}, "default_mailboxes[0]"),
    ({"default_mailboxes": [{"role": "inbox"}]}, "default_mailboxes[0].name"),
    ({"default_mailboxes": [{"name": ""}]}, "default_mailboxes[0].name"),
    ({"default_mailboxes": [{"name": "a\nb"}]}, "default_mailboxes[0].name"),
    ({"default_mailboxes": [{"name": "x" * 300}]}, "default_mailboxes[0].name"),
    ({"default_mailboxes": [{"name": "A"}, {"name": "A"}]}, "default_mailboxes[1].name"),
    ({"default_mailboxes": [{"name": "A", "role": "spam"}]}, "default_mailboxes[0].role"),
    ({"default_mailboxes": [{"name": "A", "role": "Inbox"}]}, "default_mailboxes[0].role"),
    ({"default_mailboxes": [{"name": "A", "role": "inbox"}, {"name": "B", "role": "inbox"}]},
     "default_mailboxes[1].role"),
    ({"default_mailboxes": [{"name": "A", "sort_order": -1}]}, "default_mailboxes[0].sort_order"),
    ({"default_mailboxes": [{"name": "A", "sort_order": 2**31}]}, "default_mailboxes[0].sort_order"),
    ({"default_mailboxes": [{"name": "A", "colour": "red"}]}, "default_mailboxes[0].colour"),
])
def test_a_bad_setting_is_refused_naming_its_key(tmp_path, table, key):
    """[capabilities.mail]: every bad value is a ConfigError naming the table and the key."""
    with pytest.raises(ValueError, match=f"^{key.replace('[', '.').replace(']', '.')}: "):
        MailConfig.from_toml(table)
    config = Config.for_tests(data_dir=tmp_path, capabilities={"mail": table})
    with pytest.raises(ConfigError) as raised:
        Registry.load(config, mail_plugins())
    assert f"[capabilities.mail] {key}: " in str(raised.value)


def test_the_settings_have_sensible_defaults_and_accept_a_single_inbox():
    assert MailConfig.from_toml({}) == MailConfig()
    settings = MailConfig.from_toml({"enabled": True, "default_mailboxes": [{"name": "Inbox", "role": "inbox"}]})
    assert [(m.name, m.role, m.sort_order) for m in settings.default_mailboxes] == [("Inbox", "inbox", 1)]


async def test_an_operator_may_give_new_accounts_only_an_inbox(aiohttp_client, tmp_path):
    """The default mailboxes are configurable: [capabilities.mail] default_mailboxes."""
    mail = await mail_client(aiohttp_client, tmp_path, default_mailboxes=[
        {"name": "Posteingang", "role": "inbox", "sort_order": 7}, {"name": "Später"}])
    got = await mailboxes(mail)
    assert {n: (m["role"], m["sortOrder"], m["isSubscribed"]) for n, m in got.items()} == {
        "Posteingang": ("inbox", 7, True), "Später": (None, 2, True)}


async def test_without_the_plugin_there_is_no_mail_capability(aiohttp_client, tmp_path):
    config = Config.for_tests(data_dir=tmp_path / "data", capabilities={"mail": {"enabled": False}})
    client = await aiohttp_client(make_app(config, capabilities=mail_plugins()))
    await add_user(client, "alice@example.org")
    client.auth = basic("alice@example.org")
    session = await get_session(client)
    assert MAIL not in session["capabilities"] and MAIL not in session["primaryAccounts"]


def test_email_delivery_is_a_push_type_of_the_mail_capability(tmp_path):
    """RFC 8621 §1.5: servers with the mail capability push state changes of EmailDelivery."""
    registry = Registry.load(Config.for_tests(data_dir=tmp_path), mail_plugins())
    assert registry.push_types["EmailDelivery"] == MAIL
    assert registry.push_types["Mailbox"] == MAIL


# New accounts

async def test_a_new_accounts_mailboxes_are_in_its_change_log(mail):
    """RFC 8620 §5.2: a client that starts from state "0" learns of every default mailbox as created."""
    result = await call(mail, "Mailbox/changes", {"sinceState": "0"})
    got = await call(mail, "Mailbox/get", {"ids": None})
    assert sorted(result["created"]) == sorted(m["id"] for m in got["list"])
    assert result["newState"] == got["state"] and result["updated"] == result["destroyed"] == []
    page = await call(mail, "Mailbox/changes", {"sinceState": "0", "maxChanges": 2})
    assert len(page["created"]) == 2 and page["hasMoreChanges"] is True


async def test_deleting_a_user_takes_their_mail_along(mail):
    ids = await ids_by_name(mail)
    await add_emails(mail, email([ids["Inbox"], ids["Archive"]]), email([ids["Trash"]]))
    runtime = mail.app[RUNTIME]
    await delete_user(runtime, "alice@example.org")
    async with runtime.db.read() as conn:
        for table in ("mailboxes", "mailbox_subscriptions", "emails", "email_mailboxes", "email_keywords",
                      "threads", "thread_message_ids"):
            assert await conn.value(f"SELECT count(*) FROM {table}") == 0, table
        assert await conn.all("PRAGMA foreign_key_check") == []


# Granted accounts (§1.4, §2 myRights and isSubscribed)

@pytest.fixture
async def bob(mail):
    """bob@example.org, who alice (mail's user) shares her account with; returns bob's auth header."""
    await add_user(mail, "bob@example.org")
    return basic("bob@example.org")


async def as_bob(mail, auth: str, method: str, args: dict[str, Any]) -> list[Any]:
    body = {"using": MAIL_USING, "methodCalls": [[method, {"accountId": mail.account_id, **args}, "0"]]}
    return (await mail.request_json(body, auth=auth))["methodResponses"][0]


async def test_a_read_only_grant_shows_her_mailboxes_read_only_and_unsubscribed(mail, bob):
    """RFC 8621 §1.4 and §2: only the mail capability; myRights reflect the grant; isSubscribed false."""
    await share(mail, "bob@example.org", "alice@example.org", may_write=False)
    session = await get_session(mail, bob)
    account = session["accounts"][mail.account_id]
    assert (account["isPersonal"], account["isReadOnly"]) == (False, True)
    assert list(account["accountCapabilities"]) == [MAIL]
    assert account["accountCapabilities"][MAIL]["mayCreateTopLevelMailbox"] is False
    assert session["primaryAccounts"][MAIL] != mail.account_id
    name, result, _ = await as_bob(mail, bob, "Mailbox/get", {"ids": None})
    assert name == "Mailbox/get" and len(result["list"]) == 6
    assert all(m["myRights"] == READ_ONLY_RIGHTS and m["isSubscribed"] is False for m in result["list"])
    # Her own view is unchanged.
    assert all(m["isSubscribed"] for m in (await mailboxes(mail)).values())
    name, result, _ = await as_bob(mail, bob, "Mailbox/query", {"filter": {"isSubscribed": False}})
    assert len(result["ids"]) == 6


async def test_a_read_only_grant_may_subscribe_but_change_nothing_else(mail, bob):
    """RFC 8621 §2: isSubscribed is per user, so a read-only grantee may set it; any other create, update
    or destroy is a forbidden SetError (RFC 8620 §5.3). Her subscriptions and mailboxes are untouched."""
    await share(mail, "bob@example.org", "alice@example.org", may_write=False)
    ids = await ids_by_name(mail)
    _, before, _ = await as_bob(mail, bob, "Mailbox/get", {"ids": []})
    name, result, _ = await as_bob(mail, bob, "Mailbox/set", {
        "create": {"a": {"name": "A"}, "b": {"name": "B", "parentId": ids["Inbox"]}},
        "update": {ids["Inbox"]: {"isSubscribed": True},
                   ids["Sent"]: {"isSubscribed": True, "name": "Posted"},
                   ids["Drafts"]: {"sortOrder": 9},
                   ids["Archive"]: {"role": None},
                   ids["Trash"]: {"parentId": ids["Inbox"]}},
        "destroy": [ids["Junk"]]})
    assert name == "Mailbox/set"
    assert result["updated"] == {ids["Inbox"]: None}
    assert {k: v["type"] for k, v in result["notCreated"].items()} == {"a": "forbidden", "b": "forbidden"}
    assert {k: v["type"] for k, v in result["notUpdated"].items()} == {
        ids["Sent"]: "forbidden", ids["Drafts"]: "forbidden", ids["Archive"]: "forbidden",
        ids["Trash"]: "forbidden"}
    assert result["notDestroyed"] == {ids["Junk"]: {"type": "forbidden", "description": "you may not destroy "
                                                                                        "this mailbox"}}
    # His /changes sees the subscription.
    _, changed, _ = await as_bob(mail, bob, "Mailbox/changes", {"sinceState": before["state"]})
    assert changed["updated"] == [ids["Inbox"]] and changed["newState"] == result["newState"]
    _, got, _ = await as_bob(mail, bob, "Mailbox/get", {"ids": None})
    assert {m["name"] for m in got["list"] if m["isSubscribed"]} == {"Inbox"}
    assert {m["name"] for m in got["list"]} == {"Inbox", "Drafts", "Sent", "Archive", "Junk", "Trash"}
    mine = await mailboxes(mail)
    assert all(m["isSubscribed"] for m in mine.values()) and mine["Drafts"]["sortOrder"] == 2
    assert mine["Archive"]["role"] == "archive" and mine["Trash"]["parentId"] is None
    name, result, _ = await as_bob(mail, bob, "Mailbox/set", {"update": {ids["Inbox"]: {"isSubscribed": False}}})
    assert result["updated"] == {ids["Inbox"]: None}
    _, got, _ = await as_bob(mail, bob, "Mailbox/get", {"ids": [ids["Inbox"]], "properties": ["isSubscribed"]})
    assert got["list"] == [{"id": ids["Inbox"], "isSubscribed": False}]


async def test_every_other_write_to_a_read_only_grant_is_account_read_only(mail, bob):
    """RFC 8620 §3.6.2 accountReadOnly: only Mailbox/set checks write access itself."""
    await share(mail, "bob@example.org", "alice@example.org", may_write=False)
    for method, args in (("Email/set", {"create": {"a": {}}}), ("Email/import", {"emails": {}})):
        name, result, _ = await as_bob(mail, bob, method, args)
        assert (name, result["type"]) == ("error", "accountReadOnly"), method


async def test_a_read_write_grant_keeps_subscriptions_per_user(mail, bob):
    """RFC 8621 §2 isSubscribed: stored separately per user; true for mailboxes one creates oneself."""
    await share(mail, "bob@example.org", "alice@example.org", may_write=True)
    ids = await ids_by_name(mail)
    name, result, _ = await as_bob(mail, bob, "Mailbox/set", {
        "create": {"a": {"name": "Bob's"}}, "update": {ids["Sent"]: {"isSubscribed": True}}})
    assert name == "Mailbox/set" and result["created"]["a"]["isSubscribed"] is True
    assert result["created"]["a"]["myRights"] == ALL_RIGHTS
    created = result["created"]["a"]["id"]
    _, result, _ = await as_bob(mail, bob, "Mailbox/get", {"ids": None})
    subscribed = {m["name"] for m in result["list"] if m["isSubscribed"]}
    assert subscribed == {"Bob's", "Sent"}
    assert {m["name"]: m["myRights"] for m in result["list"]}["Inbox"] == {**ALL_RIGHTS, "mayDelete": False}
    # Alice's subscriptions are hers: the mailbox bob made in her account is subscribed for her too.
    await call(mail, "Mailbox/set", {"update": {ids["Sent"]: {"isSubscribed": False}}})
    got = await mailboxes(mail)
    assert got["Bob's"]["isSubscribed"] is True and got["Sent"]["isSubscribed"] is False
    _, result, _ = await as_bob(mail, bob, "Mailbox/get", {"ids": [ids["Sent"], created]})
    assert [m["isSubscribed"] for m in result["list"]] == [True, True]


async def test_a_grantee_sees_the_counts_of_her_mailboxes(mail, bob):
    await share(mail, "bob@example.org", "alice@example.org", may_write=False)
    ids = await ids_by_name(mail)
    await add_emails(mail, email([ids["Inbox"]]))
    _, result, _ = await as_bob(mail, bob, "Mailbox/get", {"ids": [ids["Inbox"]], "properties": ["unreadEmails"]})
    assert result["list"] == [{"id": ids["Inbox"], "unreadEmails": 1}]


async def test_an_account_that_is_not_shared_is_not_found(mail, bob):
    name, result, _ = await as_bob(mail, bob, "Mailbox/get", {})
    assert (name, result["type"]) == ("error", "accountNotFound")


# Accounts the capability has not provisioned yet: from before it was installed, or made while it was disabled

PASSWORD = "correct horse battery staple"
DEFAULT_SIX = [("Archive", "archive", 4, True), ("Drafts", "drafts", 2, True), ("Inbox", "inbox", 1, True),
               ("Junk", "junk", 5, True), ("Sent", "sent", 3, True), ("Trash", "trash", 6, True)]
TWO = [{"name": "Posteingang", "role": "inbox"}, {"name": "Papierkorb", "role": "trash"}]


def mail_config(data: Path, **mail_settings: Any) -> Config:
    return Config.for_tests(data_dir=data, capabilities={"mail": mail_settings})


async def view(runtime, *users) -> list[list[tuple[str, str | None, int, bool]]]:
    """Each user's own mailboxes as (name, role, sortOrder, isSubscribed), sorted; the data is consistent."""
    async with runtime.db.read() as conn:
        assert await storage.problems(conn) == []
        return [sorted((r.name, r.role, r.sort_order, r.is_subscribed)
                       for r in await storage.mailboxes(conn, u.account_id, u.id)) for u in users]


async def test_accounts_from_before_the_mail_capability_get_the_configured_mailboxes(tmp_path):
    """Issue 4 (RFC 8621 §2): accounts that exist before the capability is installed get the mailboxes of
    [capabilities.mail] default_mailboxes, logged as created (RFC 8620 §5.2), as soon as a process opens
    the store with the plugin enabled (its after_migrate hook)."""
    data = tmp_path / "data"
    async with open_runtime(mail_config(data, enabled=False), mail_plugins()) as runtime:
        assert "mail" not in await runtime.db.schema_versions()
        alice = await create_user(runtime, "alice@example.org", "Alice", PASSWORD)
        carol = await create_user(runtime, "carol@example.org", "Carol", PASSWORD)
        async with runtime.db.write() as tx:     # earlier activity in alice's account
            await changes.bump(tx, alice.account_id, "Other")
            await changes.bump(tx, alice.account_id, "Other")
    async with open_runtime(mail_config(data, default_mailboxes=TWO), mail_plugins()) as runtime:
        assert (await runtime.db.schema_versions())["mail"] == 2
        assert await view(runtime, alice, carol) == [[("Papierkorb", "trash", 2, True),
                                                      ("Posteingang", "inbox", 1, True)]] * 2
        async with runtime.db.read() as conn:
            assert await changes.state(conn, alice.account_id, "Other") == "2"
            assert await changes.state(conn, alice.account_id, "Mailbox") == "4"
            assert await changes.state(conn, carol.account_id, "Mailbox") == "2"
            logged = await changes.since(conn, alice.account_id, "Mailbox", 2, None)
            assert sorted(c.created_modseq for c in logged) == [3, 4]
        dave = await create_user(runtime, "dave@example.org", "Dave", PASSWORD)
        assert len((await view(runtime, dave))[0]) == 2
    async with open_runtime(mail_config(data, default_mailboxes=TWO), mail_plugins()) as runtime:
        # Opened again: nobody gets a second set.
        assert [len(v) for v in await view(runtime, alice, carol, dave)] == [2, 2, 2]


async def test_an_account_created_while_the_plugin_was_disabled_gets_mailboxes_when_it_is_enabled(tmp_path):
    """Issue 4: the mail migrations ran, then an account was created with the plugin disabled (so without
    the account-creation hook); enabling the plugin again provisions it, and only it."""
    data = tmp_path / "data"
    async with open_runtime(mail_config(data), mail_plugins()) as runtime:
        alice = await create_user(runtime, "alice@example.org", "Alice", PASSWORD)
    async with open_runtime(mail_config(data, enabled=False), mail_plugins()) as runtime:
        bob = await create_user(runtime, "bob@example.org", "Bob", PASSWORD)
    async with open_runtime(mail_config(data), mail_plugins()) as runtime:
        assert await view(runtime, alice, bob) == [DEFAULT_SIX, DEFAULT_SIX]


async def test_any_process_that_opens_the_store_provisions_without_a_daemon(tmp_path):
    """An account made by the users API while mail was disabled has its mailboxes once a CLI command (any
    open_runtime with mail enabled) has opened the store; no daemon ran."""
    data = tmp_path / "data"
    async with open_runtime(mail_config(data, enabled=False), mail_plugins()) as runtime:
        bob = await create_user(runtime, "bob@example.org", "Bob", PASSWORD)
        assert "mail" not in await runtime.db.schema_versions()
    async with open_runtime(mail_config(data), mail_plugins()) as runtime:
        assert await view(runtime, bob) == [DEFAULT_SIX]
        async with runtime.db.read() as conn:
            assert await storage.unprovisioned_accounts(conn) == []
            assert await changes.state(conn, bob.account_id, "Mailbox") == "6"


async def test_jmapled_import_into_an_unprovisioned_account_provisions_it_first(tmp_path):
    """The import fills the configured mailboxes rather than making its own Inbox, and the daemon's later
    start adds nothing."""
    data = tmp_path / "data"
    async with open_runtime(mail_config(data, enabled=False), mail_plugins()) as runtime:
        bob = await create_user(runtime, "bob@example.org", "Bob", PASSWORD)
    mbox = tmp_path / "in.mbox"
    mbox.write_bytes(b"From a@example.org Tue Mar  3 10:00:00 2026\nFrom: a@example.org\nSubject: Hi\n\nHello\n")
    async with open_runtime(mail_config(data, default_mailboxes=TWO), mail_plugins()) as runtime:
        report = await importer.run_import(runtime, bob.account_id, mbox, err=io.StringIO())
        assert report.imported == 1
        (boxes,) = await view(runtime, bob)
        assert boxes == [("Papierkorb", "trash", 2, True), ("Posteingang", "inbox", 1, True)]
        async with runtime.db.read() as conn:
            counts = {r.name: r.total_emails for r in await storage.mailboxes(conn, bob.account_id, None)}
        assert counts == {"Posteingang": 1, "Papierkorb": 0}


# The back-fill the first migration did before accounts were provisioned by the plugin.
OLD_BACK_FILL = """
CREATE TEMP TABLE mail_defaults (name TEXT, role TEXT, sort_order INTEGER);
INSERT INTO mail_defaults VALUES ('Inbox', 'inbox', 1), ('Drafts', 'drafts', 2), ('Sent', 'sent', 3),
    ('Archive', 'archive', 4), ('Junk', 'junk', 5), ('Trash', 'trash', 6);
INSERT INTO mailboxes (account_id, id, name, role, sort_order)
    SELECT a.id, 'M' || lower(hex(randomblob(9))), d.name, d.role, d.sort_order
    FROM accounts a CROSS JOIN mail_defaults d;
INSERT INTO mailbox_subscriptions (user_id, account_id, mailbox_id)
    SELECT a.owner_id, m.account_id, m.id FROM mailboxes m JOIN accounts a ON a.id = m.account_id;
INSERT INTO changes (account_id, type, object_id, created_modseq, modseq, full_modseq)
    SELECT m.account_id, 'Mailbox', m.id, a.modseq + m.n, a.modseq + m.n, a.modseq + m.n
    FROM (SELECT account_id, id, row_number() OVER (PARTITION BY account_id ORDER BY sort_order) AS n
          FROM mailboxes) m
    JOIN accounts a ON a.id = m.account_id;
UPDATE accounts SET modseq = modseq + (SELECT count(*) FROM mailboxes m WHERE m.account_id = accounts.id)
    WHERE EXISTS (SELECT 1 FROM mailboxes m WHERE m.account_id = accounts.id);
UPDATE meta SET value = value + 1 WHERE key = 'seq' AND EXISTS (SELECT 1 FROM mailboxes);
INSERT INTO type_states (account_id, type, modseq, seq)
    SELECT a.id, 'Mailbox', a.modseq, (SELECT value FROM meta WHERE key = 'seq')
    FROM accounts a WHERE EXISTS (SELECT 1 FROM mailboxes m WHERE m.account_id = a.id)
    ON CONFLICT (account_id, type) DO UPDATE SET modseq = excluded.modseq, seq = excluded.seq;
DROP TABLE mail_defaults;
"""


async def test_a_data_directory_that_ran_the_old_back_fill_keeps_one_set_of_mailboxes(tmp_path, monkeypatch):
    """Issue 4: where the first migration back-filled six mailboxes (whatever the configuration said), the
    accounts are marked provisioned and never get a second set; one whose mailboxes were all destroyed
    stays without; an account made later while the plugin was disabled is provisioned as configured."""
    data = tmp_path / "data"
    old = tmp_path / "old_mail_migrations"
    old.mkdir()
    (old / "__init__.py").write_text("")
    (old / "0001_mail.sql").write_text(
        (Path(MAIL_PLUGIN_MIGRATIONS) / "0001_mail.sql").read_text() + OLD_BACK_FILL)
    monkeypatch.syspath_prepend(str(tmp_path))
    async with open_runtime(mail_config(data, enabled=False), mail_plugins()) as runtime:
        alice = await create_user(runtime, "alice@example.org", "Alice", PASSWORD)
        carol = await create_user(runtime, "carol@example.org", "Carol", PASSWORD)
        await runtime.db.migrate([("mail", "old_mail_migrations")])
        async with runtime.db.write() as tx:    # carol destroyed all of hers
            await tx.execute("DELETE FROM mailboxes WHERE account_id = ?", (carol.account_id,))
        dave = await create_user(runtime, "dave@example.org", "Dave", PASSWORD)
    async with open_runtime(mail_config(data, default_mailboxes=TWO), mail_plugins()) as runtime:
        assert (await runtime.db.schema_versions())["mail"] == 2
        async with runtime.db.read() as conn:
            before = await storage.mailboxes(conn, alice.account_id, None)
        assert await view(runtime, alice, carol, dave) == [
            DEFAULT_SIX, [], [("Papierkorb", "trash", 2, True), ("Posteingang", "inbox", 1, True)]]
        async with runtime.db.read() as conn:
            assert await storage.mailboxes(conn, alice.account_id, None) == before


async def test_back_filled_mailboxes_are_in_the_change_log_over_http(aiohttp_client, tmp_path):
    """RFC 8620 §5.2: /changes from "0" reports the back-filled mailboxes as created, states agree."""
    data = tmp_path / "data"
    async with open_runtime(Config.for_tests(data_dir=data, capabilities={"mail": {"enabled": False}}),
                            mail_plugins()) as runtime:
        await create_user(runtime, "alice@example.org", "Alice", "correct horse battery staple")
    client = await aiohttp_client(make_app(Config.for_tests(data_dir=data), capabilities=mail_plugins()))
    client.auth = basic("alice@example.org")
    session = await get_session(client)
    client.account_id = session["primaryAccounts"][MAIL]
    got = await call(client, "Mailbox/get", {"ids": None})
    assert len(got["list"]) == 6
    changed = await call(client, "Mailbox/changes", {"sinceState": "0"})
    assert sorted(changed["created"]) == sorted(m["id"] for m in got["list"])
    assert changed["newState"] == got["state"]
    # The log goes on from there.
    result = await call(client, "Mailbox/set", {"create": {"a": {"name": "After"}}})
    changed = await call(client, "Mailbox/changes", {"sinceState": got["state"]})
    assert changed["created"] == [result["created"]["a"]["id"]]
    assert int(result["newState"]) > int(got["state"])


# `jmapled check` and repairs

async def test_the_check_finds_wrong_counts_and_repair_fixes_them(mail):
    ids = await ids_by_name(mail)
    await add_emails(mail, email([ids["Inbox"]]), email([ids["Inbox"]], keywords=("$seen",)))
    runtime = mail.app[RUNTIME]
    check = MAIL_PLUGIN.checks[0]
    assert await check(runtime) == []
    async with runtime.db.write() as tx:
        await tx.execute("UPDATE mailboxes SET unread_emails = 7 WHERE id = ?", (ids["Inbox"],))
        await tx.execute("UPDATE emails SET is_unread = 0 WHERE account_id = ?", (mail.account_id,))
    found = await check(runtime)
    assert len(found) == 2 and "counts" in found[0] and "is_unread" in found[1]
    async with runtime.db.write() as tx:
        await tx.execute("UPDATE emails SET is_unread = 1 WHERE account_id = ? AND id NOT IN"
                         " (SELECT email_id FROM email_keywords)", (mail.account_id,))
    state = (await call(mail, "Mailbox/get", {"ids": []}))["state"]
    async with runtime.db.write() as tx:
        assert await storage.repair_counts(tx, mail.account_id) == [ids["Inbox"]]
    assert await check(runtime) == []
    await assert_counts_consistent(mail)
    changed = await call(mail, "Mailbox/changes", {"sinceState": state})
    assert changed["updated"] == [ids["Inbox"]] and changed["updatedProperties"] is not None


async def test_hostile_account_ids_are_refused(mail):
    for account_id in (None, 5, "", "A" * 300, "Anope"):
        result = await mail.error("Mailbox/get", {"accountId": account_id}, using=MAIL_USING)
        assert result["type"] in ("invalidArguments", "accountNotFound"), account_id
    assert (await error(mail, "Mailbox/get", {"ids": "x"}))["type"] == "invalidArguments"
    assert (await error(mail, "Mailbox/get", {"ids": [1]}))["type"] == "invalidArguments"
