"""Session wire schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from chaser.models.common import RequestModel, check_env
from chaser.models.network import NetworkPolicyCreate


class SessionCreate(RequestModel):
    # Any other value is refused with `unsupported_session_type`; the schema says what is served.
    session_type: str = Field(default="sandbox", json_schema_extra={"enum": ["sandbox"]})
    ephemeral: bool = False
    workspace: str | None = Field(default=None, min_length=1, max_length=200)
    image: str | None = Field(default=None, max_length=1000)
    env: dict[str, str] | None = None
    proxy: str | None = Field(default=None, max_length=2000)
    ttl_seconds: int | None = Field(default=None, ge=1)
    github_repo: str | None = None  # accepted for SDK compatibility; must be null
    network: NetworkPolicyCreate | None = None  # egress policy; omitted: the workspace's, then the default

    _env = field_validator("env")(check_env)


class Endpoints(BaseModel):
    control: str


class SessionPublic(BaseModel):
    id: str
    created_at: datetime
    status: str
    session_type: Literal["sandbox"] = "sandbox"
    endpoints: Endpoints
    workspace_id: str | None = None
    persistence: bool
    ephemeral: bool
    image: str | None = None
    expires_at: datetime | None = None
    ended_at: datetime | None = None
    end_reason: str | None = None


class SessionsPublic(BaseModel):
    sessions: list[SessionPublic]
    total: int


class BulkTerminateCreate(RequestModel):
    ids: list[str] | None = None
    workspaces: list[str] | None = None
    all: bool = False
    session_type: str | None = None
    force: bool = False


class BulkTerminateFailure(BaseModel):
    id: str
    code: str
    message: str


class BulkTerminatePublic(BaseModel):
    terminated: list[str]
    failed: list[BulkTerminateFailure]


class ProxyInfo(BaseModel):
    all_proxy: str | None = None
    http_proxy: str | None = None
    https_proxy: str | None = None
    no_proxy: str | None = None


class RuntimeChaserInfo(BaseModel):
    session_id: str
    workspace_id: str | None = None
    workspace_root: str = "/workspace"
    runtime_env: str = "microvm"
    agent_brief_path: str = ""
    toolchain_root: str = ""
    toolchain_attached: bool = False
    agent_impl: str
    image: str | None = None


class RuntimeInfo(BaseModel):
    cwd: str | None = None
    home: str | None = None
    user: str | None = None
    shell: str | None = None
    path: str | None = None
    path_entries: list[str] = []
    term: str | None = None
    lang: str | None = None
    chaser_mode: str = "sandbox"
    chaser_exec: bool = True
    chaser_agent: bool = True
    workspace_root_present: bool = False
    proxy: ProxyInfo
    chaser: RuntimeChaserInfo
    tools: dict[str, str] = {}
    tool_versions: dict[str, str] = {}


class SelfTestPublic(BaseModel):
    kind: Literal["sandbox_self_test"] = "sandbox_self_test"
    status: str = "ok"
    session_id: str
    workspace_id: str | None = None
    runtime: RuntimeInfo
