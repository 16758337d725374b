"""Tool argument checks: strict against the declared input schema, before any API call.

A wrong argument is the caller's to fix, so it becomes a tool error result
(`invalid_arguments`), never a protocol error. What a value may *mean* (an image name, a
network entry) is the API's to check: it answers 400 through the same tool call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mcp import types

from chaser.mcp import schemas
from chaser.mcp.files import FileOp, XmlOpsError, parse_xml_ops

__all__ = [
    "TerminalRequest",
    "ToolArgumentError",
    "check_arguments",
    "check_network",
    "parse_terminal_arguments",
]

_JSON_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "boolean": (bool,), "integer": (int,)}


class ToolArgumentError(ValueError):
    """The tool's arguments are wrong (reported as a tool error, code `invalid_arguments`)."""


def check_arguments(tool: types.Tool, arguments: Mapping[str, Any] | None) -> dict[str, Any]:
    """Strict check against the (flat) input schema: known keys, right types, required present."""
    args = dict(arguments or {})
    properties: dict[str, Any] = tool.input_schema.get("properties", {})
    unknown = sorted(set(args) - set(properties))
    if unknown:
        raise ToolArgumentError(f"unknown argument(s): {', '.join(unknown)}; "
                                f"expected: {', '.join(properties) or 'none'}")
    for name in tool.input_schema.get("required", []):
        if args.get(name) is None:
            raise ToolArgumentError(f"{name} is required")
    for name, value in list(args.items()):
        if value is None:
            del args[name]
            continue
        kind = properties[name].get("type")
        expected = _JSON_TYPES.get(kind)
        if expected and (not isinstance(value, expected) or (kind == "integer" and isinstance(value, bool))):
            raise ToolArgumentError(f"{name} must be a {kind}")
        if kind == "integer" and value < properties[name].get("minimum", value):
            raise ToolArgumentError(f"{name} must be >= {properties[name]['minimum']}")
        if kind == "string" and not value:
            raise ToolArgumentError(f"{name} must not be empty")
        if kind == "object":
            args[name] = check_network(name, value)
    return args


def check_network(name: str, value: Any) -> dict[str, Any]:
    """The shape of an egress policy (what an entry may be is the API's to check: 400 invalid_request)."""
    if not isinstance(value, Mapping):
        raise ToolArgumentError(f"{name} must be an object with internet, allow_out, deny_out")
    policy = dict(value)
    fields = schemas.NETWORK_SCHEMA["properties"]
    unknown = sorted(set(policy) - set(fields))
    if unknown:
        raise ToolArgumentError(f"{name}: unknown field(s): {', '.join(unknown)}; expected: {', '.join(fields)}")
    if policy.get("internet") is not None and not isinstance(policy["internet"], bool):
        raise ToolArgumentError(f"{name}.internet must be a boolean")
    for key in ("allow_out", "deny_out"):
        entries = policy.get(key)
        if entries is None:
            continue
        if not isinstance(entries, list) or not all(isinstance(entry, str) and entry for entry in entries):
            raise ToolArgumentError(f"{name}.{key} must be a list of non-empty strings")
        if len(entries) > schemas.NETWORK_MAX_ENTRIES:
            raise ToolArgumentError(f"{name}.{key}: at most {schemas.NETWORK_MAX_ENTRIES} entries")
        if any(len(entry) > schemas.NETWORK_MAX_ENTRY_CHARS for entry in entries):
            raise ToolArgumentError(
                f"{name}.{key}: entries are at most {schemas.NETWORK_MAX_ENTRY_CHARS} characters")
    return {key: item for key, item in policy.items() if item is not None}


@dataclass
class TerminalRequest:
    """Checked `terminal` arguments: where to run (one target) and what (a command or file ops)."""

    target: str  # workspace | session_id | ephemeral
    workspace: str | None  # set for the `workspace` target
    session_id: str | None  # set for the `session_id` target
    command: str | None  # exactly one of command and ops is set
    ops: list[FileOp] | None
    timeout_ms: int | None
    cwd: str | None
    network: dict[str, Any] | None = None


def parse_terminal_arguments(arguments: Mapping[str, Any] | None) -> TerminalRequest:
    args = check_arguments(schemas.TERMINAL, arguments)
    targets: list[str] = [name for name in ("workspace", "session_id") if name in args]
    if args.get("ephemeral"):
        targets.append("ephemeral")
    if not targets:
        raise ToolArgumentError("name where to run: give `workspace` (name or id), `session_id`, "
                                "or `ephemeral: true`")
    if len(targets) > 1:
        raise ToolArgumentError(f"give only one of workspace, session_id, ephemeral (got {', '.join(targets)})")
    if "network" in args and targets[0] == "session_id":
        raise ToolArgumentError("network applies to the session a workspace or ephemeral call starts, "
                                "not to an existing session_id")
    command, cmd = args.get("command"), args.get("cmd")
    if command is not None and cmd is not None and command != cmd:
        raise ToolArgumentError("give `command` or `cmd`, not both")
    command = command if command is not None else cmd
    xml = args.get("xml")
    if (command is None) == (xml is None):
        raise ToolArgumentError("give either `command` (or `cmd`) or `xml`" if command is None
                                else "give `command` or `xml`, not both")
    try:
        ops = parse_xml_ops(xml) if xml is not None else None
    except XmlOpsError as exc:
        raise ToolArgumentError(str(exc)) from None
    return TerminalRequest(target=targets[0], workspace=args.get("workspace"), session_id=args.get("session_id"),
                           command=command, ops=ops, timeout_ms=args.get("timeout_ms"), cwd=args.get("cwd"),
                           network=args.get("network"))
