"""Which TLS flag skopeo gets: `--…tls-verify=false` for registries our setting lists and for
loopback ones, and no flag at all otherwise (so registries.conf's `insecure` decides)."""

from __future__ import annotations

import pytest

from chaser.config import Settings
from chaser.images import pull
from chaser.images.pull import Skopeo, is_loopback_registry
from chaser.images.reference import parse


@pytest.mark.parametrize("domain, loopback", [
    ("127.0.0.1:5000", True), ("127.1.2.3", True), ("localhost", True), ("LOCALHOST:5000", True),
    ("[::1]:5000", True), ("[::1]", True),
    ("docker.io", False), ("10.0.0.1:5000", False), ("localhost.example.com", False),
    ("mylocalhost:5000", False), ("[2001:db8::1]:5000", False), ("128.0.0.1", False),
])
def test_is_loopback_registry(domain, loopback):
    assert is_loopback_registry(domain) is loopback


@pytest.fixture
def calls(monkeypatch):
    seen: list[list[str]] = []

    async def fake_run_tool(cmd, *, on_line=None, env=None):
        seen.append(cmd)
        return pull.ToolResult(0, b"{}", "")

    monkeypatch.setattr(pull, "run_tool", fake_run_tool)
    return seen


def tls_flags(cmd: list[str]) -> list[str]:
    return [arg for arg in cmd if "tls-verify" in arg]


@pytest.mark.parametrize("ref, listed, expected", [
    ("registry.example.com/app:1", [], []),  # registries.conf decides
    ("registry.example.com/app:1", ["registry.example.com"], ["false"]),
    ("registry.example.com:5000/app:1", ["registry.example.com"], []),  # the port is part of the name
    ("127.0.0.1:5000/app:1", [], ["false"]),
    ("localhost:5000/app:1", [], ["false"]),
    ("[::1]:5000/app:1", [], ["false"]),
    ("python:3.12", [], []),
])
async def test_tls_flag_for_inspect_and_copy(tmp_path, calls, ref, listed, expected):
    skopeo = Skopeo(Settings(home=tmp_path, registries_insecure=listed), tmp_path / "skopeo")
    parsed = parse(ref)
    await skopeo.inspect_raw(parsed, parsed.skopeo())
    await skopeo.copy(parsed, parsed.skopeo(), tmp_path / "layout", "t")
    inspect, copy = calls
    assert tls_flags(inspect) == [f"--tls-verify={v}" for v in expected]
    assert tls_flags(copy) == [f"--src-tls-verify={v}" for v in expected]


async def test_local_sources_get_no_tls_flag(tmp_path, calls):
    skopeo = Skopeo(Settings(home=tmp_path), tmp_path / "skopeo")
    parsed = parse(f"oci:{tmp_path}/layout:v1")
    await skopeo.inspect_raw(parsed, parsed.skopeo())
    assert tls_flags(calls[0]) == []
