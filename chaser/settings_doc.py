"""The settings table of docs/operations.md, rendered from `Settings.model_fields`.

    python -m chaser.settings_doc                            # print the table
    python -m chaser.settings_doc --write docs/operations.md  # replace it between the markers
    python -m chaser.settings_doc --check docs/operations.md  # exit 1 when it is out of date

The table sits between `<!-- settings:start -->` and `<!-- settings:end -->`;
tests/unit/test_settings_doc.py fails when it differs from what this renders.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Union, get_args, get_origin

from pydantic import AliasChoices
from pydantic.fields import FieldInfo

from chaser.config import Settings

START_MARKER = "<!-- settings:start -->"
END_MARKER = "<!-- settings:end -->"
COMMAND = "python -m chaser.settings_doc --write docs/operations.md"

# Unit of a setting, from the suffix of its name.
UNITS: tuple[tuple[str, str], ...] = (("_bytes", "bytes"), ("_mib", "MiB"), ("_s", "seconds"))
BINARY_UNITS: tuple[tuple[int, str], ...] = ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB"))
TYPE_NAMES: dict[object, str] = {bool: "bool", int: "int", float: "float", str: "string", Path: "path"}


def env_names(name: str, field: FieldInfo) -> list[str]:
    """The environment variables that set the field: `CHASER_<NAME>`, or its aliases
    that carry the prefix (an alias replaces the prefixed name; matching ignores case)."""
    prefix = str(Settings.model_config.get("env_prefix") or "")
    alias = field.validation_alias
    if isinstance(alias, str):
        return [alias.upper()]
    if isinstance(alias, AliasChoices):
        choices = [choice for choice in alias.choices if isinstance(choice, str)]
        return [choice.upper() for choice in choices if choice.upper().startswith(prefix.upper())]
    return [f"{prefix}{name}".upper()]


def type_text(annotation: object) -> str:
    """`int`, `path (optional)`, `JSON list of strings`, `` `a`, `b` or `c` ``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        choices = [f"`{choice}`" for choice in args]
        return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"
    if origin is Union or origin is types.UnionType:
        rest = [arg for arg in args if arg is not type(None)]
        text = " or ".join(type_text(arg) for arg in rest)
        return f"{text} (optional)" if len(rest) < len(args) else text
    if origin is list:
        return f"JSON list of {type_text(args[0])}s"
    if origin is dict:
        return f"JSON object of {type_text(args[1])}s"
    return TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def unit_of(name: str) -> str | None:
    for suffix, unit in UNITS:
        if name.endswith(suffix):
            return unit
    return None


def path_text(path: Path) -> str:
    """A default under the home directory as `~/…`: the docs must not show this machine's home."""
    try:
        return f"~/{path.relative_to(Path.home())}"
    except ValueError:
        return str(path)


def default_text(name: str, field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Path):
        return f"`{path_text(value)}`"
    if isinstance(value, int) and unit_of(name) == "bytes":
        for size, unit in BINARY_UNITS:
            if value >= size and value % size == 0:
                return f"`{value}` ({value // size} {unit})"
        return f"`{value}`"
    if isinstance(value, list | dict):
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def settings_table() -> str:
    """The Markdown table of every setting: variable, type, default, description."""
    lines = ["| variable | type | default | description |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        first, *others = [f"`{env}`" for env in env_names(name, field)]
        variable = f"{first} (or {', '.join(others)})" if others else first
        unit = unit_of(name)
        kind = type_text(field.annotation) + (f", {unit}" if unit else "")
        lines.append(
            f"| {cell(variable)} | {cell(kind)} | {cell(default_text(name, field))} | {cell(field.description or '')} |"
        )
    return "\n".join(lines) + "\n"


def _bounds(text: str) -> tuple[int, int]:
    start = text.find(START_MARKER)
    end = text.find(END_MARKER, start + len(START_MARKER)) if start >= 0 else -1
    if start < 0 or end < 0:
        raise ValueError(f"no {START_MARKER} … {END_MARKER} region")
    return start + len(START_MARKER), end


def region(text: str) -> str:
    """What stands between the markers, without the newline after the start marker."""
    start, end = _bounds(text)
    return text[start:end].removeprefix("\n")


def replace_region(text: str, table: str) -> str:
    start, end = _bounds(text)
    return f"{text[:start]}\n{table}{text[end:]}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaser.settings_doc", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", metavar="FILE", type=Path, help="replace the table between the markers in FILE")
    action.add_argument("--check", metavar="FILE", type=Path, help="exit 1 when FILE's table is out of date")
    args = parser.parse_args(argv)
    table = settings_table()
    if args.write is not None:
        text = args.write.read_text()
        updated = replace_region(text, table)
        if updated != text:
            args.write.write_text(updated)
        return 0
    if args.check is not None:
        if region(args.check.read_text()) != table:
            print(f"{args.check}: the settings table is out of date; run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
