"""The MCP tool declarations: name, description, input (and output) JSON schema, annotations.

Each tool's handler is paired with its declaration in `chaser.mcp.registry`; the argument
checks (`chaser.mcp.arguments`) read these schemas, so a property declared here is accepted
there.
"""

from __future__ import annotations

from typing import Any

from mcp import types

__all__ = [
    "NETWORK_MAX_ENTRIES",
    "NETWORK_MAX_ENTRY_CHARS",
    "NETWORK_SCHEMA",
    "SESSIONS_LIST",
    "SESSION_CREATE",
    "SESSION_TERMINATE",
    "TERMINAL",
    "TERMINAL_OUTPUT_SCHEMA",
    "WORKSPACES_LIST",
    "WORKSPACE_CREATE",
]

_TARGET_PROPS: dict[str, Any] = {
    "workspace": {"type": "string", "description": "Workspace name or id: reuse its running session or start one."},
    "session_id": {"type": "string", "description": "Run in this existing session (ses_…)."},
    "ephemeral": {"type": "boolean",
                  "description": "Start a new session with a throw-away disk. It is not terminated after the "
                                 "call: pass the returned session_id in follow-up calls, and end it with "
                                 "session_terminate (else it ends at its idle timeout)."},
}

NETWORK_MAX_ENTRIES = 256
NETWORK_MAX_ENTRY_CHARS = 300
_HOSTS = {"type": "array", "maxItems": NETWORK_MAX_ENTRIES,
          "items": {"type": "string", "minLength": 1, "maxLength": NETWORK_MAX_ENTRY_CHARS}}
NETWORK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Egress policy of the session this call starts (omitted fields: the workspace's, then the "
                   "server default). Entries: IPs, CIDRs, example.com, *.example.com; deny_out always wins.",
    "properties": {
        "internet": {"type": "boolean", "description": "Reach public destinations at all."},
        "allow_out": _HOSTS | {"description": "Only these destinations may be reached."},
        "deny_out": _HOSTS | {"description": "Never these destinations."},
    },
    "additionalProperties": False,
}

TERMINAL_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "session_id": {"type": "string"},
        "workspace_id": {"type": ["string", "null"]},
        "exit_code": {"type": ["integer", "null"]},
        "status": {"type": "string"},
        "output": {"type": "string"},
        "output_truncated": {"type": "boolean"},
        "ephemeral": {"type": "boolean"},
        "operations": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["session_id", "workspace_id", "exit_code", "status", "output", "output_truncated"],
}

TERMINAL_DESCRIPTION = """\
Run a shell command, or structured file operations, in a Chaser sandbox (a microVM).
Recommended tool for agents. Target exactly one of: `workspace` (name or id; its running \
session is reused, or one is started; files persist), `session_id`, or `ephemeral: true` \
(a new session with a throw-away disk; it keeps running for follow-up calls with its session_id \
until session_terminate or its idle timeout).
Give `command` (alias `cmd`; run with /bin/sh -c, stdout+stderr merged) OR `xml` with one or \
more file operations (paths relative to /workspace, or to `cwd`):
  <read_file path="a.py"/>
  <write_file path="a.py">content</write_file>
  <apply_edit path="a.py"><search>old</search><replace>new</replace></apply_edit>
  <list_files path="src" recursive="true"/>
In xml, escape `<`/`&` in content or wrap it in <![CDATA[...]]>; one newline right after an \
opening tag is ignored. Each <search> must match exactly once.
The first line of the result is JSON with session_id, workspace_id, exit_code, status: pass \
session_id (or the workspace) in follow-up calls to keep using the same sandbox. A non-zero \
exit code is reported, not an error."""

TERMINAL = types.Tool(
    name="terminal",
    title="Sandbox terminal",
    description=TERMINAL_DESCRIPTION,
    input_schema={
        "type": "object",
        "properties": {
            **_TARGET_PROPS,
            "command": {"type": "string", "description": "Shell command to run."},
            "cmd": {"type": "string", "description": "Alias of `command`."},
            "xml": {"type": "string", "description": "File operations (read_file, write_file, apply_edit, "
                                                     "list_files) as XML elements."},
            "timeout_ms": {"type": "integer", "minimum": 1,
                           "description": "Command timeout in milliseconds (server default if omitted)."},
            "cwd": {"type": "string", "description": "Working directory (default /workspace)."},
            "network": NETWORK_SCHEMA | {"description": "Egress policy for the session of a `workspace` or "
                                                        "`ephemeral` target (a running workspace session "
                                                        "gets it applied). Not with `session_id`."},
        },
        "additionalProperties": False,
    },
    output_schema=TERMINAL_OUTPUT_SCHEMA,
    annotations=types.ToolAnnotations(title="Sandbox terminal", destructive_hint=True, open_world_hint=True),
)

SESSIONS_LIST = types.Tool(
    name="sessions_list",
    description="List sessions (active ones unless `status` is given: active, all, starting, running, "
                "paused, terminated, failed).",
    input_schema={"type": "object", "properties": {"status": {"type": "string"}}, "additionalProperties": False},
    annotations=types.ToolAnnotations(read_only_hint=True),
)

SESSION_CREATE = types.Tool(
    name="session_create",
    description="Start a session (a microVM) and wait until it is ready. `ephemeral: true` for a throw-away "
                "one (optionally with `image`), or `workspace` to run the workspace's persistent disk.",
    input_schema={
        "type": "object",
        "properties": {
            "ephemeral": _TARGET_PROPS["ephemeral"] | {"description": "A session with a throw-away disk."},
            "workspace": {"type": "string", "description": "Workspace name or id."},
            "image": {"type": "string", "description": "Image (only with ephemeral)."},
            "network": NETWORK_SCHEMA,
        },
        "additionalProperties": False,
    },
)

SESSION_TERMINATE = types.Tool(
    name="session_terminate",
    description="Terminate a session (idempotent). `force` kills a workspace session at once instead of "
                "stopping it gracefully.",
    input_schema={
        "type": "object",
        "properties": {"session_id": {"type": "string"}, "force": {"type": "boolean"}},
        "required": ["session_id"],
        "additionalProperties": False,
    },
    annotations=types.ToolAnnotations(destructive_hint=True, idempotent_hint=True),
)

_SESSION_ID_ONLY = {
    "type": "object",
    "properties": {"session_id": {"type": "string"}},
    "required": ["session_id"],
    "additionalProperties": False,
}

PAUSE_SESSION = types.Tool(
    name="chaser_pause_session",
    description="Pause a session: its memory and disk are saved and its VM stops (no CPU or RAM used). "
                "The next command or file call on it, or chaser_resume_session, resumes it with its "
                "processes, files and shell state.",
    input_schema=_SESSION_ID_ONLY,
    annotations=types.ToolAnnotations(destructive_hint=False),
)

RESUME_SESSION = types.Tool(
    name="chaser_resume_session",
    description="Resume a paused session (a running one is answered as it is).",
    input_schema=_SESSION_ID_ONLY,
    annotations=types.ToolAnnotations(destructive_hint=False, idempotent_hint=True),
)

FORK_SESSION = types.Tool(
    name="chaser_fork_session",
    description="Fork a running session into `count` new sessions, each a copy of its memory, processes "
                "and disk at this instant (the source keeps running): try several approaches from one "
                "state. Forks are ephemeral unless `workspace_names` (one per fork) are given.",
    input_schema={
        "type": "object",
        "properties": {"session_id": {"type": "string"},
                       "count": {"type": "integer", "minimum": 1, "default": 1},
                       "workspace_names": {"type": "array", "items": {"type": "string"}}},
        "required": ["session_id"],
        "additionalProperties": False,
    },
    annotations=types.ToolAnnotations(destructive_hint=False),
)

WORKSPACES_LIST = types.Tool(
    name="workspaces_list",
    description="List workspaces (persistent disks), with their active session if any.",
    input_schema={"type": "object", "properties": {}, "additionalProperties": False},
    annotations=types.ToolAnnotations(read_only_hint=True),
)

WORKSPACE_CREATE = types.Tool(
    name="workspace_create",
    description="Create a workspace (a persistent disk; sessions of it keep their files).",
    input_schema={
        "type": "object",
        "properties": {"name": {"type": "string", "description": "[A-Za-z0-9][A-Za-z0-9._-]*, at most 64"},
                       "image": {"type": "string"},
                       "network": NETWORK_SCHEMA | {"description": "Egress policy its sessions inherit."}},
        "additionalProperties": False,
    },
)
