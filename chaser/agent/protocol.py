"""Host <-> agent contract. Standard library only: the host imports this module,
the agent ships it; nothing else is shared."""

AGENT_PROTOCOL_VERSION = 1
AGENT_PORT = 8420

# virtio-blk serial numbers, so the guest finds its disks whatever the probe order.
OS_DISK_SERIAL = "chaser-os"
IMAGE_DISK_SERIAL = "chaser-image"
WRITABLE_DISK_SERIAL = "chaser-data"

# Kernel command-line keys read by the initramfs (never a secret: `ps` shows it on the host).
CMDLINE_PROBE = "chaser.probe"
# The agent's boot token reaches the guest as a QEMU fw_cfg file (from a memfd, so it is
# neither on QEMU's command line nor in a file on the host), read by the agent from sysfs.
# Every QEMU gets its own: a restored clone's fw_cfg holds a new token while its memory
# still holds the template's, and the agent takes the new one (docs/agent-protocol.md).
BOOT_TOKEN_FW_CFG = "opt/chaser/token"
BOOT_TOKEN_SYSFS = f"/sys/firmware/qemu_fw_cfg/by_name/{BOOT_TOKEN_FW_CFG}/raw"
# Fixed length: the guest's fw_cfg driver keeps each entry's size from when it probed
# (the template's boot), so a clone's token must be exactly as long.
BOOT_TOKEN_CHARS = 43
PROBE_MARKER = "CHASER-PROBE-OK"
AGENT_READY_MARKER = "CHASER-AGENT-READY"

SANDBOX_ROOT = "/run/chaser/root"
DEFAULT_WORKDIR = "/workspace"

# --- Agent API details (added with the agent implementation) ---

# Default PATH of every user process inside the sandbox.
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Each process keeps this many trailing output bytes for /processes/{id}/output.
PROCESS_OUTPUT_RING_BYTES = 8 * 1024 * 1024
# Default cap of the output returned inline by a foreground /exec.
DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024
# Longest timeout_ms accepted by /exec (a year; the API allows far less): larger is 400.
MAX_EXEC_TIMEOUT_MS = 365 * 24 * 3600 * 1000
# Longest wait_ms accepted by /processes/{id}/output.
MAX_OUTPUT_WAIT_MS = 30_000
# Chunk size used to stream files in and out.
FILE_CHUNK_BYTES = 256 * 1024
# Where the guest mounts the image (lower) and writable (data) disks.
LOWER_MOUNT = "/run/chaser/lower"
DATA_MOUNT = "/run/chaser/data"
# DNS server of QEMU's user-mode network.
SANDBOX_NAMESERVER = "10.0.2.3"


class Endpoint:
    """Every path the agent serves, declared once: the agent's router, the host's
    client and the test fake all use these (docs/agent-protocol.md)."""

    HEALTH = "/health"  # GET: liveness (no side effects; safe before /init)
    INIT = "/init"  # POST: identity, env, clock, entropy, the per-session token
    PREPARE = "/prepare"  # POST: mount the sandbox ahead of /init (warm pool)
    RESUME = "/resume"  # POST: after a resume or fork: clock, entropy, new token (and identity)
    EXEC = "/exec"  # POST: run a command (foreground or background)
    PROCESSES = "/processes"  # GET: list
    PROCESS = "/processes/{id}"  # GET: one
    PROCESS_OUTPUT = "/processes/{id}/output"  # GET: bytes from an offset, long-poll with wait_ms
    PROCESS_STDIN = "/processes/{id}/stdin"  # POST: write (and close) stdin
    PROCESS_SIGNAL = "/processes/{id}/signal"  # POST: send a signal to the process group
    SHUTDOWN = "/shutdown"  # POST: sync, unmount, power off
    PTY = "/pty"  # GET, WebSocket: an interactive terminal
    PTYS = "/ptys"  # GET: open terminals
    PTYS_RESIZE = "/ptys/resize"  # POST: resize every open terminal
    FILES = "/files"  # GET: stream a file out; PUT: stream one in; DELETE: remove
    FILES_LIST = "/files/list"  # GET
    FILES_STAT = "/files/stat"  # GET
    FILES_MKDIR = "/files/mkdir"  # POST
    RELAY = "/relay"  # GET, WebSocket: a byte stream to 127.0.0.1:port in the guest
    SELFTEST = "/selftest"  # GET: what a process sees inside the sandbox

    @staticmethod
    def process(template: str, process_id: str) -> str:
        return template.replace("{id}", process_id)
