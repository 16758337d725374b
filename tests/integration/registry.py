"""Real local registries (Debian's `docker-registry`) and tiny test images.

Each registry gets its own config file listening on 127.0.0.1:<free port>
with storage in a temp dir (Debian's default config listens on all
interfaces: never used). Each runs in its own process group and is stopped
by its PID. Images are built with umoci + GNU tar (`umoci insert` writes
broken tars, docs/architecture.md, "Facts") on a busybox-static rootfs so they stay small.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from tests.support.net import free_port
from tests.support.wait import WaitTimeout, wait_until

BUSYBOX = "/bin/busybox"
REGISTRY_BIN = "/usr/bin/docker-registry"


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd!r} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


class Registry:
    """One `docker-registry serve` on loopback; `auth=(user, password)` adds htpasswd basic auth."""

    def __init__(self, workdir: Path, *, auth: tuple[str, str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="registry-", dir=workdir))
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.auth = auth
        self.proc: subprocess.Popen | None = None
        auth_cfg = ""
        if auth:
            line = run(["htpasswd", "-Bbn", auth[0], auth[1]]).stdout.strip()
            (self.dir / "htpasswd").write_text(line + "\n")
            auth_cfg = f"""auth:
  htpasswd:
    realm: chaser-test
    path: {self.dir / 'htpasswd'}
"""
        (self.dir / "config.yml").write_text(f"""version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {self.dir / 'storage'}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{self.port}
{auth_cfg}""")

    def start(self) -> Registry:
        self.log = open(self.dir / "registry.log", "wb")  # noqa: SIM115 - open while the registry runs; closed in stop()
        self.proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(self.dir / "config.yml")],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"registry exited: {(self.dir / 'registry.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1):
                    return True
            except urllib.error.HTTPError:  # 401 from the auth registry: it is up
                return True
            except OSError:
                return False

        try:
            wait_until(up, 20, interval=0.1)
        except WaitTimeout:
            raise RuntimeError("registry did not start") from None
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def push(self, layout: Path, tag: str, name: str, *, dest_tag: str | None = None) -> str:
        """Push `layout:tag` as `<host>/<name>:<dest_tag>`; returns the full reference."""
        ref = f"{self.host}/{name}:{dest_tag or tag}"
        cmd = ["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false"]
        if self.auth:
            cmd.append(f"--dest-creds={self.auth[0]}:{self.auth[1]}")
        run([*cmd, f"oci:{layout}:{tag}", f"docker://{ref}"])
        return ref


@contextmanager
def registry(workdir: Path, **kw):
    reg = Registry(workdir, **kw)
    try:
        yield reg.start()
    finally:
        reg.cleanup()


# --------------------------------------------------------------------------- images


def gnu_tar(src: Path, out: Path) -> Path:
    """A layer tar of the tree `src` (GNU tar, numeric owners, relative names)."""
    run(["tar", "--numeric-owner", "--xattrs", "-cf", str(out), "-C", str(src), "."])
    return out


def busybox_tree(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "bin").mkdir(exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in ("sh", "ls", "cat", "id", "env"):
        (root / "bin" / applet).symlink_to("busybox")
    etc = root / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\napp:x:1000:\n")
    return root


def umoci_image(layout: Path, tag: str, layers: list[Path], *, env: list[str] = (),
                workdir: str | None = None, user: str | None = None,
                entrypoint: list[str] | None = None, arch: str | None = None) -> str:
    """A new image `layout:tag` from layer tars (in order); returns its manifest digest."""
    if not (layout / "index.json").exists():
        run(["umoci", "init", "--layout", str(layout)])
    image = f"{layout}:{tag}"
    run(["umoci", "new", "--image", image])
    for layer in layers:
        run(["umoci", "raw", "add-layer", "--image", image, str(layer)])
    cfg = ["umoci", "config", "--image", image]
    for e in env:
        cfg += ["--config.env", e]
    if workdir:
        cfg += ["--config.workingdir", workdir]
    if user:
        cfg += ["--config.user", user]
    if entrypoint:
        for e in entrypoint:
            cfg += ["--config.entrypoint", e]
    if arch:
        cfg += ["--architecture", arch]
    if len(cfg) > 4:
        run(cfg)
    return layout_digest(layout, tag)


def layout_digest(layout: Path, tag: str) -> str:
    index = json.loads((layout / "index.json").read_text())
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return m["digest"]
    raise KeyError(tag)


def build_feature_image(work: Path, layout: Path, tag: str = "v1", *, marker: str = "one") -> str:
    """Three layers on busybox: a whiteout, an opaque dir, a symlink, a hard
    link, a setuid file, a non-root user; config with Env/WorkingDir/User."""
    l1 = busybox_tree(work / f"{tag}-l1")
    (l1 / "gone").mkdir()
    (l1 / "gone" / "file").write_text("to be whited out\n")
    (l1 / "opaque").mkdir()
    (l1 / "opaque" / "old").write_text("hidden by the opaque dir\n")
    (l1 / "home" / "app").mkdir(parents=True)
    os.chown(l1 / "home" / "app", 1000, 1000)
    (l1 / "data").mkdir()
    (l1 / "data" / "orig").write_text("hard linked\n")
    os.link(l1 / "data" / "orig", l1 / "data" / "link")
    (l1 / "data" / "sym").symlink_to("/data/orig")
    suid = l1 / "bin" / "suid"
    suid.write_text("#!/bin/sh\n")
    os.chmod(suid, 0o4755)
    (l1 / "owned").write_text("app's\n")
    os.chown(l1 / "owned", 1000, 1000)

    l2 = work / f"{tag}-l2"
    (l2 / "opaque").mkdir(parents=True)
    (l2 / "opaque" / ".wh..wh..opq").write_bytes(b"")
    (l2 / "opaque" / "new").write_text("new\n")
    (l2 / ".wh.gone").write_bytes(b"")
    (l2 / "marker").write_text(marker + "\n")

    l3 = work / f"{tag}-l3"
    (l3 / "etc").mkdir(parents=True)
    (l3 / "etc" / "motd").write_text("layer three\n")

    tars = [gnu_tar(d, work / f"{d.name}.tar") for d in (l1, l2, l3)]
    return umoci_image(layout, tag, tars, env=["FOO=bar", "PATH=/usr/bin:/bin"],
                       workdir="/home/app", user="app", entrypoint=["/bin/sh"])


def build_tiny_image(work: Path, layout: Path, tag: str, *, marker: str = "tiny", **kw) -> str:
    tree = busybox_tree(work / f"tiny-{tag}")
    (tree / "marker").write_text(marker + "\n")
    return umoci_image(layout, tag, [gnu_tar(tree, work / f"tiny-{tag}.tar")], **kw)


def hostile_tar(out: Path, kind: str) -> Path:
    """A layer tar written with Python's tarfile carrying one hostile entry."""
    with tarfile.open(out, "w") as tf:
        ok = tarfile.TarInfo("ok")
        ok.size = 3
        import io
        tf.addfile(ok, io.BytesIO(b"ok\n"))
        if kind == "dotdot":
            ti = tarfile.TarInfo("../evil")
            ti.size = 5
            tf.addfile(ti, io.BytesIO(b"evil\n"))
        elif kind == "absolute":
            ti = tarfile.TarInfo("/abs-evil")
            ti.size = 5
            tf.addfile(ti, io.BytesIO(b"evil\n"))
        elif kind == "hardlink":
            ti = tarfile.TarInfo("hl")
            ti.type = tarfile.LNKTYPE
            ti.linkname = "../../x"
            tf.addfile(ti)
        elif kind == "symlink-write":
            # A symlink escaping the root, then a file written through it.
            # Legal to scan (symlinks may point anywhere); the unpacker must
            # resolve the path inside the rootfs.
            ti = tarfile.TarInfo("esc")
            ti.type = tarfile.SYMTYPE
            ti.linkname = str(out.parent / "outside")
            tf.addfile(ti)
            ti = tarfile.TarInfo("esc/pwned")
            ti.size = 5
            tf.addfile(ti, io.BytesIO(b"evil\n"))
        else:
            raise ValueError(kind)
    return out
