"""JSON Pointer (RFC 6901) with the "*" of result references (RFC 8620 §3.7) and patches (§5.3)."""

from __future__ import annotations

from typing import Any


class PointerError(Exception):
    """The pointer is malformed or does not resolve."""


def split(pointer: str) -> list[str]:
    """"/a/b~1c" -> ["a", "b/c"]; "" -> []."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PointerError(f"pointer {pointer!r} must start with '/'")
    tokens = pointer[1:].split("/")
    for token in tokens:
        if "~" in token.replace("~0", "").replace("~1", ""):
            raise PointerError(f"bad escape in {pointer!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in tokens]


def _index(container: list[Any], token: str) -> Any:
    if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        raise PointerError(f"{token!r} is not an array index")
    i = int(token)
    if i >= len(container):
        raise PointerError(f"index {i} is out of range")
    return container[i]


def evaluate(value: Any, pointer: str) -> Any:
    """Resolve a result-reference path; "*" maps over an array and flattens arrays it yields."""
    return _walk(value, split(pointer))


def _walk(value: Any, tokens: list[str]) -> Any:
    for n, token in enumerate(tokens):
        if isinstance(value, list):
            if token == "*":
                out: list[Any] = []
                for item in value:
                    got = _walk(item, tokens[n + 1:])
                    if isinstance(got, list):
                        out.extend(got)
                    else:
                        out.append(got)
                return out
            value = _index(value, token)
        elif isinstance(value, dict):
            if token not in value:
                raise PointerError(f"no property {token!r}")
            value = value[token]
        else:
            raise PointerError(f"cannot descend into a {type(value).__name__} with {token!r}")
    return value


def apply_patch(obj: dict[str, Any], patch: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Apply a PatchObject (RFC 8620 §5.3) to a copy of obj; raises PointerError for an invalid patch.

    A null value resets a top-level property to its default, or removes a nested key.
    """
    paths = []
    for key in patch:
        if not isinstance(key, str):
            raise PointerError("patch keys must be strings")
        paths.append((key, split("/" + key)))
    ordered = sorted(p for _, p in paths)
    for a, b in zip(ordered, ordered[1:]):
        if b[: len(a)] == a:
            raise PointerError(f"patch {'/'.join(a)!r} is a prefix of {'/'.join(b)!r}")
    result = dict(obj)
    for key, tokens in paths:
        value = patch[key]
        if len(tokens) == 1:
            name = tokens[0]
            if value is None and name in defaults:
                result[name] = defaults[name]
            elif value is None:
                result.pop(name, None)
            else:
                result[name] = value
            continue
        # Copy each container on the way down so the original object stays untouched.
        parent = result
        for token in tokens[:-1]:
            if not isinstance(parent, dict) or token not in parent or not isinstance(parent[token], dict):
                raise PointerError(f"{key!r}: {token!r} does not exist or is not an object")
            parent[token] = dict(parent[token])
            parent = parent[token]
        last = tokens[-1]
        if value is None:
            parent.pop(last, None)
        else:
            parent[last] = value
    return result
