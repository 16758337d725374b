"""A seeded, bounded fuzzer of the in-guest agent's HTTP API. Standard library only:
tests run it from the host (tests/integration/test_agent_fuzz.py) and copy this very
file into a guest to run it there, as the sandbox's own code would, against the
agent's listening address (`python3 agent_fuzz.py --port 8420 --seed 7 --count 500`).

Requests: every method of a small set and a few made-up ones; the agent's real
endpoint paths (`chaser/agent/protocol.py` `Endpoint`, copied below so that the
file stands alone) mutated, and random ones; random query strings; bodies of random
JSON, truncated JSON, deep nesting, huge numbers, wrong types, invalid UTF-8 and
binary. What could wreck the guest for the rest of the run is left out: no
`/shutdown`, exec bodies run only harmless commands, and the writing calls
(PUT/DELETE /files, /files/mkdir) stay under one scratch directory, without `..`.

The verdict (printed as JSON by the script): every request got an HTTP answer
(no dropped connection, no time-out) and none was a 5xx other than `allowed_5xx`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import time
import urllib.parse

# Each path with the methods it answers.
ENDPOINTS = {
    "/health": ("GET",), "/init": ("POST",), "/prepare": ("POST",), "/exec": ("POST",), "/processes": ("GET",),
    "/processes/{id}": ("GET",), "/processes/{id}/output": ("GET",), "/processes/{id}/stdin": ("POST",),
    "/processes/{id}/signal": ("POST",), "/pty": ("GET",), "/ptys": ("GET",), "/ptys/resize": ("POST",),
    "/files": ("GET", "PUT", "DELETE"), "/files/list": ("GET",), "/files/stat": ("GET",),
    "/files/mkdir": ("POST",), "/relay": ("GET",), "/selftest": ("GET",),
}
NEVER = ("/shutdown",)
WRITING = {("PUT", "/files"), ("DELETE", "/files"), ("POST", "/files/mkdir")}
METHODS = ("GET", "GET", "POST", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "FUZZ", "M-SEARCH")
STANDARD_METHODS = {"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE"}
SAFE_COMMANDS = ("true", "echo fuzz", ["/bin/echo", "x"], "exit 3", "printf '%s' \"$HOME\"", "sleep 0.05")
SCRATCH = "/tmp/chaser-fuzz"
# Documented 5xx answers: 502 port_not_listening from /relay (nothing listens on a random port).
ALLOWED_5XX = {(502, "port_not_listening")}
QUERY_KEYS = ("path", "mode", "recursive", "offset", "limit", "wait_ms", "rows", "cols", "env", "term", "cwd",
              "user", "command", "port", "id", "token", "", "x")


_PRINTABLE = "".join(chr(c) for c in range(33, 127) if chr(c) != "%") + "%"


class Fuzzer:
    def __init__(self, seed: int, process_ids: list[str] | None = None) -> None:
        self.rng = random.Random(seed)
        self.process_ids = [*list(process_ids or []), "c-000000000000", "nope", ""]

    # --- values ---------------------------------------------------------------------------
    def text(self, max_len: int = 40) -> str:
        rng = self.rng
        alphabet = rng.choice([
            "abc/._-", "abcdefghijklmnopqrstuvwxyz0123456789", "/..%~ \t\r\n\x00\x7f", "é中😀\u202e\ufeff",
            "".join(chr(c) for c in range(32, 127)), "\ud800\udfff\udc80",
        ])
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(max_len)))

    def number(self) -> object:
        return self.rng.choice([0, -1, 1, 2**31, 2**63, 2**64 + 1, 10**30, -(10**30), 1.5, -0.0, 1e308,
                                10**400, "1e999", "NaN", True, False, None])

    def value(self, depth: int = 0) -> object:
        rng = self.rng
        kind = rng.randrange(8 if depth < 3 else 4)
        if kind == 0:
            return self.text()
        if kind == 1:
            return self.number()
        if kind == 2:
            return rng.choice([None, True, False, "", [], {}])
        if kind == 3:
            return rng.choice(["/tmp", "/", "..", "/etc/passwd", "/workspace", "root", "nobody", "INT", "9"])
        if kind in (4, 5):
            keys = ["command", "cwd", "env", "user", "timeout_ms", "max_output_bytes", "background", "path",
                    "signal", "data", "encoding", "close", "rows", "cols", "id", "token", "disks", "time_ns",
                    "entropy", "workdir", "hostname", "session_id", self.text(8)]
            return {rng.choice(keys): self.value(depth + 1) for _ in range(rng.randrange(5))}
        return [self.value(depth + 1) for _ in range(rng.randrange(4))]

    def path_value(self, writing: bool) -> str:
        rng = self.rng
        if writing:
            name = "".join(rng.choice("abcxyz._-é 😀") for _ in range(rng.randrange(1, 12))).replace("..", "_")
            return rng.choice([f"{SCRATCH}/{name}", f"{SCRATCH}/{name}/{name}", f"{SCRATCH}//{name}/",
                               f"{SCRATCH}/./{name}", f"{SCRATCH}/" + "n" * rng.choice([200, 255, 256, 5000])])
        return rng.choice(["/", "/etc/passwd", "/proc/self/status", "/dev/zero", "/tmp", "../../etc/shadow",
                           "/a/../../..", "relative", "", "/\x00", "/dev/null/x", "/proc/1/root/etc",
                           "/" + "x" * 5000, "/" + "a/" * 3000, self.text(), SCRATCH])

    # --- requests -------------------------------------------------------------------------
    def body(self, method: str, endpoint: str) -> bytes:
        rng = self.rng
        choice = rng.randrange(10)
        if endpoint == "/exec" and choice < 4:
            body = {"command": rng.choice(SAFE_COMMANDS)}
            for key in ("cwd", "env", "user", "timeout_ms", "max_output_bytes", "background"):
                if rng.random() < 0.4:
                    body[key] = self.value(1) if rng.random() < 0.5 else self.number()
            if rng.random() < 0.5:
                body["timeout_ms"] = rng.choice([1, 100, 5000, 10**18, 10**400, 2**64])
            return self._dump(body)
        if (method, endpoint) in WRITING and choice < 4:
            if endpoint == "/files/mkdir":
                return self._dump({"path": self.path_value(writing=True)})
            return rng.randbytes(rng.randrange(2000))
        if choice == 0:
            return b""
        if choice == 1:
            return self._dump(self.value())[: rng.randrange(1, 60)]  # truncated
        if choice == 2:
            depth = rng.choice([100, 1000, 100_000])
            return (b"[" * depth + b"]" * depth) if rng.random() < 0.5 else (b'{"a":' * depth + b"1" + b"}" * depth)
        if choice == 3:
            return rng.randbytes(rng.randrange(300))
        if choice == 4:
            return rng.choice([b'{"rows": 1e999, "cols": -1e999}', b'{"timeout_ms": ' + b"9" * 5000 + b"}",
                               b'{"path": "/\\ud800"}', b'{"command": "\\u0000"}', b"\xff\xfe{}", b"null",
                               b'"string"', b"[1,2,3]", b"{\"a\": NaN}", b'{"rows": Infinity, "cols": 1}'])
        return self._dump(self.value())

    def _dump(self, value: object) -> bytes:
        try:
            return json.dumps(value).encode("utf-8", "surrogatepass")
        except ValueError:  # a number too large for its string form
            return b'{"x": 1}'

    def query(self, endpoint: str, method: str) -> str:
        rng = self.rng
        pairs = []
        if endpoint.startswith("/files") and rng.random() < 0.9:
            pairs.append(("path", self.path_value(writing=(method, endpoint) in WRITING)))
        for _ in range(rng.randrange(4)):
            key = rng.choice(QUERY_KEYS)
            if key == "path" and (method, endpoint) in WRITING:
                continue
            if key == "wait_ms":
                value = rng.choice(["0", "-1", "abc", "10", str(10**30)])
            elif key == "port" and rng.random() < 0.5:
                value = str(rng.choice([0, 1, 8420, 65535, 65536, -1, 10**20]))
            else:
                value = str(self.number()) if rng.random() < 0.4 else self.text(20)
            pairs.append((key, value))
        if not pairs:
            return ""
        encoded = urllib.parse.urlencode(pairs, errors="surrogatepass")
        if rng.random() < 0.15:
            encoded += rng.choice(["&%", "&path=%ff%fe", "&&&=", "&path=%00", "#frag", "&x=%zz"])
        return "?" + encoded

    def request(self) -> tuple[str, str, bytes, dict[str, str]]:
        rng = self.rng
        endpoint = rng.choice(list(ENDPOINTS))
        method = rng.choice(ENDPOINTS[endpoint]) if rng.random() < 0.7 else rng.choice(METHODS)
        path = endpoint.replace("{id}", rng.choice(self.process_ids))
        roll = rng.random()
        if roll < 0.15:
            path = self._mutate(path)
        elif roll < 0.22:
            path = "/" + urllib.parse.quote(self.text(), safe="/%", errors="surrogatepass")
        # The query is made for the endpoint (a writing call's path stays in SCRATCH), whatever
        # the mutated path routes to.
        query = self.query(endpoint, method)
        body = self.body(method, endpoint) if method not in ("GET", "HEAD") or rng.random() < 0.2 else b""
        headers = {"Content-Type": rng.choice(["application/json", "text/plain", "application/octet-stream",
                                                "application/json; charset=latin-1", "application/json; charset=xx",
                                                "multipart/form-data; boundary=x"])}
        if rng.random() < 0.1:
            headers["Connection"] = "close"
        if path.split("?")[0].rstrip("/") in NEVER:
            path = "/health"
        # On the wire a request target is printable ASCII: the rest goes percent-encoded.
        path = urllib.parse.quote(path, safe=_PRINTABLE, errors="surrogatepass")
        return method, path + query, body, headers

    def _mutate(self, path: str) -> str:
        rng = self.rng
        return rng.choice([
            path + "/", path + "//", "/" + path, path.upper(), path + "%00", path + "/..", path + "/%2e%2e",
            path.replace("/", "%2F"), path + "?" * 3, path + ";x", path * 3, path + "/" + "x" * 4000,
            path.replace("s", "ś"), path[:-1], path + "\t",
        ])


def _connect(host: str, port: int, timeout: float) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(host, port, timeout=timeout)


def _exchange(conn: http.client.HTTPConnection, method: str, path: str, body: bytes,
              headers: dict[str, str]) -> tuple[http.client.HTTPResponse, bytes]:
    conn.request(method, path, body=body or None, headers=headers)
    response = conn.getresponse()
    return response, response.read()


def run(host: str, port: int, token: str | None, *, seed: int, count: int, process_ids: list[str] | None = None,
        timeout: float = 30.0) -> dict:
    """`count` requests; a summary: status counts, failures (no answer, or an undocumented 5xx).

    A request that fails on a kept-alive connection (the server may close one at any time,
    RFC 9112 9.3.1) is retried once on a new connection, as HTTP clients do (`retries`); one
    that fails on a new connection is a failure."""
    fuzzer = Fuzzer(seed, process_ids)
    statuses: dict[int, int] = {}
    failures: list[dict] = []
    retries = 0
    conn, used = _connect(host, port, timeout), False
    started = time.monotonic()
    for number in range(count):
        method, path, body, headers = fuzzer.request()
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        elif fuzzer.rng.random() < 0.3:
            headers["Authorization"] = fuzzer.rng.choice(["Bearer ", "Bearer x", "Basic eDp5", "bearer", "Bearer  "])
        shown = [method, path[:300], body[:300].decode("latin-1")]
        try:
            try:
                response, payload = _exchange(conn, method, path, body, headers)
            except (ConnectionError, http.client.RemoteDisconnected, TimeoutError):
                if not used:
                    raise
                retries += 1
                conn.close()
                conn = _connect(host, port, timeout)
                response, payload = _exchange(conn, method, path, body, headers)
        except (TimeoutError, http.client.HTTPException, OSError) as exc:
            conn.close()
            conn, used = _connect(host, port, timeout), False
            if method not in STANDARD_METHODS and isinstance(exc, (ConnectionError, http.client.RemoteDisconnected)):
                # The HTTP parser answers a made-up method with 400 and closes the connection,
                # maybe while the body is still being sent: a refusal, not a crash.
                statuses[400] = statuses.get(400, 0) + 1
                continue
            failures.append({"n": number, "request": shown, "error": repr(exc)})
            continue
        used = True
        statuses[response.status] = statuses.get(response.status, 0) + 1
        if response.status >= 500:
            try:
                code = json.loads(payload).get("code")
            except (ValueError, AttributeError):
                code = None
            if (response.status, code) not in ALLOWED_5XX:
                failures.append({"n": number, "request": shown, "status": response.status,
                                 "answer": payload[:500].decode("latin-1")})
        if response.will_close:
            conn.close()
            conn, used = _connect(host, port, timeout), False
    conn.close()
    return {"count": count, "seconds": round(time.monotonic() - started, 2), "statuses": statuses,
            "retries": retries, "failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8420)
    parser.add_argument("--token")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--count", type=int, default=500)
    args = parser.parse_args()
    print(json.dumps(run(args.host, args.port, args.token, seed=args.seed, count=args.count)))


if __name__ == "__main__":
    main()
