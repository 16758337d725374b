"""The default sandbox root file system (vdb when a session names no image)."""

from chaser.guest.rootfs import RootfsSpec

BASE_IMAGE = RootfsSpec(
    kind="base",
    image_name="base.erofs",
    packages=(
        "bash", "coreutils", "ca-certificates", "curl", "git", "python3",
        "nodejs", "npm", "procps", "less", "iproute2",
    ),
    dirs=("dev", "proc", "sys", "run", "tmp", "var/tmp", "mnt", "workspace"),
)
