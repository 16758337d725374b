"""The client's `nodes` group: the nodes sharing the server's database (admin keys only)."""

from __future__ import annotations

import builtins
from typing import Any

import httpx

from chaser.client._resources import _as_objects, _Resource, _segment

DRAIN_TIMEOUT = httpx.Timeout(None, connect=10.0)  # it moves every idle workspace of the node, one by one


class NodesResource(_Resource):
    def list(self) -> builtins.list[dict[str, Any]]:
        """Every node, with its heartbeat age and running sessions (`GET /v1/nodes`)."""
        return _as_objects(self._object("GET", "/v1/nodes")["nodes"])

    def get(self, node_id: str) -> dict[str, Any]:
        return self._object("GET", f"/v1/nodes/{_segment(node_id)}")

    def cordon(self, node_id: str) -> dict[str, Any]:
        """No new sessions on the node (they answer 503 `node_cordoned`); running ones carry on."""
        return self._object("POST", f"/v1/nodes/{_segment(node_id)}/cordon")

    def uncordon(self, node_id: str) -> dict[str, Any]:
        return self._object("POST", f"/v1/nodes/{_segment(node_id)}/uncordon")

    def drain(self, node_id: str) -> dict[str, Any]:
        """No new sessions on the node, and its idle workspaces moved to other nodes (each checked by
        checksum): `{"node", "moved", "kept", "workspaces": [...]}`."""
        return self._object("POST", f"/v1/nodes/{_segment(node_id)}/drain", timeout=DRAIN_TIMEOUT)
