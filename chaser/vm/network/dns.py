"""The sandbox's resolver: one dnsmasq (Debian `dnsmasq-base`) per namespace,
listening on 10.0.2.3 only. It forwards to the configured upstreams and, via
`--nftset`, adds the addresses it answers for allowed or denied names to the
namespace table's sets, which is how domain entries of a policy are enforced:
an allow-listed guest can connect only to addresses that were resolved for an
allowed name (or listed as IPs)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
from pathlib import Path

from chaser.runtime.egress import EgressPolicy
from chaser.vm.network.nftables import GUEST_RESOLVER, TABLE
from chaser.vm.process import Confinement, confine


def upstream_servers(configured: list[str], resolv_conf: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The configured upstreams, else the host's resolvers that a namespace can
    reach (loopback ones, e.g. systemd-resolved's 127.0.0.53, cannot)."""
    if configured:
        return list(configured)
    servers = []
    try:
        for line in resolv_conf.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                try:
                    address = ipaddress.ip_address(parts[1])
                except ValueError:
                    continue
                if address.version == 4 and not address.is_loopback:
                    servers.append(str(address))
    except OSError:
        pass
    return servers


def dnsmasq_argv(policy: EgressPolicy | None, *, upstreams: list[str], hosts: dict[str, str]) -> list[str]:
    argv = [
        "dnsmasq", "--keep-in-foreground", "--no-hosts", "--no-resolv", "--no-poll",
        f"--listen-address={GUEST_RESOLVER}", "--bind-interfaces", "--except-interface=lo",
        "--pid-file=", "--cache-size=1000", "--log-facility=-", "--no-negcache",
        "--user=nobody", "--group=nogroup",
    ]
    argv += [f"--server={server}" for server in upstreams]
    argv += [f"--address=/{name}/{address}" for name, address in sorted(hosts.items())]
    if policy is not None:
        for domains, sets in ((policy.allowed.domains, ("allow4", "allow6")),
                              (policy.denied.domains, ("deny4", "deny6"))):
            if domains:
                names = "/".join(domains)
                argv.append(f"--nftset=/{names}/4#inet#{TABLE}#{sets[0]},6#inet#{TABLE}#{sets[1]}")
    return argv


async def start_dnsmasq(netns: Path, argv: list[str], log_path: Path) -> asyncio.subprocess.Process:
    """dnsmasq inside `netns`, dying with us (the same preexec as QEMU's, chaser/vm/process.py)."""
    netns_fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        # Its log holds the sandbox's DNS queries: 0600, also when an earlier version left it readable.
        log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        with open(log_fd, "ab") as output:  # noqa: ASYNC230 - opened to hand to the child
            os.fchmod(output.fileno(), 0o600)
            return await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output,
                start_new_session=True, preexec_fn=confine(Confinement(netns=netns), netns_fd),
            )
    finally:
        os.close(netns_fd)


async def stop_process(process: asyncio.subprocess.Process | None) -> None:
    if process is None or process.returncode is not None:
        return
    try:
        process.kill()
    except ProcessLookupError:
        pass
    await process.wait()
