"""Who a jailed QEMU runs as: one unprivileged uid per VM slot, so two QEMUs
never share a uid (one could otherwise read the other's memory through
/proc/PID/mem or its open files through /proc/PID/fd)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JailUser:
    uid: int
    gid: int
    name: str = "chaser-vm"


def resolve_jail_user(settings) -> JailUser | None:
    return None
