"""The synchronous client: `ChaserClient` and its resource groups.

Resource methods return the server's JSON as plain dicts/lists (the wire format of
the official `chaser-sdk`), so `--json` output and SDK users see the same thing.
"""

from __future__ import annotations

import base64
import builtins
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import httpx

from chaser.client._config import resolve_settings
from chaser.client._errors import ChaserAPIError, ChaserConnectionError, api_error_from_response
from chaser.client._sse import decode_output, iter_sse

__all__ = ["DEFAULT_TIMEOUT", "ChaserClient"]

DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=10.0)
# Creating a session may pull an image and boot a VM (slow under TCG).
SESSION_CREATE_TIMEOUT_S = 600.0
SESSION_CREATE_TIMEOUT = httpx.Timeout(SESSION_CREATE_TIMEOUT_S, connect=10.0)
# Added to a command's own timeout so the server answers before we give up.
EXEC_TIMEOUT_MARGIN_S = 60.0
STREAM_CHUNK_BYTES = 64 * 1024
USER_AGENT = "chaser-client/0.1"


def _segment(value: str) -> str:
    return quote(str(value), safe="")


def _drop_none(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _network_body(network: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """An egress policy for the wire: None values dropped, host lists as lists."""
    if network is None:
        return None
    body = {key: value for key, value in dict(network).items() if value is not None}
    for key in ("allow_out", "deny_out"):
        if key in body and not isinstance(body[key], str):  # a string is the server's to reject
            body[key] = list(body[key])
    return body


# Resource methods name one of their own `list`: `builtins.list` is the type inside their classes.
JSONObject = dict[str, Any]
JSONObjects = builtins.list[JSONObject]


def _as_object(payload: Any) -> JSONObject:
    return cast(JSONObject, payload)


def _as_objects(payload: Any) -> JSONObjects:
    return cast(JSONObjects, payload)


class _Resource:
    def __init__(self, client: ChaserClient) -> None:
        self._client = client

    def _object(self, method: str, path: str, **kwargs: Any) -> JSONObject:
        """`request_json` where the server's answer is a JSON object (the SDK's wire format)."""
        return _as_object(self._client.request_json(method, path, **kwargs))

    def _objects(self, method: str, path: str, **kwargs: Any) -> JSONObjects:
        """`request_json` where the server's answer is a JSON array of objects."""
        return _as_objects(self._client.request_json(method, path, **kwargs))


class SessionsResource(_Resource):
    def create(
        self,
        *,
        ephemeral: bool | None = None,
        workspace: str | None = None,
        image: str | None = None,
        env: Mapping[str, str] | None = None,
        session_type: str = "sandbox",
        network: Mapping[str, Any] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """`network`: `{"internet": bool, "allow_out": [...], "deny_out": [...]}` (any subset)."""
        body = _drop_none(
            session_type=session_type,
            ephemeral=ephemeral,
            workspace=workspace,
            image=image,
            env=dict(env) if env else None,
            network=_network_body(network),
            **extra,
        )
        return self._object("POST", "/v1/sessions", json=body, timeout=SESSION_CREATE_TIMEOUT)

    def list_page(self, *, status: str | None = None) -> dict[str, Any]:
        """`{"sessions": [...], "total": n}` as the server sends it; `status`: active (the
        server's default), all, starting, running, terminated, failed."""
        payload = self._client.request_json("GET", "/v1/sessions", params=_drop_none(status=status) or None)
        if isinstance(payload, list):
            return {"sessions": payload, "total": len(payload)}
        return _as_object(payload)

    def list(self) -> list[dict[str, Any]]:
        return _as_objects(self.list_page()["sessions"])

    def get(self, session_id: str) -> dict[str, Any]:
        return self._object("GET", f"/v1/sessions/{_segment(session_id)}")

    def terminate(self, session_id: str, *, force: bool = False) -> dict[str, Any]:
        params = {"force": "true"} if force else None
        return self._object("DELETE", f"/v1/sessions/{_segment(session_id)}", params=params)

    def bulk_terminate(
        self,
        *,
        ids: builtins.list[str] | None = None,
        workspaces: builtins.list[str] | None = None,
        all: bool = False,
        force: bool = False,
    ) -> dict[str, Any]:
        body = _drop_none(ids=ids or None, workspaces=workspaces or None)
        if all:
            body["all"] = True
        if force:
            body["force"] = True
        return self._object("POST", "/v1/sessions/bulk-terminate", json=body)

    def self_test(self, session_id: str) -> dict[str, Any]:
        return self._object("POST", f"/v1/sessions/{_segment(session_id)}/self-test")

    def get_network(self, session_id: str) -> dict[str, Any]:
        """`{"internet", "allow_out", "deny_out", "enforced"}`: the session's egress policy."""
        return self._object("GET", f"/v1/sessions/{_segment(session_id)}/network")

    def set_network(
        self,
        session_id: str,
        *,
        internet: bool | None = None,
        allow_out: Sequence[str] | None = None,
        deny_out: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Replace a running session's egress policy; what is omitted takes the server default."""
        body = _network_body({"internet": internet, "allow_out": allow_out, "deny_out": deny_out})
        return self._object("PUT", f"/v1/sessions/{_segment(session_id)}/network", json=body)

    def resize(self, session_id: str, *, rows: int, cols: int) -> dict[str, Any]:
        return self._object(
            "POST", f"/v1/sessions/{_segment(session_id)}/resize", json={"rows": rows, "cols": cols}
        )

    def pty_url(self, session_id: str, *, mode: str = "human") -> str:
        """WebSocket URL of the session's PTY (connect with `client.auth_headers()`)."""
        return self._client.ws_url(f"/v1/sessions/{_segment(session_id)}/pty", {"mode": mode})


def _exec_timeout(timeout_ms: int | None) -> httpx.Timeout:
    if timeout_ms is None:
        return httpx.Timeout(None, connect=10.0)  # the server enforces its own default
    return httpx.Timeout(timeout_ms / 1000 + EXEC_TIMEOUT_MARGIN_S, connect=10.0)


class ExecResource(_Resource):
    def run(
        self,
        command: str,
        *,
        workspace: str | None = None,
        ephemeral: bool | None = None,
        image: str | None = None,
        timeout_ms: int | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        network: Mapping[str, Any] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """`POST /v1/exec`: run in a session the server provisions (or reuses). `network` is the
        new session's egress policy; a running session that is reused gets it applied."""
        body = _drop_none(
            command=command,
            workspace=workspace,
            ephemeral=ephemeral,
            image=image,
            timeout_ms=timeout_ms,
            cwd=cwd,
            env=dict(env) if env else None,
            network=_network_body(network),
            **extra,
        )
        timeout = _exec_timeout(timeout_ms)
        if timeout.read is not None:
            timeout = httpx.Timeout(timeout.read + SESSION_CREATE_TIMEOUT_S, connect=10.0)
        return self._object("POST", "/v1/exec", json=body, timeout=timeout)

    def in_session(
        self,
        session_id: str,
        command: str,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout_ms: int | None = None,
        background: bool = False,
    ) -> dict[str, Any]:
        body = _drop_none(command=command, cwd=cwd, env=dict(env) if env else None, timeout_ms=timeout_ms)
        if background:
            body["background"] = True
        return self._object(
            "POST", f"/v1/sessions/{_segment(session_id)}/exec", json=body, timeout=_exec_timeout(timeout_ms)
        )


class CommandsResource(_Resource):
    def _path(self, session_id: str, command_id: str | None = None, tail: str = "") -> str:
        path = f"/v1/sessions/{_segment(session_id)}/commands"
        if command_id is not None:
            path += f"/{_segment(command_id)}"
        return path + tail

    def list(self, session_id: str) -> list[dict[str, Any]]:
        return _as_objects(self.list_page(session_id)["commands"])

    def list_page(self, session_id: str) -> dict[str, Any]:
        payload = self._client.request_json("GET", self._path(session_id))
        if isinstance(payload, list):
            return {"commands": payload}
        return _as_object(payload)

    def get(self, session_id: str, command_id: str) -> dict[str, Any]:
        return self._object("GET", self._path(session_id, command_id))

    def send_stdin(
        self,
        session_id: str,
        command_id: str,
        input: str | bytes = "",
        *,
        encoding: str | None = None,
        close: bool = False,
    ) -> dict[str, Any]:
        """Bytes are sent base64-encoded; text as UTF-8 unless `encoding` says otherwise."""
        if isinstance(input, (bytes, bytearray, memoryview)):
            text, encoding = base64.b64encode(bytes(input)).decode("ascii"), "base64"
        else:
            text, encoding = input, encoding or "utf-8"
        body: dict[str, Any] = {"input": text, "encoding": encoding}
        if close:
            body["close"] = True
        return self._object("POST", self._path(session_id, command_id, "/stdin"), json=body)

    def kill(self, session_id: str, command_id: str, *, signal: str | int | None = None) -> dict[str, Any]:
        body = _drop_none(signal=signal)
        return self._object("POST", self._path(session_id, command_id, "/kill"), json=body)

    def stream(
        self,
        session_id: str,
        command_id: str,
        from_offset: int = 0,
        *,
        interval_ms: int | None = None,
        max_bytes: int | None = None,
        reconnect: int = 3,
    ) -> Iterator[dict[str, Any]]:
        """Yield `{"event", "data"}` dicts from the command's SSE stream until `exit`.

        `data` is the decoded JSON. If the connection drops before `exit`, resume
        from the next unseen byte offset up to `reconnect` times.
        """
        offset = from_offset
        attempts_left = reconnect
        while True:
            params = _drop_none(**{"from": offset, "interval_ms": interval_ms, "max_bytes": max_bytes})
            path = self._path(session_id, command_id, "/stream")
            try:
                for event in self._client.stream_events("GET", path, params=params):
                    attempts_left = reconnect  # progress resets the budget
                    if event["event"] == "output" and isinstance(event["data"], dict):
                        start = event["data"].get("offset")
                        if isinstance(start, int):
                            offset = start + len(decode_output(event["data"]))
                    yield event
                    if event["event"] == "exit":
                        return
            except ChaserConnectionError:
                if attempts_left <= 0:
                    raise
            else:
                if attempts_left <= 0:
                    return  # the server keeps closing without an exit event
            attempts_left -= 1

    def stream_output(self, session_id: str, command_id: str, from_offset: int = 0) -> Iterator[bytes]:
        """Just the output bytes of `stream`."""
        for event in self.stream(session_id, command_id, from_offset):
            if event["event"] == "output":
                yield decode_output(event["data"])


class FilesResource(_Resource):
    def upload(
        self,
        session_id: str,
        path: str,
        data: bytes | str | None = None,
        *,
        file: str | os.PathLike[str] | IO[bytes] | None = None,
        filename: str | None = None,
    ) -> dict[str, Any]:
        """Upload `data` or `file` (a path or a binary file object, streamed) to `path`."""
        if (data is None) == (file is None):
            raise ValueError("pass exactly one of data= or file=")
        name = filename or Path(path).name or "upload"
        url = f"/v1/sessions/{_segment(session_id)}/upload"
        if data is not None:
            content = data.encode("utf-8") if isinstance(data, str) else bytes(data)
            return self._object("POST", url, data={"path": path}, files={"file": (name, content)})
        if isinstance(file, (str, os.PathLike)):
            with open(file, "rb") as handle:
                return self._object("POST", url, data={"path": path}, files={"file": (name, handle)})
        return self._object("POST", url, data={"path": path}, files={"file": (name, file)})

    def download(self, session_id: str, path: str) -> bytes:
        response = self._client.request(
            "GET", f"/v1/sessions/{_segment(session_id)}/download", params={"path": path}
        )
        return response.content

    def iter_download(self, session_id: str, path: str) -> Iterator[bytes]:
        url = f"/v1/sessions/{_segment(session_id)}/download"
        with self._client.stream("GET", url, params={"path": path}) as response:
            try:
                yield from response.iter_bytes(STREAM_CHUNK_BYTES)
            except httpx.HTTPError as exc:
                raise ChaserConnectionError(f"download interrupted: {exc}") from exc

    def download_to(self, session_id: str, path: str, dest: str | os.PathLike[str] | IO[bytes]) -> int:
        """Stream the file into `dest` (a path, written atomically, or a binary file object)."""
        chunks = self.iter_download(session_id, path)
        if not isinstance(dest, (str, os.PathLike)):
            written = 0
            for chunk in chunks:
                dest.write(chunk)
                written += len(chunk)
            return written
        target = Path(dest)
        partial = target.with_name(f".{target.name}.part")
        written = 0
        try:
            with open(partial, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
                    written += len(chunk)
            shutil.move(partial, target)
        finally:
            if partial.exists():
                partial.unlink()
        return written


class KeysResource(_Resource):
    def list(self) -> list[dict[str, Any]]:
        return _as_objects(self.list_page()["keys"])

    def list_page(self) -> dict[str, Any]:
        return self._object("GET", "/v1/keys")

    def create(self, *, name: str | None = None, scopes: builtins.list[str] | None = None) -> dict[str, Any]:
        return self._object("POST", "/v1/keys", json=_drop_none(name=name, scopes=scopes))

    def revoke(self, key_id: str) -> dict[str, Any]:
        return self._object("DELETE", f"/v1/keys/{_segment(key_id)}")


class WorkspaceSnapshotsResource(_Resource):
    def _path(self, workspace: str, snapshot: str | None = None, tail: str = "") -> str:
        path = f"/v1/workspaces/{_segment(workspace)}/snapshots"
        if snapshot is not None:
            path += f"/{_segment(snapshot)}"
        return path + tail

    def list(self, workspace: str) -> JSONObjects:
        return self._objects("GET", self._path(workspace))

    def create(self, workspace: str, *, name: str | None = None) -> dict[str, Any]:
        return self._object("POST", self._path(workspace), json=_drop_none(name=name),
                                         timeout=SESSION_CREATE_TIMEOUT)

    def restore(self, workspace: str, snapshot: str, *, force: bool = False) -> dict[str, Any]:
        return self._object("POST", self._path(workspace, snapshot, "/restore"),
                                         json={"force": True} if force else {}, timeout=SESSION_CREATE_TIMEOUT)

    def delete(self, workspace: str, snapshot: str) -> dict[str, Any]:
        return self._object("DELETE", self._path(workspace, snapshot))


class WorkspacesResource(_Resource):
    def __init__(self, client: ChaserClient) -> None:
        super().__init__(client)
        self.snapshots = WorkspaceSnapshotsResource(client)

    def create(
        self,
        *,
        name: str | None = None,
        session_type: str = "sandbox",
        image: str | None = None,
        clone_from: str | None = None,
        template: bool | None = None,
        network: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """`network`: the egress policy its sessions inherit (see `SessionsResource.create`)."""
        body = _drop_none(name=name, session_type=session_type, image=image, clone_from=clone_from,
                          template=template, network=_network_body(network))
        return self._object("POST", "/v1/workspaces", json=body, timeout=SESSION_CREATE_TIMEOUT)

    def list(self) -> list[dict[str, Any]]:
        payload = self._client.request_json("GET", "/v1/workspaces")
        if isinstance(payload, dict) and "workspaces" in payload:
            return _as_objects(payload["workspaces"])
        return _as_objects(payload)

    def get(self, workspace: str) -> dict[str, Any]:
        return self._object("GET", f"/v1/workspaces/{_segment(workspace)}")

    def delete(self, workspace: str, *, force: bool = False) -> dict[str, Any]:
        params = {"force": "true"} if force else None
        return self._object("DELETE", f"/v1/workspaces/{_segment(workspace)}", params=params)

    def rename(self, workspace: str, name: str | None) -> dict[str, Any]:
        return self._object("PUT", f"/v1/workspaces/{_segment(workspace)}/name", json={"name": name})

    def set_template(self, workspace: str, template: bool) -> dict[str, Any]:
        return self._object("PUT", f"/v1/workspaces/{_segment(workspace)}/template",
                                         json={"template": template})

    def bulk_delete(self, *, ids: builtins.list[str] | None = None, all: bool = False,  # the wire name
                    force: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"all": all, "force": force}
        if ids:
            body["ids"] = list(ids)
        return self._object("POST", "/v1/workspaces/bulk-delete", json=body,
                                         timeout=SESSION_CREATE_TIMEOUT)


class ChaserClient:
    """A Chaser API client.

    `base_url` and `api_key` default to env `CHASER_API_URL` / `CHASER_API_KEY`,
    then the config file (see `chaser.client.resolve_settings`).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        settings = resolve_settings(base_url, api_key)
        self.base_url = settings.api_url
        self.api_key = settings.api_key
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json", **self.auth_headers(),
                     **dict(headers or {})},
            timeout=timeout,
            transport=transport,
        )
        self.sessions = SessionsResource(self)
        self.exec = ExecResource(self)
        self.commands = CommandsResource(self)
        self.files = FilesResource(self)
        self.keys = KeysResource(self)
        self.workspaces = WorkspacesResource(self)

    # --- lifecycle ---
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ChaserClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- helpers other transports (WebSocket PTY, forwarding) build on ---
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def ws_url(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        """`base_url + path` with the scheme switched to ws/wss."""
        parts = urlsplit(self.base_url + path)
        scheme = "wss" if parts.scheme == "https" else "ws"
        query = urlencode({k: v for k, v in (params or {}).items() if v is not None})
        return urlunsplit((scheme, parts.netloc, parts.path, query, ""))

    # --- raw requests ---
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request; raise ChaserAPIError on 4xx/5xx, ChaserConnectionError on transport failure."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ChaserConnectionError(f"cannot reach {self.base_url}: {exc or type(exc).__name__}") from exc
        if response.status_code >= 400:
            raise api_error_from_response(response.status_code, response.headers, response.content)
        return response

    def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        if response.status_code == 204 or not response.content:
            return {}
        try:
            return response.json()
        except ValueError as exc:
            raise ChaserAPIError(
                response.status_code, "invalid_response", "server sent a non-JSON body",
                response.headers.get("x-request-id"),
            ) from exc

    def stream(self, method: str, path: str, **kwargs: Any) -> _StreamContext:
        """Context manager yielding an open streaming `httpx.Response` (errors already raised)."""
        return _StreamContext(self, method, path, kwargs)

    def stream_events(self, method: str, path: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Yield `{"event", "data", "id"}` from an SSE endpoint; `data` JSON-decoded when it is JSON."""
        kwargs.setdefault("timeout", httpx.Timeout(None, connect=10.0))
        headers = {"Accept": "text/event-stream", **kwargs.pop("headers", {})}
        with self.stream(method, path, headers=headers, **kwargs) as response:
            try:
                for sse in iter_sse(response.iter_lines()):
                    try:
                        data: Any = sse.json()
                    except ValueError:
                        data = sse.data
                    yield {"event": sse.event, "data": data, "id": sse.id}
            except httpx.HTTPError as exc:
                raise ChaserConnectionError(f"event stream interrupted: {exc or type(exc).__name__}") from exc


class _StreamContext:
    def __init__(self, client: ChaserClient, method: str, path: str, kwargs: dict[str, Any]) -> None:
        self._client, self._method, self._path, self._kwargs = client, method, path, kwargs
        self._cm: AbstractContextManager[httpx.Response] | None = None

    def __enter__(self) -> httpx.Response:
        self._cm = cm = self._client._http.stream(self._method, self._path, **self._kwargs)
        try:
            response = cm.__enter__()
        except httpx.HTTPError as exc:
            raise ChaserConnectionError(
                f"cannot reach {self._client.base_url}: {exc or type(exc).__name__}"
            ) from exc
        if response.status_code >= 400:
            try:
                body = response.read()
            except httpx.HTTPError:
                body = b""
            cm.__exit__(None, None, None)
            raise api_error_from_response(response.status_code, response.headers, body)
        return response

    def __exit__(self, *exc_info: Any) -> None:
        if self._cm is not None:
            self._cm.__exit__(*exc_info)
