"""The OCI image config → what a session uses of it (Env, WorkingDir, User).

Entrypoint and Cmd are ignored: a session is a shell environment, commands
are whatever the caller runs (docs/images.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chaser.errors import InvalidImage


@dataclass(frozen=True)
class ImageConfig:
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None  # None → the session default (/workspace)
    user: str | None = None  # as written in the image ("app", "1000:1000", …); the agent resolves it

    def to_dict(self) -> dict[str, Any]:
        return {"env": dict(self.env), "workdir": self.workdir, "user": self.user}


def parse_env(items: Any) -> dict[str, str]:
    """`["K=V", …]` → dict; later entries win; entries without '=' are skipped."""
    env: dict[str, str] = {}
    if not items:
        return env
    if not isinstance(items, list):
        raise InvalidImage("image config: Env must be a list")
    for item in items:
        if not isinstance(item, str):
            raise InvalidImage("image config: Env entries must be strings")
        key, sep, value = item.partition("=")
        if not sep or not key or "\0" in item:
            continue
        env[key] = value
    return env


def image_config(oci_config: dict[str, Any]) -> ImageConfig:
    if not isinstance(oci_config, dict):
        raise InvalidImage("image config is not a JSON object")
    cfg = oci_config.get("config") or {}
    if not isinstance(cfg, dict):
        raise InvalidImage("image config: 'config' must be an object")
    workdir = cfg.get("WorkingDir") or None
    if workdir is not None and (not isinstance(workdir, str) or "\0" in workdir):
        raise InvalidImage("image config: WorkingDir must be a string")
    if workdir is not None and not workdir.startswith("/"):
        workdir = "/" + workdir  # relative WorkingDir is relative to /
    user = cfg.get("User") or None
    if user is not None and (not isinstance(user, str) or "\0" in user):
        raise InvalidImage("image config: User must be a string")
    return ImageConfig(env=parse_env(cfg.get("Env")), workdir=workdir, user=user)


def platform_of(oci_config: dict[str, Any]) -> tuple[str, str]:
    return str(oci_config.get("os") or ""), str(oci_config.get("architecture") or "")
