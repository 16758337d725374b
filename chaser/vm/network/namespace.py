"""One network namespace per VM ("network for clones"):

    host ── chv<N> (pool[N].1/30) ══ netns chaser-<N> ── veth0 (pool[N].2/30)
                                        │  DNAT :AGENT_PORT → 10.0.2.15, masquerade out
                                        └─ tap0 10.0.2.2/24 + 10.0.2.3 (dnsmasq) ── guest eth0 10.0.2.15

Every guest sees the same addresses and the same gateway MAC (a restored
clone's ARP cache still holds the template's), so one template snapshot serves
every namespace. Slot N is owned by whoever holds an exclusive flock on
`LOCK_DIR/N.lock`; the kernel drops the lock when that process dies, which is
how a later start recognises (and removes) the namespaces of a killed server.
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from chaser import errors
from chaser.vm.network.nftables import GUEST_GATEWAY, GUEST_RESOLVER, HOST_VETH_PREFIX, NS_VETH, TAP

log = logging.getLogger(__name__)

LOCK_DIR = Path("/run/chaser/net")
NETNS_DIR = Path("/run/netns")
NAME_PREFIX = "chaser-"
# Locally administered; the same in every namespace (see the module docstring).
GATEWAY_MAC = "02:c4:a5:00:00:02"


@dataclass
class Slot:
    """A claimed slot: its index, names and addresses, and the lock that owns it."""

    index: int
    subnet: ipaddress.IPv4Network
    lock_fd: int

    @property
    def name(self) -> str:
        return f"{NAME_PREFIX}{self.index}"

    @property
    def host_veth(self) -> str:
        return f"{HOST_VETH_PREFIX}{self.index}"

    @property
    def host_address(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def namespace_address(self) -> str:
        """Where the host reaches the agent (DNAT to the guest inside)."""
        return str(self.subnet.network_address + 2)

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name


async def run(*argv: str, stdin: bytes | None = None, check: bool = True) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(stdin)
    if check and process.returncode != 0:
        raise errors.SandboxRuntimeError(
            f"{' '.join(argv[:4])} failed ({process.returncode}): {err.decode(errors='replace').strip()[:500]}")
    return out.decode(errors="replace")


def slot_subnets(pool: str) -> list[ipaddress.IPv4Network]:
    network = ipaddress.ip_network(pool)
    if network.version != 4 or network.prefixlen > 29:
        raise errors.InvalidRequest(f"network pool {pool!r} must be an IPv4 network of /29 or larger")
    return list(network.subnets(new_prefix=30))


def claim_slot(pool: str, taken: set[int]) -> tuple[Slot, bool]:
    """Lock the first free slot index. Returns the slot and whether a dead
    owner left its namespace behind (the caller removes it before reuse)."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    for index, subnet in enumerate(slot_subnets(pool)):
        if index in taken:
            continue
        # Read-only: QEMU inherits this descriptor (it holds the lock while it runs).
        fd = os.open(LOCK_DIR / f"{index}.lock", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        slot = Slot(index=index, subnet=subnet, lock_fd=fd)
        return slot, slot.path.exists() or Path(f"/sys/class/net/{slot.host_veth}").exists()
    raise errors.CapacityExhausted(f"the network pool {pool} has no free slot", retry_after_s=10)


def release_slot(slot: Slot) -> None:
    try:
        os.close(slot.lock_fd)
    except OSError:
        pass


async def create_namespace(slot: Slot) -> None:
    """The namespace, veth pair and tap of `slot` (its nftables come after)."""
    await remove_namespace(slot.name, slot.host_veth)
    await run("ip", "netns", "add", slot.name)
    try:
        await run("ip", "-batch", "-", stdin=(
            f"link add {slot.host_veth} type veth peer name {NS_VETH} netns {slot.name}\n"
            f"addr add {slot.host_address}/30 dev {slot.host_veth}\n"
            f"link set {slot.host_veth} up\n").encode())
        await run("ip", "-n", slot.name, "-batch", "-", stdin=(
            "link set lo up\n"
            f"addr add {slot.namespace_address}/30 dev {NS_VETH}\n"
            f"link set {NS_VETH} up\n"
            f"route add default via {slot.host_address}\n"
            # QEMU's spawner attaches to it as root before dropping to the VM's uid.
            f"tuntap add dev {TAP} mode tap vnet_hdr\n"
            f"link set {TAP} address {GATEWAY_MAC}\n"
            f"addr add {GUEST_GATEWAY}/24 dev {TAP}\n"
            f"addr add {GUEST_RESOLVER}/24 dev {TAP}\n"
            f"link set {TAP} up\n").encode())
        # Forward between tap and veth; no IPv6 at all inside the namespace.
        await run("ip", "netns", "exec", slot.name, "sh", "-c",
                  "echo 1 > /proc/sys/net/ipv4/ip_forward"
                  " && echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6"
                  " && echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6")
    except BaseException:
        await asyncio.shield(remove_namespace(slot.name, slot.host_veth))
        raise


async def kill_in_namespace(name: str, *, command: str | None = None) -> list[int]:
    """SIGKILL the processes in namespace `name` (only those named `command`, when given)."""
    killed: list[int] = []
    if not (NETNS_DIR / name).exists():
        return killed
    for pid in (await run("ip", "netns", "pids", name, check=False)).split():
        try:
            if command is not None and Path(f"/proc/{pid}/comm").read_text().strip() != command:
                continue
            os.kill(int(pid), signal.SIGKILL)
            killed.append(int(pid))
        except (OSError, ValueError):
            pass
    return killed


async def remove_namespace(name: str, host_veth: str | None = None) -> None:
    """Kill what runs in the namespace (a dnsmasq whose server died before it),
    delete it (its veth end, tap and nftables go with it) and the host veth."""
    if (NETNS_DIR / name).exists():
        await kill_in_namespace(name)
        await run("ip", "netns", "delete", name, check=False)
    if host_veth and Path(f"/sys/class/net/{host_veth}").exists():
        await run("ip", "link", "delete", host_veth, check=False)


async def reap_dead_namespaces() -> list[str]:
    """Remove every `chaser-N` namespace whose slot lock nobody holds."""
    reaped: list[str] = []
    if not NETNS_DIR.is_dir():
        return reaped
    for entry in NETNS_DIR.iterdir():
        if not entry.name.startswith(NAME_PREFIX) or not entry.name[len(NAME_PREFIX):].isdigit():
            continue
        index = int(entry.name[len(NAME_PREFIX):])
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(LOCK_DIR / f"{index}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live process owns it
            await remove_namespace(entry.name, f"{HOST_VETH_PREFIX}{index}")
            reaped.append(entry.name)
        finally:
            os.close(fd)
    return reaped
