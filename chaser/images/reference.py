"""Image references: parse, validate and normalise.

Accepted forms (anything else is 400 `invalid_image`):

- registry references, optionally prefixed `docker://`: `python:3.12`,
  `ghcr.io/owner/repo@sha256:…`, `localhost:5000/x:tag` — Docker Hub
  short names are normalised (`python:3.12` → `docker.io/library/python:3.12`,
  no tag → `:latest`);
- local sources (only where allowed): `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`,
  `docker-archive:FILE[:REF]`; paths are made absolute;
- `chaser/base` (or `chaser/base:latest`, or no image): the default image.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from chaser.errors import InvalidImage

DEFAULT_IMAGE = "chaser/base"
DEFAULT_ALIASES = frozenset({DEFAULT_IMAGE, f"{DEFAULT_IMAGE}:latest", "docker.io/chaser/base:latest"})

DOCKER_HUB = "docker.io"
_HUB_ALIASES = {"index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
LOCAL_TRANSPORTS = ("oci", "oci-archive", "docker-archive")

# From the distribution/reference grammar.
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$"
)
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
_MAX_NAME = 255


@dataclass(frozen=True)
class Reference:
    """A parsed reference. `transport` is "docker" or one of LOCAL_TRANSPORTS."""

    transport: str
    # docker: registry host (with port) and repository path; local: absolute path
    domain: str = ""
    path: str = ""
    tag: str | None = None
    digest: str | None = None

    @property
    def is_local(self) -> bool:
        return self.transport != "docker"

    @property
    def name(self) -> str:
        """Repository without tag/digest (docker), or the path (local)."""
        return f"{self.domain}/{self.path}" if self.transport == "docker" else self.path

    def normalized(self) -> str:
        """The canonical string users see and the store keys refs by."""
        if self.transport == "docker":
            s = self.name
            if self.tag:
                s += f":{self.tag}"
            if self.digest:
                s += f"@{self.digest}"
            return s
        return f"{self.transport}:{self.path}" + (f":{self.tag}" if self.tag else "")

    def skopeo(self) -> str:
        """The reference as skopeo takes it."""
        if self.transport == "docker":
            # A digest pins the manifest; a tag next to it would be ignored anyway.
            if self.digest:
                return f"docker://{self.name}@{self.digest}"
            return f"docker://{self.name}:{self.tag}"
        return self.normalized()

    def with_digest(self, digest: str) -> str:
        """skopeo reference of the same repository pinned to `digest` (docker only)."""
        assert self.transport == "docker"
        return f"docker://{self.name}@{digest}"


def is_default(ref: str | None) -> bool:
    return ref is None or ref.strip() == "" or ref.strip() in DEFAULT_ALIASES


def parse(ref: str) -> Reference:
    if not isinstance(ref, str):
        raise InvalidImage("image reference must be a string")
    raw = ref.strip()
    if not raw or len(raw) > 4096 or any(c.isspace() or ord(c) < 32 for c in raw):
        raise InvalidImage(f"invalid image reference {ref!r}")
    for transport in LOCAL_TRANSPORTS:
        if raw.startswith(transport + ":"):
            return _parse_local(transport, raw[len(transport) + 1:], ref)
    if raw.startswith("docker://"):
        raw = raw[len("docker://"):]
    elif "://" in raw:
        raise InvalidImage(f"invalid image reference {ref!r}: unsupported transport")
    return _parse_docker(raw, ref)


def _parse_local(transport: str, rest: str, original: str) -> Reference:
    # Like skopeo (on Linux): the path ends at the first ':'.
    path, _, tag = rest.partition(":")
    if not path:
        raise InvalidImage(f"invalid image reference {original!r}: missing path")
    if tag and transport != "docker-archive" and not _TAG.match(tag):
        raise InvalidImage(f"invalid image reference {original!r}: bad tag {tag!r}")
    if tag and transport == "docker-archive":
        # docker-archive:FILE:REF names an image inside the archive; validate it.
        _parse_docker(tag, original)
    return Reference(transport=transport, path=os.path.abspath(path), tag=tag or None)


def _parse_docker(raw: str, original: str) -> Reference:
    def bad(why: str) -> InvalidImage:
        return InvalidImage(f"invalid image reference {original!r}: {why}")

    name, digest = raw, None
    if "@" in raw:
        name, _, digest = raw.partition("@")
        if not DIGEST_RE.match(digest):
            raise bad("digest must be sha256:<64 hex digits>")
    tag = None
    # A ':' after the last '/' starts the tag (a ':' before it is a port).
    last = name.rfind("/")
    colon = name.rfind(":")
    if colon > last:
        name, tag = name[:colon], name[colon + 1:]
        if not _TAG.match(tag):
            raise bad(f"bad tag {tag!r}")
    if not name:
        raise bad("missing repository name")
    parts = name.split("/")
    if len(parts) > 1 and (("." in parts[0] or ":" in parts[0]) or parts[0] == "localhost"):
        domain, path_parts = parts[0], parts[1:]
        if not _DOMAIN.match(domain):
            raise bad(f"bad registry host {domain!r}")
    else:
        domain, path_parts = DOCKER_HUB, parts
    if domain in _HUB_ALIASES:
        domain = DOCKER_HUB
    if domain == DOCKER_HUB and len(path_parts) == 1:
        path_parts = ["library", *path_parts]
    for comp in path_parts:
        if not _COMPONENT.match(comp):
            raise bad(f"bad repository name component {comp!r} (lower case letters, digits, '.', '_', '-')")
    path = "/".join(path_parts)
    if len(domain) + 1 + len(path) > _MAX_NAME:
        raise bad("repository name too long")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(transport="docker", domain=domain, path=path, tag=tag, digest=digest)


def normalize(ref: str) -> str:
    return DEFAULT_IMAGE if is_default(ref) else parse(ref).normalized()
