"""The one settings object. Every knob is an env var `CHASER_<NAME>`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

GIB = 1024**3


def _default_home() -> Path:
    return Path.home() / ".local" / "share" / "chaser"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHASER_", extra="ignore")

    home: Path = _default_home()

    # --- VM runtime ---
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    memory_mib: int = 512
    vcpus: int = 1
    tcg_tb_size_mib: int = 64
    # Every disk slot keeps one apparent size so a restored clone sees the size
    # the template saw at boot (docs/architecture.md, "Facts").
    image_slot_bytes: int = 16 * GIB
    writable_slot_bytes: int = 64 * GIB
    writable_size_bytes: int = 4 * GIB
    cold_boot_timeout_s: float = 180.0
    restore_timeout_s: float = 60.0
    exec_max_output_bytes: int = 1024 * 1024
    use_template: bool = True
    # Restored, mounted and warmed VMs kept ready for ephemeral sessions of the
    # default image; 0 turns the pool off.
    warm_pool_size: int = 1

    # --- isolation (docs/networking.md, docs/security.md) ---
    # isolated: a network namespace, tap and nftables policy per VM (needs CAP_NET_ADMIN);
    # none: no network but the agent channel (slirp restrict=on);
    # slirp: plain slirp, the guest reaches the host's loopback: UNSAFE, development only.
    network: Literal["auto", "isolated", "none", "slirp"] = "auto"
    # Each namespace's veth pair takes a /30 of this pool.
    network_pool: str = "10.200.0.0/16"
    # Namespaces kept ready so network set-up is off the restore path.
    network_ready_pool_size: int = 2
    network_internet_default: bool = True
    # CIDRs in the private/shared/link-local ranges that sandboxes may reach anyway.
    network_allow_private: list[str] = []
    # Upstream resolvers for the sandboxes' dnsmasq; default: the host's /etc/resolv.conf.
    network_dns_servers: list[str] = []
    # Extra name → address answers of the sandboxes' resolver ({"db.internal": "10.1.2.3"}).
    network_hosts: dict[str, str] = {}
    # The jail: QEMU runs as this user with a seccomp filter and in its own cgroup.
    jail: bool = True
    # QEMU of VM slot N runs as uid/gid jail_uid_base + N (no passwd entry needed).
    jail_uid_base: int = 1_900_000_000
    # Host memory a VM may use beyond its guest RAM (QEMU itself, the TCG code cache).
    vm_memory_overhead_mib: int = 256
    vm_pids_max: int = 256
    # The serial console log keeps at most this much (the newest output).
    serial_log_max_bytes: int = 256 * 1024

    # --- admission control (chaser/vm/admission.py); None: derived from the host ---
    max_sessions: int | None = None
    host_memory_reserve_mib: int | None = None
    host_disk_reserve_mib: int | None = None
    max_sessions_per_account: int = 50

    # --- server ---
    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str | None = None
    session_idle_timeout_s: int = 1800
    session_max_lifetime_s: int = 6 * 3600
    max_transfer_bytes: int = 16 * 1024 * 1024
    public_url: str | None = None
    base_domain: str | None = None
    # Local CLI config written by `chaser server` on first start (api_url + api_key).
    config_file: Path = Field(
        default=Path.home() / ".config" / "chaser" / "config.json",
        validation_alias=AliasChoices("CHASER_CONFIG", "CHASER_CONFIG_FILE", "config_file"),
    )
    # Workspace used by sessions and /v1/exec that name neither a workspace nor ephemeral.
    default_workspace: str | None = None

    # --- images (chaser/images) ---
    # Largest image accepted: sum of its compressed layer sizes, checked before pulling (413).
    image_max_bytes: int = 8 * GIB
    # `prune` removes unused images, least recently used first, until the cache fits.
    image_cache_budget_bytes: int = 50 * GIB
    image_pull_timeout_s: int = 1800
    # Registries (host[:port]) reached over plain HTTP / without TLS verification; loopback ones
    # (localhost, 127.0.0.0/8, ::1) are anyway, others follow registries.conf (docs/images.md).
    registries_insecure: list[str] = []
    # auth.json (containers-auth.json format); default: skopeo's lookup (REGISTRY_AUTH_FILE, …).
    registry_auth_file: Path | None = None
    # Per-registry credentials: {"host[:port]": "user:password"}; win over the auth file.
    registry_credentials: dict[str, str] = {}
    # Allow `oci:`, `oci-archive:`, `docker-archive:` references (host paths) through the API.
    images_allow_local_sources: bool = False

    @property
    def guest_dir(self) -> Path:
        return self.home / "guest"

    @property
    def vms_dir(self) -> Path:
        return self.home / "vms"

    @property
    def sessions_dir(self) -> Path:
        return self.home / "sessions"

    @property
    def images_dir(self) -> Path:
        return self.home / "images"

    @property
    def workspaces_dir(self) -> Path:
        return self.home / "workspaces"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'chaser.db'}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
