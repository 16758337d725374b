"""HTTP front end: authentication, error mapping, the agent's state and routes.

Modules only needed for some requests (files, PTYs, relay, sandbox set-up,
self-test) are imported on first use: under TCG every import costs start-up time.
This module is the part every boot imports, hence one file of about 400 lines.
"""

import asyncio
import base64
import binascii
import hmac
import importlib
import json
import logging
import os
import socket
import sys
import time
from typing import TYPE_CHECKING

from aiohttp import web

from .errors import ApiError, bad_request, conflict, internal
from .identity import decode_entropy, feed_entropy
from .processes import ProcessManager, parse_signal
from .protocol import (
    AGENT_PROTOCOL_VERSION,
    AGENT_READY_MARKER,
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_WORKDIR,
    MAX_EXEC_TIMEOUT_MS,
    MAX_OUTPUT_WAIT_MS,
    PROCESS_OUTPUT_RING_BYTES,
    SANDBOX_ROOT,
    Endpoint,
)
from .userenv import argv_of, build_env, check_cwd, check_env, make_preexec, resolve_user

if TYPE_CHECKING:
    from .pty_session import PtySession

log = logging.getLogger("chaser.agent")


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


async def read_json(request) -> dict:
    # JSON is UTF-8 (RFC 8259): a Content-Type charset is not trusted (an unknown one is
    # a LookupError); nesting deeper than the interpreter's stack is a RecursionError.
    try:
        body = json.loads(await request.read())
    except (ValueError, RecursionError):
        raise bad_request("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    return body


def opt_int(value, name, minimum=None, maximum=None):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{name} must be an integer")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise bad_request(f"{name} out of range")
    return value


def query_int(request, name, default, minimum=0, maximum=None):
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer") from None
    return opt_int(value, name, minimum, maximum)


class Agent:
    def __init__(self, token: str, sandbox_root=None, boot_token_source=None):
        self.token = token
        # In a VM: reads the current QEMU's boot token (fw_cfg). A restored clone or a
        # resumed VM runs in a new QEMU with a new token: see _current_token.
        self.boot_token_source = boot_token_source
        self.boot_token = token
        self.dev_mode = sandbox_root is not None
        # Guest mode without disks runs commands in the guest OS itself.
        self.root = sandbox_root or "/"
        self.initialized = False
        self.session_id = ""
        self.init_env: dict[str, str] = {}
        self.init_user: str | None = None
        self.workdir: str | None = None
        self.procs = ProcessManager()
        self.ptys: dict[str, PtySession] = {}
        self.mounted = False
        self.prepared_disks: dict | None = None
        self.stopped = asyncio.Event()
        self.tasks: set[asyncio.Task] = set()  # fire-and-forget work, held until it is done

    # ----- helpers shared by the feature modules -----

    def spawn_task(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def default_workdir(self) -> str:
        if self.workdir:
            return self.workdir
        if self.dev_mode and not os.path.isdir(os.path.join(self.root, DEFAULT_WORKDIR.lstrip("/"))):
            return "/tmp"
        return DEFAULT_WORKDIR

    def user(self, spec=None):
        return resolve_user(self.root, spec if spec is not None else self.init_user)

    def spawn_setup(self, cwd, env, user_spec, term: str, controlling_tty=False):
        """Validate cwd/env/user of a request; return (cwd, user, env, preexec)."""
        user = self.user(user_spec)
        cwd = check_cwd(self.root, cwd if cwd is not None else self.default_workdir())
        full_env = build_env(user, self.session_id, self.init_env, check_env(env), term)
        return cwd, user, full_env, make_preexec(self.root, cwd, user, controlling_tty)

    # ----- middlewares -----

    @web.middleware
    async def auth_middleware(self, request, handler):
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else ""
        if not given or not self._accepts(given):
            return error_response(401, "unauthorized", "missing or invalid bearer token")
        return await handler(request)

    def _accepts(self, given: str) -> bool:
        # Before /init (a fresh boot, a pooled clone) the fw_cfg is read on every request,
        # so a clone never accepts the template's token, not even before the host's
        # first call; after /init only when the session token does not match.
        if self.initialized and hmac.compare_digest(given.encode(), self.token.encode()):
            return True
        self._take_new_boot_token()
        return hmac.compare_digest(given.encode(), self.token.encode())

    def _take_new_boot_token(self) -> None:
        if self.boot_token_source is None:
            return
        fresh = self.boot_token_source()
        if fresh and fresh != self.boot_token:
            # A new QEMU: every token of the old one (boot and session) is dead.
            self.boot_token = self.token = fresh

    @web.middleware
    async def error_middleware(self, request, handler):
        response = await self._answer(request, handler)
        await close_after_unread_body(request, response)
        return response

    async def _answer(self, request, handler):
        try:
            return await handler(request)
        except ApiError as e:
            return error_response(e.status, e.code, e.message)
        except web.HTTPNotFound:
            return error_response(404, "not_found", f"no route for {request.path}")
        except web.HTTPMethodNotAllowed:
            return error_response(405, "method_not_allowed", f"{request.method} not allowed on {request.path}")
        except web.HTTPException:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as e:  # never crash the server on bad input
            log.exception("internal error on %s %s", request.method, request.path)
            return error_response(500, "internal_error", f"{type(e).__name__}: {e}")

    # ----- core routes -----

    async def health(self, request):
        return web.json_response({"status": "ok", "protocol": AGENT_PROTOCOL_VERSION, "initialized": self.initialized})

    async def init(self, request):
        body = await read_json(request)
        token = body.get("token")
        if not isinstance(token, str) or not token:
            raise bad_request("token must be a non-empty string")
        session_id = body.get("session_id") or ""
        hostname = body.get("hostname") or ""
        if not isinstance(session_id, str) or not isinstance(hostname, str):
            raise bad_request("session_id and hostname must be strings")
        env = check_env(body.get("env"))
        time_ns = opt_int(body.get("time_ns"), "time_ns", minimum=0)
        entropy = decode_entropy(body.get("entropy"))
        disks = body.get("disks")
        if disks is not None and not (isinstance(disks, dict) and isinstance(disks.get("image"), str)
                                      and isinstance(disks.get("writable"), str)):
            raise bad_request("disks must be {image: serial, writable: serial} or null")
        user, workdir = body.get("user"), body.get("workdir")
        if workdir is not None:
            from .safepath import normalize
            workdir = normalize(workdir)
        if self.initialized:
            raise conflict("agent is already initialized")
        self.initialized = True  # set first: a concurrent /init gets 409

        if not self.dev_mode:  # never touch the host's clock or name
            if time_ns:
                time.clock_settime_ns(time.CLOCK_REALTIME, time_ns)
            if hostname:
                socket.sethostname(hostname)
        if entropy:
            feed_entropy(entropy, credit=not self.dev_mode)
        self.token = token
        self.session_id, self.init_env, self.workdir = session_id, env, workdir
        if disks is not None and not self.dev_mode:
            from . import sandbox
            if self.prepared_disks is None:
                await self._mount(disks)
            elif self.prepared_disks != {"image": disks["image"], "writable": disks["writable"]}:
                raise conflict("the sandbox was prepared with other disks")
            try:
                sandbox.set_identity(hostname or "sandbox", workdir or DEFAULT_WORKDIR)
            except OSError as e:
                raise internal(f"writing the sandbox identity failed: {e}") from e
        self.init_user = user
        u = self.user()  # validate the user now, inside the final root
        if u.uid and not self.dev_mode:
            from .sandbox import chown_workdir
            chown_workdir(self.root, self.default_workdir(), u.uid, u.gid)
        return web.json_response({"status": "ok"})

    async def prepare(self, request):
        """Mount the sandbox before the session is known (warm pool): a later
        /init with the same disks only sets the identity."""
        body = await read_json(request)
        disks = body.get("disks")
        if not (isinstance(disks, dict) and isinstance(disks.get("image"), str)
                and isinstance(disks.get("writable"), str)):
            raise bad_request("disks must be {image: serial, writable: serial}")
        if self.initialized or self.prepared_disks is not None:
            raise conflict("the sandbox is already prepared or initialized")
        if self.dev_mode:
            raise conflict("prepare needs a guest (not --sandbox-root mode)")
        await self._mount(disks)
        await self._warm_up()
        return web.json_response({"status": "prepared"})

    async def _warm_up(self) -> None:
        """Run `true` the way /exec does, then forget it (the session sees no trace). Under TCG a
        restored QEMU translates each guest code path on its first run: a pooled VM's first real
        command then finds the exec path (the agent's and the kernel's) done (docs/performance.md)."""
        cwd, user, env, preexec = self.spawn_setup(None, None, None, "dumb")
        p = await self.procs.spawn(argv_of("true"), "true", cwd, user.name, env, preexec)
        try:
            await self.procs.run_foreground(p, 30, 0)
        finally:
            self.procs.processes.pop(p.id, None)

    async def _mount(self, disks: dict) -> None:
        from . import sandbox
        self.prepared_disks = {"image": disks["image"], "writable": disks["writable"]}
        try:
            await asyncio.get_running_loop().run_in_executor(None, sandbox.prepare, disks["image"], disks["writable"])
        except sandbox.SandboxError as e:
            raise internal(str(e)) from e
        self.root = SANDBOX_ROOT
        self.mounted = True

    async def exec(self, request):
        body = await read_json(request)
        argv = argv_of(body.get("command"))
        timeout_ms = opt_int(body.get("timeout_ms"), "timeout_ms", minimum=1, maximum=MAX_EXEC_TIMEOUT_MS)
        max_output = opt_int(body.get("max_output_bytes"), "max_output_bytes", minimum=0, maximum=256 * 1024 * 1024)
        max_output = DEFAULT_MAX_OUTPUT_BYTES if max_output is None else max_output
        background = body.get("background", False)
        if not isinstance(background, bool):
            raise bad_request("background must be a boolean")
        cwd, user, env, preexec = self.spawn_setup(body.get("cwd"), body.get("env"), body.get("user"), "dumb")
        p = await self.procs.spawn(argv, body["command"], cwd, user.name, env, preexec,
                                   ring_bytes=max(PROCESS_OUTPUT_RING_BYTES, max_output), keep_stdin=background)
        if background:
            if timeout_ms:
                self.spawn_task(self._background_timeout(p, timeout_ms / 1000))
            return web.json_response({"id": p.id, "pid": p.pid, "status": "running", "started_at": p.started_at})
        result = await self.procs.run_foreground(p, timeout_ms / 1000 if timeout_ms else None, max_output)
        return web.json_response(result)

    async def _background_timeout(self, p, timeout):
        if not await p.wait_exit(timeout):
            p.timed_out = True
            p.kill_group()

    async def list_processes(self, request):
        return web.json_response({"processes": [p.info() for p in self.procs.processes.values()]})

    async def get_process(self, request):
        return web.json_response(self.procs.get(request.match_info["id"]).info())

    async def process_output(self, request):
        p = self.procs.get(request.match_info["id"])
        offset = query_int(request, "offset", 0)
        limit = query_int(request, "limit", DEFAULT_MAX_OUTPUT_BYTES, minimum=1)
        wait_ms = min(query_int(request, "wait_ms", 0), MAX_OUTPUT_WAIT_MS)
        deadline = time.monotonic() + wait_ms / 1000
        while True:
            start, data = p.ring.read(offset, limit)
            finished = not p.running and p.output_closed
            remaining = deadline - time.monotonic()
            if data or finished or remaining <= 0:
                break
            await p.wait_change(remaining)
        return web.json_response({
            "offset": start, "data": base64.b64encode(data).decode(), "next_offset": start + len(data),
            "status": p.status, "exit_code": p.returncode,
            "finished": finished and start + len(data) >= p.ring.total,
        })

    async def process_stdin(self, request):
        p = self.procs.get(request.match_info["id"])
        body = await read_json(request)
        data, encoding = body.get("data", ""), body.get("encoding", "utf-8")
        close = body.get("close", False)
        if not isinstance(data, str) or not isinstance(close, bool):
            raise bad_request("data must be a string and close a boolean")
        if encoding == "utf-8":
            raw = data.encode()
        elif encoding == "base64":
            try:
                raw = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise bad_request("data is not valid base64") from None
        else:
            raise bad_request("encoding must be utf-8 or base64")
        return web.json_response({"written": await p.write_stdin(raw, close)})

    async def process_signal(self, request):
        p = self.procs.get(request.match_info["id"])
        body = await read_json(request)
        sig = parse_signal(body.get("signal"))
        if not p.running:
            raise conflict("process has finished")
        p.kill_group(sig)
        return web.json_response({"status": "signal_sent", "signal": sig})

    async def shutdown(self, request):
        self.spawn_task(self._shutdown())
        return web.json_response({"status": "shutting_down"}, status=202)

    async def _shutdown(self):
        await asyncio.sleep(0.2)  # let the 202 reach the host first
        self.procs.kill_all()
        for session in list(self.ptys.values()):
            session.kill()
        if self.dev_mode:
            self.stopped.set()
            return
        os.sync()
        from . import sandbox
        if self.mounted:
            sandbox.unmount_all()
        sandbox.reboot()

    # ----- wiring -----

    def lazy(self, module: str, func: str):
        """A handler that imports .<module> on first call."""
        async def handler(request):
            mod = importlib.import_module("." + module, __package__)
            return await getattr(mod, func)(self, request)
        return handler

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self.error_middleware, self.auth_middleware],
                              client_max_size=64 * 1024 * 1024)  # JSON bodies; PUT /files streams
        r = app.router
        r.add_get(Endpoint.HEALTH, self.health)
        r.add_post(Endpoint.INIT, self.init)
        r.add_post(Endpoint.PREPARE, self.prepare)
        r.add_post(Endpoint.RESUME, self.lazy("identity", "handle_resume"))
        r.add_post(Endpoint.EXEC, self.exec)
        r.add_get(Endpoint.PROCESSES, self.list_processes)
        r.add_get(Endpoint.PROCESS, self.get_process)
        r.add_get(Endpoint.PROCESS_OUTPUT, self.process_output)
        r.add_post(Endpoint.PROCESS_STDIN, self.process_stdin)
        r.add_post(Endpoint.PROCESS_SIGNAL, self.process_signal)
        r.add_post(Endpoint.SHUTDOWN, self.shutdown)
        r.add_get(Endpoint.PTY, self.lazy("pty_session", "handle_pty"))
        r.add_get(Endpoint.PTYS, self.lazy("pty_session", "list_ptys"))
        r.add_post(Endpoint.PTYS_RESIZE, self.lazy("pty_session", "resize_ptys"))
        r.add_get(Endpoint.FILES, self.lazy("files", "get_file"))
        r.add_put(Endpoint.FILES, self.lazy("files", "put_file"))
        r.add_delete(Endpoint.FILES, self.lazy("files", "delete"))
        r.add_get(Endpoint.FILES_LIST, self.lazy("files", "list_dir"))
        r.add_get(Endpoint.FILES_STAT, self.lazy("files", "stat"))
        r.add_post(Endpoint.FILES_MKDIR, self.lazy("files", "mkdir"))
        r.add_get(Endpoint.RELAY, self.lazy("relay", "handle_relay"))
        r.add_get(Endpoint.SELFTEST, self.lazy("selftest", "handle_selftest"))
        return app


DRAIN_BYTES = 1024 * 1024
DRAIN_SECONDS = 2.0


async def close_after_unread_body(request, response) -> None:
    """A request whose body the handler did not read (a refused upload, a 404) gets its answer
    with `Connection: close`. Kept alive, aiohttp 3.8 (the guest's) could leave that connection
    unread after a body of a few hundred KiB, and the host's next call on it failed after the
    keep-alive timer (AgentUnavailable). What is left of the body (up to DRAIN_BYTES, for up
    to DRAIN_SECONDS) is read first, so the close is not a reset that loses the answer."""
    content = request.content
    if content.at_eof() or response.prepared:  # at_eof: all received *and* read
        return
    response.force_close()

    async def drain():
        drained = 0
        while drained <= DRAIN_BYTES:
            chunk = await content.readany()
            if not chunk:
                return
            drained += len(chunk)

    try:
        await asyncio.wait_for(drain(), DRAIN_SECONDS)
    except (TimeoutError, ConnectionError):
        pass


def announce_ready() -> None:
    print(AGENT_READY_MARKER, flush=True)
    try:
        with open("/dev/console", "w") as console:
            console.write(AGENT_READY_MARKER + "\n")
    except OSError:
        pass


# Imported before the agent answers: a template snapshot is taken after the
# first answer, so every restored clone starts with these already in memory.
WARM_MODULES = ("pty_session", "files", "relay", "selftest", "sandbox", "safepath", "identity")


async def serve(token: str, port: int, sandbox_root=None, boot_token_source=None) -> None:
    for module in WARM_MODULES:
        importlib.import_module("." + module, __package__)
    agent = Agent(token, sandbox_root, boot_token_source)
    # Short keep-alive: an idle open connection keeps slirp timers (host CPU) busy.
    runner = web.AppRunner(agent.make_app(), access_log=None, keepalive_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port, reuse_address=True).start()
    # SIGTERM (e.g. from tini) ends the agent cleanly: user processes are killed too.
    import signal
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, agent.stopped.set)
    announce_ready()
    try:
        await agent.stopped.wait()
    finally:
        agent.procs.kill_all()
        await runner.cleanup()
    sys.stdout.flush()
