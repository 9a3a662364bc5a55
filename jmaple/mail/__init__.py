"""The Mail capability (RFC 8621): urn:ietf:params:jmap:mail, its settings and its plugin."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jmaple.config import Config
from jmaple.core.capability import Capability, Method, Plugin
from jmaple.mail import devdata, email, importer, mailbox, query, thread
from jmaple.store.accounts import Access

MAIL = "urn:ietf:params:jmap:mail"

# RFC 8621 §1.3.1 emailQuerySortOptions: exactly what Email/query sorts by (query.SORT_PROPERTIES);
# the search issue adds the rest of §4.4.2.
EMAIL_QUERY_SORT_OPTIONS = query.SORT_PROPERTIES
MIN_SIZE_MAILBOX_NAME = 100    # RFC 8621 §1.3.1: maxSizeMailboxName is at least 100


@dataclass(frozen=True)
class DefaultMailbox:
    """One mailbox every new account gets."""

    name: str
    role: str | None = None
    sort_order: int = 0


DEFAULT_MAILBOXES = (
    DefaultMailbox("Inbox", "inbox", 1),
    DefaultMailbox("Drafts", "drafts", 2),
    DefaultMailbox("Sent", "sent", 3),
    DefaultMailbox("Archive", "archive", 4),
    DefaultMailbox("Junk", "junk", 5),
    DefaultMailbox("Trash", "trash", 6),
)


def _int(table: Mapping[str, Any], key: str, default: int | None, minimum: int, *,
         zero_is_none: bool = False, where: str = "") -> int | None:
    value = table.get(key, default)
    key = where + key
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key}: must be an integer, got {value!r}")
    if zero_is_none and value == 0:
        return None
    if value < minimum or value > 2**53 - 1:
        raise ValueError(f"{key}: must be at least {minimum}{' (or 0 for no limit)' if zero_is_none else ''}, "
                         f"got {value}")
    return value


@dataclass(frozen=True)
class MailConfig:
    """[capabilities.mail]: the limits of §1.3.1 (all enforced) and the mailboxes of a new account."""

    max_mailboxes_per_email: int | None = 100           # None: no limit
    max_mailbox_depth: int | None = 16                  # None: no limit
    max_size_mailbox_name: int = 255                    # octets of UTF-8
    max_size_attachments_per_email: int = 50_000_000    # octets, before encoding
    may_create_top_level_mailbox: bool = True
    default_mailboxes: tuple[DefaultMailbox, ...] = DEFAULT_MAILBOXES

    @classmethod
    def from_toml(cls, table: Mapping[str, Any]) -> MailConfig:
        """Check the table; raises ValueError("key: reason") naming the first bad key."""
        known = {"max_mailboxes_per_email", "max_mailbox_depth", "max_size_mailbox_name",
                 "max_size_attachments_per_email", "may_create_top_level_mailbox", "default_mailboxes"}
        unknown = sorted(set(table) - known - {"enabled"})
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown key (known: {', '.join(sorted(known))}, enabled)")
        top_level = table.get("may_create_top_level_mailbox", True)
        if not isinstance(top_level, bool):
            raise ValueError(f"may_create_top_level_mailbox: must be true or false, got {top_level!r}")
        name_size = _int(table, "max_size_mailbox_name", cls.max_size_mailbox_name, MIN_SIZE_MAILBOX_NAME)
        attachments = _int(table, "max_size_attachments_per_email", cls.max_size_attachments_per_email, 1)
        assert name_size is not None and attachments is not None
        return cls(
            max_mailboxes_per_email=_int(table, "max_mailboxes_per_email", cls.max_mailboxes_per_email, 1,
                                         zero_is_none=True),
            max_mailbox_depth=_int(table, "max_mailbox_depth", cls.max_mailbox_depth, 1, zero_is_none=True),
            max_size_mailbox_name=name_size,
            max_size_attachments_per_email=attachments,
            may_create_top_level_mailbox=top_level,
            default_mailboxes=_default_mailboxes(table, name_size),
        )


def _default_mailboxes(table: Mapping[str, Any], name_size: int) -> tuple[DefaultMailbox, ...]:
    raw = table.get("default_mailboxes")
    if raw is None:
        return DEFAULT_MAILBOXES
    key = "default_mailboxes"
    if not isinstance(raw, list):
        raise ValueError(f"{key}: must be an array of tables like {{ name = \"Inbox\", role = \"inbox\" }}")
    out: list[DefaultMailbox] = []
    names: set[str] = set()
    roles: set[str] = set()
    for n, entry in enumerate(raw):
        where = f"{key}[{n}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: must be a table like {{ name = \"Inbox\", role = \"inbox\" }}")
        unknown = sorted(set(entry) - {"name", "role", "sort_order"})
        if unknown:
            raise ValueError(f"{where}.{unknown[0]}: unknown key (known: name, role, sort_order)")
        name = entry.get("name")
        if not isinstance(name, str):
            raise ValueError(f"{where}.name: must be a string")
        try:
            name = mailbox.check_name(name, name_size, f"{where}.name")
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        if name in names:
            raise ValueError(f"{where}.name: {name!r} is listed twice")
        names.add(name)
        role = entry.get("role")
        if role is not None:
            if not isinstance(role, str) or role not in mailbox.ROLES:
                raise ValueError(f"{where}.role: must be one of {', '.join(sorted(mailbox.ROLES))}, got {role!r}")
            if role in roles:
                raise ValueError(f"{where}.role: {role!r} is given twice (one mailbox per role)")
            roles.add(role)
        sort_order = _int(entry, "sort_order", n + 1, 0, where=f"{where}.")
        assert sort_order is not None
        if sort_order > mailbox.MAX_SORT_ORDER:
            raise ValueError(f"{where}.sort_order: must be below 2^31, got {sort_order}")
        out.append(DefaultMailbox(name, role, sort_order))
    return tuple(out)


def mail_account_info(config: Config, access: Access) -> dict[str, Any]:
    """The account's urn:ietf:params:jmap:mail object (RFC 8621 §1.3.1)."""
    settings = MailConfig.from_toml(config.capabilities.get("mail", {}))
    return {
        "maxMailboxesPerEmail": settings.max_mailboxes_per_email,
        "maxMailboxDepth": settings.max_mailbox_depth,
        "maxSizeMailboxName": settings.max_size_mailbox_name,
        "maxSizeAttachmentsPerEmail": settings.max_size_attachments_per_email,
        "emailQuerySortOptions": list(EMAIL_QUERY_SORT_OPTIONS),
        "mayCreateTopLevelMailbox": settings.may_create_top_level_mailbox and access.may_write,
    }


PLUGIN = Plugin(
    name=mailbox.PLUGIN_NAME,
    capabilities=(
        Capability(
            MAIL,
            account_info=mail_account_info,
            shareable=True,
            data_types=(mailbox.MAILBOX, thread.THREAD, email.EMAIL),
            methods={
                "Mailbox/get": Method(mailbox.mailbox_get),
                "Mailbox/set": Method(mailbox.mailbox_set, writes=True, checks_write_access=True),
                "Mailbox/query": Method(mailbox.mailbox_query),
                "Mailbox/queryChanges": Method(mailbox.mailbox_query_changes),
                "Thread/get": Method(thread.thread_get),
                "Email/get": Method(email.email_get),
                "Email/import": Method(email.email_import, writes=True),
                "Email/query": Method(query.email_query),
                "Email/set": Method(email.email_set, writes=True),
                "Email/parse": Method(email.email_parse),
                "Email/copy": Method(email.email_copy, writes=True, from_account="fromAccountId"),
                "Email/queryChanges": Method(query.email_query_changes),
            },
        ),
    ),
    push_types=("EmailDelivery",),
    migrations="jmaple.mail.migrations",
    parse_config=MailConfig.from_toml,
    on_account_created=mailbox.create_defaults,
    after_migrate=mailbox.provision_accounts,
    checks=(mailbox.check,),
    commands=(importer.command,),
    dev_seed=devdata.seed,
)
