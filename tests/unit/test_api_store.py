"""The store: migrations match the tables; the server command's surface."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from chaser.store import Base, Database


def test_migrations_match_the_tables(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'chaser.db'}")
    db.upgrade()
    db.upgrade()  # idempotent
    with db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_server_command_options():
    import typer
    from typer.testing import CliRunner

    from chaser.cli.commands.server import api_url, server_command

    app = typer.Typer()
    app.command("server")(server_command)
    app.command("other")(lambda: None)
    result = CliRunner().invoke(app, ["server", "--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--data-dir"):
        assert option in result.output
    assert api_url("0.0.0.0", 8080) == "http://127.0.0.1:8080"
    assert api_url("127.0.0.1", 9000) == "http://127.0.0.1:9000"
