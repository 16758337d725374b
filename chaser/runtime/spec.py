"""What the service asks the runtime for: one VM for one session."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from chaser.runtime.egress import EgressPolicy

BootMethod = Literal["auto", "template", "cold"]


@dataclass
class VMSpec:
    image_disk: Path
    # None: an ephemeral writable disk inside the VM directory, deleted with the VM.
    writable_disk: Path | None = None
    writable_size_bytes: int | None = None
    session_id: str = ""
    env: dict[str, str] = field(default_factory=dict)
    hostname: str = "sandbox"
    user: str | None = None
    workdir: str | None = None
    boot: BootMethod = "auto"
    # None: the default policy (internet per CHASER_NETWORK_INTERNET_DEFAULT).
    network: EgressPolicy | None = None
