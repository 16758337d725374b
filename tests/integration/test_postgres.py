"""PostgreSQL as the control-plane database (CHASER_DATABASE_URL=postgresql+psycopg://…): a real
server of our own (tests/support/postgres.py). The migrations reach the schema SQLite gets, replicas
starting at once migrate once (the advisory lock), a workspace is claimed by one session across
servers (SELECT … FOR UPDATE), and a real `chaser server` runs a session on it end to end."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.orm import Session

from chaser.models.status import ACTIVE_STATUSES, SessionStatus
from chaser.service.audit import AuditLog
from chaser.service.ratelimit import DatabaseTokenBucketLimiter
from chaser.store import Account, Base, Database, SessionRow, Workspace
from chaser.store.claims import WorkspaceGone, claim_workspace
from chaser.store.db import MIGRATION_LOCK_KEY, alembic_config
from tests.integration.conftest import REPO, ServerProcess
from tests.support import assert_error
from tests.support.harness import Harness
from tests.support.wait import wait_until

HEAD = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def schema(db: Database) -> dict[str, Any]:
    """Tables, columns (generic type, nullability), primary keys, indexes: what both dialects share."""
    inspector = sa.inspect(db.engine)
    described: dict[str, Any] = {}
    for table in inspector.get_table_names():
        columns = {column["name"]: (type(column["type"].as_generic()).__name__, column["nullable"])
                   for column in inspector.get_columns(table)}
        indexes = {(index["name"], tuple(index["column_names"]), bool(index["unique"]))
                   for index in inspector.get_indexes(table)
                   if index["name"].startswith("ix_")}  # PostgreSQL also lists the index behind a UNIQUE
        uniques = {tuple(constraint["column_names"]) for constraint in inspector.get_unique_constraints(table)}
        described[table] = {"columns": columns, "pk": inspector.get_pk_constraint(table)["constrained_columns"],
                            "indexes": indexes, "unique": uniques,
                            "foreign_keys": {(tuple(key["constrained_columns"]), key["referred_table"])
                                             for key in inspector.get_foreign_keys(table)}}
    return described


@pytest.fixture
def pg(postgres):
    db = Database(postgres.create_database())
    yield db
    db.dispose()


def test_migrations_reach_head_with_the_tables_sqlite_gets(pg, tmp_path):
    pg.upgrade()
    pg.upgrade()  # a second start finds head and changes nothing
    lite = Database(f"sqlite:///{tmp_path / 'chaser.db'}")
    lite.upgrade()
    try:
        assert schema(pg) == schema(lite)
        assert set(schema(pg)) == {*Base.metadata.tables, "alembic_version"}
        for db in (pg, lite):  # and what the migrations made is what tables.py declares
            with db.engine.connect() as connection:
                assert compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}),
                                        Base.metadata) == []
                assert connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == [HEAD]
    finally:
        lite.dispose()


def test_rows_round_trip_and_the_data_migration_runs(pg):
    """Booleans, JSON, aware datetimes and the audit log's growing ids on PostgreSQL; 0005 blanks env."""
    from alembic import command

    with pg.engine.begin() as connection:
        command.upgrade(alembic_config(pg.url, connection), "0004_audit_events")
        connection.execute(sa.text("INSERT INTO accounts (id, name, created_at) VALUES ('a', 'a', now())"))
        connection.execute(sa.text(
            "INSERT INTO sessions (id, account_id, session_type, status, ephemeral, env, created_at) "
            "VALUES ('ses_old', 'a', 'sandbox', 'terminated', true, '{\"SECRET\": \"x\"}', now())"))
    pg.upgrade()
    audit = AuditLog(pg)
    with pg.session() as s:
        old = s.get(SessionRow, "ses_old")
        assert old is not None and old.env == {} and old.ephemeral is True
        workspace = Workspace(id="ws_1", account_id="a", name="dev", template=False, network={"internet": False})
        s.add(workspace)
    with pg.session() as s:
        row = s.get(Workspace, "ws_1")
        assert row is not None and row.template is False and row.network == {"internet": False}
        assert row.created_at.tzinfo is not None and row.session_type == "sandbox"
    for index in range(3):  # no event loop here: each is written at once
        audit.record("workspace.created", account_id="a", resource_type="workspace", resource_id=f"ws_{index}",
                     summary="made", system=True)
    with pg.engine.connect() as connection:
        ids = connection.execute(sa.text("SELECT id FROM audit_events ORDER BY id")).scalars().all()
    assert len(ids) == 3 and ids == sorted(set(ids))


UPGRADE_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s")
from chaser.store import Database
db = Database(sys.argv[1])
db.upgrade()
db.dispose()
"""


def waiting_for_migration_lock(db: Database) -> int:
    with db.engine.connect() as connection:
        return connection.execute(sa.text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND ((classid::bigint << 32) | objid::bigint) = :key"), {"key": MIGRATION_LOCK_KEY}).scalar_one()


def test_replicas_starting_at_once_migrate_once(pg):
    """Four processes upgrade a fresh database at once: each waits for the advisory lock, all succeed,
    and each migration ran exactly once (the others found head)."""
    replicas = 4
    holder = pg.engine.connect()
    holder.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    holder.commit()
    processes = [subprocess.Popen([sys.executable, "-c", UPGRADE_SCRIPT, pg.url], cwd=REPO, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(replicas)]
    try:
        wait_until(lambda: waiting_for_migration_lock(pg) == replicas, 60,
                   message="every replica waits for the migration lock")
        with pg.engine.connect() as connection:  # nothing migrated while the lock is held
            assert not sa.inspect(connection).get_table_names()
        holder.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
        holder.commit()
        outputs = [process.communicate(timeout=120)[0] for process in processes]
    finally:
        holder.close()
        for process in processes:
            process.kill()
            process.wait()
    assert [process.returncode for process in processes] == [0] * replicas, outputs
    log = "".join(outputs)
    assert log.count("Running upgrade  -> 0001_initial") == 1, log
    assert log.count(f"-> {HEAD}") == 1, log
    with pg.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == [HEAD]
    assert waiting_for_migration_lock(pg) == 0
    assert set(sa.inspect(pg.engine).get_table_names()) == {*Base.metadata.tables, "alembic_version"}


def test_the_lock_is_released_when_a_migration_fails(pg, monkeypatch):
    """A failed upgrade leaves the lock free: the next replica migrates."""
    from alembic import command

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("migration failed")

    monkeypatch.setattr(command, "upgrade", broken)
    with pytest.raises(RuntimeError, match="migration failed"):
        pg.upgrade()
    monkeypatch.undo()
    with pg.engine.connect() as connection:
        held = connection.execute(sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")).scalar_one()
    assert held == 0
    Database(pg.url).upgrade()


# --- one session per workspace, across servers --------------------------------------------------------

def new_session(workspace_id: str, session_id: str) -> SessionRow:
    return SessionRow(id=session_id, account_id="acct", workspace_id=workspace_id, session_type="sandbox",
                      status=SessionStatus.STARTING, ephemeral=False, env={})


@pytest.fixture(params=["postgresql", "sqlite"])
def claims_db(request, tmp_path):
    url = (request.getfixturevalue("postgres").create_database() if request.param == "postgresql"
           else f"sqlite:///{tmp_path / 'chaser.db'}")
    db = Database(url)
    db.upgrade()
    with db.session() as s:
        s.add(Account(id="acct", name="acct"))
        s.add(Workspace(id="ws_dev", account_id="acct", name="dev", template=False))
    yield db
    db.dispose()


def claim(db: Database, session_id: str, **kwargs: Any) -> str | None:
    with db.session() as s:
        return claim_workspace(s, new_session("ws_dev", session_id), active=ACTIVE_STATUSES, **kwargs)


def test_a_workspace_is_claimed_by_its_one_active_session(claims_db):
    assert claim(claims_db, "ses_a") is None
    assert claim(claims_db, "ses_b") == "ses_a"  # starting holds it
    assert claim(claims_db, "ses_b", known={"ses_a"}) is None  # the caller's own sessions it checks itself
    with claims_db.session() as s:
        s.execute(sa.update(SessionRow).values(status=SessionStatus.TERMINATED))
    for status in (SessionStatus.PAUSED, SessionStatus.RUNNING):  # a paused session holds its workspace too
        assert claim(claims_db, f"ses_{status}") is None
        assert claim(claims_db, "ses_next") == f"ses_{status}"
        with claims_db.session() as s:
            s.execute(sa.update(SessionRow).where(SessionRow.id == f"ses_{status}").values(status=status))
            s.execute(sa.update(SessionRow).values(status=SessionStatus.FAILED))
    with claims_db.session() as s, pytest.raises(WorkspaceGone):
        claim_workspace(s, new_session("ws_gone", "ses_x"), active=ACTIVE_STATUSES)


def test_a_second_claim_waits_for_the_first_and_loses(pg):
    """The workspace row is locked: a concurrent claim blocks until the first commits, then sees it."""
    pg.upgrade()
    with pg.session() as s:
        s.add(Account(id="acct", name="acct"))
        s.add(Workspace(id="ws_dev", account_id="acct", name="dev", template=False))
    first = Session(pg.engine)
    assert claim_workspace(first, new_session("ws_dev", "ses_first"), active=ACTIVE_STATUSES) is None
    result: dict[str, Any] = {}
    second = threading.Thread(target=lambda: result.update(holder=claim(pg, "ses_second")))
    second.start()

    def blocked() -> bool:
        with pg.engine.connect() as connection:
            return connection.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE '%FOR UPDATE%'")).scalar_one() == 1
    try:
        wait_until(blocked, 30, message="the second claim waits on the workspace row")
        assert second.is_alive() and not result
        first.commit()
    finally:
        first.close()
    second.join(30)
    assert result == {"holder": "ses_first"}


def at_once(count: int, call: Any) -> list[Any]:
    """`call(index)` in `count` threads released together: their results in index order (a
    failure in any thread fails the test)."""
    barrier = threading.Barrier(count)
    results: dict[int, Any] = {}
    failures: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(30)
            results[index] = call(index)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures and len(results) == count, failures
    return [results[index] for index in range(count)]


def test_concurrent_claims_of_one_workspace_one_wins(pg):
    pg.upgrade()
    with pg.session() as s:
        s.add(Account(id="acct", name="acct"))
        s.add(Workspace(id="ws_dev", account_id="acct", name="dev", template=False))
    count = 8
    results = dict(zip((f"ses_{index}" for index in range(count)),
                       at_once(count, lambda index: claim(pg, f"ses_{index}")), strict=True))
    winners = [session_id for session_id, holder in results.items() if holder is None]
    assert len(winners) == 1
    assert {holder for holder in results.values() if holder is not None} == set(winners)
    with pg.session() as s:
        assert s.scalars(sa.select(SessionRow.id).where(SessionRow.workspace_id == "ws_dev")).all() == winners


def test_replicas_take_from_one_bucket_at_once(pg):
    """Two replicas' limiters on one PostgreSQL, 24 requests of one new key at once: exactly the
    bucket's 10 pass (its row is locked for each take; the first insert of the key wins once)."""
    pg.upgrade()
    replicas = [DatabaseTokenBucketLimiter(pg, 1, 10) for _ in range(2)]  # a token a minute: no refill here
    allowed = at_once(24, lambda index: replicas[index % 2].take("key_shared").allowed)
    assert allowed.count(True) == 10


def check(response: httpx.Response, status: int | None = None) -> Any:
    """The JSON of a success (of exactly `status`, when given)."""
    assert response.is_success if status is None else response.status_code == status, response.text
    return response.json()


# --- the services on PostgreSQL (the fake runtime: no VM) ---------------------------------------------

def test_the_api_on_postgresql(postgres, tmp_path):
    """Keys, workspaces, sessions, exec, the audit log's pages: the service layer's SQL on PostgreSQL."""
    harness = Harness(tmp_path, database_url=postgres.create_database())
    client = harness.client
    try:
        reader = check(client.post("/v1/keys", json={"name": "reader", "scopes": ["sessions.read"]}))
        assert client.get("/v1/sessions", headers={"Authorization": f"Bearer {reader['key']}"}).status_code == 200
        assert reader["id"] in [key["id"] for key in check(client.get("/v1/keys"))["keys"]]
        workspace = check(client.post("/v1/workspaces", json={"name": "dev"}))
        assert_error(client.post("/v1/workspaces", json={"name": "dev"}), 409, "workspace_exists")
        check(client.put(f"/v1/workspaces/{workspace['id']}/name", json={"name": "dev2"}))
        session = check(client.post("/v1/sessions", json={"workspace": "dev2"}), 201)
        assert check(client.post("/v1/sessions", json={"workspace": "dev2"}))["id"] == session["id"]  # its one
        ran = check(client.post(f"/v1/sessions/{session['id']}/exec", json={"command": "echo hi"}))
        assert ran["exit_code"] == 0
        assert check(client.delete(f"/v1/sessions/{session['id']}"))["status"] == "terminated"
        ended = check(client.get("/v1/sessions", params={"status": "terminated"}))["sessions"]
        assert [row["id"] for row in ended] == [session["id"]]
        first = check(client.get("/v1/audit/events", params={"limit": 2}))["events"]
        rest = check(client.get("/v1/audit/events", params={"limit": 100, "before": first[-1]["id"]}))["events"]
        assert len(first) == 2 and rest and first[-1]["id"] not in [event["id"] for event in rest]
        assert check(client.delete(f"/v1/workspaces/{workspace['id']}"))
        assert check(client.get("/v1/workspaces")) == []
    finally:
        harness.close()


def test_two_servers_on_one_database_keep_a_workspace_on_the_node_with_its_disk(postgres, tmp_path):
    """Two servers with homes of their own are two nodes: the first session pins the workspace to its
    node (its disk is there), so the other refuses it, running or not (409 workspace_on_other_node)."""
    url = postgres.create_database()
    first = Harness(tmp_path / "first", database_url=url)
    second = Harness(tmp_path / "second", database_url=url)
    try:
        keys = check(first.client.get("/v1/keys", headers={"Authorization": f"Bearer {second.admin_key}"}))
        assert len(keys["keys"]) == 2  # both admin keys, in the one database
        check(first.client.post("/v1/workspaces", json={"name": "dev"}))
        session = check(first.client.post("/v1/sessions", json={"workspace": "dev"}), 201)
        assert_error(second.client.post("/v1/sessions", json={"workspace": "dev"}), 409, "workspace_on_other_node")
        assert second.runtime.started == [] and len(first.runtime.started) == 1
        check(first.client.delete(f"/v1/sessions/{session['id']}"))
        assert_error(second.client.post("/v1/sessions", json={"workspace": "dev"}), 409, "workspace_on_other_node")
        again = check(first.client.post("/v1/sessions", json={"workspace": "dev"}), 201)
        assert again["id"] != session["id"] and len(first.runtime.started) == 2 and second.runtime.started == []
    finally:
        first.close()
        second.close()


# --- a real server on PostgreSQL --------------------------------------------------------------------



@pytest.mark.vm
def test_a_server_on_postgresql_serves_a_session(postgres, tmp_path):
    url = postgres.create_database()
    server = ServerProcess(home=tmp_path / "home", config_file=tmp_path / "config.json",
                           extra_env={"CHASER_DATABASE_URL": url}).start()
    try:
        with server.client() as admin:
            key = check(admin.post("/v1/keys", json={"name": "pg-user"}))["key"]
        with server.client(key) as http:
            session = check(http.post("/v1/sessions", json={"session_type": "sandbox", "ephemeral": True}), 201)
            assert session["status"] == "running"
            ran = check(http.post(f"/v1/sessions/{session['id']}/exec", json={"command": "echo hello from pg"}))
            assert ran["exit_code"] == 0 and ran["output"] == "hello from pg\n"
            listed = check(http.get("/v1/sessions"))["sessions"]
            assert [row["id"] for row in listed] == [session["id"]]
            ended = check(http.delete(f"/v1/sessions/{session['id']}"))
            assert ended["status"] == "terminated"
    finally:
        server.stop()
    assert not (tmp_path / "home" / "chaser.db").exists()  # nothing went to SQLite
    db = Database(url)
    try:
        with db.session() as s:
            row = s.get(SessionRow, session["id"])
            assert row is not None and row.status == SessionStatus.TERMINATED and row.end_reason == "terminated"
        with db.engine.connect() as connection:
            actions = connection.execute(sa.text("SELECT action FROM audit_events ORDER BY id")).scalars().all()
        assert "session.created" in actions and "session.terminated" in actions
    finally:
        db.dispose()
    # A restart on the same database: the keys made before still work (they live in PostgreSQL).
    again = ServerProcess(home=tmp_path / "home", config_file=tmp_path / "config.json",
                          extra_env={"CHASER_DATABASE_URL": url}).start()
    try:
        with again.client(key) as http:
            ended_sessions = check(http.get("/v1/sessions", params={"status": "terminated"}))["sessions"]
            assert [row["id"] for row in ended_sessions] == [session["id"]]
        assert "new admin key" not in again.log()
    finally:
        again.stop()
