"""The plugin contract (jmaple/core/capability.py): registration, configuration, session, hooks, services."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conftest import CORE, add_user, basic, share
from jmaple.app import make_app, open_runtime
from jmaple.config import Config, ConfigError
from jmaple.core.capability import Capability, DataType, Method, Plugin, Property, Registry, RegistryError
from jmaple.keys import RUNTIME
from jmaple.store import changes
from jmaple.store.objects import JsonObjects
from jmaple.users import delete_user
from notes import NOTE, NOTES, PLUGIN as NOTES_PLUGIN

DIARY = "https://jmaple.test/diary"
INK = "https://jmaple.test/ink"


async def diary_read(ctx, args):
    """Diary/read: a method of a capability that is never shared with other users."""
    return {"accountId": ctx.account_id}


async def ink_write(ctx, args):
    """Ink/write: a method of a capability only writable accounts have."""
    return {"accountId": ctx.account_id}


PRIVATE_PLUGIN = Plugin(name="private", capabilities=(
    Capability(DIARY, session_info=lambda config: {"pages": 365}, shareable=False,
               methods={"Diary/read": Method(diary_read)}),
    Capability(INK, account_info=lambda config, access: {"colour": "blue"} if access.may_write else None,
               methods={"Ink/write": Method(ink_write, writes=True)}),
))


def registry(tmp_path, *plugins: Plugin, **raw: Any) -> Registry:
    return Registry.load(Config.for_tests(tmp_path / "data", **raw), plugins)


def installed(tmp_path) -> list[str]:
    """The plugins installed besides the tests' own (core, and whatever else this environment has)."""
    return [p.name for p in registry(tmp_path).plugins]


# Registration

def test_a_duplicate_capability_urn_fails_at_startup_naming_both_plugins(tmp_path):
    twin = Plugin(name="twin", capabilities=(Capability(NOTES),))
    with pytest.raises(RegistryError) as exc:
        registry(tmp_path, NOTES_PLUGIN, twin)
    assert str(exc.value) == f"capability {NOTES!r} is provided by both plugin 'notes' and 'twin'"


def test_a_duplicate_method_fails_at_startup_naming_both_plugins(tmp_path):
    twin = Plugin(name="twin", capabilities=(
        Capability("https://jmaple.test/twin", methods={"Note/get": Method(diary_read)}),))
    with pytest.raises(RegistryError) as exc:
        registry(tmp_path, NOTES_PLUGIN, twin)
    assert str(exc.value) == "method 'Note/get' is provided by both plugin 'notes' and 'twin'"
    echo = Plugin(name="echo", capabilities=(
        Capability("https://jmaple.test/echo", methods={"Core/echo": Method(diary_read, account=None)}),))
    with pytest.raises(RegistryError, match="'Core/echo' is provided by both plugin 'core' and 'echo'"):
        registry(tmp_path, echo)


@pytest.mark.parametrize("store, reason", [
    (JsonObjects("things", "Thingy", ["id", "name"]), "its store 'things' is for type 'Thingy'"),
    (JsonObjects("things", "Thing", ["id"]), "its store 'things' keeps the properties id, not id, name"),
    (JsonObjects("things", "Thing", ["name", "id"]), "keeps the properties name, id, not id, name"),
])
def test_a_json_store_declared_for_another_type_fails_at_startup(tmp_path, store, reason):
    """A JsonObjects store reads its type's state and sends its rows as they are: a typo in its type name
    or properties would serve stale or wrong objects, so the registry refuses it."""
    thing = DataType(name="Thing", properties=(Property("id", "Id", server_set=True), Property("name", "String")),
                     store=store)
    plugin = Plugin(name="things", capabilities=(Capability("https://jmaple.test/things", data_types=(thing,)),))
    with pytest.raises(RegistryError, match=f"plugin 'things', type 'Thing': .*{reason}"):
        registry(tmp_path, plugin)


def test_a_duplicate_type_name_fails_at_startup_naming_both_plugins(tmp_path):
    other_note = DataType(name="Note", properties=(Property("id", "Id", server_set=True),),
                          store=JsonObjects("x", "Note", ["id"]), standard_methods=())
    twin = Plugin(name="twin", capabilities=(Capability("https://jmaple.test/twin", data_types=(other_note,)),))
    with pytest.raises(RegistryError) as exc:
        registry(tmp_path, NOTES_PLUGIN, twin)
    assert str(exc.value) == "type 'Note' is provided by both plugin 'notes' and 'twin'"
    pusher = Plugin(name="pusher", push_types=("Notebook",))
    with pytest.raises(RegistryError, match="type 'Notebook' is provided by both plugin 'notes' and 'pusher'"):
        registry(tmp_path, NOTES_PLUGIN, pusher)


def test_a_duplicate_plugin_name_fails_at_startup(tmp_path):
    with pytest.raises(RegistryError, match="plugin 'notes' is provided by both plugin 'notes' and 'notes'"):
        registry(tmp_path, NOTES_PLUGIN, Plugin(name="notes"))
    with pytest.raises(RegistryError, match="plugin 'core' is provided by both"):
        registry(tmp_path, Plugin(name="core"))


def test_a_plugin_name_must_be_usable_as_a_config_table(tmp_path):
    with pytest.raises(RegistryError, match="plugin name 'My Notes'"):
        registry(tmp_path, Plugin(name="My Notes"))
    with pytest.raises(RegistryError, match="plugin name 'notes\\\\n'"):
        registry(tmp_path, Plugin(name="notes\n"))


async def test_the_app_refuses_to_start_with_a_duplicate(aiohttp_client, config):
    twin = Plugin(name="twin", capabilities=(Capability(NOTES),))
    with pytest.raises(RegistryError, match="both plugin 'notes' and 'twin'"):
        await aiohttp_client(make_app(config, capabilities=[NOTES_PLUGIN, twin]))


def test_every_registered_method_has_a_docstring(tmp_path):
    """STYLE: documentation tests: each registered method has a docstring."""
    reg = registry(tmp_path, NOTES_PLUGIN)
    assert {"Core/echo", "Blob/copy", "Note/get", "Note/set", "Note/copy", "Notebook/queryChanges",
            "NoteSettings/set"} <= set(reg.methods)
    assert "NoteSettings/query" not in reg.methods
    for name, method in reg.methods.items():
        assert (method.handler.__doc__ or "").strip(), f"{name} has no docstring"


def test_the_registry_indexes_types_and_push_types_by_capability(tmp_path):
    pusher = Plugin(name="pusher", capabilities=(Capability("https://jmaple.test/push"),),
                    push_types=("NoteDelivery",))
    reg = registry(tmp_path, NOTES_PLUGIN, pusher)
    assert reg.types["Note"] is NOTE
    mine = {"Note", "Notebook", "NoteSettings", "NoteDelivery"}
    assert {t: urn for t, urn in reg.push_types.items() if t in mine} == {
        "Note": NOTES, "Notebook": NOTES, "NoteSettings": NOTES, "NoteDelivery": "https://jmaple.test/push"}
    assert reg.methods["Note/get"].capability == NOTES
    assert reg.methods["Core/echo"].capability == CORE
    assert [p.name for p in reg.plugins] == [*installed(tmp_path), "notes", "pusher"]
    assert reg.plugins[0].name == "core"


# Configuration: [capabilities.<name>]

async def test_a_plugin_switched_off_in_the_configuration_is_gone(aiohttp_client, tmp_path):
    """[capabilities.notes] enabled = false: its methods are unknownMethod and its URN unknownCapability."""
    config = Config.for_tests(tmp_path / "data", capabilities={"notes": {"enabled": False}})
    client = await aiohttp_client(make_app(config, capabilities=[NOTES_PLUGIN]))
    user = await add_user(client, "alice@example.org")
    client.auth = basic("alice@example.org")
    body = await client.request_json({"using": [CORE, NOTES], "methodCalls": []}, status=400)
    assert body["type"] == "urn:ietf:params:jmap:error:unknownCapability"
    responses = await client.calls(("Note/get", {"accountId": user.account_id}), using=[CORE])
    assert responses[0][1]["type"] == "unknownMethod"
    session = await (await client.get("/jmap/session", headers=client.headers())).json()
    assert NOTES not in session["capabilities"]
    assert NOTES not in session["accounts"][user.account_id]["accountCapabilities"]


def test_enabled_must_be_a_boolean(tmp_path):
    with pytest.raises(ConfigError, match=r"\[capabilities.notes\] enabled: must be true or false"):
        registry(tmp_path, NOTES_PLUGIN, capabilities={"notes": {"enabled": "no"}})


def test_the_core_cannot_be_switched_off(tmp_path):
    with pytest.raises(ConfigError, match=r"\[capabilities.core\] enabled"):
        registry(tmp_path, capabilities={"core": {"enabled": False}})


def test_a_table_for_a_plugin_that_is_not_installed_is_an_error_unless_disabled(tmp_path):
    with pytest.raises(ConfigError, match=r"\[capabilities.calendars\]: no such plugin is installed"):
        registry(tmp_path, capabilities={"calendars": {}})
    reg = registry(tmp_path, capabilities={"calendars": {"enabled": False}})
    assert [p.name for p in reg.plugins] == installed(tmp_path)


def parse_colour_config(table):
    settings = {"colour": "blue"}
    for key, value in table.items():
        if key != "colour":
            raise ValueError(f"{key}: unknown key (known: colour)")
        if not isinstance(value, str):
            raise ValueError(f"colour: must be a string, got {value!r}")
        settings[key] = value
    return settings


COLOURED = Plugin(name="coloured", parse_config=parse_colour_config)


def test_a_plugin_validates_its_own_config_table(tmp_path):
    reg = registry(tmp_path, COLOURED, capabilities={"coloured": {"colour": "red", "enabled": True}})
    assert reg.plugin_config["coloured"] == {"colour": "red"}
    assert registry(tmp_path, COLOURED).plugin_config["coloured"] == {"colour": "blue"}
    with pytest.raises(ConfigError) as exc:
        registry(tmp_path, COLOURED, capabilities={"coloured": {"shade": "dark"}})
    assert str(exc.value) == "<tests>: [capabilities.coloured] shade: unknown key (known: colour)"
    with pytest.raises(ConfigError, match=r"\[capabilities.coloured\] colour: must be a string"):
        registry(tmp_path, COLOURED, capabilities={"coloured": {"colour": 5}})


def test_a_plugin_without_settings_refuses_any_key(tmp_path):
    with pytest.raises(ConfigError) as exc:
        registry(tmp_path, NOTES_PLUGIN, capabilities={"notes": {"max_notes": 5}})
    assert str(exc.value) == "<tests>: [capabilities.notes] max_notes: unknown key (this plugin takes no settings)"


# The session (RFC 8620 §2)

@pytest.fixture
async def private(aiohttp_client, config):
    """The app with the notes and private plugins; alice logged in, bob with a read-only grant on alice."""
    client = await aiohttp_client(make_app(config, capabilities=[NOTES_PLUGIN, PRIVATE_PLUGIN]))
    alice = await add_user(client, "alice@example.org")
    bob = await add_user(client, "bob@example.org")
    await share(client, "bob@example.org", alice.account_id, False)
    client.auth = basic("alice@example.org")
    client.account_id = alice.account_id
    return client, alice, bob


MINE = (NOTES, DIARY, INK)


def mine(account: dict[str, Any]) -> dict[str, Any]:
    """An Account object with only the capabilities of the tests' plugins (others may be installed)."""
    caps = {urn: v for urn, v in account["accountCapabilities"].items() if urn in MINE}
    return {**account, "accountCapabilities": caps}


async def session_of(client, login: str) -> dict[str, Any]:
    resp = await client.get("/jmap/session", headers={"Authorization": basic(login)})
    assert resp.status == 200
    return await resp.json()


async def test_the_session_lists_each_capability_and_its_account_capability(private):
    """RFC 8620 §2: capabilities holds every URN; accountCapabilities those each account supports."""
    client, alice, bob = private
    session = await session_of(client, "alice@example.org")
    assert session["capabilities"][NOTES] == {"maxNoteSize": 10000}
    assert session["capabilities"][DIARY] == {"pages": 365}
    assert session["capabilities"][INK] == {}
    assert CORE in session["capabilities"]
    [account] = session["accounts"].values()
    assert mine(account) == {
        "name": "alice@example.org", "isPersonal": True, "isReadOnly": False,
        "accountCapabilities": {NOTES: {"canPin": True}, DIARY: {}, INK: {"colour": "blue"}}}
    assert CORE not in account["accountCapabilities"]
    assert {urn: a for urn, a in session["primaryAccounts"].items() if urn in MINE} == {
        NOTES: alice.account_id, DIARY: alice.account_id, INK: alice.account_id}
    assert CORE not in session["primaryAccounts"]


async def test_a_granted_account_lists_only_the_capabilities_it_supports(private):
    """RFC 8620 §2: a read-only grant lists neither unshareable capabilities nor ones it lacks."""
    client, alice, bob = private
    session = await session_of(client, "bob@example.org")
    assert mine(session["accounts"][alice.account_id]) == {
        "name": "alice@example.org", "isPersonal": False, "isReadOnly": True,
        "accountCapabilities": {NOTES: {"canPin": False}}}
    assert set(mine(session["accounts"][bob.account_id])["accountCapabilities"]) == {NOTES, DIARY, INK}
    assert {urn: a for urn, a in session["primaryAccounts"].items() if urn in MINE} == {
        NOTES: bob.account_id, DIARY: bob.account_id, INK: bob.account_id}


async def test_a_method_on_an_account_without_its_capability_is_account_not_supported(private):
    """RFC 8620 §3.6.2: accountNotSupportedByMethod."""
    client, alice, bob = private
    using = [CORE, NOTES, DIARY, INK]
    client.auth = basic("bob@example.org")
    responses = await client.calls(("Diary/read", {"accountId": alice.account_id}),
                                   ("Ink/write", {"accountId": alice.account_id}),
                                   ("Diary/read", {"accountId": bob.account_id}),
                                   ("Note/get", {"accountId": alice.account_id, "ids": []}), using=using)
    assert responses[0][1] == {"type": "accountNotSupportedByMethod"}
    assert responses[1][1] == {"type": "accountNotSupportedByMethod"}
    assert responses[2] == ["Diary/read", {"accountId": bob.account_id}, "2"]
    assert responses[3][0] == "Note/get"


async def test_each_urn_of_a_plugin_must_be_in_using_for_its_own_methods(private):
    """RFC 8620 §3.3: a method is known only when its capability is in `using`; one plugin bringing two
    URNs does not make the methods of one available through the other."""
    client, alice, bob = private
    responses = await client.calls(("Diary/read", {"accountId": alice.account_id}),
                                   ("Ink/write", {"accountId": alice.account_id}), using=[CORE, INK])
    assert responses[0][0] == "error" and responses[0][1]["type"] == "unknownMethod"
    assert responses[1] == ["Ink/write", {"accountId": alice.account_id}, "1"]


# Account lifecycle hooks, migrations and services

async def welcome(tx, account_id, runtime):
    await NOTE.store.insert(tx, account_id, [{"id": "Nwelcome", "title": "Welcome!"}])
    await changes.record(tx, account_id, "Note", created=["Nwelcome"])


DELETED: list[str] = []


async def forget(tx, account_id, runtime):
    DELETED.append(account_id)


WELCOME = Plugin(name="welcome", on_account_created=welcome, on_account_deleted=forget)


async def test_account_hooks_run_when_an_account_is_created_and_deleted(aiohttp_client, config):
    client = await aiohttp_client(make_app(config, capabilities=[NOTES_PLUGIN, WELCOME]))
    carol = await add_user(client, "carol@example.org")
    client.auth = basic("carol@example.org")
    client.account_id = carol.account_id
    got = await client.call("Note/get", {"properties": ["title"]})
    assert got["list"] == [{"id": "Nwelcome", "title": "Welcome!"}]
    assert (await client.call("Note/changes", {"sinceState": "0"}))["created"] == ["Nwelcome"]
    await delete_user(client.app[RUNTIME], "carol@example.org")
    assert DELETED[-1] == carol.account_id


async def test_a_plugins_migrations_are_applied_under_its_own_name(client):
    versions = await client.app[RUNTIME].db.schema_versions()
    assert versions["notes"] == 2
    assert versions["core"] >= 1


EVENTS: list[str] = []


def recording_service(runtime) -> contextlib.AbstractAsyncContextManager[None]:
    @contextlib.asynccontextmanager
    async def run() -> AsyncIterator[None]:
        EVENTS.append(f"start {'service' in [p.name for p in runtime.registry.plugins]}")
        try:
            yield
        finally:
            EVENTS.append("stop")
    return run()


async def test_services_are_started_and_stopped_by_the_lifespan(aiohttp_client, config):
    EVENTS.clear()
    plugin = Plugin(name="service", services=(recording_service,))
    client = await aiohttp_client(make_app(config, capabilities=[plugin]))
    assert EVENTS == ["start True"]
    await client.close()
    assert EVENTS == ["start True", "stop"]


async def test_after_migrate_runs_in_every_process_that_opens_the_store_after_the_migrations(tmp_path):
    """Plugin.after_migrate: open_runtime (the daemon and every CLI command) runs it for enabled plugins,
    once the plugin's migrations have been applied."""
    seen: list[Any] = []

    async def after_migrate(runtime) -> None:
        seen.append((await runtime.db.schema_versions()).get("notes"))

    plugin = dataclasses.replace(NOTES_PLUGIN, after_migrate=after_migrate)
    config = Config.for_tests(data_dir=tmp_path)
    async with open_runtime(config, [plugin]) as runtime:
        assert seen == [2] and runtime.registry.plugins
    async with open_runtime(Config.for_tests(data_dir=tmp_path, capabilities={"notes": {"enabled": False}}),
                            [plugin]):
        assert seen == [2]


async def test_a_capability_without_methods_describes_the_server_not_accounts(aiohttp_client, config):
    """RFC 8620 §2: accountCapabilities holds capabilities that have methods to use with the account."""
    server_wide = Plugin(name="wide", capabilities=(
        Capability("https://jmaple.test/wide", session_info=lambda config: {"url": "x"}),))
    client = await aiohttp_client(make_app(config, capabilities=[server_wide]))
    await add_user(client, "alice@example.org")
    session = await session_of(client, "alice@example.org")
    assert session["capabilities"]["https://jmaple.test/wide"] == {"url": "x"}
    [account] = session["accounts"].values()
    assert "https://jmaple.test/wide" not in account["accountCapabilities"]
    assert "https://jmaple.test/wide" not in session["primaryAccounts"]
