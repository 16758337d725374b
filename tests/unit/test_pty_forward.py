"""PTY and port forwarding without QEMU: the helpers, and the real server
(uvicorn in a thread) talking to the real agent running on this host
(tests/unit/conftest.py `agent`, sandbox root `/`) through the runtime seam
(tests/support/agent_vm.py: AgentRuntime, AgentVM)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from chaser import errors
from chaser.service import forward as fwd
from chaser.service import pty as ptys
from tests.support import free_port, wait_until
from tests.support.agent_vm import AgentRuntime
from tests.support.net import listening
from tests.support.servers import SANDBOX_SERVERS

# --- helpers ---------------------------------------------------------------------------


def test_check_size_and_mode():
    assert ptys.check_size("24", 80) == (24, 80)
    for rows, cols in ((0, 80), (24, 1001), ("x", 1), (None, 2), (True, 5)):
        with pytest.raises(errors.InvalidRequest):
            ptys.check_size(rows, cols)
    assert ptys.check_mode(None) == "human"
    with pytest.raises(errors.InvalidRequest):
        ptys.check_mode("robot")


def test_plans():
    human = ptys.plan("human", 30, 100)
    assert human.params == {"rows": 30, "cols": 100, "term": "xterm-256color"} and human.marker is None
    agent = ptys.plan("agent", 24, 80)
    assert agent.params["term"] == "dumb" and "--norc" in agent.params["command"]
    assert json.loads(agent.params["env"]) == {"NO_COLOR": "1", "PAGER": "cat", "GIT_PAGER": "cat",
                                               "PS1": "$ ", "PS2": "> "}
    ex = ptys.plan("exec", 24, 80, command="echo 'a b'")
    assert ex.marker.decode() in ex.params["command"] and "'echo '\"'\"'a b'\"'\"''" in ex.params["command"]
    with pytest.raises(errors.InvalidRequest):
        ptys.plan("exec", 24, 80)


def test_parse_control():
    assert ptys.parse_control('{"type":"resize","rows":5,"cols":6}') == {"type": "resize", "rows": 5, "cols": 6}
    assert ptys.parse_control('{"type":"resize","rows":0,"cols":6}') is None
    assert ptys.parse_control('{"type":"signal","signal":"INT"}') == {"type": "signal", "signal": "INT"}
    assert ptys.parse_control("nope") is None and ptys.parse_control("[1]") is None


def test_marker_filter_split_across_chunks():
    f = ptys.MarkerFilter(b"__m__")
    assert f.feed(b"noise __") == b""
    assert f.feed(b"m__") == b""  # newline not there yet
    assert not f.found.is_set()
    assert f.feed(b"\r\nhello") == b"hello"
    assert f.found.is_set() and f.feed(b"more") == b"more"
    g = ptys.MarkerFilter(b"__m__")
    assert g.feed(b"__m__\nout") == b"out"
    h = ptys.MarkerFilter(b"__m__")
    assert h.feed(b"partial") == b"" and h.finish() == b"partial"


def test_host_session():
    assert fwd.host_session("ses_abc.localhost:8080", "localhost") == "ses_abc"
    assert fwd.host_session("SES_ABC.Example.COM", "example.com") == "ses_abc"
    assert fwd.host_session("localhost:8080", "localhost") is None
    assert fwd.host_session("a.b.localhost", "localhost") is None
    assert fwd.host_session("api.localhost", "localhost") is None  # only a session id names a session
    assert fwd.host_session("ses_abc.localhost", None) is None


def test_upstream_headers_strip_auth_cookie_and_hop_by_hop():
    raw = [(b"host", b"api:8080"), (b"authorization", b"Bearer sk_secret"), (b"connection", b"keep-alive, x-foo"),
           (b"x-foo", b"1"), (b"keep-alive", b"5"), (b"transfer-encoding", b"chunked"), (b"te", b"trailers"),
           (b"cookie", b"a=1; chaser_token=sk_secret; b=2"), (b"accept", b"*/*"), (b"content-length", b"3")]
    out = fwd.upstream_request_headers(raw, port=3000, client_host="10.0.0.1", scheme="http",
                                       prefix="/s/x/forward/3000")
    names = [n for n, _ in out]
    assert ("host", "localhost:3000") in out and ("cookie", "a=1; b=2") in out and ("accept", "*/*") in out
    for gone in ("authorization", "connection", "x-foo", "keep-alive", "transfer-encoding", "te", "content-length"):
        assert gone not in names
    assert ("x-forwarded-for", "10.0.0.1") in out and ("x-forwarded-host", "api:8080") in out
    assert ("x-forwarded-prefix", "/s/x/forward/3000") in out
    other = fwd.upstream_request_headers([(b"authorization", b"Basic dTpw"), (b"cookie", b"chaser_token=x")],
                                         port=1, client_host=None, scheme="https", prefix="/p")
    assert ("authorization", "Basic dTpw") in other and "cookie" not in [n for n, _ in other]


def test_downstream_headers_and_location():
    raw = [(b"Content-Type", b"text/html"), (b"Connection", b"close"), (b"Transfer-Encoding", b"chunked"),
           (b"Location", b"/dir/"), (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2; Path=/; HttpOnly"),
           (b"Set-Cookie", b"c=3; Domain=localhost"), (b"Set-Cookie", b"chaser_token=forged")]
    out = fwd.downstream_response_headers(raw, port=8000, prefix="/forward/8000", api_origin=False)
    assert out == [(b"content-type", b"text/html"), (b"location", b"/forward/8000/dir/"),
                   (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2; Path=/; HttpOnly")]  # no parent domain, not ours
    assert fwd.rewrite_location("http://localhost:8000/a?b", port=8000, prefix="/p") == "/p/a?b"
    assert fwd.rewrite_location("https://example.com/", port=8000, prefix="/p") == "https://example.com/"
    assert fwd.rewrite_location("//cdn/x", port=8000, prefix="/p") == "//cdn/x"


def test_path_style_responses_are_sandboxed():
    """On the API's origin: our sandbox CSP (the sandbox's own `sandbox` directive removed,
    its other directives kept), nosniff, and no header that reaches the whole origin."""
    raw = [(b"Content-Type", b"text/html"), (b"Set-Cookie", b"a=1"), (b"Clear-Site-Data", b'"*"'),
           (b"Service-Worker-Allowed", b"/"), (b"Strict-Transport-Security", b"max-age=1; includeSubDomains"),
           (b"NEL", b"{}"), (b"Report-To", b"{}"), (b"Alt-Svc", b'h3=":443"'), (b"X-Content-Type-Options", b"x"),
           (b"Content-Security-Policy", b"default-src 'self'; Sandbox allow-same-origin allow-scripts"),
           (b"Content-Security-Policy", b"sandbox allow-same-origin, img-src *"), (b"Location", b"/a")]
    out = fwd.downstream_response_headers(raw, port=8000, prefix="/s/x/forward/8000")
    assert out == [(b"content-type", b"text/html"), (b"content-security-policy", b"default-src 'self'"),
                   (b"content-security-policy", b"img-src *"), (b"location", b"/s/x/forward/8000/a"),
                   (b"content-security-policy", fwd.SANDBOX_CSP.encode()),
                   (b"x-content-type-options", b"nosniff")]
    assert "allow-same-origin" not in fwd.SANDBOX_CSP and "allow-top-navigation" not in fwd.SANDBOX_CSP
    only_sandbox = fwd.downstream_response_headers([(b"content-security-policy", b"sandbox allow-same-origin")],
                                                   port=1, prefix="/p")
    assert only_sandbox == [(b"content-security-policy", fwd.SANDBOX_CSP.encode()),
                            (b"x-content-type-options", b"nosniff")]


def test_sandbox_origins():
    assert fwd.is_sandbox_origin("null", "localhost") and fwd.is_sandbox_origin("NULL", None)
    assert fwd.is_sandbox_origin("http://ses_abc.localhost:8080", "localhost")
    assert not fwd.is_sandbox_origin("http://localhost:8080", "localhost")
    assert not fwd.is_sandbox_origin("http://api.localhost:8080", "localhost")  # not a session id
    assert not fwd.is_sandbox_origin(None, "localhost")
    assert not fwd.is_sandbox_origin("http://ses_abc.localhost", None)


def test_query_and_cookie_helpers():
    assert fwd.query_without("token=sk_1&a=2&b=", "token") == "a=2&b="
    assert fwd.cookie_value("x=1; chaser_token=sk_abc") == "sk_abc"
    assert fwd.cookie_values('chaser_token=a; x=1; chaser_token="b"; chaser_tokenx=c') == ["a", "b"]
    assert fwd.cookie_values(None) == []
    assert fwd.cookie_value(None) is None
    assert fwd.check_port("443") == 443
    for bad in ("0", "70000", "x", "-1"):
        with pytest.raises(errors.InvalidRequest):
            fwd.check_port(bad)


def test_host_routing_middleware_rewrites_path():
    seen = {}

    async def app(scope, receive, send):
        seen.update(scope)

    from chaser.api.host_routing import HostRoutingMiddleware

    mw = HostRoutingMiddleware(app, base_domain="localhost")
    scope = {"type": "http", "path": "/forward/3000/a", "raw_path": b"/forward/3000/a",
             "headers": [(b"host", b"ses_1.localhost:8080")]}
    asyncio.run(mw(scope, None, None))
    assert seen["path"] == "/s/ses_1/forward/3000/a" and seen["raw_path"] == b"/s/ses_1/forward/3000/a"
    assert seen["chaser_host_style"] is True
    seen.clear()
    api = {"type": "http", "path": "/v1/sessions", "raw_path": b"/v1/sessions", "headers": [(b"host", b"localhost")]}
    asyncio.run(mw(api, None, None))
    assert seen["path"] == "/v1/sessions" and "chaser_host_style" not in seen
    seen.clear()
    sent = []

    async def send(message):
        sent.append(message)

    for path in ("/v1/sessions", "/s/ses_2/forward/3000/", "/health", "/"):  # a session's origin serves only its forwards
        sent.clear()
        asyncio.run(mw({**scope, "path": path, "raw_path": path.encode()}, None, send))
        assert not seen and sent[0]["status"] == 404, path
        assert json.loads(sent[1]["body"])["code"] == "not_found"


# --- the real server against the host's agent ------------------------------------------------


class LiveServer:
    def __init__(self, tmp_path: Path, agent_proc) -> None:
        import uvicorn

        from chaser.assembly import create_app
        from chaser.config import Settings

        self.settings = Settings(home=tmp_path / "home", config_file=tmp_path / "config.json", base_domain="localhost")
        self.runtime = AgentRuntime(agent_proc)
        self.app = create_app(self.settings, self.runtime, reaper_interval=3600)
        self.key = self.app.state.services.keys.create(name="admin", full_access=True).key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), timeout=20,
                   message="server did not start")
        assert self.server.started, "uvicorn exited at start-up"
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30)
        self.session = self.http.post("/v1/sessions", json={"ephemeral": True}).json()["id"]

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def live(agent, tmp_path_factory):
    srv = LiveServer(tmp_path_factory.mktemp("ptyfwd"), agent)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def host_servers(tmp_path_factory):
    """HTTP, WebSocket-echo and line-echo servers on this host (what the sandbox would run)."""
    base = tmp_path_factory.mktemp("servers")
    (base / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    ports = {"http": free_port(), "echo": free_port(), "ws": free_port(), "tcp": free_port()}
    here = base / "servers.py"
    here.write_text(SANDBOX_SERVERS)
    procs = [
        subprocess.Popen([sys.executable, "-m", "http.server", str(ports["http"]), "--bind", "127.0.0.1"],
                         cwd=base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, str(here), "http-echo", str(ports["echo"])], stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, str(here), "ws-echo", str(ports["ws"])], stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, str(here), "line-echo", str(ports["tcp"])], stderr=subprocess.DEVNULL),
    ]
    for port in ports.values():
        wait_until(lambda port=port: listening(port), timeout=10, message=f"nothing listens on port {port}")
    yield ports, base
    for p in procs:
        p.kill()
        p.wait()


def ws_connect(url, headers=None, **kw):
    from websockets.sync.client import connect

    return connect(url, additional_headers=headers or {}, max_size=None, open_timeout=10, **kw)


def read_until(ws, needle: bytes, timeout=10.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        msg = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(msg, bytes):
            seen += msg
    return seen


def test_pty_human_echo_resize_exit(live):
    auth = {"Authorization": f"Bearer {live.key}"}
    with ws_connect(f"{live.ws}/v1/sessions/{live.session}/pty?rows=20&cols=70", auth) as ws:
        ws.send(b"echo hi-$((1+1))\n")
        read_until(ws, b"hi-2")
        ws.send(b"stty size\n")
        read_until(ws, b"20 70")
        ws.send(json.dumps({"type": "resize", "rows": 33, "cols": 99}))
        ws.send(b"stty size\n")
        read_until(ws, b"33 99")
        assert live.http.post(f"/v1/sessions/{live.session}/resize", json={"rows": 40, "cols": 120}).status_code == 200
        ws.send(b"stty size\n")
        read_until(ws, b"40 120")
        ws.send(b"exit 7\n")
        exit_msg = None
        while exit_msg is None:
            msg = ws.recv(timeout=10)
            if isinstance(msg, str):
                exit_msg = json.loads(msg)
        assert exit_msg == {"type": "exit", "exit_code": 7}
    assert live.http.post(f"/v1/sessions/{live.session}/resize", json={"rows": 0, "cols": 1}).status_code == 400
    assert live.http.post(f"/v1/sessions/{live.session}/resize", json={"rows": 5, "cols": 1001}).status_code == 400


def test_pty_exec_mode(live):
    with ws_connect(f"{live.ws}/v1/sessions/{live.session}/pty?mode=exec&token={live.key}") as ws:
        ws.send(json.dumps({"type": "exec", "command": "printf 'a\\nb\\n'; exit 5"}))
        out, code = b"", None
        while code is None:
            msg = ws.recv(timeout=10)
            if isinstance(msg, bytes):
                out += msg
            else:
                code = json.loads(msg)["exit_code"]
    assert (out, code) == (b"a\nb\n", 5)


def test_pty_agent_mode(live):
    auth = {"Authorization": f"Bearer {live.key}"}
    with ws_connect(f"{live.ws}/v1/sessions/{live.session}/pty?mode=agent", auth) as ws:
        ws.send(b"echo $TERM $NO_COLOR $PAGER $GIT_PAGER\n")
        read_until(ws, b"dumb 1 cat cat")


def test_pty_refusals(live):
    from websockets.exceptions import InvalidStatus

    for url, status in ((f"/v1/sessions/ses_nope/pty?token={live.key}", 404),
                        (f"/v1/sessions/{live.session}/pty", 401),
                        (f"/v1/sessions/{live.session}/pty?token=sk_wrong", 401),
                        (f"/v1/sessions/{live.session}/pty?mode=x&token={live.key}", 400),
                        (f"/v1/sessions/{live.session}/pty?rows=0&token={live.key}", 400)):
        with pytest.raises(InvalidStatus) as info:
            ws_connect(live.ws + url)
        assert info.value.response.status_code == status, url
        assert "code" in json.loads(info.value.response.body)


def test_pty_terminated_session_is_409(live):
    from websockets.exceptions import InvalidStatus

    other = live.http.post("/v1/sessions", json={"ephemeral": True}).json()["id"]
    live.http.delete(f"/v1/sessions/{other}")
    with pytest.raises(InvalidStatus) as info:
        ws_connect(f"{live.ws}/v1/sessions/{other}/pty?token={live.key}")
    assert info.value.response.status_code == 409
    assert json.loads(info.value.response.body)["code"] == "session_not_running"
    r = live.http.get(f"/s/{other}/forward/80/")  # the gateway: a dead sandbox is a missing site
    assert r.status_code == 404 and r.json()["code"] == "session_not_running"


def test_dropped_socket_ends_its_shell(live):
    with ws_connect(f"{live.ws}/v1/sessions/{live.session}/pty", {"Authorization": f"Bearer {live.key}"}) as ws:
        ws.send(b"echo ready\n")
        read_until(ws, b"ready")
        assert len(live.http.get(f"/v1/sessions/{live.session}/ptys").json()["ptys"]) >= 1
    wait_until(lambda: live.http.get(f"/v1/sessions/{live.session}/ptys").json()["ptys"] == [], timeout=10,
               message="the shell of the dropped socket is still open")


def test_gateway_http(live, host_servers):
    ports, base = host_servers
    prefix = f"/s/{live.session}/forward"
    r = live.http.get(f"{prefix}/{ports['http']}/big.bin")
    assert r.status_code == 200 and r.content == (base / "big.bin").read_bytes()
    body = os.urandom(3 * 1024 * 1024)
    r = live.http.post(f"{prefix}/{ports['echo']}/echo?x=1", content=body)
    assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == hashlib.sha256(body).hexdigest()

    def chunks():
        for _ in range(4):
            yield b"x" * 1000

    r = live.http.post(f"{prefix}/{ports['echo']}/echo", content=chunks())  # chunked request body
    assert r.content == b"x" * 4000
    r = live.http.get(f"{prefix}/{ports['echo']}/headers", headers={"Cookie": "a=1; chaser_token=zzz"})
    seen = r.json()
    assert "authorization" not in seen and seen["cookie"] == "a=1" and seen["host"] == f"localhost:{ports['echo']}"
    r = live.http.get(f"{prefix}/{ports['echo']}/chunked")
    assert r.headers.get("transfer-encoding") == "chunked" and r.content == b"one\ntwo\nthree\n"
    r = live.http.head(f"{prefix}/{ports['http']}/big.bin")
    assert r.status_code == 200 and r.headers["content-length"] == str(2 * 1024 * 1024)
    r = live.http.get(f"{prefix}/{ports['http']}", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"].endswith(f"/forward/{ports['http']}/")


def test_gateway_errors(live):
    prefix = f"/s/{live.session}/forward"
    closed = free_port()
    r = live.http.get(f"{prefix}/{closed}/")
    assert r.status_code == 502 and r.json()["code"] == "port_not_listening"
    assert live.http.get(f"{prefix}/0/").status_code == 400
    assert live.http.get(f"{prefix}/70000/").status_code == 400
    assert live.http.get("/s/ses_nope/forward/80/").status_code == 404
    assert httpx.get(f"{live.url}{prefix}/80/").status_code == 401


def test_path_style_has_no_login_and_is_sandboxed(live, host_servers):
    ports, _ = host_servers
    path = f"/s/{live.session}/forward/{ports['echo']}/headers"
    with httpx.Client(base_url=live.url) as browser:
        r = browser.get(path)
        assert r.status_code == 401 and "host-style" in r.json()["message"]
        for method in ("GET", "POST"):  # the API's origin: no login link, the key would sit in the page's URL
            r = browser.request(method, f"{path}?a=1&token={live.key}", follow_redirects=False)
            assert r.status_code == 400 and r.json()["code"] == "invalid_request", r.text
            assert "host-style" in r.json()["message"] and "set-cookie" not in r.headers
    r = live.http.get(path)  # a Bearer client sees the same answer, sandboxed
    assert r.status_code == 200 and "authorization" not in r.json()
    assert r.headers["content-security-policy"] == fwd.SANDBOX_CSP and r.headers["x-content-type-options"] == "nosniff"
    r = live.http.get(f"{path}?token=app-own")  # with a Bearer header `token` is the app's parameter
    assert r.status_code == 200
    url = f"/v1/sessions/{live.session}/ports/{ports['echo']}/public"
    assert live.http.post(url, json={"public": True}).json()["public"] is True
    r = httpx.get(live.url + path + "?token=app-own")  # a public port needs nothing; `token` is the app's too
    assert r.status_code == 200 and r.headers["content-security-policy"] == fwd.SANDBOX_CSP
    assert live.http.get(f"/v1/sessions/{live.session}/ports").json()["ports"][0]["port"] == ports["echo"]
    live.http.post(url, json={"public": False})
    assert httpx.get(live.url + path).status_code == 401


def host_of(live, session: str) -> str:
    return f"{session}.localhost:{live.port}"


def login(live, session: str, port: int, key: str | None = None) -> str:
    """The host-style login link: its cookie's value."""
    r = httpx.get(f"{live.url}/forward/{port}/headers?a=1&token={key or live.key}",
                  headers={"Host": host_of(live, session)}, follow_redirects=False)
    assert r.status_code == 302 and r.headers["location"] == f"/forward/{port}/headers?a=1", r.text
    cookie = r.headers["set-cookie"]
    attributes = [a.strip().lower() for a in cookie.split(";")]
    assert "httponly" in attributes and "path=/" in attributes and "samesite=lax" in attributes
    assert not any(a.startswith("domain") for a in attributes) and "secure" not in attributes  # host-only, http
    assert f"max-age={live.settings.session_max_lifetime_s}" in attributes
    name, _, value = cookie.split(";")[0].partition("=")
    assert name == "chaser_token" and value.startswith(f"v1.{session}.") and (key or live.key) not in value
    return value


def test_host_style_login_cookie(live, host_servers):
    ports, _ = host_servers
    echo = ports["echo"]
    r = live.http.get(f"/forward/{echo}/headers", headers={"Host": host_of(live, live.session)})
    assert r.status_code == 200 and r.json()["x-forwarded-prefix"] == f"/forward/{echo}"
    r = live.http.get(f"/forward/{echo}?a=1", headers={"Host": host_of(live, live.session)}, follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == f"/forward/{echo}/?a=1"  # stays on the session's host
    assert "content-security-policy" not in r.headers  # an origin of its own: the sandbox's headers as they are
    token = login(live, live.session, echo)

    def get(session: str, path: str, **headers) -> httpx.Response:
        return httpx.get(f"{live.url}{path}", headers={"Host": host_of(live, session),
                                                       "Cookie": f"app=1; chaser_token={token}", **headers})

    r = get(live.session, f"/forward/{echo}/headers")
    assert r.status_code == 200 and r.json()["cookie"] == "app=1"  # the sandbox never sees the cookie
    assert get(live.session, f"/forward/{ports['http']}/").status_code == 200  # any port of the session
    assert get(live.session, f"/forward/{echo}/headers", Origin=f"http://{host_of(live, live.session)}").status_code \
        == 200
    other = live.http.post("/v1/sessions", json={"ephemeral": True}).json()["id"]
    try:
        r = get(other, f"/forward/{echo}/headers")  # A's cookie on B's origin
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        for origin in (f"http://{host_of(live, other)}", "null", "http://evil.example"):
            r = get(live.session, f"/forward/{echo}/headers", Origin=origin)  # a foreign page riding on the cookie
            assert r.status_code == 403 and r.json()["code"] == "forbidden", origin
        r = httpx.get(f"{live.url}/v1/sessions", headers={"Cookie": f"chaser_token={token}"})
        assert r.status_code == 401  # never the API
        r = get(live.session, "/v1/sessions")  # nor the API on the session's origin: it serves only forwards
        assert r.status_code == 404
        r = httpx.get(f"{live.url}/s/{live.session}/forward/{echo}/headers", headers={"Cookie": f"chaser_token={token}"})
        assert r.status_code == 401  # nor path style
        tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        r = httpx.get(f"{live.url}/forward/{echo}/headers",
                      headers={"Host": host_of(live, live.session), "Cookie": f"chaser_token={tampered}"})
        assert r.status_code == 401
    finally:
        live.http.delete(f"/v1/sessions/{other}")
    assert get(live.session, f"/forward/{echo}/headers", Origin="null").status_code == 403
    r = httpx.post(f"{live.url}/forward/{echo}/echo?token={live.key}", content=b"x",
                   headers={"Host": host_of(live, live.session)})
    assert r.status_code == 400 and "GET or HEAD" in r.json()["message"]


def test_login_cookie_dies_with_its_key_and_session(live, host_servers):
    ports, _ = host_servers
    created = live.http.post("/v1/keys", json={"name": "browser", "scopes": ["exec.write"]})
    assert created.status_code in (200, 201), created.text
    key, key_id = created.json()["key"], created.json()["id"]
    token = login(live, live.session, ports["echo"], key)
    headers = {"Host": host_of(live, live.session), "Cookie": f"chaser_token={token}"}
    assert httpx.get(f"{live.url}/forward/{ports['echo']}/headers", headers=headers).status_code == 200
    assert live.http.delete(f"/v1/keys/{key_id}").status_code == 200
    r = httpx.get(f"{live.url}/forward/{ports['echo']}/headers", headers=headers)
    assert r.status_code == 401 and "revoked" in r.json()["message"]
    ended = live.http.post("/v1/sessions", json={"ephemeral": True}).json()["id"]  # and with its session
    token = login(live, ended, ports["echo"])
    headers = {"Host": host_of(live, ended), "Cookie": f"chaser_token={token}"}
    assert httpx.get(f"{live.url}/forward/{ports['echo']}/headers", headers=headers).status_code == 200
    live.http.delete(f"/v1/sessions/{ended}")
    r = httpx.get(f"{live.url}/forward/{ports['echo']}/headers", headers=headers)
    assert r.status_code == 404 and r.json()["code"] in ("session_not_running", "session_not_found")


def test_login_link(live, host_servers):
    """A short-lived link token instead of the API key in the browser's URL."""
    ports, _ = host_servers
    r = live.http.post(f"/v1/sessions/{live.session}/ports/{ports['echo']}/link")
    assert r.status_code == 200, r.text
    link = r.json()
    assert link["expires_in"] == fwd.LINK_TTL_S and live.key not in link["url"]
    assert link["url"].startswith(f"http://{host_of(live, live.session)}/forward/{ports['echo']}/?token=l1.")
    path = link["url"].split(host_of(live, live.session), 1)[1]
    r = httpx.get(live.url + path, headers={"Host": host_of(live, live.session)}, follow_redirects=False)
    assert r.status_code == 302 and r.headers["location"] == f"/forward/{ports['echo']}/"
    cookie = r.headers["set-cookie"].split(";")[0].partition("=")[2]
    assert cookie.startswith(f"v1.{live.session}.")
    r = httpx.get(f"{live.url}/forward/{ports['echo']}/headers",
                  headers={"Host": host_of(live, live.session), "Cookie": f"chaser_token={cookie}"})
    assert r.status_code == 200
    other = live.http.post("/v1/sessions", json={"ephemeral": True}).json()["id"]
    try:  # A's link on B's host, or as a cookie, or on path style: refused
        r = httpx.get(live.url + path, headers={"Host": host_of(live, other)}, follow_redirects=False)
        assert r.status_code == 401 and "link" in r.json()["message"]
    finally:
        live.http.delete(f"/v1/sessions/{other}")
    token = path.split("token=", 1)[1]
    r = httpx.get(f"{live.url}/forward/{ports['echo']}/headers",
                  headers={"Host": host_of(live, live.session), "Cookie": f"chaser_token={token}"})
    assert r.status_code == 401
    assert httpx.get(f"{live.url}/s/{live.session}/forward/{ports['echo']}/?token={token}").status_code == 400
    assert live.http.post(f"/v1/sessions/ses_nope/ports/{ports['echo']}/link").status_code == 404


def test_websocket_origin_rules(live, host_servers):
    from websockets.exceptions import InvalidStatus

    ports, _ = host_servers
    token = login(live, live.session, ports["ws"])
    own = f"http://{host_of(live, live.session)}"
    url = f"ws://{host_of(live, live.session)}/forward/{ports['ws']}/echo"  # connected to 127.0.0.1 below

    def connect(origin):
        return ws_connect(url, {"Cookie": f"chaser_token={token}"}, origin=origin,
                          sock=socket.create_connection(("127.0.0.1", live.port)))

    with connect(own) as ws:
        ws.send("cookie")
        assert ws.recv(timeout=10) == "cookie"
    for origin in ("null", "http://ses_0ther.localhost:1", "http://evil.example"):  # cross-site WebSocket hijacking
        with pytest.raises(InvalidStatus) as info:
            connect(origin)
        assert info.value.response.status_code == 403, origin
    for path in (f"/v1/sessions/{live.session}/pty?token={live.key}",
                 f"/v1/sessions/{live.session}/tunnel/{ports['tcp']}?token={live.key}"):
        for origin in ("null", own):  # a page a sandbox served never reaches the API's sockets
            with pytest.raises(InvalidStatus) as info:
                ws_connect(live.ws + path, origin=origin)
            assert info.value.response.status_code == 403, (path, origin)
    with ws_connect(f"{live.ws}/v1/sessions/{live.session}/tunnel/{ports['tcp']}?token={live.key}",
                    origin=live.url) as ws:  # the API's own origin (the coming console) is fine
        ws.send(b"x\n")
        assert read_until(ws, b"\n") == b"x\n"


def test_gateway_websocket(live, host_servers):
    ports, _ = host_servers
    url = f"{live.ws}/s/{live.session}/forward/{ports['ws']}/echo?token={live.key}"
    with ws_connect(url) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        blob = os.urandom(300_000)
        ws.send(blob)
        assert ws.recv(timeout=10) == blob


def test_tunnel_raw_tcp(live, host_servers):
    from websockets.exceptions import InvalidStatus

    ports, _ = host_servers
    auth = {"Authorization": f"Bearer {live.key}"}
    with ws_connect(f"{live.ws}/v1/sessions/{live.session}/tunnel/{ports['tcp']}", auth) as ws:
        ws.send(b"ping 1\n")
        assert read_until(ws, b"\n") == b"ping 1\n"
    with pytest.raises(InvalidStatus) as info:
        ws_connect(f"{live.ws}/v1/sessions/{live.session}/tunnel/{free_port()}", auth)
    assert info.value.response.status_code == 502


# --- the CLI against the live server --------------------------------------------------------------
CLI = [sys.executable, "-m", "chaser.cli.main"]


def cli_env(live, tmp_path) -> dict:
    config = tmp_path / "cli.json"
    config.write_text(json.dumps({"api_url": live.url, "api_key": live.key, "current_session": live.session}))
    env = {**os.environ, "CHASER_CONFIG": str(config)}
    env.pop("CHASER_API_URL", None)
    env.pop("CHASER_API_KEY", None)
    return env


def test_cli_shell_dash_c(live, tmp_path):
    env = cli_env(live, tmp_path)
    done = subprocess.run([*CLI, "shell", "-c", "echo one; echo two >&2; exit 9"], env=env, capture_output=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 9 and done.stdout == b"one\ntwo\n", done
    piped = subprocess.run([*CLI, "shell", "-c", "tr a-z A-Z"], env=env, capture_output=True, timeout=60,
                           input=b"abc\nno newline")
    assert piped.returncode == 0 and piped.stdout == b"ABC\nNO NEWLINE", piped
    interactive = subprocess.run([*CLI, "shell", "--mode", "agent"], env=env, capture_output=True, timeout=60,
                                 input=b"echo in-$((2*4))\nexit 4\n")
    assert interactive.returncode == 4 and b"in-8" in interactive.stdout, interactive
    missing = subprocess.run([*CLI, "shell", "ses_nope", "-c", "true"], env=env, capture_output=True, timeout=60,
                             stdin=subprocess.DEVNULL)
    assert missing.returncode == 1 and b"session_not_found" in missing.stderr


def test_cli_forward(live, host_servers, tmp_path):
    ports, _ = host_servers
    env = cli_env(live, tmp_path)
    proc = subprocess.Popen([*CLI, "forward", str(ports["tcp"]), "0"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        line = proc.stdout.readline().decode()
        local = int(line.split("127.0.0.1:")[1].split()[0])
        for i in range(2):
            with socket.create_connection(("127.0.0.1", local), timeout=10) as conn:
                conn.sendall(f"hello {i}\n".encode())
                data = b""
                while not data.endswith(b"\n"):
                    data += conn.recv(100)
                assert data == f"hello {i}\n".encode()
    finally:
        os.killpg(proc.pid, 2)
        assert proc.wait(10) == 0, proc.stderr.read()
