"""The isolation layer's pure parts: egress policies, the rendered nftables
rule sets (checked by the real `nft` in a private network namespace, so no
rule of the host is touched), dnsmasq's arguments, the bounded console and the
sealed template memory."""

from __future__ import annotations

import fcntl
import mmap
import os
import subprocess

import pytest

from chaser import errors
from chaser.runtime.egress import EgressPolicy, normalise_entry
from chaser.vm import memory
from chaser.vm.console import ConsoleLog
from chaser.vm.jail import PassedFiles
from chaser.vm.network.dns import dnsmasq_argv, upstream_servers
from chaser.vm.network.nftables import BLOCKED_V4, host_ruleset, namespace_ruleset


def nft_check(script: str) -> subprocess.CompletedProcess:
    """`nft --check` in a new, empty network namespace: validates against the kernel, changes nothing."""
    return subprocess.run(["unshare", "--net", "nft", "-c", "-f", "-"], input=script, text=True, capture_output=True)


def test_policy_entries_are_validated_and_normalised():
    assert normalise_entry("10.1.2.3") == "10.1.2.3/32"
    assert normalise_entry("10.1.2.0/24") == "10.1.2.0/24"
    assert normalise_entry("2001:db8::1") == "2001:db8::1/128"
    assert normalise_entry("Example.COM.") == "example.com"
    assert normalise_entry("*.example.com") == "*.example.com"
    for bad in ("not a host!", "10.0.0.0/33", "1.2.3", "*.", "a..b", "-a.com", "", "x" * 300):
        with pytest.raises(errors.InvalidRequest):
            normalise_entry(bad)
    with pytest.raises(errors.InvalidRequest, match="list"):
        EgressPolicy(allow_out="example.com")
    with pytest.raises(errors.InvalidRequest, match="at most"):
        EgressPolicy(deny_out=[f"10.0.{i // 256}.{i % 256}" for i in range(300)])


def test_policy_splits_networks_and_domains():
    policy = EgressPolicy(allow_out=["*.a.test", "b.test", "192.0.2.0/24", "2001:db8::/32", "b.test"])
    assert policy.allow_list and policy.allow_out.count("b.test") == 1
    assert policy.allowed.domains == ("a.test", "b.test")
    assert policy.allowed.v4 == ["192.0.2.0/24"] and policy.allowed.v6 == ["2001:db8::/32"]
    assert EgressPolicy.from_dict({"internet": None}, default_internet=False).internet is False
    assert EgressPolicy.from_dict(policy.to_dict()) == policy


def test_host_table_fences_sandboxes_off_the_host_and_private_ranges():
    rules = host_ruleset(pool="10.200.0.0/16", allow_private=["10.9.0.0/16"], dns_servers=["10.255.255.53"])
    for blocked in ("169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8"):
        assert blocked in BLOCKED_V4 and blocked in rules
    assert 'input iifname "chv*" counter drop' in rules  # the host itself, any address and port
    assert 'iifname "chv*" oifname "chv*" counter drop' in rules  # sandbox to sandbox
    assert 'iifname "chv*" meta nfproto ipv6 counter drop' in rules
    # The order is the policy: established first, then the exceptions, then the private drop, then the rest.
    order = [rules.index(r) for r in ("ct state established,related accept", "@dns4", "@allowed_private4 accept",
                                      "@blocked4 counter reject", 'forward iifname "chv*" accept')]
    assert order == sorted(order)
    assert "add element inet chaser allowed_private4 { 10.9.0.0/16 }" in rules


def test_namespace_table_per_policy():
    waiting = namespace_ruleset(None)
    assert "egress {\n        counter jump refuse" in waiting  # a pooled namespace lets nothing out
    closed = namespace_ruleset(EgressPolicy(internet=False))
    assert closed.index("ip daddr @deny4") < closed.index("counter jump refuse\n        meta nfproto")
    open_ = namespace_ruleset(EgressPolicy())
    assert "chain destinations {\n        accept" in open_
    listed = namespace_ruleset(EgressPolicy(allow_out=["198.51.100.0/24", "a.test"], deny_out=["203.0.113.9"]))
    assert "elements = { 198.51.100.0/24 }" in listed and "elements = { 203.0.113.9/32 }" in listed
    assert "ip daddr @allow4 accept" in listed and "ip daddr @blocked4 counter jump refuse" in listed
    # deny wins: it is the first rule of the egress chain
    assert listed.index("@deny4") < listed.index("@allowed_private4") < listed.index("@blocked4")
    assert 'dnat ip to 10.0.2.15:8420' in listed and 'oifname "veth0" ip saddr 10.0.2.0/24 masquerade' in listed


def test_rendered_rule_sets_load_in_the_kernel():
    scripts = [
        host_ruleset(pool="10.200.0.0/16", allow_private=["10.9.0.0/16"], dns_servers=["10.255.255.53"]),
        host_ruleset(pool="10.200.0.0/16"),
        namespace_ruleset(None),
        namespace_ruleset(EgressPolicy(internet=False)),
        namespace_ruleset(EgressPolicy(allow_out=["*.a.test", "198.51.100.7", "2001:db8::/64"],
                                       deny_out=["b.test", "198.51.100.0/30"]), allow_private=["10.9.0.0/16"]),
    ]
    for script in scripts:
        result = nft_check(script)
        assert result.returncode == 0, result.stderr


def test_dnsmasq_adds_answers_for_allowed_and_denied_names_to_the_sets():
    argv = dnsmasq_argv(EgressPolicy(allow_out=["*.a.test", "b.test"], deny_out=["c.test"]),
                        upstreams=["198.51.100.53"], hosts={"db.internal": "10.1.2.3"})
    assert "--listen-address=10.0.2.3" in argv and "--server=198.51.100.53" in argv and "--no-resolv" in argv
    assert "--nftset=/a.test/b.test/4#inet#chaser#allow4,6#inet#chaser#allow6" in argv
    assert "--nftset=/c.test/4#inet#chaser#deny4,6#inet#chaser#deny6" in argv
    assert "--address=/db.internal/10.1.2.3" in argv
    assert not [a for a in dnsmasq_argv(None, upstreams=[], hosts={}) if a.startswith("--nftset")]


def test_upstreams_skip_loopback_resolvers(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.53\nnameserver 192.0.2.1\nnameserver ::1\nsearch x\n")
    assert upstream_servers([], conf) == ["192.0.2.1"]
    assert upstream_servers(["198.51.100.53"], conf) == ["198.51.100.53"]


def test_console_keeps_only_the_newest_bytes():
    console = ConsoleLog(max_bytes=1000)
    for _ in range(100):
        console.append(b"x" * 99 + b"\n")
    console.append(b"the end\n")
    assert console.total_bytes == 100 * 100 + 8
    assert len(console.tail(10_000)) == 1000 and console.tail().endswith("the end\n")


def test_sealed_template_memory_cannot_be_written_but_maps_copy_on_write(tmp_path):
    size = 4 * mmap.PAGESIZE
    fd = memory.new_memfd("test", size)
    try:
        os.pwrite(fd, b"template", mmap.PAGESIZE)
        memory.save(fd, tmp_path / "memory.ram", size)
        sealed = memory.load_sealed(tmp_path / "memory.ram", size)
    finally:
        os.close(fd)
    try:
        assert (tmp_path / "memory.ram").stat().st_mode & 0o777 == 0o600
        with pytest.raises(PermissionError):
            os.pwrite(sealed, b"evil", 0)
        with pytest.raises(PermissionError):
            mmap.mmap(sealed, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        private = mmap.mmap(sealed, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        private[mmap.PAGESIZE:mmap.PAGESIZE + 4] = b"mine"  # a clone's own copy of the page
        private.close()
        assert os.pread(sealed, 8, mmap.PAGESIZE) == b"template"
    finally:
        os.close(sealed)


def test_passed_files_name_descriptors_not_paths(tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 512)
    files = PassedFiles()
    try:
        kernel = memory.secret_file("kernel", b"\x7fELF")
        assert str(files.fd_path(kernel)) == f"/proc/self/fd/{kernel}"
        assert str(files.fdset(disk, writable=True)) == "/dev/fdset/1"
        assert str(files.fdset(disk, writable=False)) == "/dev/fdset/2"
        args = files.qemu_args()
        assert args.count("-add-fd") == 3 and any(a.endswith(",set=1") for a in args)
        modes = sorted(os.O_ACCMODE & fcntl.fcntl(fd, fcntl.F_GETFL) for fd in files.all_fds)
        assert modes == [os.O_RDONLY, os.O_RDONLY, os.O_RDWR, os.O_RDWR]  # the memfd is read-write (sealed)
    finally:
        fds = files.all_fds
        files.close()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_mode_falls_back_to_none_without_net_admin(monkeypatch):
    from chaser.vm.network import manager

    monkeypatch.setattr(manager, "_has_net_admin", lambda: False)
    mode, reason = manager.resolve_mode("auto")
    assert mode == "none" and "CAP_NET_ADMIN" in reason
    with pytest.raises(errors.SandboxRuntimeError, match="CHASER_NETWORK=isolated"):
        manager.resolve_mode("isolated")
    assert manager.resolve_mode("slirp")[0] == "slirp"
    monkeypatch.setattr(manager, "_has_net_admin", lambda: True)
    assert manager.resolve_mode("auto")[0] == "isolated"
