"""QEMU command-line building, kept apart from process and QMP handling so it
can be unit-tested and another VMM could be added behind the same interface."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from chaser.agent.protocol import (
    AGENT_PORT,
    IMAGE_DISK_SERIAL,
    OS_DISK_SERIAL,
    WRITABLE_DISK_SERIAL,
)

QEMU_BINARY = "qemu-system-x86_64"
# pic/rtc on: boots are reliable with them under TCG (docs/architecture.md, "Facts").
# pit=off: the guest keeps time with the TSC and the local APIC timer, and an emulated i8254
# woke the host ~37 times a second per idle VM: 0.69 → 0.55 % CPU per idle VM, boots as reliable
# (docs/performance.md, "What each change bought").
MACHINE = "microvm,x-option-roms=off,isa-serial=on,pit=off,pic=on,rtc=on"
# The guest's MAC: fixed, like every other address a restored clone remembers.
GUEST_MAC = "52:54:00:12:34:56"
# Everything the filter can deny: no spawning, no set*uid, no obsolete or
# resource-control system calls (checked to restore and run, docs/security.md).
SECCOMP = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


def netdev_tap(fd: int) -> str:
    """The tap device the spawner opened inside the VM's namespace, as fd `fd`."""
    return f"tap,id=net0,fd={fd},vhost=off"


def netdev_user(agent_host_port: int, *, restrict: bool) -> str:
    """slirp with the agent forwarded to 127.0.0.1:agent_host_port. restrict=on
    cuts the guest off from everything (the host-forward still works);
    restrict=off is the unsafe development mode."""
    mode = "on" if restrict else "off"
    return f"user,id=net0,restrict={mode},hostfwd=tcp:127.0.0.1:{agent_host_port}-:{AGENT_PORT}"


@dataclass(frozen=True)
class MemoryFile:
    """Guest RAM backed by a file. The template maps it shared (its RAM is the
    file); clones map it private, i.e. copy-on-write over the template's RAM.
    No path: anonymous RAM under the same backend id (its migration stream names
    the RAM block by that id: a resumed VM must use the one its state was saved with)."""

    path: Path | None
    shared: bool = False


@dataclass
class QemuCommand:
    kernel: Path
    initramfs: Path
    os_disk: Path
    image_disk: Path
    writable_disk: Path
    qmp_fd: int  # a listening Unix socket the runtime bound (QEMU creates no files)
    # The -netdev value: a tap fd inside the VM's namespace, or slirp (see netdev_*).
    netdev: str
    accel: str  # "kvm" | "tcg"
    memory_mib: int
    vcpus: int
    kernel_args: list[str] = field(default_factory=list)
    memory_file: MemoryFile | None = None
    incoming: bool = False  # wait for `migrate-incoming` (snapshot restore)
    tcg_tb_size_mib: int = 64
    # A seccomp filter (docs/security.md). No `exec:`
    # migration with it: snapshots go over fds passed with QMP getfd.
    seccomp: bool = True
    # -add-fd arguments for the /dev/fdset/N paths among the disks.
    fd_args: list[str] = field(default_factory=list)
    # fw_cfg files (name -> a /proc/self/fd path): how secrets reach the guest.
    fw_cfg: dict[str, Path] = field(default_factory=dict)

    def argv(self) -> list[str]:
        machine = MACHINE
        args = [QEMU_BINARY, "-name", "chaser", "-nodefaults", "-no-user-config"]
        if self.memory_file is not None and self.memory_file.path is None:
            args += ["-object", f"memory-backend-ram,id=mem,size={self.memory_mib}M"]
            machine += ",memory-backend=mem"
        elif self.memory_file is not None:
            share = "on" if self.memory_file.shared else "off"
            args += [
                "-object",
                f"memory-backend-file,id=mem,size={self.memory_mib}M,"
                f"mem-path={self.memory_file.path},share={share}",
            ]
            machine += ",memory-backend=mem"
        args += ["-M", machine]
        if self.accel == "kvm":
            args += ["-accel", "kvm", "-cpu", "host"]
        else:
            args += ["-accel", f"tcg,tb-size={self.tcg_tb_size_mib}", "-cpu", "max"]
        args += [
            "-m", f"{self.memory_mib}M",
            "-smp", str(self.vcpus),
            "-display", "none",
            "-no-reboot",  # the guest's reboot ends the VM: that is how it powers off
            "-kernel", str(self.kernel),
            "-initrd", str(self.initramfs),
            "-append", " ".join(self.kernel_args),
            # The console goes to QEMU's stdout, a pipe the runtime reads into a
            # bounded buffer: a guest printing forever cannot fill the host disk.
            "-chardev", "stdio,id=console,signal=off",
            "-serial", "chardev:console",
            "-chardev", f"socket,id=qmp,fd={self.qmp_fd},server=on,wait=off",
            "-mon", "chardev=qmp,mode=control",
        ]
        for name, path in self.fw_cfg.items():
            args += ["-fw_cfg", f"name={name},file={path}"]
        args += self.fd_args
        args += _disk("os", self.os_disk, OS_DISK_SERIAL, read_only=True)
        args += _disk("image", self.image_disk, IMAGE_DISK_SERIAL, read_only=True)
        args += _disk("data", self.writable_disk, WRITABLE_DISK_SERIAL, read_only=False)
        if self.seccomp:
            args += ["-sandbox", SECCOMP]
        args += [
            "-netdev", self.netdev,
            "-device", f"virtio-net-device,netdev=net0,mac={GUEST_MAC}",
            "-object", "rng-random,id=rng0,filename=/dev/urandom",
            "-device", "virtio-rng-device,rng=rng0",
        ]
        if self.incoming:
            # -S: stay paused after the state is loaded; we `cont` explicitly.
            args += ["-incoming", "defer", "-S"]
        return args


def _disk(name: str, path: Path, serial: str, *, read_only: bool) -> list[str]:
    # file.locking=off: the service guarantees one writer per disk (docs/pause-and-fork.md), and
    # QEMU's image locks fail to come back on a disk passed as an fdset when a VM continues
    # after its state was saved (a fork's source): "Failed to get shared 'write' lock".
    mode = "on" if read_only else "off"
    return [
        "-drive", f"id={name},file={path},format=raw,if=none,readonly={mode},cache=writeback,file.locking=off",
        "-device", f"virtio-blk-device,drive={name},serial={serial}",
    ]


def host_tsc_khz(cpuinfo: str | None = None) -> int | None:
    """The host TSC rate for `tsc_early_khz`: avoids the random hang at
    'Unable to calibrate against PIT' under TCG (docs/architecture.md, "Facts")."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    match = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", cpuinfo, re.MULTILINE)
    if not match:
        return None
    return int(float(match.group(1)) * 1000)


def kernel_args(extra: list[str] | None = None) -> list[str]:
    """Nothing secret: every local user can read QEMU's command line."""
    args = [
        "console=ttyS0",
        "reboot=t",  # triple-fault reboot: instant with -no-reboot
        "panic=-1",
        "quiet",
        "loglevel=4",
        "i8042.noaux=1",
        "i8042.nomux=1",
        "i8042.nopnp=1",
        "i8042.dumbkbd=1",
    ]
    khz = host_tsc_khz()
    if khz:
        args.append(f"tsc_early_khz={khz}")
    return args + (extra or [])
