"""The synchronous client: `ChaserClient` and its resource groups.

Resource methods return the server's JSON as plain dicts/lists (the wire format of
the official `chaser-sdk`), so `--json` output and SDK users see the same thing.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx

from chaser.client._config import resolve_settings, tls_context
from chaser.client._errors import ChaserAPIError, ChaserConnectionError, api_error_from_response
from chaser.client._nodes import NodesResource
from chaser.client._resources import (
    DEFAULT_TIMEOUT,
    USER_AGENT,
    CommandsResource,
    ExecResource,
    SessionsResource,
)
from chaser.client._sse import iter_sse
from chaser.client._stored import AuditResource, FilesResource, KeysResource, WorkspacesResource

__all__ = ["DEFAULT_TIMEOUT", "ChaserClient"]


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
        ca_bundle: str | os.PathLike[str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        settings = resolve_settings(base_url, api_key, ca_bundle=ca_bundle)
        self.base_url = settings.api_url
        self.api_key = settings.api_key
        self.ca_bundle = settings.ca_bundle
        self._ssl_context = ssl_context
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json", **self.auth_headers(),
                     **dict(headers or {})},
            timeout=timeout,
            transport=transport,
            verify=self.ssl_context() if self.base_url.startswith("https:") else True,
        )
        self.sessions = SessionsResource(self)
        self.exec = ExecResource(self)
        self.commands = CommandsResource(self)
        self.files = FilesResource(self)
        self.keys = KeysResource(self)
        self.workspaces = WorkspacesResource(self)
        self.audit = AuditResource(self)
        self.nodes = NodesResource(self)

    # --- lifecycle ---
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ChaserClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- helpers other transports (WebSocket PTY, forwarding) build on ---
    def ssl_context(self) -> ssl.SSLContext:
        """What an https server must prove: the system's trusted CAs, plus the certificates of
        `ca_bundle` (`--ca`, `CHASER_CA_BUNDLE`, the config file's `ca_bundle`) when given."""
        if self._ssl_context is None:
            self._ssl_context = tls_context(self.ca_bundle)
        return self._ssl_context

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
