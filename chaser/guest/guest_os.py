"""The guest OS disk (vda): Debian minbase + what the agent needs."""

from chaser.guest.rootfs import RootfsSpec

# util-linux: mount/losetup for the agent; tini: PID 1 that reaps zombies.
GUEST_OS = RootfsSpec(
    kind="os",
    image_name="os.erofs",
    packages=("python3", "python3-aiohttp", "tini", "util-linux", "ca-certificates"),
    dirs=("dev", "proc", "sys", "run", "tmp", "var/tmp", "mnt", "opt/chaser"),
)
