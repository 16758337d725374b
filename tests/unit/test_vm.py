"""Pure logic of the VM layer: command lines, keys, reaping, error mapping."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from chaser import errors
from chaser.vm import memory
from chaser.vm.agent_client import error_from_agent
from chaser.vm.process import process_start_time, reap_orphans
from chaser.vm.qemu import MemoryFile, QemuCommand, host_tsc_khz, kernel_args, netdev_tap, netdev_user
from chaser.vm.template import template_key


def command(**overrides) -> QemuCommand:
    values = dict(
        kernel=Path("/k"), initramfs=Path("/i"), os_disk=Path("/os"), image_disk=Path("/img"),
        writable_disk=Path("/w"), qmp_fd=9,
        netdev=netdev_user(4321, restrict=True), accel="tcg", memory_mib=512, vcpus=2, kernel_args=["a=1", "b"],
    )
    values.update(overrides)
    return QemuCommand(**values)


def test_argv_has_microvm_disks_net_and_qmp():
    argv = command().argv()
    joined = " ".join(argv)
    assert argv[0] == "qemu-system-x86_64"
    assert "-M microvm," in joined and "-no-reboot" in argv
    assert "serial=chaser-os" in joined and "serial=chaser-image" in joined and "serial=chaser-data" in joined
    assert "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:4321-:8420" in joined
    assert "socket,id=qmp,fd=9,server=on,wait=off" in joined and "chardev=qmp,mode=control" in joined
    assert argv[argv.index("-append") + 1] == "a=1 b"
    assert argv[argv.index("-smp") + 1] == "2"
    assert "tcg,tb-size=64" in joined and "-incoming" not in argv


def test_argv_jails_qemu_and_keeps_the_console_off_disk():
    argv = command(netdev=netdev_tap(7)).argv()
    joined = " ".join(argv)
    assert argv[argv.index("-sandbox") + 1] == "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
    assert "tap,id=net0,fd=7,vhost=off" in joined and "restrict" not in joined
    assert "stdio,id=console,signal=off" in joined and "file,id=console" not in joined
    assert "-sandbox" not in command(seccomp=False).argv()


def test_argv_for_a_clone_maps_template_memory_privately():
    argv = command(memory_file=MemoryFile(Path("/t/memory.ram"), shared=False), incoming=True, accel="kvm").argv()
    joined = " ".join(argv)
    assert "mem-path=/t/memory.ram,share=off" in joined and "memory-backend=mem" in joined
    assert argv[argv.index("-incoming") + 1] == "defer" and "-S" in argv
    assert "-accel kvm -cpu host" in joined


def test_image_and_os_disks_are_read_only():
    drives = [a for a in command().argv() if a.startswith("id=")]
    assert [("readonly=on" in d) for d in drives] == [True, True, False]


def test_tsc_rate_from_cpuinfo():
    assert host_tsc_khz("processor: 0\ncpu MHz\t\t: 2596.138\n") == 2596138
    assert host_tsc_khz("nothing here") is None


def test_no_secret_on_the_command_line_only_a_descriptor_path():
    assert not any("token" in arg for arg in kernel_args())
    argv = command(fw_cfg={"opt/chaser/token": Path("/proc/self/fd/9")}).argv()
    assert argv[argv.index("-fw_cfg") + 1] == "name=opt/chaser/token,file=/proc/self/fd/9"


def test_a_secret_file_holds_its_bytes_sealed_and_on_no_disk():
    fd = memory.secret_file("t", b"s3cret")
    try:
        assert os.pread(fd, 100, 0) == b"s3cret"
        with pytest.raises(PermissionError):  # sealed: nobody rewrites it
            os.pwrite(fd, b"x", 0)
        assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:t")
    finally:
        os.close(fd)


def test_template_key_changes_with_every_input():
    base = dict(fingerprint="f", memory_mib=512, vcpus=1, accel="tcg", image_slot=1, writable_slot=2)
    key = template_key(**base)
    assert template_key(**base) == key
    for name, value in [("fingerprint", "g"), ("memory_mib", 1024), ("vcpus", 2), ("accel", "kvm"), ("image_slot", 3)]:
        assert template_key(**{**base, name: value}) != key


def test_reap_orphans_kills_qemu_of_a_dead_owner(tmp_path):
    dead_owner = subprocess.Popen(["true"])
    dead_owner.wait()
    orphan = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        vm_dir = tmp_path / "vm-dead"
        vm_dir.mkdir()
        (vm_dir / "owner.json").write_text(json.dumps({
            "owner_pid": dead_owner.pid, "owner_start": "0",
            "qemu_pid": orphan.pid, "qemu_start": process_start_time(orphan.pid),
        }))
        live_dir = tmp_path / "vm-live"
        live_dir.mkdir()
        (live_dir / "owner.json").write_text(json.dumps({
            "owner_pid": os.getpid(), "owner_start": process_start_time(os.getpid()),
            "qemu_pid": orphan.pid, "qemu_start": process_start_time(orphan.pid),
        }))
        assert reap_orphans(tmp_path) == ["vm-dead"]
        assert orphan.wait(timeout=5) == -9
        assert not vm_dir.exists() and live_dir.exists()
    finally:
        if orphan.poll() is None:
            orphan.kill()


def test_agent_errors_map_to_domain_errors():
    err = error_from_agent(404, b'{"code": "file_not_found", "message": "no such file"}')
    assert isinstance(err, errors.FileNotFound) and err.message == "no such file"
    assert isinstance(error_from_agent(409, b'{"code": "conflict", "message": "done"}'), errors.Conflict)
    assert isinstance(error_from_agent(502, b'{"code": "port_not_listening", "message": "x"}'), errors.PortNotListening)
    assert error_from_agent(500, b"boom").status == 500
