"""The web console (/console/) end to end: headless Chromium (Debian's, tests/support/browser.py)
driving the pages of a real `chaser server` with one real microVM (a workspace session).

One browser page walks through what a person does, in order: log in, create a workspace and
a session, see it listed, type in the terminal (`echo $((6*7))` → 42), resize the window
(`stty size` changes), a second terminal tab, run a command and watch its output stream,
upload a file and find it with `ls`, open a listening port through the gateway, run the
self-test, snapshot the workspace, terminate the session (it leaves the list), restore the
snapshot, create and revoke a key. A second page (dark, phone width) logs in with the link
`chaser console` prints. A wrong key shows an error; no page logs a console error; the
server's log never shows the key. Screenshots of each screen go to $CHASER_TEST_ARTIFACTS
(default tests/artifacts/console/), printed at the end.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import ServerProcess, qemu_pids_under
from tests.support.browser import chromium, chromium_missing
from tests.support.wait import wait_until

pytestmark = pytest.mark.vm

DOMAIN = "chaser.test"  # host-style forwards, mapped to 127.0.0.1 inside the browser only
WORKSPACE = "console-ws"
ARTIFACTS = Path(os.environ.get("CHASER_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts" / "console"))
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
BOOT_MS = 300_000  # a session's VM boots under TCG here


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    reason = chromium_missing()
    if reason:
        pytest.fail(reason)  # a missing browser is a broken set-up, not a pass
    base = Path(tmp_path_factory.mktemp("console"))
    # No warm pool: the only VM of the module is the workspace session's.
    srv = ServerProcess(home=base / "home", config_file=base / "config.json",
                        extra_env={"CHASER_BASE_DOMAIN": DOMAIN, "CHASER_WARM_POOL_SIZE": "0"}).start(timeout=600)
    yield srv
    srv.stop()
    wait_until(lambda: not qemu_pids_under(srv.home), 30, interval=0.2, message="QEMU left behind")


@pytest.fixture(scope="module")
def api(server):
    with server.client() as client:
        yield client


class Browser:
    """One browser context and page, with the console messages and page errors it logged."""

    def __init__(self, context):
        self.context = context
        self.page = context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}")
                     if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


@pytest.fixture(scope="module")
def desktop(server):
    with chromium(map_to_loopback=[f"*.{DOMAIN}"], viewport=DESKTOP, color_scheme="light") as context:
        yield Browser(context)


@pytest.fixture(scope="module")
def state():
    return {}


def screen(page) -> list[str]:
    """The visible terminal's rows as text, as a person reads them off the screen."""
    return [line.rstrip() for line in page.locator(".term-pane:not([hidden]) .xterm-rows").inner_text().split("\n")]


def type_in_terminal(page, text: str) -> None:
    page.locator(".term-pane:not([hidden]) .xterm-screen").click()
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def wait_for_line(page, pattern: str, timeout: float = 60, *, after: int = 0) -> list[str]:
    """Waits until the terminal shows more than `after` lines matching `pattern`; returns them all."""
    regex = re.compile(pattern)
    return wait_until(lambda: (lambda found: found if len(found) > after else None)(
        [line for line in screen(page) if regex.search(line)]), timeout, interval=0.1,
        message=f"terminal line {pattern!r}")


def submit_dialog(page) -> None:
    page.locator("dialog[open] button[type=submit]").click()


def test_a_wrong_key_shows_a_clear_error(server):
    with chromium(viewport=DESKTOP) as context:
        page = context.new_page()
        page.goto(f"{server.url}/console/")
        page.fill("#api-key", "sk_not_a_real_key")
        page.press("#api-key", "Enter")
        error = page.locator("#login-error")
        error.wait_for(state="visible")
        assert "not accepted" in error.inner_text() and "unauthorized" in error.inner_text()
        assert page.evaluate("sessionStorage.length") == 0
        assert page.locator("#nav").is_hidden()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "login-wrong-key.png"))


def test_log_in_with_the_key(server, desktop):
    page = desktop.page
    page.goto(f"{server.url}/console")
    page.locator("#api-key").wait_for()
    desktop.shot("login")
    page.fill("#api-key", server.api_key)
    page.press("#api-key", "Enter")
    page.locator("#create-session").wait_for()
    assert page.url.endswith("/console/#/sessions")
    assert page.evaluate("sessionStorage.getItem('chaser.apiKey')") == server.api_key


def test_create_a_workspace(desktop, api):
    page = desktop.page
    page.click("a[data-nav=workspaces]")
    page.click("#create-workspace")
    page.fill("#workspace-name", WORKSPACE)
    submit_dialog(page)
    page.locator(f"tr[data-workspace={WORKSPACE}]").wait_for()
    assert api.get(f"/v1/workspaces/{WORKSPACE}").status_code == 200


def test_create_a_session_and_see_it_listed(desktop, api, state):
    page = desktop.page
    page.click("a[data-nav=sessions]")
    page.click("#create-session")
    page.select_option("#new-kind", "workspace")
    page.fill("#new-workspace", WORKSPACE)
    page.fill("#new-env", "CONSOLE_GREETING=hello-from-the-console")
    desktop.shot("session-create")
    submit_dialog(page)
    page.wait_for_url(re.compile(r"#/sessions/ses_[0-9a-f]+$"), timeout=BOOT_MS)
    state["sid"] = sid = page.url.rsplit("/", 1)[1]
    session = api.get(f"/v1/sessions/{sid}").json()
    assert session["status"] == "running" and session["workspace_id"]
    page.locator("#session-status .badge", has_text="running").wait_for()
    page.click("a[data-nav=sessions]")
    row = page.locator(f"tr[data-session={sid}]")
    row.wait_for()
    assert "running" in row.inner_text() and WORKSPACE in row.inner_text()
    desktop.shot("sessions")


def test_terminal_runs_a_shell_and_follows_the_window(desktop, server, state):
    page = desktop.page
    page.goto(f"{server.url}/console/#/sessions/{state['sid']}/terminal")
    page.locator(".term-pane[data-state=open]").wait_for(timeout=60_000)
    type_in_terminal(page, "echo $((6*7))")
    wait_for_line(page, r"^42$")
    type_in_terminal(page, "echo $CONSOLE_GREETING")
    wait_for_line(page, r"^hello-from-the-console$")
    type_in_terminal(page, "echo size=$(stty size)")
    first = wait_for_line(page, r"^size=\d+ \d+$")[-1]
    desktop.shot("terminal")
    page.set_viewport_size({"width": 900, "height": 560})
    wait_until(lambda: page.evaluate("document.querySelector('.term-pane:not([hidden]) .xterm-screen').offsetWidth") < 900,
               10, message="the terminal got narrower")
    type_in_terminal(page, "echo resized=$(stty size)")
    second = wait_for_line(page, r"^resized=\d+ \d+$")[-1]
    rows, cols = (int(n) for n in second.removeprefix("resized=").split())
    first_rows, first_cols = (int(n) for n in first.removeprefix("size=").split())
    assert rows < first_rows and cols < first_cols, (first, second)
    page.set_viewport_size(DESKTOP)


def test_several_terminals_in_tabs(desktop):
    page = desktop.page
    page.click("#new-terminal")
    wait_until(lambda: page.locator(".term-tab").count() == 2, 10)
    page.locator(".term-pane:not([hidden])[data-state=open]").wait_for(timeout=60_000)
    type_in_terminal(page, "echo second-$((2+3))")
    wait_for_line(page, r"^second-5$")
    assert not [line for line in screen(page) if line == "42"]  # its own screen, not the first one's
    page.locator(".term-tab button[role=tab]").first.click()
    wait_for_line(page, r"^size=")


def test_commands_stream_their_output(desktop, state):
    page = desktop.page
    page.click("#tab-link-commands")
    page.fill("#command-input", "for i in 1 2 3; do echo streamed-$i; sleep 0.3; done; echo done-$((3+4))")
    page.click("#command-run")
    output = page.locator("#command-output")
    wait_until(lambda: "done-7" in output.inner_text(), 60, message="the command's output streamed")
    assert "streamed-1\nstreamed-2\nstreamed-3\n" in output.inner_text()
    page.locator("#commands-body tr", has_text="done-").locator(".badge", has_text="completed").wait_for()
    # A server that keeps running: its first line arrives while it runs (SSE, not the final answer).
    page.fill("#command-input", "exec python3 -u -m http.server 8000 --bind 127.0.0.1")
    page.click("#command-run")
    wait_until(lambda: "Serving HTTP on 127.0.0.1 port 8000" in output.inner_text(), 60,
               message="the server's first line streamed")
    desktop.shot("commands")


def test_upload_a_file_and_find_it_with_ls(desktop, tmp_path):
    page = desktop.page
    page.click("#tab-link-files")
    local = tmp_path / "console-upload.txt"
    local.write_text("uploaded through the console\n")
    page.set_input_files("#upload-file", str(local))
    page.fill("#upload-path", "/workspace/")
    page.click("#upload-button")
    result = page.locator("#upload-result")
    wait_until(lambda: "Uploaded /workspace/console-upload.txt" in result.inner_text(), 30)
    desktop.shot("files")
    page.click("#tab-link-terminal")
    page.locator(".term-pane:not([hidden])[data-state=open]").wait_for()
    type_in_terminal(page, "ls /workspace; cat /workspace/console-upload.txt")
    wait_for_line(page, r"console-upload\.txt")
    wait_for_line(page, r"^uploaded through the console$")


def test_download_a_file(desktop):
    page = desktop.page
    page.click("#tab-link-files")
    page.fill("#download-path", "/workspace/console-upload.txt")
    with page.expect_download() as info:
        page.click("#download-button")
    download = info.value
    assert download.suggested_filename == "console-upload.txt"
    assert Path(download.path()).read_text() == "uploaded through the console\n"


def test_a_listening_port_opens_through_the_gateway(desktop):
    page = desktop.page
    page.click("#tab-link-ports")
    row = page.locator("tr[data-port='8000']")
    wait_until(lambda: row.count() or page.click("#ports-refresh"), 30, interval=1, message="port 8000 listed")
    desktop.shot("ports")
    with page.expect_popup() as info:
        row.locator("button", has_text="Open").click()
    popup = info.value
    popup.wait_for_url(re.compile(rf"^http://ses_[0-9a-f]+\.{re.escape(DOMAIN)}:\d+/forward/8000/$"), timeout=30_000)
    popup.get_by_text("Directory listing for /").wait_for()
    assert "token" not in popup.url  # the link's token was exchanged for the session's cookie
    assert popup.evaluate("window.opener") is None
    popup.close()


def test_self_test_results(desktop):
    page = desktop.page
    page.click("#tab-link-overview")
    page.click("#run-self-test")
    page.locator("#self-test .badge", has_text="ok").wait_for(timeout=60_000)
    assert "root" in page.locator("#self-test").inner_text() or page.locator("#self-test dl").count()
    desktop.shot("session-overview")


def test_phone_width_dark_theme_with_the_cli_link(server, desktop, state):
    link = subprocess.run([sys.executable, "-m", "chaser.cli.main", "console"], capture_output=True, text=True,
                          env={**os.environ, "CHASER_CONFIG": str(server.config_file),
                               "CHASER_API_URL": server.url, "CHASER_API_KEY": ""}, check=True).stdout.strip()
    assert link == f"{server.url}/console/#token={server.api_key}"
    # A new tab of the same browser (one Playwright per process): its own sessionStorage, so not logged in.
    phone = Browser(desktop.context)
    page = phone.page
    page.set_viewport_size(PHONE)
    page.emulate_media(color_scheme="dark")
    try:
        page.goto(link)
        page.locator(f"tr[data-session={state['sid']}]").wait_for()
        assert "token" not in page.url and page.url.endswith("/console/#/sessions")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # no sideways page scroll
        phone.shot("phone-dark-sessions")
        page.goto(f"{server.url}/console/#/sessions/{state['sid']}/terminal")
        page.locator(".term-pane[data-state=open]").wait_for(timeout=60_000)
        type_in_terminal(page, "echo phone-$((5*5))")
        wait_for_line(page, r"^phone-25$")
        phone.shot("phone-dark-terminal")
        page.goto(f"{server.url}/console/#/sessions/{state['sid']}/overview")
        page.locator("#session-status .badge").wait_for()
        phone.shot("phone-dark-session")
        page.click("a[data-nav=workspaces]")
        page.locator(f"tr[data-workspace={WORKSPACE}]").wait_for()
        phone.shot("phone-dark-workspaces")
        page.click("a[data-nav=keys]")
        page.locator("#keys-body tr").first.wait_for()
        phone.shot("phone-dark-keys")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        assert not phone.errors, phone.errors
    finally:
        page.close()


def test_snapshot_a_workspace(desktop, api):
    page = desktop.page
    page.click("a[data-nav=workspaces]")
    page.locator(f"tr[data-workspace={WORKSPACE}] button", has_text="Snapshots").click()
    page.click("#create-snapshot")
    page.fill("#snapshot-name", "with-upload")
    submit_dialog(page)
    page.locator("tr[data-snapshot=with-upload]").wait_for(timeout=120_000)
    snapshots = api.get(f"/v1/workspaces/{WORKSPACE}/snapshots").json()
    assert [s["name"] for s in snapshots] == ["with-upload"]
    desktop.shot("workspaces")


def test_terminate_the_session_and_it_leaves_the_list(desktop, api, state):
    page = desktop.page
    sid = state["sid"]
    page.click("a[data-nav=sessions]")
    row = page.locator(f"tr[data-session={sid}]")
    row.wait_for()
    row.locator("button", has_text="Terminate").click()
    submit_dialog(page)
    row.wait_for(state="detached", timeout=120_000)
    assert api.get(f"/v1/sessions/{sid}").json()["status"] == "terminated"


def test_restore_the_snapshot(desktop, api):
    page = desktop.page
    page.click("a[data-nav=workspaces]")
    page.locator(f"tr[data-workspace={WORKSPACE}] button", has_text="Snapshots").click()
    row = page.locator("tr[data-snapshot=with-upload]")
    row.locator("button", has_text="Restore").click()
    submit_dialog(page)
    wait_until(lambda: row.locator("td").nth(3).inner_text().strip(), 60, message="the restored column")
    snapshot = api.get(f"/v1/workspaces/{WORKSPACE}/snapshots").json()[0]
    assert snapshot["restored_at"]
    desktop.shot("snapshots-restored")


def test_create_a_key_shown_once_and_revoke_it(desktop, server):
    page = desktop.page
    page.click("a[data-nav=keys]")
    page.click("#create-key")
    page.fill("#key-name", "from-the-console")
    page.check("input[value='sessions.read']")
    submit_dialog(page)
    value = page.locator("#new-key-value")
    value.wait_for()
    key = value.input_value()
    assert key.startswith("sk_")
    assert httpx.get(f"{server.url}/v1/sessions", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    desktop.shot("keys-created")
    row = page.locator("#keys-body tr", has_text="from-the-console")
    row.locator("button", has_text="Revoke").click()
    submit_dialog(page)
    row.get_by_text("revoked").wait_for()
    assert httpx.get(f"{server.url}/v1/sessions", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    page.reload()
    page.locator("#keys-body tr", has_text="from-the-console").wait_for()
    assert page.locator("#new-key-value").count() == 0  # shown once: not after a reload
    desktop.shot("keys")


def test_rename_and_delete_the_workspace(desktop, api):
    page = desktop.page
    page.click("a[data-nav=workspaces]")
    page.locator(f"tr[data-workspace={WORKSPACE}] button", has_text="Rename").click()
    page.fill("#rename-input", "console-renamed")
    submit_dialog(page)
    renamed = page.locator("tr[data-workspace=console-renamed]")
    renamed.wait_for()
    assert api.get("/v1/workspaces/console-renamed").status_code == 200
    renamed.locator("button", has_text="Delete").click()
    submit_dialog(page)
    renamed.wait_for(state="detached")
    assert api.get("/v1/workspaces/console-renamed").status_code == 404


def test_no_console_errors_and_no_key_in_the_server_log(desktop, server, capsys):
    assert not desktop.errors, desktop.errors
    log = server.log_path.read_text(errors="replace")
    assert "WebSocket /v1/sessions/" in log and "token=…" in log  # the PTY's line is there, redacted
    # `chaser server` prints its new admin key once at start (what `make serve` promises); never again.
    requests = [line for line in log.splitlines() if not line.startswith("API key: ")]
    assert not any(server.api_key in line for line in requests)
    with capsys.disabled():
        print(f"\nconsole screenshots: {ARTIFACTS}")
