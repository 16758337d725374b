"""skopeo: resolve references to manifests (inspect) and copy images into an
OCI layout; registry failures are mapped to the API's error classes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import json
import os
import re
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chaser import errors
from chaser.images.reference import Reference

if TYPE_CHECKING:
    from chaser.config import Settings

SKOPEO = "skopeo"
INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
ARCH, OS = "amd64", "linux"
_STDERR_TAIL = 800


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- processes


@dataclass
class ToolResult:
    returncode: int
    stdout: bytes
    stderr: str


async def run_tool(cmd: list[str], *, on_line: Callable[[str], None] | None = None,
                   env: dict[str, str] | None = None, umask: int | None = None) -> ToolResult:
    """Run a tool in its own process group; it is killed if we are cancelled. `umask`: the tool's
    (None: ours, the data directory's private one under the server)."""
    if umask is not None:  # through sh: uvloop's subprocess_exec takes no umask= (nor should a thread fork)
        cmd = ["/bin/sh", "-c", f'umask {umask:03o} && exec "$@"', "sh", *cmd]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True,
    )
    out = bytearray()

    async def read_stdout() -> None:
        assert proc.stdout is not None
        if on_line is None:
            out.extend(await proc.stdout.read())
            return
        async for line in proc.stdout:
            out.extend(line)
            try:
                on_line(line.decode(errors="replace").rstrip())
            except Exception:  # noqa: BLE001 - a broken progress callback must not break the pull
                pass

    try:
        results = await asyncio.gather(read_stdout(), proc.stderr.read(), proc.wait())  # type: ignore[union-attr]
    except BaseException:
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()
        raise
    return ToolResult(proc.returncode or 0, bytes(out), results[1].decode(errors="replace"))


def tail(text: str, n: int = _STDERR_TAIL) -> str:
    text = text.strip()
    # skopeo wraps its message as `time=… level=fatal msg="…"`.
    m = re.search(r'level=fatal msg="(.*)"\s*$', text, re.S)
    if m:
        text = m.group(1).replace('\\"', '"')
    return text if len(text) <= n else "…" + text[-n:]


def classify(stderr: str, what: str) -> errors.ChaserError:
    """skopeo failure → 404 / 400 / 502 with the registry's reason."""
    reason = tail(stderr)
    low = reason.lower()
    if "no space left on device" in low or "disk quota exceeded" in low:
        return errors.ImageConversionFailed(f"pulling {what} failed on this host: {reason}")
    if any(s in low for s in ("manifest unknown", "name unknown", "not found", "no such file or directory",
                              "no such image", "does not exist")):
        return errors.ImageNotFound(f"image {what} not found: {reason}")
    if "requested access to the resource is denied" in low:
        # Docker Hub answers this for missing repositories as well as private ones.
        return errors.ImageNotFound(f"image {what} not found (or access denied): {reason}")
    if "invalid reference format" in low or "invalid image name" in low:
        return errors.InvalidImage(f"invalid image reference {what}: {reason}")
    return errors.ImagePullFailed(f"pulling {what} failed: {reason}")


# --------------------------------------------------------------------------- skopeo


def is_loopback_registry(domain: str) -> bool:
    """`localhost`, 127.0.0.0/8 or ::1 (with or without a port), as Docker treats them: reachable
    over plain HTTP without configuration. Names other than `localhost` are not resolved (a name
    that resolves to loopback now may not when skopeo connects)."""
    host = domain.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Target:
    """What a reference resolved to."""

    digest: str  # manifest digest (the platform manifest when the ref names an index)
    manifest: dict[str, Any] | None  # None when not known before copying (local multi-arch)
    index_digest: str | None = None
    copy_source: str = ""  # skopeo source reference for the copy
    extra: dict[str, Any] = field(default_factory=dict)


class Skopeo:
    def __init__(self, settings: Settings, tmp_root: Path) -> None:
        self.settings = settings
        self.tmp_root = tmp_root
        self.calls: dict[str, int] = {"inspect": 0, "copy": 0}

    # -- options

    def _insecure(self, ref: Reference) -> bool:
        """Plain HTTP / no TLS verification: a registry our setting lists, or one on loopback."""
        hosts = {h.strip().lower() for h in (getattr(self.settings, "registries_insecure", None) or [])}
        return ref.transport == "docker" and (ref.domain.lower() in hosts or is_loopback_registry(ref.domain))

    def _tls_args(self, ref: Reference, flag: str) -> list[str]:
        """`--…tls-verify=false` for an insecure registry, else nothing: skopeo then follows the
        containers configuration (`insecure = true` in registries.conf / registries.conf.d),
        which an explicit `--tls-verify=true` would override."""
        return [f"{flag}=false"] if self._insecure(ref) else []

    def _auth_file(self, ref: Reference) -> tuple[list[str], Path | None]:
        """(`--authfile` args, temp file to delete). Per-registry credentials from
        the settings win; then settings.registry_auth_file; else skopeo's own
        lookup (REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json, ~/.docker/config.json)."""
        if ref.transport != "docker":
            return [], None
        creds = getattr(self.settings, "registry_credentials", None) or {}
        cred = creds.get(ref.domain)
        if cred:
            self.tmp_root.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=".tmp-auth-", suffix=".json", dir=self.tmp_root)
            auth = base64.b64encode(cred.encode()).decode()
            with os.fdopen(fd, "w") as f:  # mkstemp: mode 0600
                json.dump({"auths": {ref.domain: {"auth": auth}}}, f)
            return [name], Path(name)
        auth_file = getattr(self.settings, "registry_auth_file", None)
        return ([str(auth_file)], None) if auth_file else ([], None)

    def _global(self) -> list[str]:
        self.tmp_root.mkdir(parents=True, exist_ok=True)
        timeout = int(getattr(self.settings, "image_pull_timeout_s", 1800))
        # --tmpdir: big temporary files (oci-archive extraction) stay in our dir.
        return [SKOPEO, "--insecure-policy", f"--tmpdir={self.tmp_root}", f"--command-timeout={timeout}s"]

    # -- commands

    async def inspect_raw(self, ref: Reference, source: str, *, config: bool = False) -> bytes:
        authfile, tmp = self._auth_file(ref)
        cmd = [*self._global(), "inspect", "--raw"]
        if config:
            cmd.append("--config")
        cmd += self._tls_args(ref, "--tls-verify")
        if authfile:
            cmd.append(f"--authfile={authfile[0]}")
        cmd.append(source)
        self.calls["inspect"] += 1
        try:
            res = await run_tool(cmd)
        finally:
            if tmp:
                tmp.unlink(missing_ok=True)
        if res.returncode != 0:
            raise classify(res.stderr, ref.normalized())
        return res.stdout

    async def copy(self, ref: Reference, source: str, layout: Path, tag: str,
                   on_line: Callable[[str], None] | None = None) -> None:
        authfile, tmp = self._auth_file(ref)
        cmd = [*self._global(), "copy", f"--override-arch={ARCH}", f"--override-os={OS}"]
        cmd += self._tls_args(ref, "--src-tls-verify")
        if authfile:
            cmd.append(f"--src-authfile={authfile[0]}")
        cmd += [source, f"oci:{layout}:{tag}"]
        self.calls["copy"] += 1
        try:
            res = await run_tool(cmd, on_line=on_line)
        finally:
            if tmp:
                tmp.unlink(missing_ok=True)
        if res.returncode != 0:
            raise classify(res.stderr, ref.normalized())

    # -- resolution

    async def resolve(self, ref: Reference) -> Target:
        """Resolve `ref` to the linux/amd64 manifest it names (one or two inspects)."""
        raw = await self.inspect_raw(ref, ref.skopeo())
        manifest = _json(raw, f"manifest of {ref.normalized()}")
        digest = sha256_digest(raw)
        if ref.transport == "docker" and ref.digest and digest != ref.digest:
            raise errors.ImagePullFailed(f"registry returned a manifest with digest {digest}, not {ref.digest}")
        if not is_index(manifest):
            return Target(digest=digest, manifest=manifest,
                          copy_source=ref.with_digest(digest) if ref.transport == "docker" else ref.skopeo())
        child = choose_platform(manifest, ref.normalized())
        if ref.transport == "docker":
            child_raw = await self.inspect_raw(ref, ref.with_digest(child))
            if sha256_digest(child_raw) != child:
                raise errors.ImagePullFailed(f"registry returned a manifest that does not match {child}")
            return Target(digest=child, manifest=_json(child_raw, "platform manifest"), index_digest=digest,
                          copy_source=ref.with_digest(child))
        # Local multi-platform source: skopeo picks linux/amd64 (--override-*); checks after the copy.
        return Target(digest=child, manifest=None, index_digest=digest, copy_source=ref.skopeo())

    async def config(self, ref: Reference, target: Target) -> dict[str, Any]:
        source = ref.with_digest(target.digest) if ref.transport == "docker" else ref.skopeo()
        return _json(await self.inspect_raw(ref, source, config=True), "image config")


def _json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise errors.InvalidImage(f"{what} is not valid JSON") from exc
    if not isinstance(value, dict):
        raise errors.InvalidImage(f"{what} is not a JSON object")
    return value


def is_index(manifest: dict[str, Any]) -> bool:
    return manifest.get("mediaType") in INDEX_TYPES or (
        "manifests" in manifest and "layers" not in manifest)


def choose_platform(index: dict[str, Any], what: str) -> str:
    """The linux/amd64 entry of an image index (400 if there is none)."""
    seen = []
    for m in index.get("manifests") or []:
        p = m.get("platform") or {}
        seen.append(f"{p.get('os', '?')}/{p.get('architecture', '?')}")
        digest = m.get("digest")
        if p.get("os") == OS and p.get("architecture") == ARCH and isinstance(digest, str):
            return digest
    raise errors.InvalidImage(
        f"image {what} has no {OS}/{ARCH} variant (has: {', '.join(sorted(set(seen))) or 'none'})")


def check_manifest(manifest: dict[str, Any], what: str, max_bytes: int | None) -> int:
    """Validate a (platform) image manifest; returns the sum of its blob sizes.
    413 when it exceeds `max_bytes`."""
    if manifest.get("schemaVersion") == 1:
        raise errors.InvalidImage(f"image {what} uses the obsolete Docker schema 1 manifest format")
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not isinstance(manifest.get("config"), dict):
        raise errors.InvalidImage(f"image {what}: manifest has no config/layers")
    total = 0
    for layer in [*layers, manifest["config"]]:
        size = layer.get("size") if isinstance(layer, dict) else None
        if not isinstance(size, int) or size < 0:
            raise errors.InvalidImage(f"image {what}: manifest entry without a valid size")
        total += size
    for layer in layers:
        mt = str(layer.get("mediaType", ""))
        if "zstd" in mt:
            raise errors.InvalidImage(f"image {what}: zstd-compressed layers are not supported")
    if max_bytes is not None and total > max_bytes:
        raise errors.PayloadTooLarge(
            f"image {what} is {total} bytes (compressed layers), over the limit of {max_bytes} bytes")
    return total


def check_platform(config: dict[str, Any], what: str) -> None:
    os_, arch = str(config.get("os") or ""), str(config.get("architecture") or "")
    if (os_ and os_ != OS) or (arch and arch != ARCH):
        raise errors.InvalidImage(f"image {what} is {os_ or '?'}/{arch or '?'}; only {OS}/{ARCH} images can run")
