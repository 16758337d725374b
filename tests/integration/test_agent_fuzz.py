"""The in-guest agent under a bounded, seeded fuzz (tests/support/agent_fuzz.py): from the
host with the VM's token, and from inside the guest, as the sandbox's own code, without
it. Every request gets an answer, none is an undocumented 5xx, and the agent still
serves the host afterwards. (Failing cases found this way are regular regression tests
in tests/unit/test_agent_hostile.py.)"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import httpx
import pytest

from chaser import errors
from tests.support import agent_fuzz

pytestmark = [pytest.mark.vm, pytest.mark.asyncio(loop_scope="session")]

HOST_REQUESTS = 600
GUEST_REQUESTS = 300


async def still_serves(vm) -> None:
    async with httpx.AsyncClient(trust_env=False) as client:
        health = await client.get(f"{vm.agent.base_url}/health", headers={"Authorization": f"Bearer {vm.agent.token}"})
    assert health.status_code == 200 and health.json()["status"] == "ok"
    result = await vm.exec("echo alive; id -u", timeout_ms=30_000)
    assert result["exit_code"] == 0 and base64.b64decode(result["output"]).decode().split() == ["alive", "0"]


async def test_the_agent_survives_a_fuzz_from_the_host(vm):
    # Finished processes only: a long poll of a running one's output may rightly take 30 s.
    finished = [(await vm.exec(command, background=True))["id"] for command in ("echo done", "exit 3")]
    summary = await asyncio.to_thread(
        agent_fuzz.run, vm.agent.host, vm.agent.port, vm.agent.token, seed=20261202, count=HOST_REQUESTS,
        process_ids=finished, timeout=20.0)
    print(json.dumps({k: v for k, v in summary.items() if k != "failures"}))
    assert summary["failures"] == [], summary["failures"][:5]
    # A kept-alive connection the agent closed between two requests, now and then (1 of 600 measured;
    # 8 before an unread body closed its connection): each request got its answer on a new one.
    assert summary["retries"] <= HOST_REQUESTS // 50, summary["retries"]
    statuses = summary["statuses"]
    assert sum(statuses.values()) == HOST_REQUESTS
    # It reached the handlers (answers of every kind), not only the router's 404.
    assert {200, 400, 404, 405} <= set(statuses), statuses
    assert not {401, 500} & set(statuses), statuses
    await still_serves(vm)


async def test_a_refused_upload_does_not_break_the_hosts_next_call(vm):
    """Found by the fuzz: after a body the agent did not read (here: an upload to a directory),
    aiohttp 3.8 left the kept-alive connection unread and the host's next call on it failed
    after the keep-alive timer (AgentUnavailable). Now that answer closes the connection."""
    for size in (200_000, 300_000, 2_000_000):
        with pytest.raises(errors.InvalidRequest, match="is a directory"):
            await vm.write_file("/tmp", b"x" * size)
        started = time.monotonic()
        result = await vm.exec("true", timeout_ms=30_000)
        assert result["exit_code"] == 0 and time.monotonic() - started < 5


async def test_the_agent_survives_a_fuzz_from_inside_the_sandbox(vm):
    """The sandbox's code can reach the agent's port (it shares the guest's network); without
    the token it gets nothing but refusals, and cannot wedge it."""
    source = Path(agent_fuzz.__file__).read_bytes()
    await vm.write_file("/tmp/agent_fuzz.py", source)
    result = await vm.exec(["python3", "/tmp/agent_fuzz.py", "--port", "8420", "--seed", "7",
                            "--count", str(GUEST_REQUESTS)], timeout_ms=240_000)
    output = base64.b64decode(result["output"]).decode()
    assert result["exit_code"] == 0, output[-3000:]
    summary = json.loads(output.strip().splitlines()[-1])
    print(json.dumps({k: v for k, v in summary.items() if k != "failures"}))
    assert summary["failures"] == [], summary["failures"][:5]
    statuses = {int(status): n for status, n in summary["statuses"].items()}
    assert sum(statuses.values()) == GUEST_REQUESTS
    # 401 for every request the HTTP parser accepts; 400 from the parser itself (a made-up method).
    assert set(statuses) <= {400, 401}, statuses
    assert statuses[401] > GUEST_REQUESTS // 2, statuses
    await still_serves(vm)
