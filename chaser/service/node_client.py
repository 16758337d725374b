"""Requests from one Chaser process to a node (`chaser node`), carrying the node token:
a workspace's move and a drain (chaser/service/workspace_move.py). The replicas' request relay is
chaser/api/node_proxy.py; both send the same header."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx

from chaser import errors
from chaser.config import Settings
from chaser.service.placement import NodeTarget

NODE_TOKEN_HEADER = "x-chaser-node-token"
CONNECT_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 300.0  # a node silent this long (no byte read or written) is given up on


def tls_verify(settings: Settings) -> ssl.SSLContext | bool:
    """How a node's certificate is checked: CHASER_NODE_CA_BUNDLE, else the system's CAs."""
    return ssl.create_default_context(cafile=str(settings.node_ca_bundle)) if settings.node_ca_bundle else True


class NodeClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(IDLE_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
                                             verify=tls_verify(self.settings), trust_env=False)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _headers(self) -> dict[str, str]:
        if self.settings.node_token is None:
            raise errors.InvalidRequest("this server has no node token (CHASER_NODE_TOKEN): it cannot reach "
                                        "other nodes")
        return {NODE_TOKEN_HEADER: self.settings.node_token.get_secret_value()}

    async def request(self, node: NodeTarget, method: str, path: str, *, json: Any = None,
                      content: AsyncIterator[bytes] | None = None) -> Any:
        """The node's JSON answer; its refusal as NodeError (same code and status); NodeUnavailable
        when it cannot be reached."""
        try:
            response = await self.client.request(method, node.url + path, json=json, content=content,
                                                 headers=self._headers())
        except httpx.HTTPError as exc:
            raise errors.NodeUnavailable(f"node {node.id} ({node.url}) did not answer: {exc}") from exc
        if response.status_code >= 300:
            try:
                body = response.json()
                code, message = str(body["code"]), str(body["message"])
            except (ValueError, KeyError, TypeError):
                code, message = "node_error", response.text[:200]
            raise errors.NodeError(f"node {node.id}: {message}", code=code, status=response.status_code)
        return response.json()
