"""The MCP tools: `terminal` plus session/workspace tools.

Every tool calls the Chaser REST API over HTTP (`chaser.client`) with the caller's own
API key, so the API's auth, scopes and account checks apply unchanged. Nothing here
imports the service layer.

`terminal` result text: the first line is a JSON object
`{"session_id", "workspace_id", "exit_code", "status", "output_truncated"}`, the rest is
the command output (or the file-operation results). `structuredContent` has the same
keys plus `output` (and `operations` for xml calls).
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
from mcp import types
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

from chaser.client import ChaserAPIError, ChaserClient, ChaserClientError

__all__ = [
    "API_KEY_SCOPE_KEY",
    "BASE_URL_SCOPE_KEY",
    "EditError",
    "FileOp",
    "ToolArgumentError",
    "XmlOpsError",
    "apply_edits",
    "build_server",
    "call_tool",
    "parse_xml_ops",
]

# The ASGI wrapper (chaser.mcp.asgi) puts the caller's key and the API base URL here.
API_KEY_SCOPE_KEY = "chaser.mcp.api_key"
BASE_URL_SCOPE_KEY = "chaser.mcp.base_url"
ACCOUNT_SCOPE_KEY = "chaser.mcp.account"

READ_FILE_MAX_CHARS = 1024 * 1024  # like exec output: at most ~1 MiB of text back per read
SERVER_NAME = "chaser"

ClientFactory = Callable[[], ChaserClient]


class ToolArgumentError(ValueError):
    """The tool's arguments are wrong (reported as a tool error, code `invalid_arguments`)."""


class XmlOpsError(ValueError):
    """The `xml` argument is not a valid list of file operations."""


class EditError(ValueError):
    """An apply_edit search text is not found exactly once."""


# --- xml file operations ----------------------------------------------------------------------

@dataclass
class FileOp:
    op: str  # read_file | write_file | apply_edit | list_files
    path: str
    content: str | None = None  # write_file
    edits: list[tuple[str, str]] = field(default_factory=list)  # apply_edit: (search, replace) pairs
    recursive: bool = False  # list_files


FILE_OPS = ("read_file", "write_file", "apply_edit", "list_files")
_TRUE = {"1", "true", "yes"}
# Bodies that hold arbitrary text: wrapped in CDATA by the lenient second parse.
_BODY_PATTERN = re.compile(
    r"(<(write_file|search|replace)\b[^>]*?(?<!/)>)(.*?)(</\2\s*>)", re.DOTALL)


def _cdata(text: str) -> str:
    if text.lstrip().startswith("<![CDATA[") and text.rstrip().endswith("]]>"):
        return text
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _parse_root(xml: str) -> ET.Element:
    wrapped = f"<ops>{xml}</ops>"
    try:
        return ET.fromstring(wrapped)
    except ET.ParseError as strict_error:
        # Agents rarely escape `<` and `&` in code: retry with the text bodies as CDATA.
        lenient = _BODY_PATTERN.sub(lambda m: m.group(1) + _cdata(m.group(3)) + m.group(4), wrapped)
        try:
            return ET.fromstring(lenient)
        except ET.ParseError:
            raise XmlOpsError(f"xml is not well-formed: {strict_error}") from None


def _body(text: str | None) -> str:
    """An element's text; one leading newline (right after the opening tag) is dropped."""
    text = text or ""
    if text.startswith("\n"):
        text = text[1:]
    return text


def parse_xml_ops(xml: str) -> list[FileOp]:
    """Parse one or more `<read_file/>`, `<write_file>`, `<apply_edit>`, `<list_files/>` elements."""
    if not isinstance(xml, str) or not xml.strip():
        raise XmlOpsError("xml is empty")
    root = _parse_root(xml)
    if root.text and root.text.strip():
        raise XmlOpsError("xml has text outside the operation elements")
    ops: list[FileOp] = []
    for element in root:
        if element.tail and element.tail.strip():
            raise XmlOpsError(f"xml has text after <{element.tag}>")
        if element.tag not in FILE_OPS:
            raise XmlOpsError(f"unknown operation <{element.tag}>; expected one of: {', '.join(FILE_OPS)}")
        path = element.get("path")
        if element.tag == "list_files":
            path = path or "."
        if not path:
            raise XmlOpsError(f"<{element.tag}> needs a path attribute")
        if element.tag in ("read_file", "list_files") and len(element):
            raise XmlOpsError(f"<{element.tag}> takes no child elements")
        if element.tag == "write_file":
            if len(element):
                raise XmlOpsError("<write_file> content must be text (escape '<' and '&', or use CDATA)")
            ops.append(FileOp("write_file", path, content=_body(element.text)))
        elif element.tag == "apply_edit":
            ops.append(FileOp("apply_edit", path, edits=_parse_edits(element, path)))
        else:
            ops.append(FileOp(element.tag, path, recursive=(element.get("recursive") or "").lower() in _TRUE))
    if not ops:
        raise XmlOpsError("xml holds no operations")
    return ops


def _parse_edits(element: ET.Element, path: str) -> list[tuple[str, str]]:
    if element.text and element.text.strip():
        raise XmlOpsError(f"<apply_edit path={path!r}> must contain only <search> and <replace> elements")
    children = list(element)
    edits: list[tuple[str, str]] = []
    for index in range(0, len(children), 2):
        pair = children[index:index + 2]
        if len(pair) != 2 or pair[0].tag != "search" or pair[1].tag != "replace":
            raise XmlOpsError(f"<apply_edit path={path!r}> needs <search>…</search><replace>…</replace> pairs")
        for child in pair:
            if len(child):
                raise XmlOpsError(f"<{child.tag}> content must be text (escape '<' and '&', or use CDATA)")
        search = _body(pair[0].text)
        if not search:
            raise XmlOpsError(f"<apply_edit path={path!r}>: <search> is empty")
        edits.append((search, _body(pair[1].text)))
    if not edits:
        raise XmlOpsError(f"<apply_edit path={path!r}> has no <search>/<replace> pair")
    return edits


def apply_edits(text: str, edits: list[tuple[str, str]]) -> str:
    """Apply (search, replace) pairs in order; each search must occur exactly once."""
    for number, (search, replace) in enumerate(edits, 1):
        count = text.count(search)
        if count != 1:
            label = f"search text #{number}" if len(edits) > 1 else "search text"
            raise EditError(f"{label} found {count} times; it must match exactly once")
        text = text.replace(search, replace, 1)
    return text


# --- tool definitions -------------------------------------------------------------------------

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

TOOLS: list[types.Tool] = [
    types.Tool(
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
    ),
    types.Tool(
        name="sessions_list",
        description="List sessions (active ones unless `status` is given: active, all, starting, running, "
                    "terminated, failed).",
        input_schema={"type": "object", "properties": {"status": {"type": "string"}}, "additionalProperties": False},
        annotations=types.ToolAnnotations(read_only_hint=True),
    ),
    types.Tool(
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
    ),
    types.Tool(
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
    ),
    types.Tool(
        name="workspaces_list",
        description="List workspaces (persistent disks), with their active session if any.",
        input_schema={"type": "object", "properties": {}, "additionalProperties": False},
        annotations=types.ToolAnnotations(read_only_hint=True),
    ),
    types.Tool(
        name="workspace_create",
        description="Create a workspace (a persistent disk; sessions of it keep their files).",
        input_schema={
            "type": "object",
            "properties": {"name": {"type": "string", "description": "[A-Za-z0-9][A-Za-z0-9._-]*, at most 64"},
                           "image": {"type": "string"},
                           "network": NETWORK_SCHEMA | {"description": "Egress policy its sessions inherit."}},
            "additionalProperties": False,
        },
    ),
]
TOOLS_BY_NAME = {tool.name: tool for tool in TOOLS}


# --- argument checking -------------------------------------------------------------------------

_JSON_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "boolean": (bool,), "integer": (int,)}


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
    unknown = sorted(set(policy) - set(NETWORK_SCHEMA["properties"]))
    if unknown:
        raise ToolArgumentError(f"{name}: unknown field(s): {', '.join(unknown)}; "
                                f"expected: {', '.join(NETWORK_SCHEMA['properties'])}")
    if policy.get("internet") is not None and not isinstance(policy["internet"], bool):
        raise ToolArgumentError(f"{name}.internet must be a boolean")
    for key in ("allow_out", "deny_out"):
        entries = policy.get(key)
        if entries is None:
            continue
        if not isinstance(entries, list) or not all(isinstance(entry, str) and entry for entry in entries):
            raise ToolArgumentError(f"{name}.{key} must be a list of non-empty strings")
        if len(entries) > NETWORK_MAX_ENTRIES:
            raise ToolArgumentError(f"{name}.{key}: at most {NETWORK_MAX_ENTRIES} entries")
        if any(len(entry) > NETWORK_MAX_ENTRY_CHARS for entry in entries):
            raise ToolArgumentError(f"{name}.{key}: entries are at most {NETWORK_MAX_ENTRY_CHARS} characters")
    return {key: item for key, item in policy.items() if item is not None}


@dataclass
class TerminalRequest:
    target: str  # workspace | session_id | ephemeral
    workspace: str | None
    session_id: str | None
    command: str | None
    ops: list[FileOp] | None
    timeout_ms: int | None
    cwd: str | None
    network: dict[str, Any] | None = None


def parse_terminal_arguments(arguments: Mapping[str, Any] | None) -> TerminalRequest:
    args = check_arguments(TOOLS_BY_NAME["terminal"], arguments)
    targets = [name for name in ("workspace", "session_id") if name in args]
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


# --- results ------------------------------------------------------------------------------------

def _text(text: str) -> list[types.ContentBlock]:
    return [types.TextContent(type="text", text=text)]


def error_result(code: str, message: str, **extra: Any) -> types.CallToolResult:
    error = {"code": code, "message": message, **{k: v for k, v in extra.items() if v is not None}}
    return types.CallToolResult(content=_text(f"error: {code}: {message}"),
                                structured_content={"error": error}, is_error=True)


def api_error_result(exc: ChaserClientError) -> types.CallToolResult:
    if isinstance(exc, ChaserAPIError):
        return error_result(exc.code, exc.message, status=exc.status, request_id=exc.request_id)
    return error_result(exc.code, exc.message)


def json_result(payload: Any, key: str | None = None) -> types.CallToolResult:
    structured = {key: payload} if key is not None else payload
    return types.CallToolResult(content=_text(json.dumps(payload, indent=2)), structured_content=structured)


def terminal_result(structured: dict[str, Any], body: str, *, is_error: bool = False) -> types.CallToolResult:
    header = {key: structured.get(key) for key in ("session_id", "workspace_id", "exit_code", "status",
                                                   "output_truncated")}
    text = json.dumps(header) + ("\n" + body if body else "")
    return types.CallToolResult(content=_text(text), structured_content=structured, is_error=is_error)


# --- the tools ----------------------------------------------------------------------------------

def _join(cwd: str | None, path: str) -> str:
    return posixpath.join(cwd, path) if cwd and not path.startswith("/") else path


def run_terminal(client: ChaserClient, request: TerminalRequest) -> types.CallToolResult:
    if request.command is not None:
        return _run_command(client, request)
    return _run_file_ops(client, request)


def _run_command(client: ChaserClient, request: TerminalRequest) -> types.CallToolResult:
    if request.target == "session_id":
        result = client.exec.in_session(request.session_id, request.command, cwd=request.cwd,
                                        timeout_ms=request.timeout_ms)
    elif request.target == "ephemeral":
        # Not `POST /v1/exec` with `ephemeral` (create, run, terminate): the session_id this
        # returns must stay usable for follow-up calls. It lives until session_terminate or its
        # idle timeout.
        session = client.sessions.create(ephemeral=True, network=request.network)
        try:
            result = client.exec.in_session(session["id"], request.command, cwd=request.cwd,
                                            timeout_ms=request.timeout_ms)
        except ChaserClientError:
            _terminate_quietly(client, session["id"])  # the caller never learns its id
            raise
    else:
        result = client.exec.run(request.command, workspace=request.workspace,
                                 cwd=request.cwd, timeout_ms=request.timeout_ms, network=request.network)
    output = result.get("output") or ""
    structured = {
        "session_id": result.get("session_id"),
        "workspace_id": result.get("workspace_id"),
        "exit_code": result.get("exit_code"),
        "status": result.get("status"),
        "output": output,
        "output_truncated": bool(result.get("output_truncated")),
        "ephemeral": request.target == "ephemeral",
    }
    return terminal_result(structured, output)


def _resolve_session(client: ChaserClient, request: TerminalRequest) -> tuple[str, str | None]:
    """(session_id, workspace_id) for file operations, starting the workspace's session if needed."""
    if request.target == "session_id":
        session = client.sessions.get(request.session_id)
        return session["id"], session.get("workspace_id")
    if request.target == "workspace":
        # `POST /v1/exec` owns "reuse the running session or start one"; `:` is the shell's no-op.
        result = client.exec.run(":", workspace=request.workspace, network=request.network)
        return result["session_id"], result.get("workspace_id")
    session = client.sessions.create(ephemeral=True, network=request.network)
    return session["id"], session.get("workspace_id")


def _terminate_quietly(client: ChaserClient, session_id: str) -> None:
    try:
        client.sessions.terminate(session_id, force=True)
    except ChaserClientError:
        pass  # the idle reaper ends it anyway


def _run_file_ops(client: ChaserClient, request: TerminalRequest) -> types.CallToolResult:
    session_id, workspace_id = _resolve_session(client, request)
    # An ephemeral session stays for follow-up calls, as with a command (see _run_command).
    results = [_file_op(client, session_id, op, request) for op in request.ops or []]
    failed = [result for result in results if not result["ok"]]
    body = "\n".join(_format_op(result) for result in results)
    structured = {
        "session_id": session_id,
        "workspace_id": workspace_id,
        "exit_code": 1 if failed else 0,
        "status": "failed" if failed else "completed",
        "output": body,
        "output_truncated": any(result.get("truncated") for result in results),
        "ephemeral": request.target == "ephemeral",
        "operations": results,
    }
    return terminal_result(structured, body, is_error=bool(failed))


def _file_op(client: ChaserClient, session_id: str, op: FileOp, request: TerminalRequest) -> dict[str, Any]:
    path = _join(request.cwd, op.path)
    result: dict[str, Any] = {"op": op.op, "path": path, "ok": True}
    try:
        if op.op == "read_file":
            data = client.files.download(session_id, path)
            text = data.decode("utf-8", errors="replace")
            result["size"] = len(data)
            if len(text) > READ_FILE_MAX_CHARS:
                text, result["truncated"] = text[:READ_FILE_MAX_CHARS], True
            result["content"] = text
        elif op.op == "write_file":
            uploaded = client.files.upload(session_id, path, (op.content or "").encode("utf-8"))
            result["size"] = uploaded.get("size", len((op.content or "").encode("utf-8")))
        elif op.op == "apply_edit":
            original = client.files.download(session_id, path)
            try:
                text = original.decode("utf-8")
            except UnicodeDecodeError:
                raise EditError("the file is not UTF-8 text") from None
            updated = apply_edits(text, op.edits).encode("utf-8")
            client.files.upload(session_id, path, updated)
            result["size"] = len(updated)
            result["edits"] = len(op.edits)
        else:  # list_files: there is no listing endpoint; `ls` through the exec endpoint
            flags = "-laR" if op.recursive else "-la"
            listed = client.exec.in_session(session_id, f"ls {flags} -- {shlex.quote(path)}",
                                            timeout_ms=request.timeout_ms)
            listing = listed.get("output") or ""
            if listed.get("exit_code") != 0:
                raise _OpFailed("list_failed", listing.strip() or f"ls exited with {listed.get('exit_code')}")
            result["listing"] = listing
            result["truncated"] = bool(listed.get("output_truncated"))
    except EditError as exc:
        result.update(ok=False, error={"code": "edit_failed", "message": str(exc)})
    except _OpFailed as exc:
        result.update(ok=False, error={"code": exc.code, "message": exc.message})
    except ChaserClientError as exc:
        result.update(ok=False, error={"code": exc.code, "message": exc.message})
    return result


class _OpFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _format_op(result: dict[str, Any]) -> str:
    attrs = f'path="{result["path"]}"'
    if not result["ok"]:
        error = result["error"]
        return f'<{result["op"]} {attrs} status="error" code="{error["code"]}">{error["message"]}</{result["op"]}>'
    if "size" in result:
        attrs += f' size="{result["size"]}"'
    if result.get("truncated"):
        attrs += ' truncated="true"'
    if result["op"] == "read_file":
        return f'<read_file {attrs} status="ok">\n{result["content"]}\n</read_file>'
    if result["op"] == "list_files":
        return f'<list_files {attrs} status="ok">\n{result["listing"].rstrip()}\n</list_files>'
    if result["op"] == "apply_edit":
        attrs += f' edits="{result["edits"]}"'
    return f'<{result["op"]} {attrs} status="ok"/>'


def call_tool(client_factory: ClientFactory, name: str, arguments: Mapping[str, Any] | None) -> types.CallToolResult:
    """Run one tool (blocking: it makes HTTP calls). Argument and API errors become `isError` results."""
    tool = TOOLS_BY_NAME.get(name)
    if tool is None:
        raise MCPError(types.INVALID_PARAMS, f"unknown tool {name!r}; tools: {', '.join(TOOLS_BY_NAME)}")
    try:
        if name == "terminal":
            request = parse_terminal_arguments(arguments)
        else:
            args = check_arguments(tool, arguments)
    except ToolArgumentError as exc:
        return error_result("invalid_arguments", str(exc))
    try:
        with client_factory() as client:
            if name == "terminal":
                return run_terminal(client, request)
            if name == "sessions_list":
                params = {"status": args["status"]} if "status" in args else None
                return json_result(client.request_json("GET", "/v1/sessions", params=params))
            if name == "session_create":
                return json_result(client.sessions.create(**args))
            if name == "session_terminate":
                return json_result(client.sessions.terminate(args["session_id"], force=bool(args.get("force"))))
            if name == "workspaces_list":
                return json_result(client.workspaces.list(), key="workspaces")
            return json_result(client.workspaces.create(**args))  # workspace_create
    except ChaserClientError as exc:
        return api_error_result(exc)


# --- the MCP server -----------------------------------------------------------------------------

def _client_factory(request: Any) -> ClientFactory:
    scope = getattr(request, "scope", None) or {}
    api_key = scope.get(API_KEY_SCOPE_KEY)
    base_url = scope.get(BASE_URL_SCOPE_KEY)
    if not api_key or not base_url:
        # Never let ChaserClient fall back to env/config credentials (the server's own key).
        raise MCPError(types.INTERNAL_ERROR, "the MCP endpoint was reached without the Chaser ASGI wrapper")
    account = scope.get(ACCOUNT_SCOPE_KEY)
    headers = {"X-Chaser-Account": account} if account else None
    return lambda: ChaserClient(base_url=base_url, api_key=api_key, headers=headers)


def build_server(client_factory: ClientFactory | None = None) -> Server[Any]:
    """The low-level MCP server: tools/list and tools/call over the Chaser REST API.

    Without `client_factory` each call's client comes from the HTTP request (the caller's key,
    put in the ASGI scope by chaser.mcp.asgi); with it (the stdio server, chaser.mcp.stdio)
    every call uses that factory. The tools are the same either way."""

    async def list_tools(_ctx: Any, _params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=TOOLS)

    async def handle_call(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        factory = client_factory or _client_factory(ctx.request)
        # The client is synchronous and calls back into this very server: keep the event loop free.
        return await anyio.to_thread.run_sync(call_tool, factory, params.name, params.arguments,
                                              abandon_on_cancel=True)

    def input_schema(name: str) -> Mapping[str, Any] | None:
        tool = TOOLS_BY_NAME.get(name)
        return tool.input_schema if tool else None

    return Server(
        SERVER_NAME,
        version="0.1.0",
        title="Chaser",
        instructions="Sandboxes in microVMs. Use the `terminal` tool with a `workspace` (files persist) or "
                     "`ephemeral: true` (a scratch session); reuse the returned session_id in follow-up "
                     "calls, and end a scratch session with `session_terminate` when done.",
        get_tool_input_schema=input_schema,
        on_list_tools=list_tools,
        on_call_tool=handle_call,
    )
