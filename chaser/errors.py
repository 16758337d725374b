"""One hierarchy of domain errors. Each has a stable `code` and an HTTP `status`;
the API maps them to `{"code", "message"}` bodies in one place.

    ChaserError
    ├── InvalidRequest (400) ── UnsupportedSessionType, WorkspaceRequired, InvalidImage
    ├── Unauthorized (401), Forbidden (403)
    ├── NotFound (404) ── FileNotFound, ImageNotFound, SessionNotFound, WorkspaceNotFound,
    │                     SnapshotNotFound, ProcessNotFound, CommandNotFound, NodeNotFound
    ├── Conflict (409) ── SessionNotRunning, WorkspaceBusy, WorkspaceExists, SnapshotExists,
    │                     CommandFinished
    ├── PayloadTooLarge (413)
    ├── QuotaExceeded (429), RateLimited (429, with Retry-After and x-ratelimit-*)
    ├── FeatureNotImplemented (501)
    ├── PortNotListening (502), ImagePullFailed (502)
    └── SandboxRuntimeError (503) ── BootTimeout, AgentUnavailable, VMCrashed, GuestAssetsMissing,
                                     CapacityExhausted (with Retry-After), NodeCordoned

An error may carry `headers` (e.g. Retry-After) that the API sends with it.
"""

from __future__ import annotations


class ChaserError(Exception):
    code = "internal_error"
    status = 500
    headers: dict[str, str] | None = None

    def __init__(self, message: str | None = None, *, code: str | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        if code:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class InvalidRequest(ChaserError):
    """The request is not valid."""

    code = "invalid_request"
    status = 400


class UnsupportedSessionType(InvalidRequest):
    code = "unsupported_session_type"


class WorkspaceRequired(InvalidRequest):
    code = "workspace_required"


class InvalidImage(InvalidRequest):
    code = "invalid_image"


class Unauthorized(ChaserError):
    """Missing or invalid API key."""

    code = "unauthorized"
    status = 401


class Forbidden(ChaserError):
    """The API key lacks the scope for this operation."""

    code = "forbidden"
    status = 403


class NotFound(ChaserError):
    """Not found."""

    code = "not_found"
    status = 404


class FileNotFound(NotFound):
    code = "file_not_found"


class ImageNotFound(NotFound):
    code = "image_not_found"


class SessionNotFound(NotFound):
    code = "session_not_found"


class WorkspaceNotFound(NotFound):
    code = "workspace_not_found"


class SnapshotNotFound(NotFound):
    code = "snapshot_not_found"


class ProcessNotFound(NotFound):
    code = "process_not_found"


class CommandNotFound(NotFound):
    code = "command_not_found"


class NodeNotFound(NotFound):
    code = "node_not_found"


class Conflict(ChaserError):
    """The resource is not in a state that allows this."""

    code = "conflict"
    status = 409


class SessionNotRunning(Conflict):
    """The session is not running (starting, stopping or ended)."""

    code = "session_not_running"


class WorkspaceBusy(Conflict):
    """The workspace's running session holds its disk."""

    code = "workspace_busy"


class WorkspaceElsewhere(Conflict):
    """The workspace's disk lives on another node than the one asked to run it."""

    code = "workspace_on_other_node"


class WorkspaceExists(Conflict):
    code = "workspace_exists"


class SnapshotExists(Conflict):
    code = "snapshot_exists"


class CommandFinished(Conflict):
    code = "command_finished"


class SnapshotIncompatible(Conflict):
    """A saved VM state (a paused session, a memory snapshot) made by other guest assets, agent or QEMU."""

    code = "snapshot_incompatible"


class PayloadTooLarge(ChaserError):
    """The payload is larger than allowed."""

    code = "payload_too_large"
    status = 413


class InsufficientStorage(ChaserError):
    """The host has no room on disk to save this; nothing was lost."""

    code = "insufficient_storage"
    status = 507


class QuotaExceeded(ChaserError):
    """The account is at its limit for this resource."""

    code = "quota_exceeded"
    status = 429


class RateLimited(ChaserError):
    """The API key made more requests than its rate limit allows; retry after `Retry-After` seconds."""

    code = "rate_limited"
    status = 429

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = dict(headers or {})


class FeatureNotImplemented(ChaserError):
    """What the hosted service offers and a self-hosted server does not serve."""

    code = "not_implemented"
    status = 501


class PortNotListening(ChaserError):
    """Nothing listens on that port inside the sandbox."""

    code = "port_not_listening"
    status = 502


class ImagePullFailed(ChaserError):
    code = "image_pull_failed"
    status = 502


class SandboxRuntimeError(ChaserError):
    """The VM runtime could not serve the request."""

    code = "runtime_unavailable"
    status = 503


class GuestAssetsMissing(SandboxRuntimeError):
    """Guest kernel/initramfs/OS are not built; run `chaser guest build`."""

    code = "guest_assets_missing"


class BootTimeout(SandboxRuntimeError):
    """The VM did not become ready in time."""

    code = "boot_timeout"


class AgentUnavailable(SandboxRuntimeError):
    """The in-guest agent did not answer."""

    code = "agent_unavailable"


class VMCrashed(SandboxRuntimeError):
    """The VM's QEMU process exited unexpectedly."""

    code = "vm_crashed"


class CapacityExhausted(SandboxRuntimeError):
    """The host has no room for another VM right now; retry later."""

    code = "capacity_exhausted"

    def __init__(self, message: str | None = None, *, retry_after_s: int = 10) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.headers = {"Retry-After": str(retry_after_s)}


class NodeCordoned(SandboxRuntimeError):
    """This node is cordoned (or draining): it starts no new session; running ones carry on."""

    code = "node_cordoned"


class NoNodeAvailable(SandboxRuntimeError):
    """An API replica found no node that accepts a new session (all cordoned, lost or full)."""

    code = "no_node_available"

    def __init__(self, message: str | None = None, *, retry_after_s: int = 10) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after_s)}


class NodeUnavailable(SandboxRuntimeError):
    """The node that runs the session (or holds the workspace's disk) does not answer."""

    code = "node_unavailable"


class NodeTokenRequired(ChaserError):
    """A node serves only API replicas: the request lacks their node token, or it is wrong."""

    code = "node_token_required"
    status = 401


class PassedOnError(ChaserError):
    """Another party's refusal, passed on with its code and status."""

    def __init__(self, message: str, *, code: str, status: int) -> None:
        super().__init__(message, code=code)
        self.status = status


class AgentError(PassedOnError):
    """The agent answered with an error; keeps its code and status."""


class ImageConversionFailed(ChaserError):
    """Unpacking or converting an image to a disk failed on this host."""

    code = "image_conversion_failed"
    status = 500


class NodeError(PassedOnError):
    """Another node refused a request this one sent it; keeps that node's code and status."""


class ChecksumMismatch(ChaserError):
    """A moved file's checksum, read back where it was written, differs from the sender's."""

    code = "checksum_mismatch"
    status = 502
