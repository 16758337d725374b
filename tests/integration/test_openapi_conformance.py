"""/openapi.json tells the truth: schemathesis runs every phase (examples,
coverage, fuzzing, and the stateful phase that follows the OpenAPI links from
session and workspace creation into the per-session routes) against a real
server and must find nothing. Bounded examples and a fixed seed keep it
repeatable; the server's VMs are bounded by its own session limit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import ServerProcess

pytestmark = pytest.mark.vm

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,response_headers_conformance")
CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_schemathesis_finds_no_failure(tmp_path):
    # Generated requests must never reach outside this machine: image references name public
    # registries, so skopeo (which honours these variables; loopback is never proxied) gets a
    # proxy on a loopback port where nothing listens, and guests get no internet by default.
    dead_proxy = "http://127.0.0.1:9"
    # The account's limit (429, a documented refusal) comes before the host's (503 capacity_exhausted).
    env = {"CHASER_WARM_POOL_SIZE": "0", "CHASER_MAX_SESSIONS": "3", "CHASER_MAX_SESSIONS_PER_ACCOUNT": "2",
           "CHASER_NETWORK_READY_POOL_SIZE": "0",
           "CHASER_NETWORK_INTERNET_DEFAULT": "false", "CHASER_IMAGE_PULL_TIMEOUT_S": "20",
           "HTTPS_PROXY": dead_proxy, "HTTP_PROXY": dead_proxy, "https_proxy": dead_proxy, "http_proxy": dead_proxy,
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    srv = ServerProcess(home=tmp_path / "home", config_file=tmp_path / "config.json", extra_env=env).start()
    try:
        st = Path(sys.executable).with_name("st")
        result = subprocess.run(
            [str(st), "--config-file", str(CONFIG), "run", f"{srv.url}/openapi.json",
             "-H", f"Authorization: Bearer {srv.api_key}", "--checks", CHECKS,
             "--max-examples", "25", "--seed", "1", "--request-timeout", "120", "--no-color"],
            capture_output=True, text=True, timeout=900, cwd=tmp_path)
        with srv.client() as client:  # every session it made (ended ones too)
            sessions = client.get("/v1/sessions", params={"status": "all"}).json()["total"]
    finally:
        srv.stop()
    output = result.stdout + result.stderr
    failures = output[output.find("FAILURES"):] if "FAILURES" in output else output[-6000:]
    assert result.returncode == 0, failures[:12000]
    summary = output.split("SUMMARY")[-1]
    assert "failure" not in summary.strip().splitlines()[-1] and "Stateful" in summary, output[-3000:]
    # Generated creates started real sessions, whose routes the stateful phase then followed
    # the links into (else the per-session routes were only ever asked about unknown ids).
    assert sessions > 0, output[-3000:]
