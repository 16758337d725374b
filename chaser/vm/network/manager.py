"""Network isolation for the runtime: which mode this server runs in, the
host table, a pool of ready namespaces, and one `SandboxNetwork` per VM.

    manager = NetworkManager(settings)
    await manager.start()                       # host table, reap leftovers, fill the pool
    net = await manager.acquire()               # a namespace whose table lets nothing out
    await net.apply(EgressPolicy(internet=True))
    ...                                         # QEMU runs inside net.netns_path with tap0
    await net.release()                         # namespace, veth, tap, dnsmasq gone

Modes (CHASER_NETWORK): `isolated` (the above; needs CAP_NET_ADMIN and the
`ip`, `nft` and `dnsmasq` commands), `none` (slirp with restrict=on: the guest
reaches nothing, the host reaches the agent through a host-forward), `slirp`
(unrestricted user-mode networking: the guest reaches the host's loopback —
development only). `auto` picks isolated when it can, else none, and says so.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from chaser import errors
from chaser.config import Settings
from chaser.runtime.egress import EgressPolicy
from chaser.vm.network import dns, namespace
from chaser.vm.network.namespace import LOCK_DIR, Slot, run
from chaser.vm.network.nftables import host_ruleset, namespace_ruleset

log = logging.getLogger(__name__)
REQUIRED_COMMANDS = ("ip", "nft", "dnsmasq")


def _has_net_admin() -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << 12))  # CAP_NET_ADMIN
    except OSError:
        pass
    return False


def resolve_mode(requested: str) -> tuple[str, str]:
    """(mode, reason) for the configured mode on this host."""
    if requested in ("none", "slirp"):
        return requested, f"CHASER_NETWORK={requested}"
    missing = [c for c in REQUIRED_COMMANDS if shutil.which(c) is None]
    problem = None
    if not _has_net_admin():
        problem = "the server lacks CAP_NET_ADMIN (not root)"
    elif missing:
        problem = f"missing commands: {', '.join(missing)}"
    if problem is None:
        return "isolated", "network namespaces available"
    if requested == "isolated":
        raise errors.SandboxRuntimeError(f"CHASER_NETWORK=isolated but {problem}")
    return "none", problem


@dataclass
class SandboxNetwork:
    """One VM's namespace and its policy."""

    manager: NetworkManager
    slot: Slot
    policy: EgressPolicy | None = None
    dnsmasq: asyncio.subprocess.Process | None = None
    _released: bool = field(default=False, repr=False)

    @property
    def netns_path(self) -> Path:
        return self.slot.path

    @property
    def agent_host(self) -> str:
        return self.slot.namespace_address

    async def apply(self, policy: EgressPolicy) -> None:
        """Install `policy`: the namespace table is replaced in one transaction
        (new connections follow it at once) and dnsmasq restarts with the
        policy's names (its cache and the sets it filled start empty)."""
        manager = self.manager
        await dns.stop_process(self.dnsmasq)
        self.dnsmasq = None
        await manager.load_namespace_table(self.slot, policy)
        argv = dns.dnsmasq_argv(policy, upstreams=manager.dns_servers, hosts=manager.settings.network_hosts)
        self.dnsmasq = await dns.start_dnsmasq(self.netns_path, argv, LOCK_DIR / f"{self.slot.index}.dnsmasq.log")
        self.policy = policy

    async def restart_resolver(self, policy: EgressPolicy) -> None:
        """An adopted namespace: its table holds `policy` still; its resolver starts again. The
        dead server's dnsmasq may still run there: it changes its user at start, which clears the
        parent-death signal, so it outlives a SIGKILLed server; it is killed first."""
        await dns.stop_process(self.dnsmasq)
        await namespace.kill_in_namespace(self.slot.name, command="dnsmasq")
        argv = dns.dnsmasq_argv(policy, upstreams=self.manager.dns_servers, hosts=self.manager.settings.network_hosts)
        self.dnsmasq = await dns.start_dnsmasq(self.netns_path, argv, LOCK_DIR / f"{self.slot.index}.dnsmasq.log")
        self.policy = policy

    async def detach(self) -> None:
        """The server exits and its VM runs on: the namespace stays (QEMU holds its slot's lock)."""
        if self._released:
            return
        self._released = True
        try:
            await dns.stop_process(self.dnsmasq)
        finally:
            self.manager.forget(self.slot)

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        try:
            await dns.stop_process(self.dnsmasq)
            await namespace.remove_namespace(self.slot.name, self.slot.host_veth)
        finally:
            self.manager.forget(self.slot)


class NetworkManager:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.mode, self.reason = resolve_mode(settings.network)
        self.dns_servers = dns.upstream_servers(settings.network_dns_servers)
        self._taken: set[int] = set()
        self._ready: list[SandboxNetwork] = []
        self._filler: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        self._start_lock = asyncio.Lock()

    @property
    def isolated(self) -> bool:
        return self.mode == "isolated"

    @property
    def backend(self) -> str:
        """What QEMU's netdev is: part of the template key (a slirp snapshot
        does not restore with a tap and vice versa)."""
        return "tap" if self.isolated else "user"

    async def start(self) -> None:
        """Host set-up once per process: forwarding on, our host table loaded,
        namespaces of dead servers removed. Safe to call more than once."""
        if not self.isolated or self._started:
            return
        async with self._start_lock:
            if self._started:
                return
            Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
            await run("nft", "-f", "-", stdin=host_ruleset(
                pool=self.settings.network_pool, allow_private=self.settings.network_allow_private,
                dns_servers=self.dns_servers).encode())
            reaped = await namespace.reap_dead_namespaces()
            if reaped:
                log.warning("removed %d network namespaces left by a dead server: %s", len(reaped), ", ".join(reaped))
            self._started = True
        self.refill()

    async def acquire(self) -> SandboxNetwork:
        """A namespace whose table lets nothing out yet (apply() a policy)."""
        await self.start()
        while self._ready:
            network = self._ready.pop(0)
            if network.netns_path.exists():
                self.refill()
                return network
            await network.release()
        network = await self._create()
        self.refill()
        return network

    async def load_namespace_table(self, slot: Slot, policy: EgressPolicy | None) -> None:
        script = namespace_ruleset(policy, allow_private=self.settings.network_allow_private)
        await run("ip", "netns", "exec", slot.name, "nft", "-f", "-", stdin=script.encode())

    def adopt(self, index: int, subnet: str, lock_fd: int) -> SandboxNetwork:
        """The namespace of an adopted VM, whose slot lock `lock_fd` (a copy of its QEMU's) holds."""
        self._taken.add(index)
        return SandboxNetwork(manager=self, slot=Slot(index=index, subnet=ipaddress.IPv4Network(subnet),
                                                      lock_fd=lock_fd))

    def forget(self, slot: Slot) -> None:
        self._taken.discard(slot.index)
        namespace.release_slot(slot)

    def refill(self) -> None:
        if self._closed or self.settings.network_ready_pool_size <= 0:
            return
        if self._filler is None or self._filler.done():
            self._filler = asyncio.ensure_future(self._fill())

    async def _fill(self) -> None:
        while len(self._ready) < self.settings.network_ready_pool_size and not self._closed:
            try:
                network = await self._create()
            except Exception as exc:  # noqa: BLE001 - the pool is an optimisation
                log.warning("network pool: creating a namespace failed: %s", exc)
                return
            if self._closed:
                await network.release()
                return
            self._ready.append(network)

    async def _create(self) -> SandboxNetwork:
        slot, leftover = namespace.claim_slot(self.settings.network_pool, self._taken)
        self._taken.add(slot.index)
        network = SandboxNetwork(manager=self, slot=slot)
        try:
            if leftover:
                log.warning("removing the leftover namespace %s of a dead server", slot.name)
            await namespace.create_namespace(slot)
            await self.load_namespace_table(slot, None)
        except BaseException:
            await asyncio.shield(network.release())
            raise
        return network

    async def close(self) -> None:
        self._closed = True
        if self._filler is not None:
            self._filler.cancel()
            await asyncio.gather(self._filler, return_exceptions=True)
        ready, self._ready = self._ready, []
        await asyncio.gather(*(network.release() for network in ready), return_exceptions=True)
