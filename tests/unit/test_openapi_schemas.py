"""/openapi.json tells the truth: what its request schemas admit, the server accepts; `Allow`
lists every method a path answers; the creates link to the routes on what they made.
(The whole document against a real server: tests/integration/test_openapi_conformance.py.)"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chaser.models.common import COMMAND_SCHEMA, ENV_SCHEMA, IMAGE_REF_PATTERN, check_command, check_env
from chaser.models.network import NETWORK_ENTRY_PATTERN
from chaser.models.sessions import PROXY_PATTERN
from chaser.runtime.egress import normalise_entry
from chaser.service.images import check_image_ref
from chaser.service.sessions import check_proxy

SOME = settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def matching(pattern: str, max_size: int = 300):
    return st.from_regex(pattern, fullmatch=True).filter(lambda text: len(text) <= max_size)


@SOME
@given(matching(IMAGE_REF_PATTERN, 255))
def test_an_image_reference_the_schema_admits_is_accepted(ref):
    check_image_ref(ref)


@SOME
@given(matching(NETWORK_ENTRY_PATTERN, 253))
def test_a_network_entry_the_schema_admits_is_accepted(entry):
    normalise_entry(entry)


@SOME
@given(matching(PROXY_PATTERN))
def test_a_proxy_the_schema_admits_is_accepted(proxy):
    check_proxy(proxy)


@SOME
@given(matching(COMMAND_SCHEMA["pattern"], 2000))
def test_a_command_the_schema_admits_is_accepted(command):
    check_command(command)


@SOME
@given(st.dictionaries(matching(ENV_SCHEMA["propertyNames"]["pattern"], 1024).filter(bool),
                       matching(ENV_SCHEMA["additionalProperties"]["pattern"], 2000), max_size=5))
def test_an_env_the_schema_admits_is_accepted(env):
    check_env(env)


@pytest.mark.parametrize("pattern, examples", [
    (IMAGE_REF_PATTERN, ["", "python:3.12", "chaser/base", "ghcr.io/org/img@sha256:" + "a" * 64,
                         "localhost:5000/x/y:v1.2", "registry.example.com:443/team/app"]),
    (NETWORK_ENTRY_PATTERN, ["1.2.3.4", "203.0.113.0/24", "::1", "2001:db8::/32", "example.com",
                             "*.pypi.org", "GitHub.com."]),
    (PROXY_PATTERN, ["", "http://proxy:3128", "https://10.0.0.1:8443/", "socks5h://user:pw@proxy.example:1080"]),
])
def test_the_usual_forms_are_admitted(pattern, examples):
    for example in examples:
        assert re.fullmatch(pattern, example), example


def test_405_lists_every_method_of_the_path(harness):
    spec = harness.client.get("/openapi.json").json()
    for path, documented in {"/v1/sessions": {"GET", "POST"}, "/v1/sessions/ses_x": {"GET", "DELETE"},
                             "/v1/workspaces/w/snapshots": {"GET", "POST"}, "/v1/mcp": {"POST"}}.items():
        response = harness.client.request("PATCH", path)
        assert response.status_code == 405, (path, response.text)
        assert response.json()["code"] == "method_not_allowed"
        assert set(response.headers["allow"].split(", ")) - {"HEAD"} == documented, (path, response.headers)
    assert {"get", "post"} <= set(spec["paths"]["/v1/sessions"])
    gateway = harness.client.request("TRACE", "/s/ses_x/forward/3000/")
    assert gateway.status_code == 405
    assert set(gateway.headers["allow"].split(", ")) == {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


def test_plain_http_to_a_websocket_endpoint(harness):
    upgrade = harness.client.get("/v1/sessions/ses_x/pty")
    assert upgrade.status_code == 426 and upgrade.json()["code"] == "upgrade_required"
    assert upgrade.headers["upgrade"] == "websocket"
    other = harness.client.post("/v1/sessions/ses_x/tunnel/3000")
    assert other.status_code == 405 and other.headers["allow"] == "GET"


def test_creates_link_to_what_they_made(harness):
    spec = harness.client.get("/openapi.json").json()
    create = spec["paths"]["/v1/sessions"]["post"]["responses"]
    for status in ("200", "201"):
        links = create[status]["links"]
        assert links["get_session_v1_sessions__session_id__get"]["parameters"] == {"session_id": "$response.body#/id"}
        assert "forward_get" in links and "pty_websocket" in links
    workspace = spec["paths"]["/v1/workspaces"]["post"]["responses"]["200"]["links"]
    assert all(link["parameters"]["workspace"] == "$response.body#/id" for link in workspace.values())


def test_a_malformed_proxy_is_a_400_not_a_500():
    from chaser import errors

    for proxy in ("http://[", "http://[::1", "http://:80", "ftp://proxy"):
        with pytest.raises(errors.InvalidRequest):
            check_proxy(proxy)
