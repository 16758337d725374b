"""Egress policies on the API surface: `network` on creates, GET/PUT /v1/sessions/{id}/network,
the CLI flags and the MCP argument. Enforcement is the runtime's (not tested here)."""

from __future__ import annotations

import json

import httpx
import pytest

from chaser import errors
from chaser.client import ChaserClient
from chaser.mcp.server import call_tool, parse_terminal_arguments
from chaser.runtime.egress import EgressPolicy
from chaser.store import SessionRow, Workspace
from tests.support import Harness, assert_error


def stored(h: Harness, table, row_id: str):
    with h.services.db.session() as s:
        return s.get(table, row_id).network


# --- creating with a policy -------------------------------------------------------------------------

def test_session_policy_reaches_the_vm_normalised_and_stored(harness):
    session = harness.session(network={"internet": False, "allow_out": ["Example.COM", "*.pypi.org"],
                                       "deny_out": ["203.0.113.0/24"]})
    expected = EgressPolicy(internet=False, allow_out=("example.com", "*.pypi.org"), deny_out=("203.0.113.0/24",))
    assert harness.runtime.started[-1].spec.network == expected
    assert stored(harness, SessionRow, session["id"]) == expected.to_dict()
    shown = harness.client.get(f"/v1/sessions/{session['id']}/network").json()
    assert shown == {**expected.to_dict(), "enforced": True}


def test_default_policy_comes_from_the_config(harness, tmp_path):
    harness.session()
    assert harness.runtime.started[-1].spec.network == EgressPolicy(internet=True)
    closed = Harness(tmp_path / "closed", network_internet_default=False)
    try:
        closed.session()
        assert closed.runtime.started[-1].spec.network == EgressPolicy(internet=False)
        closed.session(network={"deny_out": ["bad.test"]})  # omitted internet: still the default
        assert closed.runtime.started[-1].spec.network == EgressPolicy(internet=False, deny_out=("bad.test",))
    finally:
        closed.close()


def test_exec_ephemeral_with_a_policy(harness):
    result = harness.client.post("/v1/exec", json={"ephemeral": True, "command": "echo hi",
                                                   "network": {"internet": False}})
    assert result.status_code == 200, result.text
    assert harness.runtime.started[-1].spec.network == EgressPolicy(internet=False)


def test_workspace_policy_is_stored_shown_and_inherited(harness):
    client = harness.client
    workspace = client.post("/v1/workspaces", json={"name": "dev", "network": {
        "internet": False, "allow_out": ["github.com"], "deny_out": ["evil.test"]}}).json()
    assert workspace["network"] == {"internet": False, "allow_out": ["github.com"], "deny_out": ["evil.test"],
                                    "enforced": True}
    assert client.get("/v1/workspaces/dev").json()["network"] == workspace["network"]
    assert client.post("/v1/workspaces", json={"name": "plain"}).json()["network"] is None

    first = client.post("/v1/sessions", json={"workspace": "dev"}).json()
    assert harness.runtime.started[-1].spec.network == EgressPolicy(False, ("github.com",), ("evil.test",))
    client.delete(f"/v1/sessions/{first['id']}")
    # Fields the request gives replace the workspace's; the others are inherited.
    client.post("/v1/sessions", json={"workspace": "dev", "network": {"allow_out": []}})
    assert harness.runtime.started[-1].spec.network == EgressPolicy(False, (), ("evil.test",))

    clone = client.post("/v1/workspaces", json={"name": "copy", "clone_from": "dev"}).json()
    assert clone["network"] == workspace["network"]
    changed = client.post("/v1/workspaces", json={"name": "copy2", "clone_from": "dev",
                                                  "network": {"internet": True}}).json()
    assert changed["network"]["internet"] is True and changed["network"]["deny_out"] == ["evil.test"]
    assert stored(harness, Workspace, changed["id"]) == {"internet": True, "allow_out": ["github.com"],
                                                         "deny_out": ["evil.test"]}


def test_exec_in_a_workspace_starts_with_its_policy_and_applies_a_new_one(harness):
    client = harness.client
    client.post("/v1/workspaces", json={"name": "dev", "network": {"internet": False}})
    first = client.post("/v1/exec", json={"workspace": "dev", "command": "echo 1"}).json()
    vm = harness.vm(first["session_id"])
    assert vm.spec.network == EgressPolicy(internet=False)
    # A reused running session is not silently left as it was: the policy is applied to it.
    again = client.post("/v1/exec", json={"workspace": "dev", "command": "echo 2",
                                          "network": {"deny_out": ["bad.test"]}}).json()
    assert again["session_id"] == first["session_id"] and len(harness.runtime.started) == 1
    assert vm.network_changes == [EgressPolicy(internet=False, deny_out=("bad.test",))]
    assert client.get(f"/v1/sessions/{first['session_id']}/network").json()["deny_out"] == ["bad.test"]
    # The same policy again changes nothing.
    client.post("/v1/exec", json={"workspace": "dev", "command": "echo 3", "network": {"internet": False}})
    assert len(vm.network_changes) == 1


# --- validation --------------------------------------------------------------------------------------

BAD_POLICIES = [
    ({"allow_out": ["not a host!"]}, "allow_out"),
    ({"deny_out": ["10.0.0.0/33"]}, "deny_out"),
    ({"allow_out": "example.com"}, "allow_out"),
    ({"deny_out": [f"h{i}.example.com" for i in range(300)]}, "deny_out"),
    ({"allow_out": ["a" * 301]}, "allow_out"),
    ({"allow_out": [""]}, "allow_out"),
    ({"allow_out": [5]}, "allow_out"),
    ({"internet": "no"}, "internet"),
    ({"internet": True, "block": ["x"]}, "block"),
]


@pytest.mark.parametrize("policy, field", BAD_POLICIES)
def test_invalid_policies_are_400_naming_the_field(harness, policy, field):
    client = harness.client
    for path, body in (("/v1/sessions", {"ephemeral": True}), ("/v1/exec", {"ephemeral": True, "command": "ls"}),
                       ("/v1/workspaces", {"name": "dev"})):
        error = assert_error(client.post(path, json={**body, "network": policy}), 400, "invalid_request")
        assert f"network.{field}" in error["message"], error
    assert_error(client.post("/v1/sessions", json={"ephemeral": True, "network": ["x"]}), 400, "invalid_request")
    sid = harness.session()["id"]
    error = assert_error(client.put(f"/v1/sessions/{sid}/network", json=policy), 400, "invalid_request")
    assert field in error["message"], error
    assert len(harness.runtime.started) == 1 and client.get("/v1/workspaces").json() == []
    assert harness.vm(sid).network_changes == []


# --- GET / PUT on a session --------------------------------------------------------------------------

def test_put_replaces_the_policy_of_a_running_session(harness):
    client = harness.client
    sid = harness.session(network={"internet": False, "allow_out": ["example.com"]})["id"]
    vm = harness.vm(sid)
    answer = client.put(f"/v1/sessions/{sid}/network", json={"deny_out": ["*.bad.test", "198.51.100.7"]})
    assert answer.status_code == 200, answer.text
    expected = EgressPolicy(internet=True, deny_out=("*.bad.test", "198.51.100.7/32"))  # omitted: the default
    assert answer.json() == {**expected.to_dict(), "enforced": True}
    assert vm.network_changes == [expected] and vm.network_policy == expected
    assert stored(harness, SessionRow, sid) == expected.to_dict()
    assert client.get(f"/v1/sessions/{sid}/network").json() == answer.json()
    reset = client.put(f"/v1/sessions/{sid}/network", json={}).json()
    assert reset == {"internet": True, "allow_out": [], "deny_out": [], "enforced": True}
    assert_error(client.put(f"/v1/sessions/{sid}/network"), 400, "invalid_request")  # the body is required


def test_ended_session_get_answers_the_last_policy_and_put_is_409(harness):
    client = harness.client
    sid = harness.session()["id"]
    client.put(f"/v1/sessions/{sid}/network", json={"internet": False})
    client.delete(f"/v1/sessions/{sid}")
    assert_error(client.put(f"/v1/sessions/{sid}/network", json={"internet": True}), 409, "session_not_running")
    assert client.get(f"/v1/sessions/{sid}/network").json() == {
        "internet": False, "allow_out": [], "deny_out": [], "enforced": True}
    assert_error(client.get("/v1/sessions/ses_missing/network"), 404, "session_not_found")
    assert_error(client.put("/v1/sessions/ses_missing/network", json={}), 404, "session_not_found")


def test_runtime_refusal_keeps_the_stored_policy(harness):
    sid = harness.session()["id"]
    harness.vm(sid).network_error = errors.InvalidRequest("this server runs without network isolation",
                                                          code="network_unavailable")
    assert_error(harness.client.put(f"/v1/sessions/{sid}/network", json={"internet": False}), 400,
                 "network_unavailable")
    assert stored(harness, SessionRow, sid) == EgressPolicy().to_dict()
    assert harness.client.get(f"/v1/sessions/{sid}/network").json()["internet"] is True


def test_put_on_a_crashed_vm_is_503(harness):
    sid = harness.session()["id"]
    harness.vm(sid).crash()
    assert_error(harness.client.put(f"/v1/sessions/{sid}/network", json={}), 503, "vm_crashed")
    assert harness.client.get(f"/v1/sessions/{sid}").json()["status"] == "failed"


def test_scopes_and_openapi(harness):
    sid = harness.session()["id"]
    reader = harness.key("sessions.read")
    assert harness.client.get(f"/v1/sessions/{sid}/network", headers=reader).status_code == 200
    assert_error(harness.client.put(f"/v1/sessions/{sid}/network", json={}, headers=reader), 403, "forbidden")
    paths = harness.client.get("/openapi.json").json()["paths"]
    assert set(paths["/v1/sessions/{session_id}/network"]) == {"get", "put"}
    assert "409" in paths["/v1/sessions/{session_id}/network"]["put"]["responses"]


def test_enforced_is_false_without_isolation(tmp_path):
    h = Harness(tmp_path, network="none")
    try:
        sid = h.session(network={"internet": False})["id"]
        assert h.client.get(f"/v1/sessions/{sid}/network").json()["enforced"] is False
        assert h.runtime.started[-1].spec.network == EgressPolicy(internet=False)  # still passed on
    finally:
        h.close()


# --- CLI -----------------------------------------------------------------------------------------------

@pytest.fixture
def network_routes(fake):
    policies: dict[str, dict] = {}

    def get(m, q, b):
        fake.session(m["sid"])
        return 200, policies.get(m["sid"], {"internet": True, "allow_out": [], "deny_out": [], "enforced": True})

    def put(m, q, b):
        fake.session(m["sid"])
        policies[m["sid"]] = {"internet": b.get("internet", True), "allow_out": b.get("allow_out", []),
                              "deny_out": b.get("deny_out", []), "enforced": False}
        return 200, policies[m["sid"]]

    fake.routes[:0] = [("GET", r"/v1/sessions/(?P<sid>[^/]+)/network", get),
                       ("PUT", r"/v1/sessions/(?P<sid>[^/]+)/network", put)]
    return policies


def test_cli_sandbox_and_workspace_flags_reach_the_request(cli, fake):
    result = cli("sandbox", "--ephemeral", "--no-internet", "--allow-out", "a.example.com",
                 "--allow-out", "b.example.com,10.0.0.0/8", "--deny-out", "*.bad.test", "--json")
    assert result.exit_code == 0, result.output
    assert fake.requests[-1]["body"] == {"session_type": "sandbox", "ephemeral": True, "network": {
        "internet": False, "allow_out": ["a.example.com", "b.example.com", "10.0.0.0/8"], "deny_out": ["*.bad.test"]}}
    assert cli("sandbox", "--ephemeral", "--deny-out", "x.test").exit_code == 0
    assert fake.requests[-1]["body"]["network"] == {"deny_out": ["x.test"]}
    assert cli("sandbox", "--ephemeral").exit_code == 0
    assert "network" not in fake.requests[-1]["body"]
    assert cli("workspaces", "create", "--name", "dev", "--no-internet", "--allow-out", "pypi.org").exit_code == 0
    assert fake.requests[-1]["body"] == {"name": "dev", "session_type": "sandbox",
                                         "network": {"internet": False, "allow_out": ["pypi.org"]}}


def test_cli_sessions_network_shows_and_sets(cli, fake, network_routes):
    sid = json.loads(cli("sandbox", "--ephemeral", "--json").stdout)["id"]
    shown = cli("sessions", "network")  # the current session
    assert shown.exit_code == 0, shown.output
    assert fake.requests[-1]["method"] == "GET" and fake.requests[-1]["path"] == f"/v1/sessions/{sid}/network"
    assert "internet: yes" in shown.stdout and "enforced: yes" in shown.stdout
    result = cli("sessions", "network", sid, "--no-internet", "--allow-out", "example.com", "--json")
    assert result.exit_code == 0, result.output
    assert fake.requests[-1]["method"] == "PUT"
    assert fake.requests[-1]["body"] == {"internet": False, "allow_out": ["example.com"]}
    assert json.loads(result.stdout)["allow_out"] == ["example.com"]
    human = cli("sessions", "network", "--internet", "--deny-out", "a.test")
    assert fake.requests[-1]["body"] == {"internet": True, "deny_out": ["a.test"]}
    assert "deny_out: a.test" in human.stdout and "not enforced" in human.stdout
    missing = cli("sessions", "network", "sess-nope", "--no-internet")
    assert missing.exit_code == 1 and missing.stderr.startswith("error: session_not_found:")


# --- MCP -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("network, message", [
    ("none", "must be an object"),
    ({"internet": "no"}, "network.internet must be a boolean"),
    ({"allow_out": "example.com"}, "network.allow_out must be a list"),
    ({"deny_out": ["ok.test", 3]}, "network.deny_out must be a list"),
    ({"deny_out": [""]}, "network.deny_out must be a list of non-empty strings"),
    ({"allow_out": [f"h{i}.test" for i in range(257)]}, "at most 256"),
    ({"allow_out": ["a" * 301]}, "at most 300 characters"),
    ({"internet": False, "hosts": []}, "unknown field(s): hosts"),
])
def test_mcp_network_argument_is_checked(network, message):
    for tool, arguments in (("terminal", {"ephemeral": True, "command": "ls"}), ("session_create", {"ephemeral": True}),
                            ("workspace_create", {"name": "dev"})):
        result = call_tool(lambda: pytest.fail("no API call expected"), tool, {**arguments, "network": network})
        assert result.is_error and result.structured_content["error"]["code"] == "invalid_arguments"
        assert message in result.structured_content["error"]["message"], result.structured_content


def test_mcp_terminal_network_not_with_a_session_id():
    result = call_tool(lambda: pytest.fail("no API call expected"), "terminal",
                       {"session_id": "ses_1", "command": "ls", "network": {"internet": False}})
    assert result.is_error and "not to an existing session_id" in result.structured_content["error"]["message"]
    assert parse_terminal_arguments({"workspace": "dev", "command": "ls",
                                     "network": {"internet": False, "allow_out": None}}).network == {"internet": False}


def harness_client(h: Harness):
    """A ChaserClient whose requests go to the harness app (the server's own validation applies)."""
    def handler(request: httpx.Request) -> httpx.Response:
        answer = h.client.request(request.method, request.url.path, params=dict(request.url.params),
                                  content=request.content,
                                  headers={"content-type": request.headers.get("content-type", "application/json")})
        return httpx.Response(answer.status_code, content=answer.content,
                              headers={"content-type": answer.headers.get("content-type", "application/json")})

    return lambda: ChaserClient(base_url="http://api.test", api_key=h.admin_key, transport=httpx.MockTransport(handler))


def test_mcp_tools_pass_the_policy_to_the_api(harness):
    factory = harness_client(harness)
    created = call_tool(factory, "session_create", {"ephemeral": True, "network": {"internet": False}})
    assert not created.is_error, created.content[0].text
    assert harness.runtime.started[-1].spec.network == EgressPolicy(internet=False)
    ran = call_tool(factory, "terminal", {"ephemeral": True, "command": "echo hi", "network": {"deny_out": ["x.test"]}})
    assert not ran.is_error, ran.content[0].text
    assert harness.runtime.started[-1].spec.network == EgressPolicy(deny_out=("x.test",))
    workspace = call_tool(factory, "workspace_create", {"name": "dev", "network": {"allow_out": ["pypi.org"]}})
    assert workspace.structured_content["network"]["allow_out"] == ["pypi.org"]
    files = call_tool(factory, "terminal", {"workspace": "dev", "xml": "<list_files/>",
                                            "network": {"internet": False}})
    assert not files.is_error, files.content[0].text
    assert harness.runtime.started[-1].spec.network == EgressPolicy(internet=False, allow_out=("pypi.org",))
    # What an entry may be is the API's to say: a tool error with its code and message.
    bad = call_tool(factory, "terminal", {"ephemeral": True, "command": "ls",
                                          "network": {"allow_out": ["not a host!"]}})
    assert bad.is_error and bad.structured_content["error"]["code"] == "invalid_request"
    assert "network.allow_out" in bad.structured_content["error"]["message"]
