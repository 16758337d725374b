"""Choosing KVM or TCG. /dev/kvm existing is not enough: on PVM hosts a stock
guest kernel fails under KVM at once (docs/architecture.md, "Facts"), so we boot one tiny probe
guest and cache the verdict."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import tempfile
from pathlib import Path

from chaser.agent.protocol import PROBE_MARKER
from chaser.vm.qemu import MACHINE, QEMU_BINARY, kernel_args

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 30.0


def resolve_accel(requested: str, *, kernel: Path, initramfs: Path, cache_dir: Path) -> str:
    if requested in ("kvm", "tcg"):
        return requested
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    key = _probe_key(kernel, initramfs)
    cache_file = cache_dir / "accel.json"
    try:
        cached = json.loads(cache_file.read_text())
        if cached.get("key") == key:
            return str(cached["accel"])
    except (OSError, ValueError):
        pass
    accel = "kvm" if kvm_boots(kernel, initramfs) else "tcg"
    log.info("KVM probe: using %s", accel)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(json.dumps({"key": key, "accel": accel}))
    return accel


def _probe_key(kernel: Path, initramfs: Path) -> str:
    qemu = subprocess.run(["sh", "-c", f"command -v {QEMU_BINARY}"], capture_output=True, text=True).stdout.strip()
    parts = [str(kernel), str(kernel.stat().st_mtime_ns), str(initramfs.stat().st_mtime_ns), qemu]
    if qemu:
        parts.append(str(Path(qemu).stat().st_mtime_ns))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def kvm_boots(kernel: Path, initramfs: Path) -> bool:
    """Boot the initramfs in probe mode under KVM: it prints a marker and reboots."""
    with tempfile.TemporaryDirectory(prefix="chaser-probe-") as scratch:
        serial = Path(scratch) / "serial.log"
        argv = [
            QEMU_BINARY, "-nodefaults", "-no-user-config", "-M", MACHINE,
            "-accel", "kvm", "-cpu", "host", "-m", "256M", "-smp", "1",
            "-display", "none", "-no-reboot",
            "-kernel", str(kernel), "-initrd", str(initramfs),
            "-append", " ".join(kernel_args(extra=["chaser.probe=1"])),
            "-chardev", f"file,id=console,path={serial}", "-serial", "chardev:console",
        ]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            process.wait(timeout=PROBE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
        try:
            return PROBE_MARKER in serial.read_text(errors="replace")
        except OSError:
            return False
