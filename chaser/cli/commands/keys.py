"""`chaser keys …`: API keys."""

from __future__ import annotations

import sys

import typer

from chaser.cli.commands._common import (
    JSON_OPTION_HELP,
    WIDE_OPTION_HELP,
    api_command,
    console,
    make_client,
    print_json,
    print_table,
)

app = typer.Typer(help="API keys: list, create, revoke.", no_args_is_help=True)

JsonOption = typer.Option(False, "--json", help=JSON_OPTION_HELP)


@app.command("list")
@api_command
def list_keys(as_json: bool = JsonOption,
              wide: bool = typer.Option(False, "--wide", help=WIDE_OPTION_HELP)) -> None:
    """List API keys (prefixes only; keys are shown once, at creation)."""
    with make_client() as client:
        page = client.keys.list_page()
    if as_json:
        print_json(page)
        return
    # 80 columns: one ACCESS column ("full", or the scopes); --wide: SCOPES and FULL as the API has them.
    access = [("scopes", "SCOPES"), ("full_access", "FULL")] if wide else [("access", "ACCESS")]
    print_table(
        [{**key, "access": "full" if key.get("full_access") else key.get("scopes")} for key in page.get("keys", [])],
        [("id", "ID"), ("key_prefix", "PREFIX"), ("name", "NAME"), *access,
         ("created_at", "CREATED"), ("last_used_at", "LAST USED"), ("revoked", "REVOKED")],
        empty="no keys", wide=wide, wide_only={"created_at"},
    )


@app.command("create")
@api_command
def create_key(
    name: str | None = typer.Option(None, "--name", help="A label for the key."),
    scopes: list[str] | None = typer.Option(None, "--scope", help="Scope (repeatable); none = full access."),
    e2b: bool = typer.Option(False, "--e2b", help="An `e2b_…` key, for E2B_API_KEY (E2B's SDKs; docs/e2b.md)."),
    as_json: bool = JsonOption,
) -> None:
    """Create an API key and print it (it is not shown again)."""
    with make_client() as client:
        created = client.keys.create(name=name, scopes=scopes or None, format="e2b" if e2b else None)
    if as_json:
        print_json(created)
        return
    print(created.get("key", ""))
    access = "full access" if created.get("full_access") else ", ".join(created.get("scopes") or []) or "no scopes"
    print(f"key {created.get('id')} ({access}); store it now, it is not shown again", file=sys.stderr)


@app.command("revoke")
@api_command
def revoke_key(key_id: str = typer.Argument(..., metavar="ID"), as_json: bool = JsonOption) -> None:
    """Revoke an API key."""
    with make_client() as client:
        result = client.keys.revoke(key_id)
    if as_json:
        print_json(result or {"id": key_id, "revoked": True})
    else:
        console().print(f"revoked {key_id}", markup=False)
