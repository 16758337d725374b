"""HTTP/WebSocket client for the in-guest agent (host side)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection

from chaser import errors
from chaser.agent.protocol import Endpoint

_ERRORS_BY_STATUS: dict[int, type[errors.ChaserError]] = {
    400: errors.InvalidRequest,
    401: errors.AgentUnavailable,  # a token mismatch means we lost track of the agent
    403: errors.Forbidden,  # permission_denied: a path the sandbox user may not touch
    404: errors.NotFound,
    409: errors.Conflict,
    413: errors.PayloadTooLarge,
    502: errors.PortNotListening,
}
_ERRORS_BY_CODE: dict[str, type[errors.ChaserError]] = {
    "file_not_found": errors.FileNotFound,
    "port_not_listening": errors.PortNotListening,
}


def error_from_agent(status: int, body: bytes) -> errors.ChaserError:
    try:
        payload = json.loads(body)
        code, message = payload.get("code"), payload.get("message")
    except (ValueError, AttributeError):
        code, message = None, body.decode(errors="replace")[:500]
    cls = _ERRORS_BY_CODE.get(code or "") or _ERRORS_BY_STATUS.get(status)
    if cls is None:
        return errors.AgentError(message or f"agent error {status}", code=code or "agent_error", status=500)
    return cls(message or cls.__doc__, code=code)


# Below the agent's keep-alive timeout (chaser/agent/server.py `serve`: 2 s).
AGENT_KEEPALIVE_S = 1.0


class AgentClient:
    def __init__(self, port: int, token: str, *, host: str = "127.0.0.1") -> None:
        self.host = host  # the VM's namespace address, or 127.0.0.1 for a slirp host-forward
        self.port = port
        self.token = token
        self.base_url = f"http://{host}:{port}"
        # trust_env=False: the host's proxy variables never apply to an agent. Idle connections
        # expire here before the agent's keep-alive (2 s) closes them, so a request is never sent
        # on one the agent is closing; a fork's source, stopped for its save, counts that time too.
        # verify=False: the agent speaks plain HTTP, and loading the CA bundle for a TLS context
        # that is never used took ~29 ms of event-loop CPU per client (docs/performance.md).
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=httpx.Timeout(30.0), headers=self._headers(),
                                       trust_env=False, verify=False,
                                       limits=httpx.Limits(keepalive_expiry=AGENT_KEEPALIVE_S))

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def set_token(self, token: str) -> None:
        self.token = token
        self._http.headers.update(self._headers())

    async def close(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, *, timeout: float | None = 30.0, **kwargs: Any) -> Any:
        """The agent's JSON answer: an object (docs/agent-protocol.md)."""
        try:
            response = await self._http.request(method, path, timeout=timeout, **kwargs)
        except httpx.TransportError as exc:
            raise errors.AgentUnavailable(f"agent unreachable: {exc!r}") from exc
        if response.status_code >= 400:
            raise error_from_agent(response.status_code, response.content)
        return response.json()

    async def _object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        result = await self.request(method, path, **kwargs)
        if not isinstance(result, dict):
            raise errors.AgentError(f"agent answered {path} with {type(result).__name__}, not an object",
                                    code="agent_error", status=500)
        return result

    async def ping(self, timeout: float = 1.0) -> bool:
        """One quick /health probe on a fresh connection (no keep-alive: a
        snapshot must not capture an open connection)."""
        try:
            async with httpx.AsyncClient(timeout=timeout, trust_env=False, verify=False) as probe:
                response = await probe.get(
                    f"{self.base_url}{Endpoint.HEALTH}", headers={**self._headers(), "Connection": "close"}
                )
            return response.status_code == 200
        except httpx.HTTPError:
            return False

    async def health(self) -> dict[str, Any]:
        return await self._object("GET", Endpoint.HEALTH)

    async def init(self, payload: dict[str, Any]) -> dict[str, Any]:
        return await self._object("POST", Endpoint.INIT, json=payload, timeout=60.0)

    async def exec(self, payload: dict[str, Any]) -> dict[str, Any]:
        if payload.get("background"):
            timeout: float | None = 30.0
        elif payload.get("timeout_ms"):
            timeout = payload["timeout_ms"] / 1000 + 30
        else:
            timeout = None  # waits as long as the command runs; a VM crash still ends the wait
        return await self._object("POST", Endpoint.EXEC, json=payload, timeout=timeout)

    async def processes(self) -> list[dict[str, Any]]:
        return list((await self._object("GET", Endpoint.PROCESSES))["processes"])

    async def process(self, process_id: str) -> dict[str, Any]:
        return await self._object("GET", Endpoint.process(Endpoint.PROCESS, process_id))

    async def output(self, process_id: str, *, offset: int = 0, limit: int | None = None,
                     wait_ms: int = 0) -> dict[str, Any]:
        params: dict[str, Any] = {"offset": offset, "wait_ms": wait_ms}
        if limit is not None:
            params["limit"] = limit
        result = await self._object("GET", Endpoint.process(Endpoint.PROCESS_OUTPUT, process_id), params=params,
                                    timeout=wait_ms / 1000 + 30)
        result["data"] = base64.b64decode(result["data"])
        return result

    async def write_stdin(self, process_id: str, data: bytes, *, close: bool = False) -> dict[str, Any]:
        body = {"data": base64.b64encode(data).decode(), "encoding": "base64", "close": close}
        return await self._object("POST", Endpoint.process(Endpoint.PROCESS_STDIN, process_id), json=body)

    async def signal(self, process_id: str, signal: str | int) -> dict[str, Any]:
        path = Endpoint.process(Endpoint.PROCESS_SIGNAL, process_id)
        return await self._object("POST", path, json={"signal": signal})

    async def selftest(self) -> dict[str, Any]:
        return await self._object("GET", Endpoint.SELFTEST, timeout=120.0)

    async def shutdown(self) -> None:
        await self.request("POST", Endpoint.SHUTDOWN, timeout=5.0)

    # --- files ---
    async def write_file(self, path: str, content: bytes | AsyncIterator[bytes], *,
                         mode: str | None = None) -> dict[str, Any]:
        params = {"path": path}
        if mode:
            params["mode"] = mode
        return await self._object("PUT", Endpoint.FILES, params=params, content=content, timeout=300.0)

    async def read_file(self, path: str) -> bytes:
        chunks = [chunk async for chunk in self.stream_file(path)]
        return b"".join(chunks)

    async def stream_file(self, path: str) -> AsyncIterator[bytes]:
        try:
            async with self._http.stream("GET", Endpoint.FILES, params={"path": path}, timeout=300.0) as response:
                if response.status_code >= 400:
                    raise error_from_agent(response.status_code, await response.aread())
                async for chunk in response.aiter_bytes():
                    yield chunk
        except httpx.TransportError as exc:
            raise errors.AgentUnavailable(f"agent unreachable: {exc!r}") from exc

    async def stat(self, path: str) -> dict[str, Any]:
        return await self._object("GET", Endpoint.FILES_STAT, params={"path": path})

    async def list_dir(self, path: str) -> dict[str, Any]:
        return await self._object("GET", Endpoint.FILES_LIST, params={"path": path})

    async def mkdir(self, path: str) -> dict[str, Any]:
        return await self._object("POST", Endpoint.FILES_MKDIR, json={"path": path})

    async def remove(self, path: str, *, recursive: bool = False) -> dict[str, Any]:
        return await self._object("DELETE", Endpoint.FILES, params={"path": path, "recursive": str(recursive).lower()})

    async def resume(self, payload: dict[str, Any]) -> dict[str, Any]:
        return await self._object("POST", Endpoint.RESUME, json=payload, timeout=30.0)

    async def prepare(self, disks: dict[str, str]) -> dict[str, Any]:
        return await self._object("POST", Endpoint.PREPARE, json={"disks": disks}, timeout=60.0)

    async def resize_ptys(self, rows: int, cols: int) -> dict[str, Any]:
        return await self._object("POST", Endpoint.PTYS_RESIZE, json={"rows": rows, "cols": cols})

    async def ptys(self) -> list[dict[str, Any]]:
        return list((await self._object("GET", Endpoint.PTYS))["ptys"])

    # --- WebSockets ---
    def websocket_url(self, path: str, params: dict[str, Any] | None = None) -> str:
        query = httpx.QueryParams({k: v for k, v in (params or {}).items() if v is not None})
        suffix = f"?{query}" if query else ""
        return f"ws://{self.host}:{self.port}{path}{suffix}"

    @asynccontextmanager
    async def websocket(self, path: str, params: dict[str, Any] | None = None) -> AsyncIterator[ClientConnection]:
        """Open a WebSocket to the agent (PTY, relay). Maps a refused upgrade to our errors."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus

        try:
            connection = await connect(
                self.websocket_url(path, params),
                additional_headers=self._headers(),
                max_size=None,
                compression=None,  # deflate costs more than it saves on loopback under TCG
                open_timeout=30,
                ping_interval=None,
                proxy=None,  # else websockets (>= 15) goes through the host's HTTP(S)_PROXY: never for an agent
            )
        except InvalidStatus as exc:
            raise error_from_agent(exc.response.status_code, bytes(exc.response.body or b"")) from exc
        except OSError as exc:
            raise errors.AgentUnavailable(f"agent unreachable: {exc!r}") from exc
        try:
            yield connection
        finally:
            await connection.close()
