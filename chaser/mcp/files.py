"""The `terminal` tool's `xml` file operations: parsing, running against a session, reporting.

`<read_file/>`, `<write_file>`, `<apply_edit>` and `<list_files/>` elements become `FileOp`s,
parsed with `defusedxml`: a DTD, an entity declaration or an external reference is refused
(`XmlOpsError`, the tool's `invalid_arguments`), never expanded or fetched;
each runs through the REST API (`chaser.client`) and reports a result dict, rendered back
as XML-ish text for the agent.
"""

from __future__ import annotations

import posixpath
import re
import shlex
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as _defused_fromstring

from chaser.client import ChaserClient, ChaserClientError

__all__ = [
    "FILE_OPS",
    "READ_FILE_MAX_CHARS",
    "EditError",
    "FileOp",
    "XmlOpsError",
    "apply_edits",
    "format_file_op_result",
    "parse_xml_ops",
    "run_file_op",
]

FILE_OPS = ("read_file", "write_file", "apply_edit", "list_files")
READ_FILE_MAX_CHARS = 1024 * 1024  # like exec output: at most ~1 MiB of text back per read
_TRUE = {"1", "true", "yes"}
# Bodies that hold arbitrary text: wrapped in CDATA by the lenient second parse.
_BODY_PATTERN = re.compile(
    r"(<(write_file|search|replace)\b[^>]*?(?<!/)>)(.*?)(</\2\s*>)", re.DOTALL)


class XmlOpsError(ValueError):
    """The `xml` argument is not a valid list of file operations."""


class EditError(ValueError):
    """An apply_edit search text is not found exactly once."""


@dataclass
class FileOp:
    op: str  # read_file | write_file | apply_edit | list_files
    path: str
    content: str | None = None  # write_file
    edits: list[tuple[str, str]] = field(default_factory=list)  # apply_edit: (search, replace) pairs
    recursive: bool = False  # list_files


# --- parsing ------------------------------------------------------------------------------------

def _cdata(text: str) -> str:
    if text.lstrip().startswith("<![CDATA[") and text.rstrip().endswith("]]>"):
        return text
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


_DEFUSED = "xml may not hold a DTD, entity declarations or external references"


def _fromstring(text: str) -> ET.Element:
    try:
        root: ET.Element = _defused_fromstring(text, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException:
        raise XmlOpsError(_DEFUSED) from None
    except UnicodeEncodeError:  # a lone surrogate ("\\ud800" in the JSON arguments)
        raise XmlOpsError("xml is not valid UTF-8") from None
    return root


def _parse_root(xml: str) -> ET.Element:
    wrapped = f"<ops>{xml}</ops>"
    try:
        return _fromstring(wrapped)
    except ET.ParseError as strict_error:
        # Agents rarely escape `<` and `&` in code: retry with the text bodies as CDATA.
        lenient = _BODY_PATTERN.sub(lambda m: m.group(1) + _cdata(m.group(3)) + m.group(4), wrapped)
        try:
            return _fromstring(lenient)
        except ET.ParseError:
            raise XmlOpsError(f"xml is not well-formed: {strict_error}") from None


def _body(text: str | None) -> str:
    """An element's text; one leading newline (right after the opening tag) is dropped."""
    return (text or "").removeprefix("\n")


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


# --- running ------------------------------------------------------------------------------------

class _OpFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _join(cwd: str | None, path: str) -> str:
    return posixpath.join(cwd, path) if cwd and not path.startswith("/") else path


def run_file_op(client: ChaserClient, session_id: str, op: FileOp, *,
                cwd: str | None, timeout_ms: int | None) -> dict[str, Any]:
    """Run one operation in the session; failures are reported in the result (`ok: false`), not raised."""
    path = _join(cwd, op.path)
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
                                            timeout_ms=timeout_ms)
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


def format_file_op_result(result: dict[str, Any]) -> str:
    """One result of run_file_op as the XML-ish text the agent reads."""
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
