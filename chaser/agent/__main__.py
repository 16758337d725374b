"""Entry point: `python3 -m chaser_agent [--port N] [--token T] [--sandbox-root DIR]`."""

import argparse
import asyncio
import logging
import sys

from .protocol import AGENT_PORT, BOOT_TOKEN_CHARS, BOOT_TOKEN_SYSFS

_URLSAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def read_boot_token(path: str = BOOT_TOKEN_SYSFS):
    """The token in this QEMU's fw_cfg, or None (no such file, or not a token)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(4 * BOOT_TOKEN_CHARS)
    except OSError:
        return None
    token = raw.strip()
    if len(token) != BOOT_TOKEN_CHARS or not all(c in _URLSAFE for c in token):
        return None
    return token.decode()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="chaser_agent")
    parser.add_argument("--port", type=int, default=AGENT_PORT)
    parser.add_argument("--token", help="dev/test mode: the boot token (in a VM it comes from fw_cfg)")
    parser.add_argument("--sandbox-root", help="dev/test mode: an already prepared sandbox root, no mounting")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="chaser-agent: %(levelname)s %(message)s")
    source = None if args.token else read_boot_token
    token = args.token or read_boot_token()
    if not token:
        # Refuse to serve an unauthenticated root shell.
        print(f"chaser-agent: no token (--token, or {BOOT_TOKEN_SYSFS})", file=sys.stderr)
        return 2
    from .server import serve
    asyncio.run(serve(token, args.port, args.sandbox_root, boot_token_source=source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
