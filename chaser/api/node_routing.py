"""An API replica's router (`CHASER_LOCAL_RUNTIME=false`; docs/architecture.md, "Several nodes").

What needs a VM goes to the node that runs it, as the client sent it (chaser/api/node_proxy.py):

| request | goes to |
|---|---|
| `/v1/sessions/{id}/…` (exec, commands, SSE, stdin, kill, files, PTY, tunnels, pause, fork), its DELETE | its node |
| `POST /v1/sessions/bulk-terminate` | each named session's node, its own ids (a lost node's: rows ended here) |
| `/s/{id}/forward/…`, `{id}.{CHASER_BASE_DOMAIN}` (the forwarding gateway) | the session's node |
| `POST /v1/sessions`, `POST /v1/exec` | its workspace's node, else the best of K (chaser/service/placement.py) |
| a change to a workspace whose disk is on a node (delete, snapshots, clone, rename, move); its snapshots | that node |
| `POST /v1/images` (pull), `/v1/images/prune`, `DELETE /v1/images/…` | every node that accepts sessions |
| `GET /v1/images` | the least loaded node |

Everything else — a session's row (`GET /v1/sessions/{id}`, lists), ended sessions, keys, nodes,
the audit log, MCP (its tools call this replica back) — the replica answers from the database.
The E2B front door is not served by replicas (501).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chaser import errors
from chaser.api.auth import principal_from
from chaser.api.node_proxy import NodeProxy, refuse
from chaser.api.ratelimit import check_rate
from chaser.config import Settings
from chaser.models.sessions import BulkTerminateCreate, BulkTerminateFailure, BulkTerminatePublic
from chaser.service.container import Services
from chaser.service.forward import host_session
from chaser.service.placement import NodeTarget

__all__ = ["NodeRoutingMiddleware"]

SESSION_PATH = re.compile(r"^/v1/sessions/(?P<id>[^/]+)(?P<rest>/.*)?$")
FORWARD_PATH = re.compile(r"^/s/(?P<id>[^/]+)/")
WORKSPACE_PATH = re.compile(r"^/v1/workspaces/(?P<ref>[^/]+)(?P<rest>/.*)?$")
CREATE_PATHS = frozenset({"/v1/sessions", "/v1/exec"})
BULK_TERMINATE = "/v1/sessions/bulk-terminate"
MAX_ROUTED_BODY = 1 << 20  # a create's JSON is small; larger ones are the node's to refuse


class NodeRoutingMiddleware:
    def __init__(self, app: ASGIApp, *, services: Services, settings: Settings, proxy: NodeProxy) -> None:
        self.app = app
        self.services = services
        self.settings = settings
        self.proxy = proxy
        self.placement = services.placement

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path == "/e2b" or path.startswith("/e2b/"):
            error = errors.FeatureNotImplemented("the E2B API is served by `chaser server` with a local runtime, "
                                                 "not by an API replica (CHASER_LOCAL_RUNTIME=false)")
            await refuse(scope, receive, send, error)
            return
        if path == BULK_TERMINATE and scope.get("method") == "POST" and scope["type"] == "http":
            await self.bulk_terminate(scope, receive, send)
            return
        try:
            target, body = await self.route(scope, receive)
        except errors.ChaserError as error:
            await refuse(scope, receive, send, error)
            return
        if target is None:
            await self.app(scope, receive if body is None else replay(body, receive), send)
        elif isinstance(target, list):
            try:
                await self.fan_out(scope, receive, send, target, body or b"")
            except errors.ChaserError as error:
                await refuse(scope, receive, send, error)
        elif scope["type"] == "websocket":
            await self.proxy.websocket(scope, receive, send, target)
        else:
            await self.proxy.http(scope, receive, send, target, body=body)

    async def route(self, scope: Scope, receive: Receive) -> tuple[NodeTarget | list[NodeTarget] | None, bytes | None]:
        """Where the request goes (None: this replica) and its body when routing had to read it."""
        path, method = scope["path"], scope.get("method", "GET")
        host = Headers(scope=scope).get("host")
        session_id = host_session(host, self.settings.base_domain)
        if session_id is None and (match := FORWARD_PATH.match(path)):
            session_id = match["id"]
        if session_id is not None:
            return await asyncio.to_thread(self.placement.session_target, session_id), None
        if match := SESSION_PATH.match(path):
            if match["id"] == "bulk-terminate" or (not match["rest"] and method == "GET"):
                return None, None  # rows (a bulk terminate's POST: `bulk_terminate`)
            return await asyncio.to_thread(self.placement.session_target, match["id"]), None
        if method == "POST" and path in CREATE_PATHS:
            body = await read_body(receive)
            return await self.place_new_session(scope, body), body
        if path.startswith("/v1/images"):
            return await self.image_nodes(method), None
        if method != "GET" and (path == "/v1/workspaces" or WORKSPACE_PATH.match(path)):
            return await self.workspace_route(scope, receive, path)
        if (match := WORKSPACE_PATH.match(path)) and match["rest"] == "/snapshots":
            # Which snapshots hold memory only the disk's node can tell (its files); a lost node's
            # list still comes from the rows.
            try:
                return await self.workspace_route(scope, receive, path)
            except errors.NodeUnavailable:
                return None, None
        return None, None

    # --- new sessions -----------------------------------------------------------------------------
    async def place_new_session(self, scope: Scope, body: bytes) -> NodeTarget | None:
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            return None  # this replica answers the 400 (nothing is placed)
        if not isinstance(request, dict):
            return None
        principal = await self.principal(scope)
        if principal is None:
            return None  # this replica answers the 401

        def place() -> NodeTarget:
            workspace = self.services.workspaces.resolve_ref(
                principal, ephemeral=request.get("ephemeral") is True, workspace=text_or_none(request, "workspace"),
                image=text_or_none(request, "image"))
            if workspace is None:
                return self.placement.choose(text_or_none(request, "image"))
            held = self.placement.workspace_node(principal.account_id, workspace.id)
            return held or self.placement.pin_workspace(workspace.id, self.placement.choose(workspace.image))

        return await asyncio.to_thread(place)

    # --- workspaces and images --------------------------------------------------------------------
    async def workspace_route(self, scope: Scope, receive: Receive, path: str
                              ) -> tuple[NodeTarget | None, bytes | None]:
        """A change to a workspace whose disk is on a node goes there; a clone, to its source's node."""
        body = None
        if path == "/v1/workspaces":  # a create: a clone copies its source's disk where it is
            body = await read_body(receive)
            try:
                ref = json.loads(body or b"{}").get("clone_from")
            except (ValueError, AttributeError):
                return None, body
            if not isinstance(ref, str):
                return None, body
        elif (match := WORKSPACE_PATH.match(path)) and match["ref"] != "bulk-delete":
            ref = match["ref"]
        else:
            return None, None
        principal = await self.principal(scope)
        if principal is None:
            return None, body
        return await asyncio.to_thread(self.placement.workspace_node, principal.account_id, ref), body

    async def image_nodes(self, method: str) -> NodeTarget | list[NodeTarget]:
        """Each node keeps its own image cache: a pull, prune or removal is done on every node."""
        if method == "GET":
            return await asyncio.to_thread(self.placement.any_node)
        nodes = [candidate.target for candidate in await asyncio.to_thread(self.placement.candidates)]
        if not nodes:
            raise errors.NoNodeAvailable("no node is active now: see `chaser nodes list`")
        return nodes

    async def fan_out(self, scope: Scope, receive: Receive, send: Send, nodes: list[NodeTarget], body: bytes) -> None:
        """The same request to each node in turn: the first refusal, else the last node's answer."""
        if not body:
            body = await read_body(receive)
        answer = None
        for node in nodes:
            answer = await self.proxy.buffered(scope, node, body)
            if answer.status_code >= 300:
                break
        assert answer is not None
        headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers.multi_items()
                   if name.lower() not in ("connection", "transfer-encoding", "content-encoding", "content-length")]
        await send({"type": "http.response.start", "status": answer.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": answer.content})

    # --- bulk terminate ----------------------------------------------------------------------------
    async def bulk_terminate(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The sessions it names, found in the database, ended on their nodes — each node gets a bulk
        terminate of its own ids (the caller's key), so the VMs stop now; sessions of a lost node (or
        of none) end as rows. A body or key this cannot use: this replica's route answers the error."""
        body = await read_body(receive)
        principal = await self.principal(scope)
        try:
            request = BulkTerminateCreate.model_validate_json(body or b"{}")
        except ValueError:
            request = None
        if principal is None or request is None or not principal.has("sessions.write"):
            await self.app(scope, replay(body, receive), send)
            return
        try:
            await check_rate(self.services.rate_limiter, principal.key_id)
            targets, failed = await asyncio.to_thread(self.services.sessions.bulk_targets, principal, request)
            by_node: dict[NodeTarget | None, list[str]] = {}
            for session_id in targets:
                try:
                    node = await asyncio.to_thread(self.placement.session_target, session_id)
                except errors.NodeUnavailable:
                    node = None  # its node is lost: its row ends here, the node stops the VM if it returns
                by_node.setdefault(node, []).append(session_id)
            terminated: list[str] = []
            for node, ids in by_node.items():
                if node is None:
                    await self.terminate_rows(principal, ids, request.force, terminated, failed)
                    continue
                part = json.dumps({"ids": ids, "force": request.force}).encode()
                try:
                    answer = await self.proxy.buffered(scope, node, part)
                    result = BulkTerminatePublic.model_validate_json(answer.content)
                except (errors.NodeUnavailable, ValueError) as exc:  # its sessions stay as they are
                    reason = exc.message if isinstance(exc, errors.ChaserError) else f"answered {answer.status_code}"
                    failed += [(session_id, "node_unavailable", f"node {node.id}: {reason}") for session_id in ids]
                    continue
                terminated += result.terminated
                failed += [(item.id, item.code, item.message) for item in result.failed]
        except errors.ChaserError as error:
            await refuse(scope, receive, send, error)
            return
        payload = BulkTerminatePublic(terminated=terminated, failed=[
            BulkTerminateFailure(id=item_id, code=code, message=message) for item_id, code, message in failed])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload.model_dump_json().encode()})

    async def terminate_rows(self, principal: Any, ids: list[str], force: bool, terminated: list[str],
                             failed: list[tuple[str, str, str]]) -> None:
        """Sessions no node answers for (or ids of no session): this replica ends their rows."""
        for session_id in ids:
            try:
                await self.services.sessions.terminate(principal, session_id, force=force)
                terminated.append(session_id)
            except errors.ChaserError as exc:
                failed.append((session_id, exc.code, exc.message))

    # --- helpers ----------------------------------------------------------------------------------
    async def principal(self, scope: Scope) -> Any:
        query = dict(_query_items(scope))
        try:
            return await asyncio.to_thread(principal_from, self.services.keys, Headers(scope=scope), query=query)
        except errors.ChaserError:
            return None



def text_or_none(request: dict[str, Any], name: str) -> str | None:
    value = request.get(name)
    return value if isinstance(value, str) else None


def _query_items(scope: Scope) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl((scope.get("query_string") or b"").decode("latin-1"))


async def read_body(receive: Receive) -> bytes:
    """The request body (a JSON object of a create or a pull): 413 beyond MAX_ROUTED_BODY."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_ROUTED_BODY:
            raise errors.PayloadTooLarge(f"this request's body is limited to {MAX_ROUTED_BODY} bytes")
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives `body` first, then what the client sends next (its disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
