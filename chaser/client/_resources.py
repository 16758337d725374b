"""The resource groups of `ChaserClient` (`client.sessions`, `client.exec`, ...): one class per
API resource, each a thin mapping of methods to paths over the client's one HTTP transport."""

from __future__ import annotations

import base64
import builtins
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

import httpx

from chaser.client._errors import ChaserConnectionError
from chaser.client._sse import decode_output

if TYPE_CHECKING:
    from chaser.client._client import ChaserClient


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

    def pause(self, session_id: str) -> dict[str, Any]:
        """Save the session's memory and disk and end its VM (status `paused`); any request wakes it."""
        return self._object("POST", f"/v1/sessions/{_segment(session_id)}/pause")

    def resume(self, session_id: str) -> dict[str, Any]:
        return self._object("POST", f"/v1/sessions/{_segment(session_id)}/resume")

    def fork(self, session_id: str, *, count: int = 1,
             workspace_names: builtins.list[str] | None = None) -> dict[str, Any]:
        """`count` copies of the running session: `{"source_id", "sessions": [...]}`."""
        body = _drop_none(count=count, workspace_names=workspace_names)
        return self._object("POST", f"/v1/sessions/{_segment(session_id)}/fork", json=body)

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
