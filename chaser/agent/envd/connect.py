"""The Connect protocol (connectrpc.com/docs/protocol) with the JSON codec, as envd speaks it.

* Unary: `POST /<package>.<Service>/<Method>`, `Content-Type: application/json`, the
  request message as the body; the answer is the response message (200) or an error
  `{"code": "<connect code>", "message": "..."}` with the code's HTTP status.
* Streams (`application/connect+json`): every message is an envelope, one flags byte
  and a 4-byte big-endian length before the JSON. A server stream answers 200 at once
  and ends with an end-of-stream envelope (flag 0x02): `{}`, or `{"error": {...}}`.
  A client stream sends its messages as envelopes in the request body; the answer is
  one message envelope and the end-of-stream envelope.
"""

import asyncio
import json
import struct

from aiohttp import web

from ..errors import ApiError

END_STREAM = 0x02
COMPRESSED = 0x01
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
STREAM_TYPE = "application/connect+json"

# Connect codes and the HTTP status of each (unary answers).
CODE_STATUS = {
    "canceled": 499, "unknown": 500, "invalid_argument": 400, "deadline_exceeded": 504, "not_found": 404,
    "already_exists": 409, "permission_denied": 403, "resource_exhausted": 429, "failed_precondition": 400,
    "aborted": 409, "out_of_range": 400, "unimplemented": 501, "internal": 500, "unavailable": 503,
    "data_loss": 500, "unauthenticated": 401,
}
# The agent's own errors (chaser/agent/errors.py) by status.
STATUS_CODE = {400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied", 404: "not_found",
               409: "failed_precondition", 413: "resource_exhausted", 502: "unavailable"}


class RpcError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def to_json(self) -> dict:
        return {"code": self.code, "message": self.message}


def rpc_error(exc: BaseException) -> RpcError:
    """Any failure as a Connect error: ours as they are, the agent's ApiError by status."""
    if isinstance(exc, RpcError):
        return exc
    if isinstance(exc, ApiError):
        return RpcError(STATUS_CODE.get(exc.status, "internal"), exc.message)
    return RpcError("internal", f"{type(exc).__name__}: {exc}")


def envelope(message: dict, flags: int = 0) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    return struct.pack(">BI", flags, len(data)) + data


def _parse(data: bytes) -> dict:
    try:
        message = json.loads(data) if data else {}
    except (ValueError, RecursionError):
        raise RpcError("invalid_argument", "the request message is not valid JSON") from None
    if not isinstance(message, dict):
        raise RpcError("invalid_argument", "the request message must be a JSON object")
    return message


async def read_envelopes(request):
    """The messages of an enveloped request body, one by one, as they arrive."""
    content = request.content
    while True:
        try:
            head = await content.readexactly(5)
        except asyncio.IncompleteReadError as e:
            if e.partial:
                raise RpcError("invalid_argument", "truncated envelope") from None
            return
        flags, length = struct.unpack(">BI", head)
        if flags & COMPRESSED:
            raise RpcError("unimplemented", "compressed messages are not supported")
        if length > MAX_MESSAGE_BYTES:
            raise RpcError("resource_exhausted", "message too large")
        try:
            data = await content.readexactly(length)
        except asyncio.IncompleteReadError:
            raise RpcError("invalid_argument", "truncated envelope") from None
        if flags & END_STREAM:
            return
        yield _parse(data)


def _error_response(error: RpcError) -> web.Response:
    return web.json_response(error.to_json(), status=CODE_STATUS.get(error.code, 500))


def unary(method):
    """An aiohttp handler for `method(request, message) -> dict`."""
    async def handler(request):
        try:
            if request.content_type != "application/json":
                raise RpcError("invalid_argument", f"unary calls take application/json, not {request.content_type}")
            message = _parse(await request.read())
            return web.json_response(await method(request, message))
        except Exception as e:  # noqa: BLE001 - every failure is a Connect error
            return _error_response(rpc_error(e))
    return handler


def server_stream(method):
    """An aiohttp handler for the async generator `method(request, message)`: each
    yielded dict is sent as it comes; the end-of-stream envelope carries any error."""
    async def handler(request):
        try:
            message = None
            async for item in read_envelopes(request):
                message = item
                break
            if message is None:
                raise RpcError("invalid_argument", "a server stream needs one request message")
        except RpcError as e:
            return _error_response(e)
        response = web.StreamResponse(status=200, headers={"Content-Type": STREAM_TYPE})
        await response.prepare(request)
        end: dict = {}
        try:
            async for item in method(request, message):
                await response.write(envelope(item))
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as e:  # noqa: BLE001 - ends the stream with the error
            end = {"error": rpc_error(e).to_json()}
        await response.write(envelope(end, END_STREAM))
        await response.write_eof()
        return response
    return handler


def client_stream(method):
    """An aiohttp handler for `method(request, messages) -> dict` (messages: an async iterator)."""
    async def handler(request):
        end: dict = {}
        try:
            result = await method(request, read_envelopes(request))
        except Exception as e:  # noqa: BLE001
            result, end = None, {"error": rpc_error(e).to_json()}
        response = web.StreamResponse(status=200, headers={"Content-Type": STREAM_TYPE})
        await response.prepare(request)
        if result is not None:
            await response.write(envelope(result))
        await response.write(envelope(end, END_STREAM))
        await response.write_eof()
        return response
    return handler


def timeout_s(request):
    """The call's deadline in seconds (`Connect-Timeout-Ms`), or None."""
    raw = request.headers.get("Connect-Timeout-Ms", "")
    return int(raw) / 1000 if raw.isdigit() and int(raw) > 0 else None
