"""The client's resource groups for what persists: files, keys, workspaces and their snapshots, the audit log."""

from __future__ import annotations

import builtins
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import httpx

from chaser.client._errors import ChaserConnectionError
from chaser.client._resources import (
    SESSION_CREATE_TIMEOUT,
    STREAM_CHUNK_BYTES,
    JSONObjects,
    _as_objects,
    _drop_none,
    _network_body,
    _Resource,
    _segment,
)

if TYPE_CHECKING:
    from chaser.client._client import ChaserClient

MOVE_TIMEOUT = httpx.Timeout(3600.0, connect=10.0)  # a disk streamed node to node, then read back


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

    def create(self, *, name: str | None = None, scopes: builtins.list[str] | None = None,
               format: str | None = None) -> dict[str, Any]:
        """`format="e2b"`: an `e2b_…` key (for E2B's SDKs, docs/e2b.md)."""
        return self._object("POST", "/v1/keys", json=_drop_none(name=name, scopes=scopes, format=format))

    def revoke(self, key_id: str) -> dict[str, Any]:
        return self._object("DELETE", f"/v1/keys/{_segment(key_id)}")


class AuditResource(_Resource):
    def list_page(self, *, before: str | None = None, limit: int | None = None, action: str | None = None,
                  resource_type: str | None = None, resource_id: str | None = None,
                  status: str | None = None) -> dict[str, Any]:
        """`{"events": [...]}`, newest first; the next page: `before=` the last event's id."""
        return self._object("GET", "/v1/audit/events", params=_drop_none(
            before=before, limit=limit, action=action, resource_type=resource_type, resource_id=resource_id,
            status=status))

    def list(self, **filters: Any) -> builtins.list[dict[str, Any]]:
        return _as_objects(self.list_page(**filters)["events"])


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

    def move(self, workspace: str, node_id: str) -> dict[str, Any]:
        """Move its disk and snapshots to node `node_id`, checked by checksum (an admin key; refused
        while a session of it is active)."""
        return self._object("POST", f"/v1/workspaces/{_segment(workspace)}/move", json={"node_id": node_id},
                            timeout=MOVE_TIMEOUT)

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
