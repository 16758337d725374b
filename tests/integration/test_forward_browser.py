"""Untrusted web content in a real browser: headless Chromium (tests/support/browser.py)
against a real `chaser server` with two real microVMs, each serving pages with
`python3 -m http.server` inside the guest.

A page that session A serves — path style on the API's origin, and host style on
A's own origin — runs JavaScript that tries to read session B's forwarded pages
(path and host style, `credentials: 'include'`, with B's login cookie in the
browser), `/v1/sessions` and its "own" `/v1/…`, and to open WebSockets to B's
forward and to the PTY endpoint; it reports what it could read into the DOM.
Nothing of B and no `/v1` body may be readable, while A's own page loads, A's
own same-origin fetch and WebSocket work and B's page opens in its own tab
(so each refusal is the isolation, not a broken probe).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import ServerProcess, qemu_pids_under
from tests.support.browser import chromium, chromium_missing
from tests.support.servers import SANDBOX_SERVERS
from tests.support.wait import wait_until

pytestmark = pytest.mark.vm

DOMAIN = "chaser.test"  # mapped to 127.0.0.1 inside the browser only
PUBLIC, PRIVATE, WS = 8000, 8001, 8002  # ports inside each sandbox: 8000 made public, the others need a login

PROBE = r"""<!doctype html>
<html><head><meta charset="utf-8"><title>probe</title></head>
<body><p id="own">__OWN__</p><pre id="results"></pre>
<script>
const fetches = __FETCHES__;
const sockets = __SOCKETS__;
async function probe(url) {
  try {
    const r = await fetch(url, {credentials: "include"});
    let body = null;
    try { body = await r.text(); } catch (e) { body = null; }
    return {read: true, status: r.status, type: r.type, body: body};
  } catch (e) {
    return {read: false, error: String(e)};
  }
}
function socket(url) {
  return new Promise((resolve) => {
    let ws;
    try { ws = new WebSocket(url); } catch (e) { resolve({open: false, error: String(e)}); return; }
    const timer = setTimeout(() => { try { ws.close(); } catch (e) {} resolve({open: false, error: "timeout"}); },
                             30000);
    ws.onopen = () => { ws.send("ping-from-page"); };
    ws.onmessage = (m) => { clearTimeout(timer); resolve({open: true, message: String(m.data)}); ws.close(); };
    ws.onerror = () => { clearTimeout(timer); resolve({open: false, error: "error"}); };
  });
}
(async () => {
  const out = {origin: self.origin, fetches: {}, sockets: {}};
  try { out.cookie = document.cookie; } catch (e) { out.cookie = "denied: " + e; }
  try { localStorage.setItem("x", "1"); out.storage = "allowed"; } catch (e) { out.storage = "denied"; }
  for (const [name, url] of Object.entries(fetches)) out.fetches[name] = await probe(url);
  for (const [name, url] of Object.entries(sockets)) out.sockets[name] = await socket(url);
  document.getElementById("results").textContent = JSON.stringify(out);
  document.body.setAttribute("data-done", "1");
})();
</script></body></html>
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    reason = chromium_missing()
    if reason:
        pytest.fail(reason)  # a missing browser is a broken set-up, not a pass
    base = Path(tmp_path_factory.mktemp("fwdbrowser"))
    srv = ServerProcess(home=base / "home", config_file=base / "config.json",
                        extra_env={"CHASER_BASE_DOMAIN": DOMAIN}).start(timeout=600)
    yield srv
    srv.stop()
    wait_until(lambda: not qemu_pids_under(srv.home), 30, interval=0.2, message="QEMU left behind")


@pytest.fixture(scope="module")
def api(server):
    with server.client() as client:
        yield client


def run(api, sid: str, command: str, timeout_ms: int = 120_000) -> str:
    r = api.post(f"/v1/sessions/{sid}/exec", json={"command": command, "timeout_ms": timeout_ms})
    assert r.status_code == 200, r.text
    assert r.json().get("exit_code") == 0, r.json()
    return r.json().get("output", "")


def start_sandbox(api, files: dict[str, str]) -> str:
    r = api.post("/v1/sessions", json={"ephemeral": True})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    run(api, sid, "mkdir -p /workspace/www")
    for path, text in {**{f"/workspace/www/{n}": t for n, t in files.items()},
                       "/workspace/servers.py": SANDBOX_SERVERS}.items():
        api.post(f"/v1/sessions/{sid}/upload", files={"file": (Path(path).name, text.encode())},
                 data={"path": path}).raise_for_status()
    for command in (f"cd /workspace/www && exec python3 -m http.server {PUBLIC} --bind 127.0.0.1",
                    f"cd /workspace/www && exec python3 -m http.server {PRIVATE} --bind 127.0.0.1",
                    f"exec python3 /workspace/servers.py ws-echo {WS}"):
        r = api.post(f"/v1/sessions/{sid}/exec", json={"command": command, "background": True})
        assert r.status_code == 200, r.text
    run(api, sid, " && ".join(f"until python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {p}), 1)' "
                              f"2>/dev/null; do sleep 0.2; done" for p in (PUBLIC, PRIVATE, WS)))
    r = api.post(f"/v1/sessions/{sid}/ports/{PUBLIC}/public", json={"public": True})
    assert r.status_code == 200, r.text
    return sid


@pytest.fixture(scope="module")
def sandboxes(server, api):
    """(A, B, markers): A serves the probe, B a secret page; each an index of its own."""
    markers = {"a": f"A-OWN-{uuid.uuid4().hex}", "b": f"B-SECRET-{uuid.uuid4().hex}"}
    b = start_sandbox(api, {"secret.html": f"<p id=secret>{markers['b']}</p>", "index.html": markers["b"]})
    a = start_sandbox(api, {"index.html": markers["a"]})
    yield a, b, markers
    for sid in (a, b):
        api.delete(f"/v1/sessions/{sid}", params={"force": "true"})


def host_origin(server, sid: str) -> str:
    return f"http://{sid}.{DOMAIN}:{server.port}"


def upload_probe(api, server, a: str, b: str, markers: dict) -> None:
    """The attacker's page, served by A: every URL B or the API could answer at."""
    ws_api = server.url.replace("http://", "ws://")
    fetches = {
        "b_path_public": f"{server.url}/s/{b}/forward/{PUBLIC}/secret.html",
        "b_path_private": f"{server.url}/s/{b}/forward/{PRIVATE}/secret.html",
        "b_host_public": f"{host_origin(server, b)}/forward/{PUBLIC}/secret.html",
        "b_host_private": f"{host_origin(server, b)}/forward/{PRIVATE}/secret.html",
        "b_relative_path": f"/s/{b}/forward/{PUBLIC}/secret.html",  # on the page's own origin
        "api_sessions": f"{server.url}/v1/sessions",
        "api_own_session": f"{server.url}/v1/sessions/{a}",
        "relative_sessions": "/v1/sessions",
        "relative_own_session": f"/v1/sessions/{a}",
        "own_index": "index.html",  # the control: A's own page, relative to the probe
    }
    sockets = {
        "b_host_ws": f"ws://{b}.{DOMAIN}:{server.port}/forward/{WS}/",
        "b_path_ws": f"{ws_api}/s/{b}/forward/{WS}/",
        "b_pty": f"{ws_api}/v1/sessions/{b}/pty?mode=agent",
        "a_pty": f"{ws_api}/v1/sessions/{a}/pty?mode=agent",
        "own_ws": f"/forward/{WS}/",  # the control (host style): A's own WebSocket with A's cookie (relative URL)
    }
    page = (PROBE.replace("__OWN__", markers["a"]).replace("__FETCHES__", json.dumps(fetches))
            .replace("__SOCKETS__", json.dumps(sockets)))
    api.post(f"/v1/sessions/{a}/upload", files={"file": ("probe.html", page.encode())},
             data={"path": "/workspace/www/probe.html"}).raise_for_status()


def results_of(page, url: str) -> tuple[dict, object]:
    response = page.goto(url)
    assert response is not None and response.status == 200, (url, response and response.status)
    page.wait_for_selector("body[data-done='1']", timeout=120_000)
    return json.loads(page.inner_text("#results")), response


def assert_nothing_of_b_or_the_api(results: dict, markers: dict, a: str, b: str) -> None:
    for name, got in results["fetches"].items():
        body = got.get("body") or ""
        assert markers["b"] not in body, (name, got)
        if name.startswith(("api_", "relative_")) or name == "b_relative_path":
            # a /v1 body never: at most the session origin's own 404 ("serves only /forward/…")
            assert not got["read"] or (got["status"] == 404 and json.loads(body)["code"] == "not_found"), (name, got)
            assert '"sessions"' not in body and f'"id":"{a}"' not in body.replace(" ", ""), (name, got)
    for name, got in results["sockets"].items():
        if name != "own_ws":
            assert not got["open"], (name, got)


def test_a_sandbox_page_cannot_read_another_session_or_the_api(server, api, sandboxes):
    a, b, markers = sandboxes
    upload_probe(api, server, a, b, markers)
    key = server.api_key
    with chromium(map_to_loopback=[f"*.{DOMAIN}"]) as browser:
        page = browser.new_page()
        # The browser holds B's and A's login cookies (the worst case), each on its own origin:
        # B's from a link with the API key, A's from a 60 s login link (no key in the browser).
        response = page.goto(f"{host_origin(server, b)}/forward/{PRIVATE}/index.html?token={key}")
        assert response is not None and response.status == 200
        assert page.url == f"{host_origin(server, b)}/forward/{PRIVATE}/index.html"  # the key left the URL
        link = api.post(f"/v1/sessions/{a}/ports/{PRIVATE}/link")
        assert link.status_code == 200 and link.json()["url"].startswith(f"{host_origin(server, a)}/forward/")
        response = page.goto(link.json()["url"])
        assert response is not None and response.status == 200 and page.inner_text("body") == markers["a"]
        assert page.url == f"{host_origin(server, a)}/forward/{PRIVATE}/"
        cookies = {c["domain"]: c for c in browser.cookies()}
        assert set(cookies) == {f"{a}.{DOMAIN}", f"{b}.{DOMAIN}"}  # host-only, one per session origin
        assert all(c["httpOnly"] and key not in c["value"] for c in cookies.values())
        page.goto(f"{host_origin(server, b)}/forward/{PRIVATE}/secret.html")
        assert markers["b"] in page.content()  # B's own tab reads B: the cookie works

        # --- host style: A's page on A's own origin ---
        own = host_origin(server, a)
        host_results, _ = results_of(page, f"{own}/forward/{PRIVATE}/probe.html")
        assert host_results["origin"] == own
        own_index = host_results["fetches"]["own_index"]
        assert own_index["read"] and own_index["status"] == 200 and own_index["body"] == markers["a"]  # control
        assert "chaser_token" not in host_results["cookie"]  # HttpOnly
        assert_nothing_of_b_or_the_api(host_results, markers, a, b)
        assert host_results["sockets"]["own_ws"] == {"open": True, "message": "ping-from-page"}  # control

        # --- path style: the same page on the API's origin (A's public port) ---
        path_url = f"{server.url}/s/{a}/forward/{PUBLIC}/probe.html"
        path_results, response = results_of(page, path_url)
        headers = response.all_headers()
        assert headers["content-security-policy"] == ("sandbox allow-scripts allow-forms allow-popups "
                                                      "allow-modals allow-downloads")
        assert headers["x-content-type-options"] == "nosniff"
        assert markers["a"] in page.inner_text("#own")  # A's own page did load and run
        assert path_results["origin"] == "null" and path_results["storage"] == "denied"  # an opaque origin
        assert_nothing_of_b_or_the_api(path_results, markers, a, b)
        assert not path_results["fetches"]["own_index"]["read"]  # even its own URL is another origin now
        assert not path_results["sockets"]["own_ws"]["open"]

        # a login link on path style is refused, so the browser gets no cookie for the API's origin
        response = page.goto(f"{server.url}/s/{b}/forward/{PRIVATE}/secret.html?token={key}")
        assert response is not None and response.status == 400
        assert markers["b"] not in page.content()
        assert {c["domain"] for c in browser.cookies()} == {f"{a}.{DOMAIN}", f"{b}.{DOMAIN}"}


def login_cookie(server, sid: str) -> str:
    r = httpx.get(f"{server.url}/forward/{PRIVATE}/index.html?token={server.api_key}",
                  headers={"Host": f"{sid}.{DOMAIN}:{server.port}"}, follow_redirects=False, timeout=60)
    assert r.status_code == 302, r.text
    assert "domain=" not in r.headers["set-cookie"].lower()
    name, _, value = r.headers["set-cookie"].split(";")[0].partition("=")
    assert name == "chaser_token" and server.api_key not in value
    return value


def test_a_sessions_cookie_is_refused_for_another_session_and_the_api(server, api, sandboxes):
    a, b, markers = sandboxes
    cookie = {"Cookie": f"chaser_token={login_cookie(server, a)}"}

    def get(url: str, host: str | None = None, **headers) -> httpx.Response:
        return httpx.get(url, headers={**cookie, **({"Host": host} if host else {}), **headers}, timeout=60)

    own = get(f"{server.url}/forward/{PRIVATE}/index.html", f"{a}.{DOMAIN}:{server.port}")
    assert own.status_code == 200 and own.text == markers["a"]
    other = get(f"{server.url}/forward/{PRIVATE}/secret.html", f"{b}.{DOMAIN}:{server.port}")
    assert other.status_code == 401 and markers["b"] not in other.text
    assert get(f"{server.url}/v1/sessions").status_code == 401
    assert get(f"{server.url}/v1/sessions/{a}").status_code == 401
    assert get(f"{server.url}/s/{a}/forward/{PRIVATE}/index.html").status_code == 401  # path style takes no cookie
    assert get(f"{server.url}/v1/sessions", f"{a}.{DOMAIN}:{server.port}").status_code == 404  # not on A's origin
    sibling = get(f"{server.url}/forward/{PRIVATE}/index.html", f"{a}.{DOMAIN}:{server.port}",
                  Origin=host_origin(server, b))
    assert sibling.status_code == 403  # B's page riding on A's cookie
