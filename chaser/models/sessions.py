"""Session wire schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from chaser.models.common import ENV_SCHEMA, IMAGE_REF_PATTERN, RequestModel, check_env
from chaser.models.network import NetworkPolicyCreate

# Which session a request targets (chaser/service/workspaces.py resolve_ref), for
# /openapi.json: a workspace, or `ephemeral: true` (with an image or not), never both; an image
# only for an ephemeral session. (Neither: the default workspace, when the server has one.)
TARGET_RULES: list[JsonValue] = [
    {"not": {"required": ["workspace", "image"],
             "properties": {"workspace": {"type": "string"}, "image": {"type": "string"}}}},
    {"not": {"required": ["workspace", "ephemeral"],
             "properties": {"workspace": {"type": "string"}, "ephemeral": {"const": True}}}},
    {"if": {"required": ["image"], "properties": {"image": {"type": "string"}}},
     "then": {"required": ["ephemeral"], "properties": {"ephemeral": {"const": True}}}},
]
PROXY_PATTERN = ("^(?:|(?:[Hh][Tt][Tt][Pp][Ss]?|[Ss][Oo][Cc][Kk][Ss](?:4|5[Hh]?))://"
                 "(?:[A-Za-z0-9._~%!$&'()*+,;=:-]*@)?[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]{1,5})?/?)$")


class SessionCreate(RequestModel):
    model_config = ConfigDict(json_schema_extra={"allOf": TARGET_RULES})

    # Any other value is refused with `unsupported_session_type`; the schema says what is served.
    session_type: str = Field(default="sandbox", json_schema_extra={"enum": ["sandbox"]})
    ephemeral: bool = False
    workspace: str | None = Field(default=None, min_length=1, max_length=200)
    image: str | None = Field(default=None, max_length=1000, json_schema_extra={"pattern": IMAGE_REF_PATTERN})
    env: dict[str, str] | None = Field(default=None, json_schema_extra=ENV_SCHEMA)
    proxy: str | None = Field(default=None, max_length=2000, json_schema_extra={"pattern": PROXY_PATTERN})
    ttl_seconds: int | None = Field(default=None, ge=1)  # at most session_max_lifetime_s (chaser/api/openapi.py)
    # Accepted for SDK compatibility; anything but null is refused.
    github_repo: str | None = Field(default=None, json_schema_extra={"anyOf": [{"type": "null"}]})
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
    node_id: str | None = Field(None, description="The node its VM runs (ran) on (`GET /v1/nodes`); null: "
                                                   "a session from before nodes were recorded")


class ForkCreate(RequestModel):
    count: int = Field(1, ge=1, description="How many copies (at most CHASER_MAX_FORK_COUNT)")
    workspace_names: list[str] | None = Field(
        None, description="One new workspace per fork, cloned from the source's disk at that instant; "
        "omitted: the forks are ephemeral")


class ForkPublic(BaseModel):
    source_id: str
    sessions: list[SessionPublic]


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
