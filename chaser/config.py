"""The one settings object. Every knob is an env var `CHASER_<NAME>`.

Each field's `description=` is its documentation: `python -m chaser.settings_doc
--write docs/operations.md` renders the table there (tests/unit/test_settings_doc.py
fails when the table and these fields differ)."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}")
_LABEL_VALUE = re.compile(r"[A-Za-z0-9._/-]{0,63}")

GIB = 1024**3


def _default_home() -> Path:
    return Path.home() / ".local" / "share" / "chaser"


def check_public_url(value: str) -> str:
    """`CHASER_PUBLIC_URL` as the server uses it (no trailing slash); ValueError unless it is
    an absolute http(s) URL of an origin: no path, query, fragment or credentials."""
    text = value.strip().rstrip("/")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ValueError(f"CHASER_PUBLIC_URL {value!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"CHASER_PUBLIC_URL {value!r} must be http(s)://host[:port]")
    if parts.path or parts.query or parts.fragment or "?" in text or "#" in text:
        raise ValueError(f"CHASER_PUBLIC_URL {value!r} must be an origin, http(s)://host[:port], without "
                         "a path, query or fragment (the API is served at the root of its origin)")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"CHASER_PUBLIC_URL {value!r} must not carry credentials")
    return text


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHASER_", extra="ignore")

    home: Path = Field(
        _default_home(),
        description="Data directory: guest assets, templates, images, workspaces, per-VM directories, "
        'the default SQLite database (docs/operations.md, "Data directory").',
    )

    # --- VM runtime ---
    accel: Literal["auto", "kvm", "tcg"] = Field(
        "auto",
        description="`auto`: KVM when `/dev/kvm` is usable and a probe guest boots under it "
        "(verdict cached in `guest/accel.json`), else TCG.",
    )
    memory_mib: int = Field(512, description="Guest RAM of every VM (a new template is built when it changes).")
    vcpus: int = Field(
        1,
        description="vCPUs of every VM and, with the jail, its cgroup CPU quota (a new template is built "
        "when it changes).",
    )
    tcg_tb_size_mib: int = Field(
        64, description="QEMU's TCG translation cache per VM (`-accel tcg,tb-size=`); unused under KVM."
    )
    image_slot_bytes: int = Field(
        16 * GIB,
        description="Apparent size of every image disk (sparse): one size for all, so a restored clone "
        'sees the size the template saw at boot (docs/architecture.md, "Facts").',
    )
    writable_slot_bytes: int = Field(
        64 * GIB,
        description="Apparent size of every writable disk (sparse); the largest writable disk size accepted.",
    )
    writable_size_bytes: int = Field(
        4 * GIB,
        description="Default writable disk quota (its ext4 size) of a session or workspace; admission "
        "charges it to every new VM.",
    )
    cold_boot_timeout_s: float = Field(
        180.0, description="How long a cold boot (also the template build's) may take until the agent answers."
    )
    restore_timeout_s: float = Field(
        60.0,
        description="How long a template restore may take to load the snapshot, and then until the agent "
        "answers; a failed restore discards the template (the VM then boots cold).",
    )
    exec_max_output_bytes: int = Field(
        1024 * 1024,
        description="Output a foreground exec returns: the last this many bytes of stdout and stderr "
        "(more sets `output_truncated`).",
    )
    use_template: bool = Field(True, description="Restore VMs from the template snapshot; `false`: always cold boot.")
    warm_pool_size: int | None = Field(
        None,
        description="Restored, mounted and warmed VMs of the default image kept ready for ephemeral "
        "sessions; 0 turns the pool off. Unset: the number of CPUs, but no more worst-case VMs than fit "
        "in a tenth of the memory admission may hand out, and at least 1 (docs/performance.md).",
    )

    # --- isolation (docs/networking.md, docs/security.md) ---
    network: Literal["auto", "isolated", "none", "slirp"] = Field(
        "auto",
        description="`isolated`: a network namespace, tap and nftables policy per VM (needs CAP_NET_ADMIN); "
        "`none`: no network but the agent channel (slirp `restrict=on`); `slirp`: plain slirp, the guest "
        "reaches the host's loopback (UNSAFE, development only); `auto`: `isolated` when the host allows "
        "it, else `none` (docs/networking.md).",
    )
    network_pool: str = Field(
        "10.200.0.0/16", description="Address pool of the VM namespaces: each veth pair takes a /30 of it."
    )
    network_ready_pool_size: int = Field(
        2, description="Network namespaces kept ready, so their set-up is off the VM start path."
    )
    network_internet_default: bool = Field(True, description="`internet` of a network policy that does not say.")
    network_allow_private: list[str] = Field(
        [],
        description="CIDRs in the private, shared and link-local ranges that sandboxes may reach anyway.",
    )
    network_dns_servers: list[str] = Field(
        [],
        description="Upstream resolvers of the sandboxes' dnsmasq; empty: the host's "
        "`/etc/resolv.conf` nameservers (IPv4, not loopback).",
    )
    network_hosts: dict[str, str] = Field(
        {},
        description='Extra name → address answers of the sandboxes\' resolver (`{"db.internal": "10.1.2.3"}`).',
    )
    jail: bool = Field(
        True,
        description="Confine QEMU: a seccomp filter and a cgroup per VM, and (when the server runs as root) "
        "an unprivileged uid (docs/security.md).",
    )
    jail_uid_base: int = Field(
        1_900_000_000, description="QEMU of VM slot N runs as uid/gid this + N (no passwd entry needed)."
    )
    vm_memory_overhead_mib: int = Field(
        256,
        description="Host memory a VM may use beyond its guest RAM (QEMU itself, the TCG code cache): "
        "in its cgroup memory limit and in admission's charge per VM.",
    )
    vm_pids_max: int = Field(256, description="Cgroup `pids.max` of every VM's QEMU.")
    keep_vms_on_exit: bool = Field(
        False,
        description="A clean exit (SIGTERM, Ctrl-C) leaves running sessions' VMs running for the next server "
        "on this home to adopt; `false`: it stops them (sessions end `server_shutdown`). A killed server's "
        "VMs are always adopted (docs/operations.md, \"What survives what\").",
    )
    serial_log_max_bytes: int = Field(
        256 * 1024, description="Serial console output kept in memory per VM (the newest); boot errors quote its tail."
    )

    # --- admission control (chaser/vm/admission.py); None: derived from the host ---
    max_sessions: int | None = Field(
        None,
        description="VMs at once on this host, counting those being started (503 `capacity_exhausted`); "
        "unset: how many of guest RAM + overhead fit in MemTotal minus the memory reserve, at least 1.",
    )
    max_concurrent_starts: int | None = Field(
        None,
        description="VM starts (restores, cold boots, resumes) that run at once; more wait their turn "
        "instead of all sharing the CPU and all finishing late. Warm pool claims never wait. "
        "Unset: the number of CPUs.",
    )
    host_memory_reserve_mib: int | None = Field(
        None, description="Memory never handed to VMs; unset: max(1024 MiB, 10 % of MemTotal)."
    )
    host_disk_reserve_mib: int | None = Field(
        None,
        description="Space kept free on the file system of `CHASER_HOME`; unset: max(2048 MiB, 5 % of its size).",
    )
    max_sessions_per_account: int = Field(
        50, description="Sessions an account may have starting or running (429 `quota_exceeded`)."
    )

    # --- server ---
    host: str = Field("127.0.0.1", description="Listen address of `chaser server`.")
    port: int = Field(8080, description="Listen port of `chaser server`.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the control-plane database; unset: `sqlite:///$CHASER_HOME/chaser.db`. "
        "PostgreSQL: `postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE` (docs/operations.md, \"PostgreSQL\")."
    )
    node_name: str | None = Field(
        None, description="This server's node name in `GET /v1/nodes` (docs/operations.md, \"Nodes\"); unset: "
        "the host name.",
    )
    node_labels: dict[str, str] = Field(
        default_factory=dict,
        description="Labels this node registers (`GET /v1/nodes`), a JSON object such as "
        '`{"zone": "a", "kvm": "true"}`; `chaser node --label KEY=VALUE` adds one. Keys and values: '
        "letters, digits, `._-/`, up to 63 characters (values may be empty).",
    )
    node_heartbeat_s: float = Field(
        10, gt=0,
        description="How often this server writes its node's heartbeat to the database and looks for "
        "lost nodes (docs/operations.md, \"Nodes\").",
    )
    node_lost_after_s: float = Field(
        30, gt=0,
        description="Another node whose last heartbeat is older than this is marked lost by this server: its "
        "active sessions end `failed` (`node_lost`). Longer than `CHASER_NODE_HEARTBEAT_S`; the servers' clocks "
        "must agree to within a fraction of it.",
    )
    local_runtime: bool = Field(
        True,
        description="`true`: this server runs the VMs of its sessions itself (one process, `make serve`). "
        "`false`: a stateless API replica: it places sessions on `chaser node` processes sharing "
        "`CHASER_DATABASE_URL` and routes every per-session request to the session's node "
        "(docs/deploy.md, \"Several machines by hand\"); needs `CHASER_NODE_TOKEN`.",
    )
    node_token: SecretStr | None = Field(
        None,
        description="The shared secret between API replicas and `chaser node`s: a node answers only "
        "requests carrying it (header `x-chaser-node-token`), a replica sends it. At least 16 characters.",
    )
    advertise_url: str | None = Field(
        None,
        description="Where API replicas reach this node (`chaser node --advertise-url`), "
        "`http(s)://host:port`; unset: `CHASER_PUBLIC_URL`.",
    )
    node_listen: str = Field(
        "0.0.0.0:8081", description="`HOST:PORT` that `chaser node` listens on (`--listen`).",
    )
    node_ca_bundle: Path | None = Field(
        None,
        description="PEM certificates an API replica trusts for nodes served over HTTPS (a node's "
        "`CHASER_TLS_CERT`, self-signed or of a private CA); unset: the system's.",
    )
    placement_choices: int = Field(
        2, ge=1,
        description="A replica places a new session on the best of this many nodes drawn at random among "
        "those that accept sessions (free memory, then free vCPUs; a node that already ran the image first).",
    )
    admin_key: SecretStr | None = Field(
        None,
        description="The first admin API key (`sk_` + 32 or more URL-safe characters), installed when the "
        "database has no key yet: a deployment's Secret instead of the key printed at the first start.",
    )
    session_idle_timeout_s: int = Field(
        1800,
        description="The reaper terminates a session that had no request in progress for this long "
        "(`idle_timeout`); an open PTY, tunnel or forwarded connection is a request in progress.",
    )
    session_max_lifetime_s: int = Field(
        6 * 3600,
        description="Lifetime of a session without `ttl_seconds`, and the largest `ttl_seconds` accepted "
        "(the reaper ends it: `max_lifetime`).",
    )
    idle_action: Literal["auto", "pause", "terminate"] = Field(
        "auto",
        description="What the reaper does with an idle session: `pause` it (its memory and disk are saved, "
        "it wakes on the next request) or `terminate` it; `auto`: pause workspace sessions, terminate "
        "ephemeral ones.",
    )
    paused_ttl_s: int = Field(
        7 * 24 * 3600, ge=1,
        description="A session paused for longer than this is terminated and its saved state removed "
        "(`paused_ttl`).",
    )
    max_fork_count: int = Field(8, ge=1, le=64, description="Largest `count` of one `POST /v1/sessions/{id}/fork`.")
    max_transfer_bytes: int = Field(
        16 * 1024 * 1024, description="Largest file upload or download through the API, per operation."
    )
    audit_retention_days: float = Field(
        90,
        description="Audit log events (`GET /v1/audit/events`) older than this are deleted (checked hourly "
        "by the reaper); `0` keeps them forever.",
        ge=0,
    )
    public_url: str | None = Field(
        None,
        description="Base URL the server announces: every URL the API hands out (session `endpoints`, "
        "`Location`, forward and login-link URLs, openapi `servers`, what MCP tools see) and the CLI "
        "config's `api_url`; `http(s)://host[:port]`, no path, query or fragment. Unset: the request's "
        "own base URL (`http(s)://HOST:PORT` in the CLI config).",
    )
    tls_cert: Path | None = Field(
        None,
        description="PEM certificate (chain) `chaser server` serves HTTPS with; needs `CHASER_TLS_KEY` "
        "(both or neither). Unset: plain HTTP (a warning when `CHASER_HOST` is not loopback).",
    )
    tls_key: Path | None = Field(None, description="PEM private key of `CHASER_TLS_CERT`.")
    rate_limit_per_minute: int = Field(
        600,
        ge=0,
        description="Requests per minute each API key may make (a token bucket refilled at this rate; "
        "over it: 429 `rate_limited` with `Retry-After`); `0` turns rate limiting off.",
    )
    rate_limit_burst: int | None = Field(
        None,
        ge=1,
        description="Bucket size: requests a key may make at once after being idle "
        "(`x-ratelimit-limit`); unset: `CHASER_RATE_LIMIT_PER_MINUTE`.",
    )
    base_domain: str | None = Field(
        None,
        description="Enables host-style forwarding: `{id}.{domain}/forward/{port}/` is served as "
        "`/s/{id}/forward/{port}/` (docs/pty-and-forwarding.md).",
    )
    e2b_ingress_port: int = Field(
        49983, ge=0, le=65535,
        description="Port of the E2B sandbox ingress `chaser server` also listens on (same address as the API; "
        "`E2B_SANDBOX_URL=http://HOST:PORT`, docs/e2b.md); `0` or `off`: no ingress.",
    )
    e2b_templates: dict[str, str] = Field(
        {},
        description='E2B template names and the images they start (`{"python": "python:3.12-slim"}`); '
        "`base` is the default image, any other name an OCI reference.",
    )
    config_file: Path = Field(
        default=Path.home() / ".config" / "chaser" / "config.json",
        validation_alias=AliasChoices("CHASER_CONFIG", "CHASER_CONFIG_FILE", "config_file"),
        description="Local CLI config (API URL, key, current session); `chaser server` writes its `api_url` "
        "there, and a new admin key (mode 0600) when the database has none or the saved one no longer works.",
    )
    default_workspace: str | None = Field(
        None,
        description="Workspace (created on first use) of sessions and `/v1/exec` requests that name neither "
        "a workspace nor `ephemeral`; unset: such requests are refused (`workspace_required`).",
    )

    # --- images (chaser/images) ---
    image_max_bytes: int = Field(
        8 * GIB,
        description="Largest image accepted: the sum of its compressed layer sizes, checked before pulling (413).",
    )
    image_cache_budget_bytes: int = Field(
        50 * GIB,
        description="Prune budget: pruning removes unused images, least recently used first, until the cache fits.",
    )
    image_pull_timeout_s: int = Field(
        1800, description="Time limit of each skopeo command of a pull (`--command-timeout`)."
    )
    registries_insecure: list[str] = Field(
        [],
        description="Registries (`host[:port]`) reached over plain HTTP / without TLS "
        "verification; loopback ones (localhost, 127.0.0.0/8, ::1) are anyway, others follow "
        "registries.conf (docs/images.md).",
    )
    registry_auth_file: Path | None = Field(
        None,
        description="containers `auth.json` for pulls; unset: skopeo's own lookup (`REGISTRY_AUTH_FILE`, "
        "`$XDG_RUNTIME_DIR/containers/auth.json`, `~/.docker/config.json`).",
    )
    registry_credentials: dict[str, str] = Field(
        {},
        description='Per-registry credentials `{"host[:port]": "user:password"}`; they win over the auth file.',
    )
    images_allow_local_sources: bool = Field(
        False,
        description="Allow `oci:`, `oci-archive:`, `docker-archive:` references (host paths) through the API.",
    )

    @field_validator("node_labels")
    @classmethod
    def _check_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
                raise ValueError(f"node label {key!r}={value!r}: keys and values are letters, digits and ._-/, "
                                 "up to 63 characters (a key starts with a letter or digit)")
        return labels

    @field_validator("e2b_ingress_port", mode="before")
    @classmethod
    def _off_is_zero(cls, value: object) -> object:
        return 0 if isinstance(value, str) and value.strip().lower() in ("off", "") else value

    @model_validator(mode="after")
    def _check_serving(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("CHASER_TLS_CERT and CHASER_TLS_KEY go together: set both (HTTPS) or neither")
        if self.public_url is not None:
            self.public_url = check_public_url(self.public_url)
        if self.advertise_url is not None:
            try:
                self.advertise_url = check_public_url(self.advertise_url)
            except ValueError as exc:
                raise ValueError(str(exc).replace("CHASER_PUBLIC_URL", "CHASER_ADVERTISE_URL")) from None
        if self.node_token is not None and len(self.node_token.get_secret_value()) < 16:
            raise ValueError("CHASER_NODE_TOKEN must be at least 16 characters")
        if not self.local_runtime and self.node_token is None:
            raise ValueError("CHASER_LOCAL_RUNTIME=false (an API replica) needs CHASER_NODE_TOKEN")
        return self

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
