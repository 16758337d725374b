"""Servers the forwarding tests reach: written into a sandbox (tests/integration/test_pty_forward.py)
or run on the host (tests/unit/test_pty_forward.py) as `python3 servers.py http-echo|ws-echo|line-echo PORT [HOST]`."""

# Stdlib-only servers, since the base image has python3 but no pip packages.
SANDBOX_SERVERS = r'''
import base64, hashlib, json, socket, socketserver, struct, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def _send(self, body, ctype="application/octet-stream"):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def _body(self):
        if self.headers.get("Content-Length") is not None:
            return self.rfile.read(int(self.headers["Content-Length"]))
        data = b""
        if "chunked" in (self.headers.get("Transfer-Encoding") or ""):
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if not size:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return data
    def do_POST(self):  # read it all, then send it back (a streaming echo could deadlock the client)
        self._send(self._body())
    do_PUT = do_POST
    def do_GET(self):
        if self.path.startswith("/headers"):
            self._send(json.dumps({k.lower(): v for k, v in self.headers.items()}).encode(), "application/json")
        elif self.path.startswith("/chunked"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"one\n", b"two\n", b"three\n"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        else:
            self._send(b"ok\n", "text/plain")

def ws_echo(conn):
    f = conn.makefile("rb")
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = f.readline()
        if not line:
            return
        head += line
    headers = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    key = headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    accept = base64.b64encode(hashlib.sha1(key.encode()).digest()).decode()
    extra = ""
    if headers.get("sec-websocket-protocol"):
        extra = "Sec-WebSocket-Protocol: %s\r\n" % headers["sec-websocket-protocol"].split(",")[0].strip()
    conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Accept: %s\r\n%s\r\n" % (accept, extra)).encode())
    def send(op, data):
        n = len(data)
        if n < 126:
            hdr = struct.pack("!BB", 0x80 | op, n)
        elif n < 65536:
            hdr = struct.pack("!BBH", 0x80 | op, 126, n)
        else:
            hdr = struct.pack("!BBQ", 0x80 | op, 127, n)
        conn.sendall(hdr + data)
    message, kind = b"", 1
    while True:
        b = f.read(2)
        if len(b) < 2:
            return
        fin, op, n = b[0] & 0x80, b[0] & 0x0F, b[1] & 0x7F
        if n == 126:
            n = struct.unpack("!H", f.read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", f.read(8))[0]
        mask = f.read(4) if b[1] & 0x80 else b"\0\0\0\0"
        data = bytes(c ^ mask[i % 4] for i, c in enumerate(f.read(n))) if b[1] & 0x80 else f.read(n)
        if op == 8:
            send(8, data[:2])
            return
        if op == 9:
            send(10, data)
            continue
        if op in (1, 2):
            message, kind = data, op
        elif op == 0:
            message += data
        if fin and op in (0, 1, 2):
            send(kind, message)

class LineEcho(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)
            self.wfile.flush()

class WSHandler(socketserver.BaseRequestHandler):
    def handle(self):
        ws_echo(self.request)

class TCP(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

mode, port = sys.argv[1], int(sys.argv[2])
host = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
if mode == "http-echo":
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer((host, port), Echo).serve_forever()
elif mode == "ws-echo":
    TCP((host, port), WSHandler).serve_forever()
elif mode == "line-echo":
    TCP((host, port), LineEcho).serve_forever()
'''
