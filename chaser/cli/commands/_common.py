"""Shared plumbing for the API commands: client construction, error reporting,
JSON/human output, the current session. Imports stay light (typer only); the
client and Rich are imported when a command runs."""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from chaser.client import ChaserClient

F = TypeVar("F", bound=Callable[..., Any])

# Set by the root callback from --api-url / --api-key (which also read the env).
GLOBAL_OPTIONS: dict[str, str | None] = {"api_url": None, "api_key": None}

JSON_OPTION_HELP = "Print the raw JSON response."
SESSION_OPTION_HELP = "Session id (default: the current session)."


def fail(code: str, message: str, *, exit_code: int = 1) -> NoReturn:
    sys.stdout.flush()
    print(f"error: {code}: {message}", file=sys.stderr)
    raise typer.Exit(exit_code)


def api_command(func: F) -> F:
    """Turn client errors into `error: <code>: <message>` on stderr and exit 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from chaser.client import ChaserAPIError, ChaserClientError

        try:
            return func(*args, **kwargs)
        except ChaserAPIError as exc:
            fail(exc.code, exc.message)
        except ChaserClientError as exc:
            fail(exc.code, exc.message)
        except BrokenPipeError:  # `chaser … | head`
            raise typer.Exit(0) from None
        except KeyboardInterrupt:  # e.g. leaving `commands logs -f`
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def make_client() -> ChaserClient:
    from chaser.client import ChaserClient

    return ChaserClient(GLOBAL_OPTIONS["api_url"], GLOBAL_OPTIONS["api_key"])


def resolve_session(session: str | None) -> str:
    if session:
        return session
    from chaser.client import get_current_session

    current = get_current_session()
    if not current:
        fail("no_session", "no current session: run `chaser sandbox` or pass --session / an ID")
    return current


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    sys.stdout.flush()


def console() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def print_table(rows: Iterable[dict[str, Any]], columns: Sequence[tuple[str, str]], *, empty: str) -> None:
    """A Rich table of `columns` ((key, header) pairs) over `rows`."""
    from rich.table import Table
    from rich.text import Text

    rows = list(rows)
    out = console()
    if not rows:
        out.print(empty, markup=False)
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for key, header in columns:
        # Ids are copied and pasted: never fold them.
        table.add_column(header, overflow="fold", no_wrap=key == "id" or key.endswith("_id"))
    for row in rows:
        table.add_row(*(Text(_table_value(row.get(key))) for key, _ in columns))
    out.print(table, markup=False)


_ISO_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]00:00)?$")


def _table_value(value: Any) -> str:
    """Like format_value, with UTC timestamps shortened to the second for tables."""
    if isinstance(value, str):
        match = _ISO_TIME.match(value)
        if match:
            return f"{match.group(1)} {match.group(2)}"
    return format_value(value)


def print_fields(payload: dict[str, Any], keys: Sequence[str] | None = None) -> None:
    """`key: value` lines (nested dicts flattened with dots)."""
    from rich.markup import escape

    out = console()
    for key, value in flatten(payload).items():
        if keys is None or key.split(".")[0] in keys:
            out.print(f"[bold]{escape(key)}[/bold]: {escape(format_value(value))}")


def flatten(payload: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in payload.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(item) for item in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def parse_env(pairs: Sequence[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail("invalid_argument", f"--env expects KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def split_multi(values: Sequence[str] | None) -> list[str]:
    """Repeated options that may also be comma-separated: `--ids a,b --ids c`."""
    items: list[str] = []
    for value in values or []:
        items.extend(part.strip() for part in value.split(",") if part.strip())
    return items


INTERNET_OPTION_HELP = "Allow (or with --no-internet forbid) connections to public destinations."
ALLOW_OUT_HELP = "Only these destinations: IP, CIDR, example.com, *.example.com (repeatable or comma-separated)."
DENY_OUT_HELP = "Never these destinations; wins over --allow-out (repeatable or comma-separated)."


def network_policy(internet: bool | None, allow_out: Sequence[str] | None,
                   deny_out: Sequence[str] | None) -> dict[str, Any] | None:
    """The `network` request object from --internet/--no-internet, --allow-out, --deny-out; None if none given."""
    policy: dict[str, Any] = {}
    if internet is not None:
        policy["internet"] = internet
    if allow_out:
        policy["allow_out"] = split_multi(allow_out)
    if deny_out:
        policy["deny_out"] = split_multi(deny_out)
    return policy or None
