"""Entry point: `python3 -m chaser_agent [--port N] [--token T] [--sandbox-root DIR]`."""

import argparse
import asyncio
import logging
import sys

from .protocol import AGENT_PORT, CMDLINE_TOKEN


def token_from_cmdline(path: str = "/proc/cmdline"):
    try:
        with open(path) as f:
            words = f.read().split()
    except OSError:
        return None
    prefix = CMDLINE_TOKEN + "="
    for word in words:
        if word.startswith(prefix):
            return word[len(prefix):]
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="chaser_agent")
    parser.add_argument("--port", type=int, default=AGENT_PORT)
    parser.add_argument("--token", help=f"boot token (default: {CMDLINE_TOKEN}= on /proc/cmdline)")
    parser.add_argument("--sandbox-root", help="dev/test mode: an already prepared sandbox root, no mounting")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="chaser-agent: %(levelname)s %(message)s")
    token = args.token or token_from_cmdline()
    if not token:
        # Refuse to serve an unauthenticated root shell.
        print("chaser-agent: no token (--token or chaser.token= on the kernel command line)", file=sys.stderr)
        return 2
    from .server import serve
    asyncio.run(serve(token, args.port, args.sandbox_root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
