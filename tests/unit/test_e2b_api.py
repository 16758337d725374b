"""The E2B control plane (/e2b) and the ingress's checks, over the fake runtime (the real
SDK against real VMs: tests/integration/test_e2b.py)."""

import base64
import hashlib

import httpx
import pytest

from chaser.api.e2b import ingress_app
from chaser.service.e2b import check_signature, network_of
from tests.support import Harness


@pytest.fixture
def harness(tmp_path):
    h = Harness(tmp_path)
    yield h
    h.close()


def e2b(harness, key=None):
    return {"X-API-KEY": key or harness.admin_key}


def create(harness, **body):
    response = harness.client.post("/e2b/v2/sandboxes", json={"templateID": "base", **body}, headers=e2b(harness))
    assert response.status_code == 201, response.text
    return response.json()


def test_create_answers_exactly_201_with_what_the_sdk_reads(harness):
    body = create(harness, timeout=120, metadata={"team": "a"}, envVars={"FOO": "bar"})
    assert set(body) >= {"templateID", "sandboxID", "clientID", "envdVersion", "envdAccessToken", "domain"}
    assert body["envdVersion"] == "0.5.7" and body["templateID"] == "base"
    assert "-" not in body["sandboxID"] and len(body["envdAccessToken"]) >= 32
    live = harness.services.sessions.live[body["sandboxID"]]
    assert live.env["FOO"] == "bar" and live.ephemeral
    legacy = harness.client.post("/e2b/sandboxes", json={"templateID": "base"}, headers=e2b(harness))
    assert legacy.status_code == 201


def test_detail_timeout_list_and_kill(harness):
    one = create(harness, metadata={"team": "a"})
    two = create(harness, metadata={"team": "b"})
    detail = harness.client.get(f"/e2b/sandboxes/{one['sandboxID']}", headers=e2b(harness)).json()
    assert detail["state"] == "running" and detail["metadata"] == {"team": "a"}
    assert {"startedAt", "endAt", "cpuCount", "memoryMB", "diskSizeMB"} <= set(detail)
    response = harness.client.post(f"/e2b/sandboxes/{one['sandboxID']}/timeout", json={"timeout": 3000},
                                   headers=e2b(harness))
    assert response.status_code == 204
    later = harness.client.get(f"/e2b/sandboxes/{one['sandboxID']}", headers=e2b(harness)).json()
    assert later["endAt"] > detail["endAt"]
    listed = harness.client.get("/e2b/v2/sandboxes", params={"metadata": "team=b"}, headers=e2b(harness)).json()
    assert [s["sandboxID"] for s in listed] == [two["sandboxID"]]
    page = harness.client.get("/e2b/v2/sandboxes", params={"limit": 1}, headers=e2b(harness))
    assert len(page.json()) == 1 and page.headers["x-next-token"]
    rest = harness.client.get("/e2b/v2/sandboxes", params={"limit": 1, "nextToken": page.headers["x-next-token"]},
                              headers=e2b(harness))
    assert [s["sandboxID"] for s in page.json() + rest.json()] == [one["sandboxID"], two["sandboxID"]]
    assert "x-next-token" not in rest.headers
    assert harness.client.delete(f"/e2b/sandboxes/{one['sandboxID']}", headers=e2b(harness)).status_code == 204
    gone = harness.client.delete(f"/e2b/sandboxes/{one['sandboxID']}", headers=e2b(harness))
    assert gone.status_code == 404 and gone.json()["code"] == 404 and isinstance(gone.json()["message"], str)
    assert harness.client.get(f"/e2b/sandboxes/{one['sandboxID']}", headers=e2b(harness)).status_code == 404


def test_errors_have_integer_codes(harness):
    response = harness.client.post("/e2b/v2/sandboxes", json={"templateID": "base"},
                                   headers={"Authorization": ""})  # no key at all
    assert response.status_code == 401 and response.json()["code"] == 401
    response = harness.client.post("/e2b/v2/sandboxes", json={}, headers=e2b(harness))
    assert response.status_code == 400 and response.json() == {"code": 400, "message": "templateID is required"}
    response = harness.client.post("/e2b/v2/sandboxes", json={"templateID": "base", "timeout": 10**9},
                                   headers=e2b(harness))
    assert response.status_code == 400 and response.json()["code"] == 400
    response = harness.client.get("/e2b/no/such/route", headers=e2b(harness))
    assert response.status_code == 404 and response.json()["code"] == 404
    # The rest of the API keeps its string codes.
    assert harness.client.get("/v1/sessions/ses_nope").json()["code"] == "session_not_found"


def test_network_maps_to_the_egress_policy():
    assert network_of(None, None) is None
    assert network_of(False, None).internet is False
    assert network_of(None, {"denyOut": ["0.0.0.0/0"]}).internet is False
    policy = network_of(None, {"denyOut": ["0.0.0.0/0"], "allowOut": ["pypi.org"]})
    assert policy.internet is None and [str(e) for e in policy.allow_out] == ["pypi.org"]


def test_file_url_signature_is_the_sdks():
    from e2b.sandbox.signature import get_signature

    signed = get_signature("/home/user/a.txt", "read", None, "tok", 60)
    assert check_signature("tok", "/home/user/a.txt", "read", None, signed["signature"], signed["expiration"],
                           signed["expiration"] - 1)
    assert not check_signature("other", "/home/user/a.txt", "read", None, signed["signature"],
                               signed["expiration"], signed["expiration"] - 1)
    assert not check_signature("tok", "/home/user/a.txt", "read", None, signed["signature"], signed["expiration"],
                               signed["expiration"] + 1)
    assert not check_signature("tok", "/home/user/a.txt", "write", None, signed["signature"],
                               signed["expiration"], signed["expiration"] - 1)
    raw = hashlib.sha256(b"/p:write:user:tok").digest()
    assert check_signature("tok", "/p", "write", "user", "v1_" + base64.b64encode(raw).rstrip(b"=").decode(),
                           None, 0)


def test_ingress_refuses_before_anything_reaches_a_vm(harness):
    one, two = create(harness), create(harness)
    app = ingress_app(harness.app)

    async def ask(headers, path="/health"):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingress") as client:
            return await client.get(path, headers=headers)

    def run(headers, path="/health"):
        return harness.run(ask, headers, path)

    sid = one["sandboxID"]
    assert run({}).status_code == 400
    gone = run({"E2b-Sandbox-Id": "ses_000000000000000000000000", "X-Access-Token": "x"})
    assert gone.status_code == 502 and "was not found" in gone.json()["message"]
    assert run({"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "49983"}).status_code == 401
    assert run({"E2b-Sandbox-Id": sid, "X-Access-Token": "wrong"}).status_code == 401
    assert run({"E2b-Sandbox-Id": sid, "X-Access-Token": two["envdAccessToken"]}).status_code == 401
    assert run({"Host": f"49983-{sid}.e2b.local", "X-Access-Token": two["envdAccessToken"]}).status_code == 401
    assert run({"E2b-Sandbox-Id": sid}, path="/files?path=/etc/hostname&signature=v1_bad").status_code == 401
    harness.client.delete(f"/e2b/sandboxes/{sid}", headers=e2b(harness))
    gone = run({"E2b-Sandbox-Id": sid, "X-Access-Token": one["envdAccessToken"]})
    assert gone.status_code == 502 and gone.json()["message"] == f"sandbox {sid} was not found"


def test_keys_in_the_e2b_shape_work_in_x_api_key(harness):
    created = harness.client.post("/v1/keys", json={"name": "for e2b", "format": "e2b"}).json()
    key = created["key"]
    assert key.startswith("e2b_") and len(key) == 44 and all(c in "0123456789abcdef" for c in key[4:])
    sandbox = harness.client.post("/e2b/v2/sandboxes", json={"templateID": "base"},
                                  headers={"Authorization": "", "X-API-KEY": key})
    assert sandbox.status_code == 201
    assert harness.client.get("/v1/keys", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    from chaser.service.forward import is_chaser_authorization

    assert is_chaser_authorization(f"Bearer {key}")


def test_ingress_port_setting_off_and_zero_disable_it(monkeypatch):
    from chaser.config import Settings

    for value, expected in (("off", 0), ("0", 0), ("OFF", 0), ("50000", 50000)):
        monkeypatch.setenv("CHASER_E2B_INGRESS_PORT", value)
        assert Settings().e2b_ingress_port == expected
    monkeypatch.delenv("CHASER_E2B_INGRESS_PORT")
    assert Settings().e2b_ingress_port == 49983
