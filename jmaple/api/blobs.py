"""/jmap/upload/{accountId}/ and /jmap/download/{accountId}/{blobId}/{name} (RFC 8620 §6)."""

from __future__ import annotations

import re
from urllib.parse import quote

from aiohttp import web

from jmaple.api.http import json_response, problem, read_body
from jmaple.keys import CONFIG, LIMITER, RUNTIME, principal_of
from jmaple.store.blobs import is_blob_id

# RFC 6838 §4.2 names with optional parameters; always used with fullmatch (a "$" would let a trailing
# newline through into a response header).
MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
                        r"([ \t]*;[ \t]*[A-Za-z0-9!#$&^_.+-]+=(\"[\x20\x21\x23-\x5b\x5d-\x7e]*\"|[A-Za-z0-9!#$&^_.+-]+))*")
DEFAULT_TYPE = "application/octet-stream"
async def upload(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    runtime = request.app[RUNTIME]
    limits = request.app[CONFIG].limits
    account_id = request.match_info["accountId"]
    if not principal.may_read(account_id):
        return problem(404, "about:blank", f"no account {account_id} is available to you")
    if not principal.may_write(account_id):
        return problem(403, "about:blank", "this account is shared with you read-only", title="Forbidden")
    content_type = request.headers.get("Content-Type", DEFAULT_TYPE).strip()
    if not MEDIA_TYPE.fullmatch(content_type):
        content_type = DEFAULT_TYPE
    with request.app[LIMITER].slot(principal.user_id, "maxConcurrentUpload", limits.max_concurrent_upload):
        data = await read_body(request, limits.max_size_upload, "maxSizeUpload")
        stored = await runtime.blobs.upload(runtime.db, account_id, principal.user_id, data, content_type)
    return json_response(request, {"accountId": account_id, "blobId": stored.blob_id, "type": stored.type,
                                   "size": stored.size}, status=201)


def content_disposition(name: str) -> str:
    """attachment with an ASCII fallback and the exact UTF-8 name (RFC 6266)."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


async def download(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    runtime = request.app[RUNTIME]
    account_id = request.match_info["accountId"]
    blob_id = request.match_info["blobId"]
    name = request.match_info["name"]
    not_found = problem(404, "about:blank", "no such blob in this account")
    if not principal.may_read(account_id) or not is_blob_id(blob_id):
        return not_found
    async with runtime.db.read() as conn:
        if not await runtime.blobs.may_read(conn, account_id, blob_id, user_id=principal.user_id):
            return not_found
    path = runtime.blobs.path(blob_id)
    if not path.exists():
        return not_found
    accept = request.query.get("accept", DEFAULT_TYPE)
    headers = {
        "Content-Type": accept if MEDIA_TYPE.fullmatch(accept) else DEFAULT_TYPE,
        "Content-Disposition": content_disposition(name),
        "Cache-Control": "private, immutable, max-age=31536000",
        "X-Content-Type-Options": "nosniff",
    }
    return web.FileResponse(path, headers=headers)
