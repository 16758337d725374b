"""envd's HTTP routes: `GET /health`, `GET /files` (download) and `POST /files` (upload:
multipart with the full path as each part's filename, or an octet-stream body with `?path=`)."""

import posixpath
import re
import zlib
from urllib.parse import unquote

from aiohttp import web

from ..errors import ApiError
from ..files import get_file, write_file
from ..protocol import FILE_CHUNK_BYTES
from .connect import RpcError


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"code": status, "message": message}, status=status)


@web.middleware
async def errors(request, handler):
    """envd's HTTP errors: `{"code": <status>, "message"}`."""
    try:
        return await handler(request)
    except ApiError as e:
        return _error(e.status, e.message)
    except RpcError as e:
        return _error(400 if e.code == "invalid_argument" else 401 if e.code == "unauthenticated" else 500, e.message)
    except web.HTTPException as e:
        return _error(e.status, e.reason or "error")


async def health(request):
    return web.Response(status=204)


def _written(path: str) -> dict:
    return {"name": posixpath.basename(path), "type": "file", "path": path}


async def download(envd, request):
    user = envd.user(request)
    path = envd.path(request.query.get("path"), user)
    return await get_file(envd.agent, request.clone(rel_url=request.rel_url.with_query({"path": path})))


async def _gunzip(chunks):
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        async for chunk in chunks:
            data = inflate.decompress(chunk)
            if data:
                yield data
        rest = inflate.flush()
    except zlib.error as e:
        raise ApiError(400, "invalid_request", f"the gzip body is not valid: {e}") from None
    if rest:
        yield rest


_FILENAME = re.compile(r'filename(\*?)=(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))', re.IGNORECASE)


def part_filename(header):
    """The filename of a part as sent: the full path (aiohttp's own parser strips a leading `/`).
    `filename*=utf-8''…` (RFC 5987) is percent-decoded."""
    match = _FILENAME.search(header or "")
    if match is None:
        return None
    star, quoted, token = match.groups()
    value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else token
    if star and "''" in value:
        value = unquote(value.split("''", 1)[1])
    return value


async def _part_chunks(part):
    while True:
        chunk = await part.read_chunk(FILE_CHUNK_BYTES)
        if not chunk:
            return
        yield chunk


async def upload(envd, request):
    user = envd.user(request)
    root = envd.agent.root
    written = []
    if request.content_type == "multipart/form-data":
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            name = part_filename(part.headers.get("Content-Disposition")) or request.query.get("path")
            if not name:
                raise ApiError(400, "invalid_request", "a part without a filename and no ?path=")
            path = envd.path(name, user)
            await write_file(root, path, _part_chunks(part), uid=user.uid, gid=user.gid)
            written.append(_written(path))
    else:
        path = envd.path(request.query.get("path"), user)
        chunks = request.content.iter_chunked(FILE_CHUNK_BYTES)
        if request.headers.get("Content-Encoding", "").lower() == "gzip":
            chunks = _gunzip(chunks)
        await write_file(root, path, chunks, uid=user.uid, gid=user.gid)
        written.append(_written(path))
    if not written:
        raise ApiError(400, "invalid_request", "no file in the request")
    return web.json_response(written)
