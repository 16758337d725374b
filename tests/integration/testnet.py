"""Hosts for network tests, each in a network namespace this test run creates.

    "internet"  netns chtst-inet-<run>: 198.51.100.10-.13 (TEST-NET-2, never routed
                off this machine: the host route points into the namespace),
                an HTTP server on :80 answering its own address, and a DNS
                server on 198.51.100.53 answering the test names below
    "private"   netns chtst-priv-<run>: 10.250.77.10 (a private address) with the same HTTP server

Nothing here sends a packet anywhere but into these namespaces; `check_routes`
proves the host routes point into them before a test uses them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

from tests.support.wait import wait_until

INTERNET_NET = "198.51.100"
PRIVATE_NET = "10.250.77"
DNS_ADDRESS = f"{INTERNET_NET}.53"
NAMES = {
    "allowed.test": f"{INTERNET_NET}.10",
    "www.allowed.test": f"{INTERNET_NET}.12",
    "denied.test": f"{INTERNET_NET}.11",
    "other.test": f"{INTERNET_NET}.13",
    "private.test": f"{PRIVATE_NET}.10",
}

HTTP_SERVER = r"""
import http.server, socketserver
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello from " + self.connection.getsockname()[0]).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
S(("0.0.0.0", 80), H).serve_forever()
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


@dataclass
class LabHost:
    namespace: str
    host_veth: str
    host_address: str  # the host's end, /24
    addresses: list[str]
    processes: list[subprocess.Popen] = field(default_factory=list)

    def create(self) -> None:
        sh("ip", "netns", "add", self.namespace)
        sh("ip", "link", "add", self.host_veth, "type", "veth", "peer", "name", "eth0", "netns", self.namespace)
        sh("ip", "addr", "add", f"{self.host_address}/24", "dev", self.host_veth)
        sh("ip", "link", "set", self.host_veth, "up")
        sh("ip", "-n", self.namespace, "link", "set", "lo", "up")
        sh("ip", "-n", self.namespace, "link", "set", "eth0", "up")
        for address in self.addresses:
            sh("ip", "-n", self.namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        sh("ip", "-n", self.namespace, "route", "add", "default", "via", self.host_address)

    def spawn(self, *argv: str) -> None:
        self.processes.append(subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, *argv],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))

    def routed_here(self, address: str) -> bool:
        return f"dev {self.host_veth}" in sh("ip", "route", "get", address).stdout

    def destroy(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait(10)
        sh("ip", "netns", "delete", self.namespace, check=False)
        sh("ip", "link", "delete", self.host_veth, check=False)


class LabNetwork:
    def __init__(self) -> None:
        run = f"{os.getpid() % 100000}"
        self.internet = LabHost(f"chtst-inet-{run}", f"ctinet{run}", f"{INTERNET_NET}.1",
                                 [f"{INTERNET_NET}.{n}" for n in (10, 11, 12, 13, 53)])
        self.private = LabHost(f"chtst-priv-{run}", f"ctpriv{run}", f"{PRIVATE_NET}.1", [f"{PRIVATE_NET}.10"])

    def start(self) -> LabNetwork:
        try:
            for host in (self.internet, self.private):
                host.create()
                host.spawn(sys.executable, "-c", HTTP_SERVER)
            self.internet.spawn(
                "dnsmasq", "--keep-in-foreground", "--no-hosts", "--no-resolv", "--pid-file=",
                f"--listen-address={DNS_ADDRESS}", "--bind-interfaces", "--user=nobody", "--group=nogroup",
                *(f"--address=/{name}/{address}" for name, address in NAMES.items()),
            )
            self.check_routes()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def check_routes(self) -> None:
        for address in self.internet.addresses:
            assert self.internet.routed_here(address), f"{address} is not routed into the test namespace"
        for address in self.private.addresses:
            assert self.private.routed_here(address), f"{address} is not routed into the test namespace"

    def wait_ready(self, timeout: float = 20) -> None:
        """Poll the test servers from the host until they answer (by their own route)."""
        deadline = time.monotonic() + timeout
        for address in (f"{INTERNET_NET}.10", f"{PRIVATE_NET}.10"):
            wait_until(lambda address=address: sh("curl", "-s", "-m", "1", f"http://{address}/",
                                                   check=False).stdout.startswith("hello from"),
                       max(0.0, deadline - time.monotonic()), interval=0.1,
                       message=f"test server {address} did not start")
        wait_until(lambda: f"{DNS_ADDRESS}:53" in sh("ip", "netns", "exec", self.internet.namespace, "ss", "-lnu",
                                                     check=False).stdout,
                   max(0.0, deadline - time.monotonic()), interval=0.1, message="test DNS server did not start")

    def stop(self) -> None:
        for host in (self.internet, self.private):
            host.destroy()
