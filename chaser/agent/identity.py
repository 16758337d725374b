"""What changes when a VM's memory is reused: a restored clone (at /init) and a
resumed or forked VM (at /resume) must not share randomness, a clock or a token
with the VM whose memory they carry (docs/agent-protocol.md, "Resume")."""

import asyncio
import base64
import binascii
import fcntl
import os
import socket
import struct
import time

from aiohttp import web

from .errors import bad_request, conflict

RNDADDENTROPY = 0x40085203
# Forces the kernel's CRNG to reseed from its input pool now: credited entropy alone
# reseeds it only on its own schedule (up to a minute later), and two forks of one VM
# would read the same /dev/urandom bytes until then.
RNDRESEEDCRNG = 0x5207


def feed_entropy(data: bytes, credit: bool) -> None:
    """Mix fresh randomness from the host into the guest's pool, and reseed."""
    try:
        fd = os.open("/dev/urandom", os.O_WRONLY)
    except OSError:
        return
    try:
        os.write(fd, data)
        if credit:
            fcntl.ioctl(fd, RNDADDENTROPY, struct.pack("ii", len(data) * 8, len(data)) + data)
            fcntl.ioctl(fd, RNDRESEEDCRNG)
    except OSError:
        pass
    finally:
        os.close(fd)


def decode_entropy(value) -> bytes:
    try:
        return base64.b64decode(value or "", validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise bad_request("entropy must be base64") from None


async def handle_resume(agent, request):
    """POST /resume {token, time_ns, entropy, hostname?, session_id?}: the host calls it
    first thing on a resumed or forked VM, with the new QEMU's boot token. Processes,
    files and mounts are the memory's own: only the identity around them changes."""
    from .server import opt_int, read_json

    body = await read_json(request)
    token = body.get("token")
    if not isinstance(token, str) or not token:
        raise bad_request("token must be a non-empty string")
    time_ns = opt_int(body.get("time_ns"), "time_ns", minimum=0)
    entropy = decode_entropy(body.get("entropy"))
    hostname, session_id = body.get("hostname"), body.get("session_id")
    if hostname is not None and not (isinstance(hostname, str) and 0 < len(hostname) <= 63):
        raise bad_request("hostname must be a string of 1 to 63 characters")
    if session_id is not None and not isinstance(session_id, str):
        raise bad_request("session_id must be a string")
    if not agent.initialized:
        raise conflict("agent is not initialized: /init first")
    if entropy:  # first: what follows (a fork's machine id) draws on it
        feed_entropy(entropy, credit=not agent.dev_mode)
    if not agent.dev_mode:
        if time_ns:
            time.clock_settime_ns(time.CLOCK_REALTIME, time_ns)
        if hostname:
            socket.sethostname(hostname)
            if agent.prepared_disks is not None:
                from . import sandbox
                from .protocol import DEFAULT_WORKDIR
                # A fork is another machine: a new machine id too (after the entropy above).
                await asyncio.get_running_loop().run_in_executor(
                    None, lambda: sandbox.set_identity(hostname, agent.workdir or DEFAULT_WORKDIR, new_machine=True))
    if session_id:
        agent.session_id = session_id
    agent.token = token  # the boot token of this QEMU is dead from here on
    return web.json_response({"status": "resumed"})
