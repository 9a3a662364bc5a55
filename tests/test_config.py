"""Configuration: config.example.toml documents every key; hostile files fail naming the file and the key."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from jmaple.config import _SECTIONS, Config, ConfigError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"


def test_example_documents_every_key_of_every_section():
    """Each dataclass field of each section appears in config.example.toml, and nothing else does."""
    raw = tomllib.loads(EXAMPLE.read_text())
    assert set(raw) == {*_SECTIONS, "capabilities"}
    for name, section in _SECTIONS.items():
        fields = {f.name for f in dataclasses.fields(section)}
        assert set(raw[name]) == fields, f"[{name}] in config.example.toml"


def test_example_comments_every_key():
    """A key line is preceded by a comment, or belongs to a group that a comment introduces."""
    lines = EXAMPLE.read_text().splitlines()
    for n, line in enumerate(lines):
        if re.match(r"^[a-z_]+ = ", line):
            above = lines[:n]
            while above and re.match(r"^[a-z_]+ = ", above[-1]):
                above.pop()   # e.g. scrypt_n, scrypt_r, scrypt_p share one comment
            assert above and above[-1].startswith("#"), f"config.example.toml line {n + 1}: {line}"


def test_example_loads_and_holds_the_defaults():
    config = Config.load(EXAMPLE)
    assert config.source == str(EXAMPLE)
    for name, section in _SECTIONS.items():
        assert getattr(config, name) == section(), f"[{name}] in config.example.toml is not the default"


def test_example_documents_every_key_of_each_built_in_capability_with_its_default():
    """[capabilities.NAME] of each built-in plugin that has a config table: every field, at its default."""
    import importlib

    from jmaple.core.capability import BUILTIN_PLUGINS

    raw = tomllib.loads(EXAMPLE.read_text())["capabilities"]
    plugins = [getattr(importlib.import_module(target.partition(":")[0]), target.partition(":")[2])
               for target in BUILTIN_PLUGINS.values()]
    with_tables = [p for p in plugins if p.parse_config is not None]
    assert with_tables and set(raw) == {p.name for p in with_tables}
    for plugin in with_tables:
        table = dict(raw[plugin.name])
        assert table.pop("enabled") is True
        parsed = plugin.parse_config(table)
        assert {f.name for f in dataclasses.fields(parsed)} == set(table), f"[capabilities.{plugin.name}]"
        assert parsed == plugin.parse_config({}), f"[capabilities.{plugin.name}] is not the default"


HOSTILE = [
    # (file text, what the message must name)
    ("[nope]\nx = 1\n", "[nope]"),
    ("server = 5\n", "[server]"),
    ("[server]\nlisten_on = '127.0.0.1:1'\n", "listen_on"),
    ("[storage]\nSynchronous = 'FULL'\n", "Synchronous"),
    ("[server]\nlisten = 8080\n", "listen"),
    ("[server]\ntrusted_proxies = '10.0.0.1'\n", "trusted_proxies"),
    ("[server]\ncors_origins = [1, 2]\n", "cors_origins"),
    ("[storage]\nreaders = '3'\n", "readers"),
    ("[storage]\nreaders = 2.5\n", "readers"),
    ("[storage]\nbusy_timeout = true\n", "busy_timeout"),
    ("[limits]\nmax_size_upload = true\n", "max_size_upload"),
    ("[logging]\naccess_log = 'yes'\n", "access_log"),
    ("[server]\nlisten = 'localhost'\n", "listen"),
    ("[server]\nlisten = '127.0.0.1:70000'\n", "listen"),
    ("[server]\nlisten = ':8080'\n", "listen"),
    ("[server]\nlisten = 'unix:relative.sock'\n", "listen"),
    ("[server]\nbase_url = 'mail.example.org'\n", "base_url"),
    ("[server]\nbase_url = 'ftp://mail.example.org'\n", "base_url"),
    ("[server]\ntls_certificate = '/etc/ssl/cert.pem'\n", "tls_key"),
    ("[server]\ntrusted_proxies = ['not-an-address']\n", "trusted_proxies"),
    ("[server]\ncors_origins = ['https://app.example.org/path']\n", "cors_origins"),
    ("[server]\ndata_dir = ''\n", "data_dir"),
    # NUL is legal TOML ("\u0000") but no path, address or name may hold it (the OS raises ValueError).
    ('[server]\ndata_dir = "/var/lib/a\\u0000b"\n', "data_dir"),
    ('[server]\nlisten = "unix:/run/a\\u0000.sock"\n', "listen"),
    ('[server]\ntls_certificate = "/c\\u0000"\ntls_key = "/k"\n', "tls_certificate"),
    ('[server]\ncors_origins = ["http://a\\u0000"]\n', "cors_origins"),
    ('[push]\nextra_ca_file = "/ca\\u0000"\n', "extra_ca_file"),
    ('[push]\nbroker = "redis://h\\u0000"\n', "broker"),
    ("[storage]\nsynchronous = 'OFF'\n", "synchronous"),
    ("[storage]\nreaders = 0\n", "readers"),
    ("[storage]\nbusy_timeout = 0\n", "busy_timeout"),
    ("[storage]\nchanges_horizon_days = 7\n", "changes_horizon_days"),
    ("[limits]\nmax_calls_in_request = 0\n", "max_calls_in_request"),
    ("[limits]\nmax_objects_in_get = -5\n", "max_objects_in_get"),
    ("[limits]\nmax_size_request = 100\n", "max_size_request"),
    ("[limits]\nmax_size_upload = 9007199254740992\n", "max_size_upload"),
    ("[limits]\nupload_quota = 1000\n", "upload_quota"),
    ("[auth]\nscrypt_n = 1000\n", "scrypt_n"),
    ("[auth]\nscrypt_n = 1048576\n", "scrypt_n"),
    ("[auth]\nscrypt_p = 0\n", "scrypt_p"),
    ("[auth]\nfailure_delay_max = 3600\n", "failure_delay_max"),
    ("[push]\nbroker = 'carrier-pigeon'\n", "broker"),
    ("[push]\nwebsocket_heartbeat = 0.5\n", "websocket_heartbeat"),
    ("[push]\nwebsocket_heartbeat = 601\n", "websocket_heartbeat"),
    ("[logging]\nlevel = 'loud'\n", "level"),
    ("capabilities = 1\n", "[capabilities]"),
    ("[capabilities]\nmail = 1\n", "[capabilities]"),
]


NOT_UTF8 = [(b"# caf\xe9\n", "not UTF-8 text (byte"), (b"\xff\xfe[\x00s\x00]\x00", "not UTF-8 text (byte"),
            (b"[server]\nlisten = '\xed\xa0\x80'\n", "not UTF-8 text (byte")]


@pytest.mark.parametrize(("text", "key"), HOSTILE + NOT_UTF8)
def test_hostile_config_is_an_error_naming_the_file_and_the_key(tmp_path, text, key):
    """Wrong values name their key; a file that is not UTF-8 (Latin-1, UTF-16, an encoded surrogate) says
    so and where."""
    path = tmp_path / "config.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as info:
        Config.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert key in message, message
    assert "\n" not in message


def test_invalid_toml_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[server]\nlisten = \n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: .*line 2"):
        Config.load(path)


def test_a_missing_file_says_where_to_start(tmp_path):
    with pytest.raises(ConfigError, match="no such file.*config.example.toml"):
        Config.load(tmp_path / "absent.toml")


def test_relative_paths_are_taken_relative_to_the_config_file(tmp_path):
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "config.toml"
    path.write_text("[server]\ndata_dir = '../state'\ntls_certificate = 'cert.pem'\ntls_key = '/abs/key.pem'\n")
    config = Config.load(path)
    assert Path(config.server.data_dir) == tmp_path / "etc" / ".." / "state"
    assert config.server.tls_certificate == str(tmp_path / "etc" / "cert.pem")
    assert config.server.tls_key == "/abs/key.pem"


def test_replace_keeps_the_lists_a_section_already_holds(tmp_path):
    config = Config.from_dict({"server": {"data_dir": str(tmp_path), "cors_origins": ["https://a.example"]}})
    changed = config.replace(server={"listen": "127.0.0.1:9"}, trace=True)
    assert changed.server.cors_origins == ("https://a.example",)
    assert changed.server.listen == "127.0.0.1:9"
    assert changed.trace and not config.trace


def test_replace_validates_what_it_changes(tmp_path):
    config = Config.from_dict({"server": {"data_dir": str(tmp_path)}}, source="here.toml")
    with pytest.raises(ConfigError, match=r"^here.toml: \[server\] listen: "):
        config.replace(server={"listen": "nowhere"})
