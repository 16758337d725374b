"""The agent's boot token comes from its QEMU's fw_cfg, and a new QEMU (a restored
clone, a resumed VM) brings a new one that kills every token of the old one."""

from __future__ import annotations

import base64
import os
import secrets
import time

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from chaser.agent.__main__ import read_boot_token
from chaser.agent.protocol import BOOT_TOKEN_CHARS
from chaser.agent.server import Agent


def new_token() -> str:
    token = secrets.token_urlsafe(32)
    assert len(token) == BOOT_TOKEN_CHARS
    return token


class FwCfg:
    """What the current QEMU's fw_cfg holds; a test swaps it like a restore does."""

    def __init__(self) -> None:
        self.token = new_token()
        self.reads = 0

    def read(self) -> str:
        self.reads += 1
        return self.token


@pytest.fixture
async def served(tmp_path):
    fw_cfg = FwCfg()
    agent = Agent(fw_cfg.token, str(tmp_path), boot_token_source=fw_cfg.read)
    server = TestServer(agent.make_app())
    await server.start_server()
    async with aiohttp.ClientSession() as http:

        async def status(token: str, path: str = "/health", method: str = "GET", **kw) -> int:
            async with http.request(method, server.make_url(path), headers={"Authorization": f"Bearer {token}"},
                                    **kw) as r:
                await r.read()
                return r.status

        yield fw_cfg, status
    await server.close()


async def test_a_restored_clone_refuses_the_template_token_from_the_first_request(served):
    fw_cfg, status = served
    template_token = fw_cfg.token
    fw_cfg.token = new_token()  # the clone's QEMU: its memory still holds the template's token
    assert await status(template_token) == 401
    assert await status(fw_cfg.token) == 200
    assert await status(template_token) == 401


async def test_after_init_only_the_session_token_and_a_new_qemus_token_are_accepted(served):
    fw_cfg, status = served
    boot, session = fw_cfg.token, "session-" + secrets.token_hex(8)
    init = {"token": session, "session_id": "s", "env": {}, "hostname": "", "time_ns": time.time_ns(),
            "entropy": base64.b64encode(os.urandom(16)).decode(), "disks": None, "user": None, "workdir": None}
    assert await status(boot, "/init", "POST", json=init) == 200
    assert await status(boot) == 401
    reads = fw_cfg.reads
    assert await status(session) == 200
    assert fw_cfg.reads == reads  # the session token is checked without reading fw_cfg

    fw_cfg.token = new_token()  # resumed in a new QEMU
    assert await status(fw_cfg.token) == 200
    assert await status(session) == 401
    assert await status(boot) == 401


async def test_an_unchanged_fw_cfg_never_revives_the_boot_token(served):
    fw_cfg, status = served
    assert await status("x" * BOOT_TOKEN_CHARS) == 401
    assert await status("") == 401
    assert await status(fw_cfg.token) == 200


def test_read_boot_token_takes_only_a_token_of_the_right_length(tmp_path):
    path = tmp_path / "raw"
    assert read_boot_token(str(path)) is None  # no fw_cfg entry (module not loaded, no QEMU)
    token = new_token()
    path.write_text(token)
    assert read_boot_token(str(path)) == token
    path.write_text(token[:-1])
    assert read_boot_token(str(path)) is None
    path.write_bytes(b"\xff" * BOOT_TOKEN_CHARS)
    assert read_boot_token(str(path)) is None
