"""Serving beyond localhost: rate limits per API key, CHASER_PUBLIC_URL, and the TLS and
plain-HTTP checks of `chaser server` (the real HTTPS server: tests/integration/test_tls.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from starlette.testclient import WebSocketDenialResponse

from chaser.config import Settings
from chaser.service.ratelimit import DatabaseTokenBucketLimiter, NoRateLimit, TokenBucketLimiter, rate_limiter_for
from chaser.store import Database
from tests.support.api import assert_error

MCP_LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
MCP_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def limited(make_harness):
    """A server allowing 3 requests per minute per key (a bucket of 3), on a clock the test moves."""
    harness = make_harness(rate_limit_per_minute=3)
    clock = FakeClock()
    harness.services.rate_limiter.clock = clock
    harness.clock = clock
    return harness


# --- the bucket -------------------------------------------------------------------------------
def test_token_bucket_refills_at_its_rate():
    clock = FakeClock()
    limiter = TokenBucketLimiter(60, 3, clock=clock)  # one token a second, three at once
    decisions = [limiter.take("key_a") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[0].reset_s == 1 and decisions[2].reset_s == 3
    assert decisions[3].retry_after_s == 1 and decisions[3].headers()["Retry-After"] == "1"
    assert limiter.take("key_b").allowed  # another key has its own bucket
    clock.now += 0.5
    assert not limiter.take("key_a").allowed
    clock.now += 0.5
    assert limiter.take("key_a").allowed
    clock.now += 3600  # never more than the bucket holds
    assert [limiter.take("key_a").allowed for _ in range(4)] == [True, True, True, False]


def test_replicas_share_each_keys_bucket_in_the_database(tmp_path):
    """Two API replicas on one database: one bucket per key, whichever replica is asked (the same
    sequence of answers as one in-memory bucket). PostgreSQL under concurrency: tests/integration/
    test_postgres.py."""
    db = Database(f"sqlite:///{tmp_path / 'chaser.db'}")
    db.upgrade()
    clock = FakeClock()
    replicas = [DatabaseTokenBucketLimiter(db, 60, 3, clock=clock) for _ in range(2)]
    decisions = [replicas[index % 2].take("key_a") for index in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[3].retry_after_s == 1
    assert replicas[1].take("key_b").allowed
    clock.now += 1.0
    assert replicas[1].take("key_a").allowed and not replicas[0].take("key_a").allowed
    clock.now -= 30  # a replica whose clock is behind refills nothing, takes nothing back
    assert not replicas[0].take("key_a").allowed
    clock.now += 3600
    assert [replicas[i % 2].take("key_a").allowed for i in range(4)] == [True, True, True, False]
    db.dispose()


def test_each_role_gets_its_limiter(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'chaser.db'}")
    one = Settings(home=tmp_path / "one", database_url=f"sqlite:///{tmp_path / 'chaser.db'}")
    replica = one.model_copy(update={"local_runtime": False})
    assert isinstance(rate_limiter_for(one, db), TokenBucketLimiter)
    assert isinstance(rate_limiter_for(replica, db), DatabaseTokenBucketLimiter)
    assert isinstance(rate_limiter_for(one, db, node=True), NoRateLimit)  # its replicas charged the request
    assert isinstance(rate_limiter_for(one.model_copy(update={"rate_limit_per_minute": 0}), db), NoRateLimit)
    db.dispose()


def test_rate_limit_zero_turns_it_off(make_harness):
    harness = make_harness(rate_limit_per_minute=0)
    for _ in range(5):
        response = harness.client.get("/v1/sessions")
        assert response.status_code == 200
        assert "x-ratelimit-limit" not in response.headers


# --- the API ----------------------------------------------------------------------------------
def test_the_request_over_the_limit_is_429_with_retry_after(limited):
    seen = []
    for _ in range(3):
        response = limited.client.get("/v1/sessions")
        assert response.status_code == 200
        seen.append((response.headers["x-ratelimit-limit"], response.headers["x-ratelimit-remaining"]))
    assert seen == [("3", "2"), ("3", "1"), ("3", "0")]
    refused = limited.client.get("/v1/sessions")
    body = assert_error(refused, 429, "rate_limited")
    assert "rate limit" in body["message"]
    assert refused.headers["Retry-After"] == "20"  # 3 a minute: a token every 20 s
    assert refused.headers["x-ratelimit-limit"] == "3"
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert refused.headers["x-ratelimit-reset"] == "60"  # seconds until the bucket is full again
    assert refused.headers.get_list("x-ratelimit-limit") == ["3"]  # once, not twice

    other = limited.key("sessions.read")  # another key is unaffected
    assert limited.client.get("/v1/sessions", headers=other).status_code == 200

    limited.clock.now += 19
    assert limited.client.get("/v1/sessions").status_code == 429
    limited.clock.now += 1
    passed = limited.client.get("/v1/sessions")
    assert passed.status_code == 200 and passed.headers["x-ratelimit-remaining"] == "0"
    limited.clock.now += 60
    assert [limited.client.get("/v1/sessions").status_code for _ in range(4)] == [200, 200, 200, 429]


def test_refused_keys_cost_nothing(limited):
    for headers in ({"Authorization": "Bearer sk_nope"}, {"Authorization": "Basic x"}, {"Authorization": ""}):
        assert limited.client.get("/v1/sessions", headers=headers).status_code == 401
    assert limited.client.get("/v1/sessions").headers["x-ratelimit-remaining"] == "2"
    assert "x-ratelimit-limit" not in limited.client.get("/v1/sessions", headers={"Authorization": "Bearer x"}).headers


def test_every_answer_after_the_key_check_carries_the_headers(limited):
    missing = limited.client.get("/v1/sessions/ses_000000000000000000000000")
    assert_error(missing, 404, "session_not_found")
    assert missing.headers["x-ratelimit-remaining"] == "2"
    forbidden = limited.client.get("/v1/keys", headers=limited.key("sessions.read"))
    assert_error(forbidden, 403, "forbidden")
    assert forbidden.headers["x-ratelimit-remaining"] == "2"  # that key's own bucket


def test_a_websocket_counts_once_at_open_and_is_refused_over_the_limit(limited):
    session = limited.session()["id"]  # 1
    with limited.client.websocket_connect(f"/v1/sessions/{session}/pty?mode=exec") as ws:  # 2
        ws.send_text('{"type": "exec", "command": "true"}')
        assert limited.client.get("/v1/sessions").headers["x-ratelimit-remaining"] == "0"  # 3
    with pytest.raises(WebSocketDenialResponse) as denied, \
            limited.client.websocket_connect(f"/v1/sessions/{session}/tunnel/3000"):
        pass
    assert denied.value.status_code == 429
    assert denied.value.json()["code"] == "rate_limited"
    assert denied.value.headers["retry-after"] == "20"
    assert denied.value.headers["x-ratelimit-remaining"] == "0"


def test_mcp_requests_count_against_the_key(limited):
    answered = limited.client.post("/v1/mcp", json=MCP_LIST, headers=MCP_HEADERS)
    assert answered.status_code == 200, answered.text
    assert answered.headers["x-ratelimit-remaining"] == "2"
    limited.client.post("/v1/mcp", json=MCP_LIST, headers=MCP_HEADERS)
    limited.client.get("/v1/sessions")
    refused = limited.client.post("/v1/mcp", json=MCP_LIST, headers=MCP_HEADERS)
    assert_error(refused, 429, "rate_limited")
    assert refused.headers["retry-after"] == "20"


class SdkTransport:
    """chaser-sdk's Transport over the harness' TestClient (the SDK's own error parsing runs)."""

    def __init__(self, client) -> None:
        self.client = client

    def request(self, method, url, headers, body, timeout):
        from chaser_sdk.client import HttpResponse

        response = self.client.request(method, url, headers=dict(headers), content=body)
        return HttpResponse(status=response.status_code, headers={k.lower(): v for k, v in response.headers.items()},
                            body=response.content)


def test_chaser_sdk_surfaces_rate_limit(limited):
    from chaser_sdk import ChaserClient as SdkClient
    from chaser_sdk.errors import ChaserApiError

    sdk = SdkClient(base_url="http://testserver", api_key=limited.admin_key,
                    transport=SdkTransport(limited.client))
    for _ in range(3):
        sdk.sessions.list()
    with pytest.raises(ChaserApiError) as refused:
        sdk.sessions.list()
    assert refused.value.status == 429 and refused.value.code == "rate_limited"
    assert (refused.value.rate_limit.limit, refused.value.rate_limit.remaining, refused.value.rate_limit.reset) == (
        3, 0, 60)


def test_openapi_documents_rate_limited_on_every_authenticated_operation(harness):
    schema = harness.client.get("/openapi.json").json()
    authenticated = 0
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            if "401" not in responses:
                continue
            authenticated += 1
            assert "rate_limited" in responses["429"]["description"], (method, path)
            assert {"Retry-After", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"} <= set(
                responses["429"]["headers"]), (method, path)
    assert authenticated > 40
    create = schema["paths"]["/v1/sessions"]["post"]["responses"]["429"]["description"]
    assert "quota_exceeded" in create and "rate_limited" in create
    assert "401" not in schema["paths"]["/health"]["get"]["responses"]


# --- CHASER_PUBLIC_URL -----------------------------------------------------------------------
PUBLIC = "https://chaser.example.org:8443"


def test_every_url_handed_out_uses_the_public_url(make_harness):
    harness = make_harness(public_url=PUBLIC + "/", base_domain="sbx.example.org")
    created = harness.client.post("/v1/sessions", json={"ephemeral": True})
    assert created.status_code == 201
    session = created.json()["id"]
    assert created.headers["Location"] == f"{PUBLIC}/v1/sessions/{session}"
    assert created.json()["endpoints"]["control"] == f"{PUBLIC}/v1/sessions/{session}"
    assert harness.client.get(f"/v1/sessions/{session}").json()["endpoints"]["control"].startswith(PUBLIC + "/")
    listed = harness.client.get("/v1/sessions").json()["sessions"]
    assert [s["endpoints"]["control"] for s in listed] == [f"{PUBLIC}/v1/sessions/{session}"]
    opened = harness.client.post(f"/v1/sessions/{session}/ports/3000/public").json()
    assert opened["url"] == f"{PUBLIC}/s/{session}/forward/3000/"
    ports = harness.client.get(f"/v1/sessions/{session}/ports").json()["ports"]
    assert [p["url"] for p in ports] == [f"{PUBLIC}/s/{session}/forward/3000/"]
    link = harness.client.post(f"/v1/sessions/{session}/ports/3000/link").json()["url"]
    assert link.startswith(f"https://{session}.sbx.example.org:8443/forward/3000/?token=")
    assert harness.client.get("/openapi.json").json()["servers"] == [{"url": PUBLIC}]
    ended = harness.client.delete(f"/v1/sessions/{session}").json()
    assert ended["endpoints"]["control"] == f"{PUBLIC}/v1/sessions/{session}"


def test_without_public_url_urls_are_the_requests_own(make_harness):
    harness = make_harness(base_domain="sbx.example.org")
    created = harness.client.post("/v1/sessions", json={"ephemeral": True}, headers={"Host": "api.local:9000"})
    session = created.json()["id"]
    assert created.headers["Location"] == f"http://api.local:9000/v1/sessions/{session}"
    assert created.json()["endpoints"]["control"] == f"http://api.local:9000/v1/sessions/{session}"
    link = harness.client.post(f"/v1/sessions/{session}/ports/3000/link", headers={"Host": "api.local:9000"})
    assert link.json()["url"].startswith(f"http://{session}.sbx.example.org:9000/forward/3000/?token=")
    assert "servers" not in harness.client.get("/openapi.json").json()


def test_mcp_tools_call_the_api_with_the_callers_host_and_scheme():
    """The URLs in what MCP tools get back are those the MCP caller reaches the server by."""
    from chaser.mcp.server import HEADERS_SCOPE_KEY, _client_factory

    class Request:
        def __init__(self) -> None:
            self.scope = {"chaser.mcp.api_key": "sk_x", "chaser.mcp.base_url": "http://127.0.0.1:8080",
                          HEADERS_SCOPE_KEY: {"Host": "chaser.example.org", "X-Forwarded-Proto": "https"}}

    client = _client_factory(Request())()
    try:
        assert client._http.headers["host"] == "chaser.example.org"
        assert client._http.headers["x-forwarded-proto"] == "https"
    finally:
        client.close()


@pytest.mark.parametrize("value", ["ftp://x.example", "https://x.example/api", "https://x.example/?a=1",
                                   "https://x.example#top", "x.example:8080", "https://u:p@x.example",
                                   "https://x.example:99999"])
def test_public_url_is_validated_at_start(tmp_path, value):
    with pytest.raises(ValueError, match="CHASER_PUBLIC_URL"):
        Settings(home=tmp_path, public_url=value)


def test_public_url_loses_its_trailing_slash(tmp_path):
    assert Settings(home=tmp_path, public_url="HTTPS://Chaser.example/").public_url == "HTTPS://Chaser.example"


# --- chaser server: TLS files and the plain-HTTP warning --------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "127.255.0.9", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_binds_get_no_warning(host):
    from chaser.cli.commands.server import plain_http_warning

    assert plain_http_warning(host, tls=False) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.1.2.3", "192.168.1.20", "203.0.113.7", "fe80::1%eth0",
                                  "2001:db8::5", "chaser.example.org"])
def test_non_loopback_binds_without_tls_warn_once(host):
    from chaser.cli.commands.server import plain_http_warning

    warning = plain_http_warning(host, tls=False)
    assert warning is not None and "\n" not in warning
    assert "without TLS" in warning and "--tls-cert" in warning
    assert plain_http_warning(host, tls=True) is None


def make_certificate(directory: Path, name: str = "server") -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def test_server_settings_refuse_bad_tls_before_starting(tmp_path, monkeypatch, capsys):
    from chaser.cli.commands.server import server_settings

    monkeypatch.setenv("CHASER_HOME", str(tmp_path / "home"))
    cert, key = make_certificate(tmp_path)
    other_cert, other_key = make_certificate(tmp_path, "other")
    settings = server_settings(tls_cert=cert, tls_key=key)
    assert (settings.tls_cert, settings.tls_key) == (cert, key)

    cases = [
        ({"tls_cert": cert}, "CHASER_TLS_CERT and CHASER_TLS_KEY go together"),
        ({"tls_key": key}, "CHASER_TLS_CERT and CHASER_TLS_KEY go together"),
        ({"tls_cert": tmp_path / "missing.crt", "tls_key": key}, "No such file"),
        ({"tls_cert": cert, "tls_key": other_key}, "do not serve HTTPS"),
        ({"tls_cert": key, "tls_key": key}, "do not serve HTTPS"),
    ]
    for kwargs, message in cases:
        with pytest.raises(SystemExit) as stopped:
            server_settings(**kwargs)
        assert stopped.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, err
    del other_cert
    monkeypatch.setenv("CHASER_PUBLIC_URL", "https://x.example/path")
    with pytest.raises(SystemExit):
        server_settings()
    assert "CHASER_PUBLIC_URL" in capsys.readouterr().err


def test_unreadable_tls_key_is_refused(tmp_path, monkeypatch, capsys):
    import os

    from chaser.cli.commands.server import server_settings

    if os.geteuid() == 0:  # root reads any file: a directory stands for an unreadable one
        key = tmp_path / "key-dir"
        key.mkdir()
    else:
        key = tmp_path / "key.pem"
        key.write_text("x")
        key.chmod(0)
    cert, _ = make_certificate(tmp_path)
    monkeypatch.setenv("CHASER_HOME", str(tmp_path / "home"))
    with pytest.raises(SystemExit):
        server_settings(tls_cert=cert, tls_key=key)
    assert "TLS key" in capsys.readouterr().err


def test_api_url_is_https_with_tls():
    from chaser.cli.commands.server import api_url

    assert api_url("0.0.0.0", 8443, tls=True) == "https://127.0.0.1:8443"
    assert api_url("::1", 8080) == "http://[::1]:8080"


def test_the_gateways_login_cookie_counts_against_its_key(make_harness):
    harness = make_harness(rate_limit_per_minute=3, base_domain="sbx.test")
    harness.services.rate_limiter.clock = FakeClock()
    session = harness.session()["id"]  # 1
    principal = harness.services.keys.authenticate(harness.admin_key)
    cookie = harness.services.forwarding.login_cookie(principal, session)
    host = {"Host": f"{session}.sbx.test", "Cookie": f"chaser_token={cookie}"}
    bearer = harness.client.headers.pop("Authorization")  # the cookie alone
    first = harness.client.get("/forward/3000/", headers=host)  # 2: whatever the sandbox answers
    assert first.headers["x-ratelimit-remaining"] == "1", (first.status_code, first.text)
    assert harness.client.get("/forward/3000/", headers=host).headers["x-ratelimit-remaining"] == "0"  # 3
    assert_error(harness.client.get("/forward/3000/", headers=host), 429, "rate_limited")
    harness.client.headers["Authorization"] = bearer
    assert_error(harness.client.get("/v1/sessions"), 429, "rate_limited")  # the same key's budget
