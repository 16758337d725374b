"""`chaser mcp install`: each agent's configuration format, merged into existing files in tmp."""

from __future__ import annotations

import json
import os
import stat
import tomllib

import pytest
from typer.testing import CliRunner

from chaser.cli import main

URL = "http://127.0.0.1:8123"


@pytest.fixture
def env(tmp_path, monkeypatch):
    config = tmp_path / "chaser-config.json"
    config.write_text(json.dumps({"api_url": URL, "api_key": "sk_from_config"}))
    monkeypatch.setenv("CHASER_CONFIG", str(config))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CHASER_API_URL", raising=False)
    monkeypatch.delenv("CHASER_API_KEY", raising=False)
    monkeypatch.delenv("CODEX_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    return config


def run(*args: str):
    return CliRunner().invoke(main.app, list(args))


def expected_entry(config, **env):
    return {"command": "/opt/chaser/bin/chaser", "args": ["mcp", "serve"],
            "env": {"CHASER_API_URL": URL, "CHASER_CONFIG": str(config), **env}}


def test_claude_merges_into_an_existing_file(env, tmp_path):
    target = tmp_path / "project" / ".mcp.json"
    target.parent.mkdir()
    target.write_text(json.dumps({"mcpServers": {"other": {"command": "other-server"}}, "keep": True}))
    result = run("mcp", "install", "--agent", "claude", "--path", str(target), "--command", "/opt/chaser/bin/chaser")
    assert result.exit_code == 0, result.output
    assert str(target) in result.stdout
    data = json.loads(target.read_text())
    assert data == {"mcpServers": {"other": {"command": "other-server"}, "chaser": expected_entry(env)},
                    "keep": True}
    assert "sk_from_config" not in target.read_text()  # the server reads the key from CHASER_CONFIG
    # Again: replaced, not duplicated.
    assert run("mcp", "install", "--agent", "claude", "--path", str(target),
               "--command", "/opt/chaser/bin/chaser").exit_code == 0
    assert json.loads(target.read_text()) == data


def test_claude_default_is_the_project_mcp_json(env, tmp_path):
    result = run("mcp", "install", "--agent", "claude", "--command", "/opt/chaser/bin/chaser")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / ".mcp.json").read_text())["mcpServers"]["chaser"] == expected_entry(env)


def test_cursor_default_path_and_embedded_key(env, tmp_path):
    result = run("mcp", "install", "--agent", "cursor", "--embed-key", "--name", "sandbox",
                 "--command", "/opt/chaser/bin/chaser")
    assert result.exit_code == 0, result.output
    target = tmp_path / "home" / ".cursor" / "mcp.json"
    assert json.loads(target.read_text()) == {
        "mcpServers": {"sandbox": expected_entry(env, CHASER_API_KEY="sk_from_config")}}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # it holds a key


def test_codex_toml_replaces_its_section_and_keeps_the_rest(env, tmp_path):
    target = tmp_path / "home" / ".codex" / "config.toml"
    target.parent.mkdir(parents=True)
    target.write_text('model = "o3"  # keep this comment\n\n[mcp_servers.other]\ncommand = "x"\nargs = []\n\n'
                      '[mcp_servers.chaser]\ncommand = "old"\n\n[mcp_servers.chaser.env]\nOLD = "1"\n\n'
                      '[profiles.fast]\nmodel = "o4-mini"\n')
    result = run("mcp", "install", "--agent", "codex", "--command", "/opt/chaser/bin/chaser")
    assert result.exit_code == 0, result.output
    text = target.read_text()
    assert "# keep this comment" in text and "OLD" not in text
    data = tomllib.loads(text)
    assert data["model"] == "o3" and data["profiles"] == {"fast": {"model": "o4-mini"}}
    assert data["mcp_servers"] == {"other": {"command": "x", "args": []}, "chaser": expected_entry(env)}


def test_codex_home_and_a_new_file(env, tmp_path, monkeypatch):
    monkeypatch.setenv("CODEX_HOME", str(tmp_path / "codex"))
    assert run("mcp", "install", "--agent", "codex", "--command", "/opt/chaser/bin/chaser").exit_code == 0
    data = tomllib.loads((tmp_path / "codex" / "config.toml").read_text())
    assert data == {"mcp_servers": {"chaser": expected_entry(env)}}


def test_codex_inline_definition_is_refused(env, tmp_path):
    target = tmp_path / "config.toml"
    original = '[mcp_servers]\nchaser = { command = "mine" }\n'
    target.write_text(original)
    result = run("mcp", "install", "--agent", "codex", "--path", str(target))
    assert result.exit_code == 1 and "edit it by hand" in result.stderr
    assert target.read_text() == original


def test_print_shows_the_configuration_and_writes_nothing(env, tmp_path):
    result = run("mcp", "install", "--agent", "cursor", "--print", "--command", "/opt/chaser/bin/chaser")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"mcpServers": {"chaser": expected_entry(env)}}
    result = run("mcp", "install", "--agent", "codex", "--print", "--command", "/opt/chaser/bin/chaser")
    assert tomllib.loads(result.stdout) == {"mcp_servers": {"chaser": expected_entry(env)}}
    assert not (tmp_path / "home").exists()


def test_invalid_existing_file_and_bad_agent(env, tmp_path):
    target = tmp_path / "broken.json"
    target.write_text("{not json")
    result = run("mcp", "install", "--agent", "claude", "--path", str(target))
    assert result.exit_code == 1 and "not valid JSON" in result.stderr
    assert target.read_text() == "{not json"
    result = run("mcp", "install", "--agent", "vscode")
    assert result.exit_code == 1 and "--agent must be one of claude, cursor, codex" in result.stderr


def test_a_key_not_in_the_config_file_is_warned_about(env, tmp_path):
    result = CliRunner().invoke(main.app, ["--api-key", "sk_flag", "mcp", "install", "--agent", "claude",
                                           "--print", "--command", "/opt/chaser/bin/chaser"])
    assert result.exit_code == 0
    assert "--embed-key" in result.stderr and "sk_flag" not in result.stdout
    result = CliRunner().invoke(main.app, ["--api-key", "sk_flag", "mcp", "install", "--agent", "claude",
                                           "--print", "--embed-key", "--command", "/opt/chaser/bin/chaser"])
    assert json.loads(result.stdout)["mcpServers"]["chaser"]["env"]["CHASER_API_KEY"] == "sk_flag"


def test_default_command_is_this_installations_chaser(env, tmp_path):
    result = run("mcp", "install", "--agent", "claude", "--print")
    command = json.loads(result.stdout)["mcpServers"]["chaser"]["command"]
    assert os.path.isabs(command) and os.path.basename(command) == "chaser" and os.access(command, os.X_OK)


def test_serve_without_a_key_fails_on_stderr(env, tmp_path):
    (tmp_path / "chaser-config.json").write_text(json.dumps({"api_url": URL}))
    result = run("mcp", "serve")
    assert result.exit_code == 1 and result.stderr.startswith("error: no_api_key:")
