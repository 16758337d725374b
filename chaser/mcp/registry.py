"""The tool table: each declaration (`chaser.mcp.schemas`) paired with its argument check and
its body (`chaser.mcp.tools`), and `call_tool`, which runs one by name.

Adding a tool is one declaration, one body and one `RegisteredTool` line here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

from mcp import types
from mcp.shared.exceptions import MCPError

from chaser.client import ChaserClient, ChaserClientError
from chaser.mcp import schemas, tools
from chaser.mcp.arguments import ToolArgumentError, check_arguments, parse_terminal_arguments
from chaser.mcp.results import api_error_result, error_result

__all__ = ["TOOLS", "TOOLS_BY_NAME", "ClientFactory", "RegisteredTool", "call_tool", "tool_declarations"]

ClientFactory = Callable[[], ChaserClient]
ArgumentsT = TypeVar("ArgumentsT")


@dataclass(frozen=True)
class RegisteredTool(Generic[ArgumentsT]):
    """One tool: what tools/list shows, how its arguments are checked, and what it runs."""

    declaration: types.Tool
    check_arguments: Callable[[Mapping[str, Any] | None], ArgumentsT]
    run: Callable[[ChaserClient, ArgumentsT], types.CallToolResult]

    @property
    def name(self) -> str:
        return self.declaration.name

    def call(self, client_factory: ClientFactory, arguments: Mapping[str, Any] | None) -> types.CallToolResult:
        # Arguments are checked before a client exists: a wrong call makes no API request.
        try:
            checked = self.check_arguments(arguments)
        except ToolArgumentError as exc:
            return error_result("invalid_arguments", str(exc))
        try:
            with client_factory() as client:
                return self.run(client, checked)
        except ChaserClientError as exc:
            return api_error_result(exc)


def _schema_checked(declaration: types.Tool,
                    run: Callable[[ChaserClient, dict[str, Any]], types.CallToolResult],
                    ) -> RegisteredTool[dict[str, Any]]:
    """A tool whose arguments need no more than the check against its input schema."""
    return RegisteredTool(declaration, partial(check_arguments, declaration), run)


# In tools/list order.
TOOLS: tuple[RegisteredTool[Any], ...] = (
    RegisteredTool(schemas.TERMINAL, parse_terminal_arguments, tools.run_terminal),
    _schema_checked(schemas.SESSIONS_LIST, tools.list_sessions),
    _schema_checked(schemas.SESSION_CREATE, tools.create_session),
    _schema_checked(schemas.SESSION_TERMINATE, tools.terminate_session),
    _schema_checked(schemas.PAUSE_SESSION, tools.pause_session),
    _schema_checked(schemas.RESUME_SESSION, tools.resume_session),
    _schema_checked(schemas.FORK_SESSION, tools.fork_session),
    _schema_checked(schemas.WORKSPACES_LIST, tools.list_workspaces),
    _schema_checked(schemas.WORKSPACE_CREATE, tools.create_workspace),
)
TOOLS_BY_NAME: dict[str, RegisteredTool[Any]] = {tool.name: tool for tool in TOOLS}


def tool_declarations() -> list[types.Tool]:
    return [tool.declaration for tool in TOOLS]


def call_tool(client_factory: ClientFactory, name: str, arguments: Mapping[str, Any] | None) -> types.CallToolResult:
    """Run one tool (blocking: it makes HTTP calls). Argument and API errors become `isError` results."""
    tool = TOOLS_BY_NAME.get(name)
    if tool is None:
        raise MCPError(types.INVALID_PARAMS, f"unknown tool {name!r}; tools: {', '.join(TOOLS_BY_NAME)}")
    return tool.call(client_factory, arguments)
