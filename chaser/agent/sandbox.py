"""Guest-only: assemble the sandbox root from the image and writable disks.

    /run/chaser/lower  erofs, read-only  (the image disk)
    /run/chaser/data   ext4              (the writable disk: upper + work)
    /run/chaser/root   overlay of both, plus proc, sys, dev, tmp inside

Mounts go through libc.mount (ctypes): no fork+exec per mount, which matters
under TCG, and errno gives a precise error message.
"""

import ctypes
import fcntl
import glob
import os
import secrets

from .protocol import DATA_MOUNT, LOWER_MOUNT, SANDBOX_NAMESERVER, SANDBOX_ROOT

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MNT_DETACH = 0x2
BLKFLSBUF = 0x1261
RB_AUTOBOOT = 0x01234567


class SandboxError(Exception):
    pass


_libc = None


def libc():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def mount(source: str, target: str, fstype, flags: int = 0, data=None) -> None:
    rc = libc().mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                      ctypes.c_ulong(flags), data.encode() if data else None)
    if rc != 0:
        err = ctypes.get_errno()
        raise SandboxError(f"mount {source} on {target} ({fstype or 'bind'}, {data or ''}) failed: "
                           f"{os.strerror(err)}")


def umount(target: str) -> None:
    libc().umount2(target.encode(), MNT_DETACH)  # best effort


def is_mounted(target: str) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f if len(line.split()) > 1)


def find_disk(serial: str) -> str:
    for serial_file in sorted(glob.glob("/sys/block/vd*/serial")):
        try:
            with open(serial_file) as f:
                if f.read().strip() == serial:
                    return "/dev/" + serial_file.split("/")[3]
        except OSError:
            continue
    raise SandboxError(f"no disk with serial {serial!r}")


def flush_buffers(device: str) -> None:
    """The VM was snapshotted with placeholder disks attached: drop their cached blocks."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, BLKFLSBUF, 0)
    except OSError as e:
        raise SandboxError(f"BLKFLSBUF on {device} failed: {e.strerror}") from e
    finally:
        os.close(fd)


def ensure_guest_dev() -> None:
    """The rbind of /dev into the sandbox needs working /dev/pts and /dev/shm."""
    os.makedirs("/dev/pts", exist_ok=True)
    if not is_mounted("/dev/pts"):
        mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "ptmxmode=0666,mode=0620")
    os.makedirs("/dev/shm", exist_ok=True)
    if not is_mounted("/dev/shm"):
        mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")


def _write_etc(root: str, name: str, content: str) -> None:
    path = os.path.join(root, "etc", name)
    # Replace symlinks (dangling or not): writing through them would resolve
    # against the guest's own filesystem, not the sandbox's.
    if os.path.islink(path):
        os.unlink(path)
    with open(path, "w") as f:
        f.write(content)


def prepare(image_serial: str, writable_serial: str) -> None:
    """Mount the sandbox root: overlay(image erofs, writable ext4) with /proc,
    /sys, /dev and /tmp inside."""
    image, writable = find_disk(image_serial), find_disk(writable_serial)
    for device in (image, writable):
        flush_buffers(device)
    ensure_guest_dev()
    for d in (LOWER_MOUNT, DATA_MOUNT, SANDBOX_ROOT):
        os.makedirs(d, exist_ok=True)
    mount(image, LOWER_MOUNT, "erofs", MS_RDONLY)
    # noinit_itable: the disk is a sparse file (reads zeros), so skip the lazy
    # inode-table zeroing that would burn guest CPU and fill the file.
    mount(writable, DATA_MOUNT, "ext4", 0, "noinit_itable")
    upper, work = os.path.join(DATA_MOUNT, "upper"), os.path.join(DATA_MOUNT, "work")
    os.makedirs(upper, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    mount("overlay", SANDBOX_ROOT, "overlay", 0, f"lowerdir={LOWER_MOUNT},upperdir={upper},workdir={work}")
    for d in ("proc", "sys", "dev", "tmp", "workspace", "etc"):
        os.makedirs(_inside(d), exist_ok=True)
    mount("proc", _inside("proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount("sysfs", _inside("sys"), "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount("/dev", _inside("dev"), None, MS_BIND | MS_REC)
    mount("tmpfs", _inside("tmp"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=50%")
    os.chmod(_inside("tmp"), 0o1777)


def set_identity(hostname: str, workdir: str, *, new_machine: bool = False) -> None:
    """The per-session files of a mounted sandbox root. /etc/machine-id is made anew on a
    fresh writable disk (the image's would be every session's) and for a fork
    (`new_machine`); a workspace keeps the one its disk holds."""
    os.makedirs(_inside(workdir), exist_ok=True)
    if new_machine or not os.path.exists(os.path.join(DATA_MOUNT, "upper", "etc", "machine-id")):
        _write_etc(SANDBOX_ROOT, "machine-id", secrets.token_hex(16) + "\n")
    _write_etc(SANDBOX_ROOT, "hostname", hostname + "\n")
    _write_etc(SANDBOX_ROOT, "hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost\n")
    _write_etc(SANDBOX_ROOT, "resolv.conf", f"nameserver {SANDBOX_NAMESERVER}\n")


def _inside(path: str) -> str:
    return os.path.join(SANDBOX_ROOT, path.lstrip("/"))


def chown_workdir(root: str, workdir: str, uid: int, gid: int) -> None:
    """A non-root init user must own its working directory (and /workspace)."""
    for d in {workdir, "/workspace"}:
        path = os.path.join(root, d.lstrip("/"))
        if os.path.isdir(path) and not os.path.islink(path):
            try:
                os.chown(path, uid, gid)
            except OSError:
                pass


def unmount_all() -> None:
    # Detaching the root takes its submounts (proc, sys, dev, tmp) with it.
    for target in (SANDBOX_ROOT, DATA_MOUNT, LOWER_MOUNT):
        umount(target)


def reboot() -> None:
    """QEMU runs with -no-reboot, so a reboot stops the VM."""
    os.sync()
    libc().reboot(RB_AUTOBOOT)
