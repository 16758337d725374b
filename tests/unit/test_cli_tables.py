"""The CLI's tables in an 80-column terminal (and piped): one line per row, no line over the
width, ids never split or cut (session ids shown as a usable 16-character prefix), other
columns cut with an ellipsis; `--wide` shows everything; `--json` is the API's JSON unchanged."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest

LONG_IMAGE = "ghcr.io/an-organisation/a-rather-long-image-name-for-tests:2026.12.01-build.1234"


def iso(delta: timedelta) -> str:
    """A timestamp `delta` from now (now at the call: the suite may have run for minutes)."""
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sid(n: int) -> str:
    return f"ses_{n:04x}{'0' * 8}{'ab12cd34ef56'}"[:4 + 24]


def wid(n: int) -> str:
    return f"ws_{n:016x}"


@pytest.fixture
def data(fake):
    """Sessions, workspaces, commands and keys with real-length ids and long values."""
    sessions = [
        {"id": "ses_3f9a1c2b7d4e5f60718293a4", "status": "running", "workspace_id": wid(1), "image": LONG_IMAGE},
        {"id": "ses_3f9a1c2b00000000000000b5", "status": "starting", "workspace_id": None, "image": "chaser/base"},
        {"id": "ses_77aa88bb99cc00dd11ee22ff", "status": "terminated", "workspace_id": wid(2),
         "image": "docker.io/library/python:3.12-slim-bookworm"},
    ]
    for i, session in enumerate(sessions):
        fake.sessions[session["id"]] = {
            **session, "created_at": iso(-timedelta(minutes=5 + i)), "session_type": "sandbox",
            "endpoints": {"control": f"/v1/sessions/{session['id']}"}, "persistence": bool(session["workspace_id"]),
            "ephemeral": not session["workspace_id"], "expires_at": iso(timedelta(hours=5)), "ended_at": None,
            "end_reason": None}
    for i, name in enumerate(["dev", "a-workspace-with-a-long-descriptive-name-for-the-team"], 1):
        fake.workspaces[wid(i)] = {"id": wid(i), "name": name, "image": LONG_IMAGE, "template": False,
                                   "session_type": "sandbox", "status": "ready", "persistence": True,
                                   "created_at": iso(-timedelta(days=3)),
                                   "active_session_id": sessions[0]["id"] if i == 1 else None}
    fake.commands[(sessions[0]["id"], "c-0123456789ab")] = {
        "command_id": "c-0123456789ab", "status": "running", "exit_code": None, "pid": 4242,
        "command": "python3 -m http.server 3000 --bind 0.0.0.0 --directory /workspace/some/deep/path/to/serve"}
    fake.commands[(sessions[0]["id"], "c-ba9876543210")] = {
        "command_id": "c-ba9876543210", "status": "timed_out", "exit_code": None, "pid": 77, "command": "sleep 1000"}
    fake.keys["key_00112233445566aa"] = {
        "id": "key_00112233445566aa", "key_prefix": "sk_1a2b3c4d", "name": "ci runner for the nightly builds",
        "scopes": ["sessions.read", "sessions.write", "exec.write", "files.read", "files.write"],
        "full_access": False, "created_at": iso(-timedelta(days=40)), "last_used_at": iso(-timedelta(seconds=30)),
        "revoked": None}
    snapshots = [{"id": "snap_0011223344556677", "workspace_id": wid(1), "name": "before-the-big-refactor-attempt",
                  "used_bytes": 123_456_789, "created_at": iso(-timedelta(hours=2)), "restored_at": None}]
    fake.routes.insert(0, ("GET", r"/v1/workspaces/(?P<w>[^/]+)/snapshots", lambda m, q, b: (200, snapshots)))
    return {"sessions": sessions, "snapshots": snapshots}


def lines_of(output: str) -> list[str]:
    return output.rstrip("\n").split("\n")


def assert_fits(output: str, width: int = 80) -> list[str]:
    lines = lines_of(output)
    too_long = [line for line in lines if len(line) > width]
    assert not too_long, "\n".join(too_long)
    return lines


def on_one_line(output: str, text: str) -> bool:
    return any(text in line for line in lines_of(output))


def row(lines: list[str], text: str) -> str:
    (line,) = [line for line in lines if text in line]
    return line


COLUMNS_80 = {"COLUMNS": "80"}


def test_sessions_list_fits_80_columns_with_short_usable_ids(cli, data):
    result = cli("sessions", "list", env=COLUMNS_80)
    assert result.exit_code == 0, result.output
    lines = assert_fits(result.stdout)
    assert len(lines) == 1 + len(data["sessions"])  # a header and one line per session: nothing wraps
    assert lines[0].split() == ["ID", "STATUS", "WORKSPACE", "IMAGE", "CREATED"]
    for session in data["sessions"]:
        line = row(lines, session["id"][:16])
        assert session["id"] not in result.stdout  # shortened, like docker's 12 of 64
        assert session["status"] in line.split()  # statuses whole
        if session["workspace_id"]:
            assert session["workspace_id"] in line  # 19-character workspace ids in full
    assert "…" in row(lines, data["sessions"][0]["id"][:16])  # the long image is cut, not wrapped
    assert "5m ago" in row(lines, data["sessions"][0]["id"][:16])
    assert "EXPIRES" not in result.stdout


def test_ids_with_the_same_short_prefix_are_shown_in_full(cli, fake, data):
    twin = "ses_3f9a1c2b7d4e5f60ffffffff"  # the same 16 first characters as sessions[0]
    fake.sessions[twin] = {**fake.sessions[data["sessions"][0]["id"]], "id": twin, "image": "chaser/base"}
    result = cli("sessions", "list", env=COLUMNS_80)
    assert_fits(result.stdout)
    assert on_one_line(result.stdout, twin) and on_one_line(result.stdout, data["sessions"][0]["id"])
    assert data["sessions"][2]["id"] not in result.stdout  # the others stay short


def test_the_current_session_is_marked(cli, config_file, data):
    current = data["sessions"][1]["id"]
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "current_session": current}))
    lines = assert_fits(cli("sessions", "list", env=COLUMNS_80).stdout)
    assert row(lines, current[:16]).startswith("* ") and lines[0].split()[0] == "ID"


def test_sessions_list_wide_shows_everything(cli, data):
    result = cli("sessions", "list", "--wide", env=COLUMNS_80)
    assert result.exit_code == 0, result.output
    lines = lines_of(result.stdout)
    assert len(lines) == 1 + len(data["sessions"])
    assert "EXPIRES" in lines[0]
    for session in data["sessions"]:
        line = row(lines, session["id"])
        assert session["image"] in line and "…" not in line
        assert re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", line)


def test_sessions_list_json_is_unchanged(cli, fake, data):
    result = cli("sessions", "list", "--json", env=COLUMNS_80)
    assert json.loads(result.stdout) == {"sessions": list(fake.sessions.values()), "total": len(fake.sessions)}


def test_a_short_session_id_is_accepted(cli, fake, data):
    full = data["sessions"][2]["id"]
    result = cli("sessions", "get", full[:16], "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["id"] == full
    assert fake.requests[-1]["path"] == f"/v1/sessions/{full}"
    assert any(r["path"] == "/v1/sessions" and r["query"] == {"status": ["all"]} for r in fake.requests)
    # Two sessions start with ses_3f9a1c2b: ambiguous, nothing is run.
    result = cli("exec", "--session", "ses_3f9a1c2b", "--", "true")
    assert result.exit_code == 1 and result.stderr.startswith("error: ambiguous_id: ses_3f9a1c2b is the start of 2")
    assert not any(r["path"].endswith("/exec") for r in fake.requests)
    # A full id needs no lookup; an unknown prefix is the server's to refuse.
    count = len(fake.requests)
    assert cli("sessions", "get", full, "--json").exit_code == 0
    assert len(fake.requests) == count + 1
    result = cli("sessions", "get", "ses_ffff")
    assert result.exit_code == 1 and "session_not_found" in result.stderr


def test_commands_list_fits_and_wide_shows_the_whole_command(cli, data):
    session = data["sessions"][0]["id"]
    result = cli("commands", "list", "--session", session[:16], env=COLUMNS_80)
    assert result.exit_code == 0, result.output
    lines = assert_fits(result.stdout)
    assert len(lines) == 3
    assert "…" in row(lines, "c-0123456789ab") and "timed_out" in row(lines, "c-ba9876543210").split()
    wide = cli("commands", "list", "--session", session, "--wide", env=COLUMNS_80)
    assert on_one_line(wide.stdout, "--directory /workspace/some/deep/path/to/serve")
    assert json.loads(cli("commands", "list", "-s", session, "--json").stdout)["commands"][0]["pid"] == 4242


def test_workspaces_and_snapshots_fit(cli, data):
    result = cli("workspaces", "list", env=COLUMNS_80)
    assert result.exit_code == 0, result.output
    lines = assert_fits(result.stdout)
    assert len(lines) == 3 and "TEMPLATE" not in lines[0]
    assert data["sessions"][0]["id"][:16] in row(lines, wid(1))  # the active session, short
    assert "3d ago" in row(lines, wid(1)) and "…" in row(lines, wid(2))
    wide = cli("workspaces", "list", "--wide", env=COLUMNS_80)
    assert "TEMPLATE" in wide.stdout and data["sessions"][0]["id"] in row(lines_of(wide.stdout), wid(1))
    assert on_one_line(wide.stdout, "a-workspace-with-a-long-descriptive-name-for-the-team")

    snaps = cli("workspaces", "snapshots", "list", "dev", env=COLUMNS_80)
    assert snaps.exit_code == 0, snaps.output
    lines = assert_fits(snaps.stdout)
    assert "snap_0011223344556677" in lines[1] and "123.5 MB" in lines[1] and "2h ago" in lines[1]
    wide = cli("workspaces", "snapshots", "list", "dev", "--wide", env=COLUMNS_80)
    assert "123456789" in wide.stdout and "before-the-big-refactor-attempt" in wide.stdout
    assert json.loads(cli("workspaces", "snapshots", "list", "dev", "--json").stdout) == data["snapshots"]


def test_keys_fit(cli, data):
    result = cli("keys", "list", env=COLUMNS_80)
    assert result.exit_code == 0, result.output
    lines = assert_fits(result.stdout)
    assert len(lines) == 3 and "ACCESS" in lines[0] and "FULL" not in lines[0]
    key = row(lines, "key_00112233445566aa")
    assert "full" in row(lines, "k0").split() and "sk_1a2b3c4d" in key and re.search(r"\b\d\ds ago", key)
    assert "LAST USED" in lines[0] and "CREATED" not in lines[0]
    wide = cli("keys", "list", "--wide", env=COLUMNS_80)
    assert "FULL" in wide.stdout and "CREATED" in wide.stdout
    assert "sessions.read, sessions.write, exec.write, files.read, files.write" in wide.stdout


def test_images_list_fits(cli, monkeypatch):
    from chaser.cli.commands import images

    digest = "sha256:" + "0123456789abcdef" * 4
    rows = [{"ref": LONG_IMAGE, "digest": digest, "size": 459_000_000, "last_used": iso(-timedelta(minutes=1)),
             "created": iso(-timedelta(days=1))}]

    removed: list[str] = []

    class Store:
        def list(self):
            return rows

        def remove(self, ref):
            removed.append(ref)
            return [ref]

    monkeypatch.setattr(images, "_store", lambda: Store())
    result = cli("images", "list", env=COLUMNS_80)
    assert result.exit_code == 0, result.output
    lines = assert_fits(result.stdout)
    assert "sha256:0123456789ab" in lines[1] and digest not in result.stdout and "1m ago" in lines[1]
    wide = cli("images", "list", "--wide", env=COLUMNS_80)
    assert digest in wide.stdout and LONG_IMAGE in wide.stdout
    assert json.loads(cli("images", "list", "--json").stdout) == rows
    assert cli("images", "rm", "sha256:0123456789ab").exit_code == 0  # the prefix the table shows
    assert removed == [digest]


def test_piped_output_is_80_columns_unless_columns_says_otherwise(cli, data, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    piped = cli("sessions", "list")  # CliRunner's stdout is not a terminal
    assert_fits(piped.stdout)
    assert max(len(line) for line in lines_of(piped.stdout)) > 70  # it uses the 80 columns
    wider = cli("sessions", "list", env={"COLUMNS": "200"})
    assert LONG_IMAGE in wider.stdout and data["sessions"][0]["id"] not in wider.stdout
    narrow = cli("workspaces", "list", env={"COLUMNS": "60"})
    lines = assert_fits(narrow.stdout, 60)
    assert len(lines) == 3 and wid(1) in lines[1]


def test_age():
    from chaser.cli.commands._common import age

    now = datetime(2026, 1, 10, tzinfo=UTC)
    assert [age(now - timedelta(seconds=s), now) for s in (0, 59, 60, 3599, 3600, 47 * 3600, 48 * 3600)] == [
        "0s ago", "59s ago", "1m ago", "59m ago", "1h ago", "47h ago", "2d ago"]
    assert age(now + timedelta(hours=5, seconds=1), now) == "in 5h"
