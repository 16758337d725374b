"""Shared plumbing for the API commands: client construction, error reporting,
JSON/human output, the current session. Imports stay light (typer only); the
client and Rich are imported when a command runs."""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from chaser.client import ChaserClient

F = TypeVar("F", bound=Callable[..., Any])

# Set by the root callback from --api-url / --api-key (which also read the env).
GLOBAL_OPTIONS: dict[str, str | None] = {"api_url": None, "api_key": None, "ca_bundle": None}

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

    return ChaserClient(GLOBAL_OPTIONS["api_url"], GLOBAL_OPTIONS["api_key"], ca_bundle=GLOBAL_OPTIONS.get("ca_bundle"))


def resolve_session(session: str | None) -> str:
    if session:
        return expand_session_id(session)
    from chaser.client import get_current_session

    current = get_current_session()
    if not current:
        fail("no_session", "no current session: run `chaser sandbox` or pass --session / an ID")
    return current


# Session ids are long ("ses_" + 24 hex): tables show "ses_" + 12 hex, as docker shows 12 of 64,
# and every command taking a session id accepts such a unique prefix (expand_session_id).
_FULL_SESSION_ID = re.compile(r"^ses_[0-9a-f]{24}$")
SHORT_SESSION_ID_CHARS = 16


def short_id(value: str) -> str:
    return value[:SHORT_SESSION_ID_CHARS] if _FULL_SESSION_ID.match(value) else value


def expand_session_id(value: str) -> str:
    """A unique prefix of a session id (`ses_…`, as tables show it) → the full id. Anything else,
    or a prefix no session has, is returned as given (the server then says what is wrong)."""
    if not value.startswith("ses_") or len(value) <= len("ses_") or _FULL_SESSION_ID.match(value):
        return value
    with make_client() as client:
        sessions = client.sessions.list_page(status="all").get("sessions", [])
    matches = sorted({str(s.get("id")) for s in sessions if str(s.get("id", "")).startswith(value)})
    if len(matches) > 1:
        fail("ambiguous_id", f"{value} is the start of {len(matches)} session ids "
                             f"({', '.join(matches[:3])}{', …' if len(matches) > 3 else ''}): give more of it")
    return matches[0] if matches else value


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    sys.stdout.flush()


WIDE_OPTION_HELP = "Show every column, full ids and full timestamps; nothing is truncated."
DEFAULT_COLUMNS = 80
_WIDE_WIDTH = 100_000


def output_width() -> int | None:
    """The width to lay out for: the terminal's (Rich asks it; COLUMNS overrides) when stdout is
    one; else COLUMNS, or 80 (Rich would otherwise use the size of whatever terminal stdin or
    stderr is)."""
    if sys.stdout.isatty():
        return None
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else DEFAULT_COLUMNS


def console(*, width: int | None = None) -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True, width=width or output_width())


# Columns of free text (names, images, commands): the ones cut to fit, widest first.
FLEX_KEYS = frozenset({"name", "image", "command", "access", "scopes", "ref"})


def print_table(rows: Iterable[dict[str, Any]], columns: Sequence[tuple[str, str]], *, empty: str,
                wide: bool = False, wide_only: Collection[str] = (), flex: Collection[str] = FLEX_KEYS) -> None:
    """A Rich table of `columns` ((key, header) pairs) over `rows`, one line per row.

    Fits the output width as `docker ps` does: session ids shortened (short_id; in full where
    two rows' prefixes are the same), timestamps as ages ("5m ago"), the `wide_only` columns
    left out, and only the `flex` columns cut (with an ellipsis, widest first): ids, statuses,
    times stay whole (unless the width is too small even for those). `wide`: every column and
    full values, whatever the width."""
    from rich.table import Table
    from rich.text import Text

    rows = list(rows)
    out = console(width=_WIDE_WIDTH if wide else None)
    if not rows:
        out.print(empty, markup=False)
        return
    shown = [(key, header) for key, header in columns if wide or key not in wide_only]
    table = Table(box=None, pad_edge=False, header_style="bold")
    for key, header in shown:
        # Rich shrinks the columns that may wrap first; the cells never wrap, they are cut.
        table.add_column(Text(header, no_wrap=True, overflow="ellipsis"), no_wrap=key not in flex,
                         overflow="ellipsis")
    now = datetime.now(UTC)
    # Ids shown by the same prefix: those are shown in full.
    by_prefix: dict[str, set[str]] = {}
    for row in rows:
        for key, _ in shown:
            value = row.get(key)
            if _is_id_key(key) and isinstance(value, str) and short_id(value) != value:
                by_prefix.setdefault(short_id(value), set()).add(value)
    for row in rows:
        cells = []
        for key, _ in shown:
            value = row.get(key)
            text = _table_value(value, id_column=_is_id_key(key), wide=wide, now=now)
            if _is_id_key(key) and len(by_prefix.get(text, ())) > 1:
                text = str(value)
            cells.append(Text(text, no_wrap=True, overflow="ellipsis"))
        table.add_row(*cells)
    out.print(table, markup=False)


def _is_id_key(key: str) -> bool:
    return key == "id" or key.endswith("_id")


_ISO_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]00:00)?$")


def _table_value(value: Any, *, id_column: bool = False, wide: bool = True, now: datetime | None = None) -> str:
    """Like format_value, with UTC timestamps to the second (wide) or as an age, and short session ids."""
    if isinstance(value, str):
        match = _ISO_TIME.match(value)
        if match:
            if not wide:
                when = datetime.strptime(f"{match.group(1)} {match.group(2)}", "%Y-%m-%d %H:%M:%S")
                return age(when.replace(tzinfo=UTC), now)
            return f"{match.group(1)} {match.group(2)}"
        if id_column and not wide:
            return short_id(value)
    return format_value(value)


def age(when: datetime, now: datetime | None = None) -> str:
    """`45s ago`, `12m ago`, `5h ago`, `3d ago` (`in 5h` for the future), as `docker ps` and kubectl."""
    seconds = int(((now or datetime.now(UTC)) - when).total_seconds())
    future, seconds = seconds < 0, abs(seconds)
    if seconds < 60:
        text = f"{seconds}s"
    elif seconds < 3600:
        text = f"{seconds // 60}m"
    elif seconds < 48 * 3600:
        text = f"{seconds // 3600}h"
    else:
        text = f"{seconds // 86400}d"
    return f"in {text}" if future else f"{text} ago"


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
