"""Command execution wire schemas (exec and the command API)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from chaser.models.common import (
    COMMAND_SCHEMA,
    ENV_SCHEMA,
    IMAGE_REF_PATTERN,
    MAX_TIMEOUT_MS,
    PATH_SCHEMA,
    OmitNoneModel,
    RequestModel,
    check_command,
    check_env,
    check_path,
)
from chaser.models.network import NetworkPolicyCreate
from chaser.models.sessions import TARGET_RULES


class SessionExecCreate(RequestModel):
    command: str = Field(min_length=1, json_schema_extra=COMMAND_SCHEMA)
    cwd: str | None = Field(default=None, min_length=1, json_schema_extra=PATH_SCHEMA)
    env: dict[str, str] | None = Field(default=None, json_schema_extra=ENV_SCHEMA)
    timeout_ms: int | None = Field(default=None, gt=0, le=MAX_TIMEOUT_MS)
    background: bool = False

    _command = field_validator("command")(check_command)
    _cwd = field_validator("cwd")(check_path)
    _env = field_validator("env")(check_env)


class ExecCreate(SessionExecCreate):
    """`POST /v1/exec`: the session is found or started for you."""

    # As for sessions, and a background command needs a workspace (an ephemeral session ends with it).
    model_config = ConfigDict(json_schema_extra={"allOf": [*TARGET_RULES, {"not": {
        "required": ["background", "ephemeral"],
        "properties": {"background": {"const": True}, "ephemeral": {"const": True}}}}]})

    workspace: str | None = Field(default=None, min_length=1, max_length=200)
    ephemeral: bool = False
    image: str | None = Field(default=None, max_length=1000, json_schema_extra={"pattern": IMAGE_REF_PATTERN})
    # Any other value is refused with `unsupported_session_type`; the schema says what is served.
    session_type: str = Field(default="sandbox", json_schema_extra={"enum": ["sandbox"]})
    # For the session this call starts; a reused running session gets it applied (PUT …/network).
    network: NetworkPolicyCreate | None = None


class ExecPublic(OmitNoneModel):
    omit_if_none = frozenset({"command_id", "pid", "exit_code"})  # no exit_code while a background command runs

    kind: Literal["sandbox_exec"] = "sandbox_exec"
    status: str  # completed | failed | timed_out | running
    session_id: str
    workspace: str | None = None
    workspace_id: str | None = None
    ephemeral: bool
    command: str
    background: bool
    command_id: str | None = None
    pid: int | None = None
    exit_code: int | None = None
    output: str = ""
    output_truncated: bool = False


class CommandPublic(OmitNoneModel):
    # e.g. no exit_code while it runs, no output in lists
    omit_if_none = frozenset({"pid", "exit_code", "command", "cwd", "user", "started_at_epoch",
                              "finished_at_epoch", "output"})

    command_id: str
    session_id: str
    status: str  # queued | starting | running | completed | failed | killed | timed_out
    pid: int | None = None
    exit_code: int | None = None
    command: str | None = None
    cwd: str | None = None
    user: str | None = None
    started_at_epoch: int | None = None
    finished_at_epoch: int | None = None
    output_bytes: int = 0
    output: str | None = None
    output_truncated: bool = False


class CommandsPublic(BaseModel):
    commands: list[CommandPublic]


class StdinCreate(RequestModel):
    input: str = Field(max_length=16 * 1024 * 1024)
    encoding: Literal["utf-8", "base64"] = "utf-8"
    close: bool = False


class StdinPublic(BaseModel):
    command_id: str
    session_id: str
    written: int
    closed: bool


class KillCreate(RequestModel):
    signal: str | int = "TERM"


class KillPublic(BaseModel):
    command_id: str
    session_id: str
    status: Literal["signal_sent"] = "signal_sent"
    signal: str
