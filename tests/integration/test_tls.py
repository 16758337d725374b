"""A real `chaser server --tls-cert/--tls-key` over HTTPS on loopback, with a self-signed
certificate the test makes: our client (httpx and wss), the CLI, chaser-sdk and the MCP
endpoint (whose tools call the server back over loopback https); and the rate limit of a
key as chaser-sdk sees it. No VM is started (warm pool off)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
from chaser_sdk import ChaserClient as SdkClient
from chaser_sdk.errors import ChaserApiError

from chaser.client import ChaserAPIError, ChaserClient, ChaserConnectionError, connect_tunnel
from tests.integration.conftest import REPO, ServerProcess
from tests.unit.test_serving import make_certificate

BURST = 30


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("chaser-tls")
    cert, key = make_certificate(base)
    server = ServerProcess(home=base / "home", config_file=base / "config.json", ca_bundle=cert,
                           args=["--tls-cert", str(cert), "--tls-key", str(key)],
                           # one token a minute after a bucket of 30: the test's own pace never refills it
                           extra_env={"CHASER_WARM_POOL_SIZE": "0", "CHASER_RATE_LIMIT_PER_MINUTE": "1",
                                      "CHASER_RATE_LIMIT_BURST": str(BURST)})
    server.start()
    server.cert = cert
    yield server
    server.stop()


def test_start_prints_https_and_configures_the_cli(tls_server):
    log = tls_server.log()
    assert f"API URL: https://127.0.0.1:{tls_server.port}" in log
    assert "without TLS" not in log  # loopback, and TLS anyway
    config = json.loads(tls_server.config_file.read_text())
    assert config["api_url"] == tls_server.url and config["ca_bundle"] == str(tls_server.cert)
    with pytest.raises(httpx.HTTPError):  # plain http to the TLS port gets no answer
        httpx.get(f"http://127.0.0.1:{tls_server.port}/health", timeout=5)


def test_our_client_over_https_needs_the_ca(tls_server, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("CHASER_CA_BUNDLE", raising=False)
    monkeypatch.setenv("CHASER_CONFIG", str(tls_server.config_file.parent / "absent.json"))
    with ChaserClient(tls_server.url, tls_server.api_key) as untrusting, \
            pytest.raises(ChaserConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        untrusting.sessions.list()
    with ChaserClient(tls_server.url, tls_server.api_key, ca_bundle=tls_server.cert) as client:
        assert client.sessions.list() == []
    monkeypatch.setenv("CHASER_CA_BUNDLE", str(tls_server.cert))
    with ChaserClient(tls_server.url, tls_server.api_key) as client:
        assert client.workspaces.list() == []


async def test_websockets_go_over_wss(tls_server):
    """The upgrade reaches the server through TLS: its refusal is the API's own 404."""
    client = ChaserClient(tls_server.url, tls_server.api_key, ca_bundle=tls_server.cert)
    assert client.ws_url("/v1/x").startswith("wss://")
    try:
        with pytest.raises(ChaserAPIError) as refused:
            async with connect_tunnel(client, "ses_000000000000000000000000", 3000):
                pass
        assert (refused.value.status, refused.value.code) == (404, "session_not_found")
    finally:
        client.close()


def test_the_cli_over_https(tls_server):
    env = {**os.environ, "CHASER_CONFIG": str(tls_server.config_file)}
    env.pop("CHASER_API_URL", None)
    env.pop("CHASER_API_KEY", None)
    run = subprocess.run([sys.executable, "-m", "chaser.cli.main", "sessions", "list", "--json"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr  # the config's ca_bundle, as `chaser server` wrote it
    assert json.loads(run.stdout)["sessions"] == []
    elsewhere = {**env, "CHASER_CONFIG": str(tls_server.config_file.parent / "none.json"),
                 "CHASER_API_URL": tls_server.url, "CHASER_API_KEY": tls_server.api_key}
    run = subprocess.run([sys.executable, "-m", "chaser.cli.main", "--ca", str(tls_server.cert), "keys", "list",
                          "--json"], cwd=REPO, env=elsewhere, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    run = subprocess.run([sys.executable, "-m", "chaser.cli.main", "keys", "list"], cwd=REPO, env=elsewhere,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in run.stderr


def test_mcp_tools_call_back_over_loopback_https(tls_server):
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "sessions_list", "arguments": {}}}
    with tls_server.client() as http:
        response = http.post("/v1/mcp", json=body, headers={"Accept": "application/json"})
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert result.get("isError") is not True, result
    assert int(response.headers["x-ratelimit-limit"]) == BURST


def test_chaser_sdk_over_https_and_its_rate_limit(tls_server, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_server.cert))  # the SDK's urllib: Python's default trust
    with tls_server.client() as http:
        key = http.post("/v1/keys", json={"name": "sdk", "scopes": ["sessions.read"]}).json()["key"]
    sdk = SdkClient(base_url=tls_server.url, api_key=key)
    for _ in range(BURST):
        assert sdk.sessions.list() == []
    with pytest.raises(ChaserApiError) as refused:
        sdk.sessions.list()
    error = refused.value
    assert (error.status, error.code) == (429, "rate_limited")
    assert (error.rate_limit.limit, error.rate_limit.remaining) == (BURST, 0)
    assert 1700 <= error.rate_limit.reset <= 1800  # seconds until the bucket of 30 is full at one a minute
    with tls_server.client() as http:  # another key is not affected
        assert http.get("/v1/sessions").status_code == 200
        refused_raw = http.get("/v1/sessions", headers={"Authorization": f"Bearer {key}"})
    assert 1 <= int(refused_raw.headers["Retry-After"]) <= 60
