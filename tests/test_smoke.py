from conftest import CORE


async def test_echo(client):
    result = await client.call("Core/echo", {"hello": True})
    assert result == {"hello": True}


async def test_notes_roundtrip(client):
    created = await client.call("Note/set", {"create": {"a": {"title": "hi"}}})
    assert created["created"]["a"]["id"]
    got = await client.call("Note/get", {"ids": None})
    assert got["list"][0]["title"] == "hi"
    ch = await client.call("Note/changes", {"sinceState": "0"})
    assert ch["created"] == [created["created"]["a"]["id"]]
    q = await client.call("Note/query", {})
    assert q["ids"] == [created["created"]["a"]["id"]]
