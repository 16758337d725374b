"""Interactive-access numbers: PTY keystroke echo latency, and forwarded HTTP
latency/throughput compared with the same request made inside the guest.

    .venv/bin/python bench/interactive.py [--keystrokes 50] [--requests 30] [--mib 5]

Starts its own `chaser server` (private home and config, the default guest
assets), one session, prints JSON, and cleans up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.conftest import ServerProcess

GUEST_PORT = 8000

# Inside the guest: N sequential GETs of /small and one GET of /big.bin over loopback.
GUEST_CLIENT = r'''
import http.client, json, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
lat = []
for _ in range(n):
    t = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("GET", "/small.txt"); c.getresponse().read(); c.close()
    lat.append(time.perf_counter() - t)
t = time.perf_counter()
c = http.client.HTTPConnection("127.0.0.1", port)
c.request("GET", "/big.bin"); size = len(c.getresponse().read()); c.close()
print(json.dumps({"lat": lat, "big_s": time.perf_counter() - t, "size": size}))
'''


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary_ms(values: list[float]) -> dict:
    return {"n": len(values), "median_ms": round(statistics.median(values) * 1000, 2),
            "p95_ms": round(pct(values, 0.95) * 1000, 2), "min_ms": round(min(values) * 1000, 2)}


async def keystroke_latency(ws_url: str, headers: dict, count: int) -> list[float]:
    """Type letters at the shell prompt; time each until its echo comes back."""
    from websockets.asyncio.client import connect

    async def drain(ws, quiet: float = 0.5) -> None:
        while True:
            try:
                await asyncio.wait_for(ws.recv(), quiet)
            except TimeoutError:
                return

    async with connect(ws_url, additional_headers=headers, max_size=None, compression=None) as ws:
        await ws.send(b"echo READY\n")
        seen = b""
        while b"READY\r\n" not in seen:
            message = await asyncio.wait_for(ws.recv(), 30)
            seen += message if isinstance(message, bytes) else b""
        await drain(ws)
        samples = []
        for i in range(count):
            if i and i % 20 == 0:
                await ws.send(b"\x15")  # Ctrl-U: clear the line
                await drain(ws, 0.3)
            key = bytes([ord("a") + i % 26])
            started = time.perf_counter()
            await ws.send(key)
            seen = b""
            while key not in seen:
                message = await asyncio.wait_for(ws.recv(), 10)
                if isinstance(message, bytes):
                    seen += message
            samples.append(time.perf_counter() - started)
            await asyncio.sleep(0.02)
        await ws.send(b"\x15exit\n")
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keystrokes", type=int, default=50)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--mib", type=int, default=5)
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="chbench-", dir="/tmp"))
    server = ServerProcess(home=base / "home", config_file=base / "config.json").start(timeout=600)
    result: dict = {}
    try:
        api = server.client()
        sid = api.post("/v1/sessions", json={"ephemeral": True}).json()["id"]

        def run(command: str, **kw) -> dict:
            r = api.post(f"/v1/sessions/{sid}/exec", json={"command": command, **kw})
            r.raise_for_status()
            return r.json()

        run(f"mkdir -p /workspace/www && head -c {args.mib * 1048576} /dev/urandom > /workspace/www/big.bin "
            "&& echo ok > /workspace/www/small.txt")
        api.post(f"/v1/sessions/{sid}/upload", files={"file": ("c.py", GUEST_CLIENT.encode())},
                 data={"path": "/workspace/client.py"}).raise_for_status()
        run(f"cd /workspace/www && exec python3 -m http.server {GUEST_PORT} --bind 127.0.0.1", background=True)
        run(f"until python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {GUEST_PORT}), 1)' "
            "2>/dev/null; do sleep 0.2; done", timeout_ms=60000)

        ws_url = server.url.replace("http://", "ws://") + f"/v1/sessions/{sid}/pty?mode=agent&cols=500"
        keys = asyncio.run(keystroke_latency(ws_url, {"Authorization": f"Bearer {server.api_key}"}, args.keystrokes))
        result["pty_keystroke_echo"] = summary_ms(keys)

        prefix = f"/s/{sid}/forward/{GUEST_PORT}"
        api.get(f"{prefix}/small.txt")  # warm up
        latencies = []
        for _ in range(args.requests):
            started = time.perf_counter()
            r = api.get(f"{prefix}/small.txt")
            latencies.append(time.perf_counter() - started)
            assert r.status_code == 200
        started = time.perf_counter()
        size = 0
        with api.stream("GET", f"{prefix}/big.bin") as r:
            for chunk in r.iter_bytes():
                size += len(chunk)
        forwarded_big = time.perf_counter() - started

        inside = run(f"python3 /workspace/client.py {GUEST_PORT} {args.requests}", timeout_ms=300000)
        import base64

        output = inside.get("output", "")
        if inside.get("output_encoding") == "base64":
            output = base64.b64decode(output).decode()
        guest = json.loads(output.strip().splitlines()[-1])

        result["forward_http_small"] = {"gateway": summary_ms(latencies), "inside_guest": summary_ms(guest["lat"])}
        result["forward_http_download"] = {
            "bytes": size,
            "gateway_mib_s": round(size / forwarded_big / 1048576, 2),
            "inside_guest_mib_s": round(guest["size"] / guest["big_s"] / 1048576, 2),
        }
        api.delete(f"/v1/sessions/{sid}", params={"force": "true"})
        api.close()
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
