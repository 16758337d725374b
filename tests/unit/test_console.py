"""The web console's files at /console/ (chaser/api/console.py): served with a strict CSP,
its modules and vendored xterm.js present, errors in the API's shape, nothing in the schema."""

from __future__ import annotations

import re

from chaser.api.console import CONTENT_SECURITY_POLICY
from chaser.console import STATIC_DIR
from tests.support import assert_error


def test_console_index_is_served_with_a_strict_policy(harness):
    harness.client.headers.pop("Authorization")  # static files need no key: the pages ask for one
    response = harness.client.get("/console/")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY and "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert '<script type="module" src="js/main.js"></script>' in response.text
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", response.text), "no inline script"


def test_console_without_the_slash_redirects_keeping_the_query(harness):
    response = harness.client.get("/console?token=abc", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == "/console/?token=abc"


def test_console_modules_and_vendored_xterm_are_served(harness):
    for path, kind in [("js/main.js", "javascript"), ("js/api.js", "javascript"), ("console.css", "css"),
                       ("vendor/xterm.mjs", "javascript"), ("vendor/addon-fit.mjs", "javascript"),
                       ("vendor/xterm.css", "css")]:
        response = harness.client.get(f"/console/{path}")
        assert response.status_code == 200, path
        assert kind in response.headers["content-type"], (path, response.headers["content-type"])
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["etag"]


def test_every_module_the_console_imports_exists():
    # Plain ES modules, no bundler: a typo in an import path would only show in a browser.
    for module in (STATIC_DIR / "js").glob("*.js"):
        for target in re.findall(r'^import .* from "(\.[^"]+)";', module.read_text(), re.M):
            assert (module.parent / target).resolve().is_file(), (module.name, target)


def test_console_errors_are_the_api_shape_and_not_in_the_schema(harness):
    assert_error(harness.client.get("/console/nothing.js"), 404, "not_found")
    paths = harness.client.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith("/console")]


def test_console_link_carries_the_key_in_the_fragment():
    from chaser.cli.commands.console_cmd import console_url

    assert console_url("http://127.0.0.1:8080/", "sk_abc") == "http://127.0.0.1:8080/console/#token=sk_abc"
    assert console_url("https://chaser.example", None) == "https://chaser.example/console/"


def test_chaser_console_prints_the_link(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from chaser.cli.main import app

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"api_url": "http://127.0.0.1:9999", "api_key": "sk_fromconfig"}))
    monkeypatch.setenv("CHASER_CONFIG", str(config))
    for name in ("CHASER_API_URL", "CHASER_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(app, ["console"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[0] == "http://127.0.0.1:9999/console/#token=sk_fromconfig"
    plain = CliRunner().invoke(app, ["console", "--no-token"])
    assert plain.stdout.strip() == "http://127.0.0.1:9999/console/"
    config.write_text(json.dumps({"api_url": "http://127.0.0.1:9999"}))
    missing = CliRunner().invoke(app, ["console"])
    assert missing.exit_code == 1 and "no API key" in missing.output


def test_server_logs_never_show_a_token_from_a_url(harness):
    import logging

    assert any(type(f).__name__ == "RedactTokens" for f in logging.getLogger("uvicorn.error").filters)

    from chaser.api.access_log import RedactTokens

    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, '%s - "WebSocket %s" [accepted]',
                               ("127.0.0.1:5555", "/v1/sessions/ses_1/pty?mode=human&token=sk_secret&rows=24"), None)
    assert RedactTokens().filter(record)
    assert record.getMessage() == '127.0.0.1:5555 - "WebSocket /v1/sessions/ses_1/pty?mode=human&token=…&rows=24" [accepted]'
    plain = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, "%s %d", ("/v1/sessions", 200), None)
    RedactTokens().filter(plain)
    assert plain.getMessage() == "/v1/sessions 200"


def test_a_session_host_does_not_serve_the_console(tmp_path):
    from tests.support.harness import Harness

    harness = Harness(tmp_path, base_domain="chaser.test")
    try:
        session = harness.session()
        response = harness.client.get("/console/", headers={"Host": f"{session['id']}.chaser.test"})
        assert response.status_code == 404 and response.json()["code"] == "not_found", response.text
        assert "content-security-policy" not in response.headers  # the host middleware answered, not the files
    finally:
        harness.close()
