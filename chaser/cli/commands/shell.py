"""`chaser shell [SESSION] [-c CMD] [--mode human|agent]`: a terminal in the sandbox.

Interactive (stdin is a terminal): the local terminal goes to raw mode, so every
key — Ctrl-C included — goes to the sandbox; window-size changes (SIGWINCH) are
sent as resize messages; the remote shell's exit code becomes ours.

`-c CMD` runs one command in the PTY's `exec` mode: its output goes to stdout,
stdin is forwarded (the local terminal stays in normal mode; Ctrl-C locally
sends SIGINT to the command), and its exit code becomes ours.

Piped stdin works in both forms: the bytes are typed into the PTY, and end of
input is sent as the terminal's EOF character (Ctrl-D).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys

import typer

from chaser.cli.commands._common import api_command, fail, make_client, resolve_session

EOF_CHAR = b"\x04"
LOST_EXIT_CODE = 255  # like ssh when the connection drops


def exit_status(code: object) -> int:
    """The remote exit code as a process exit status (a signal N → 128+N)."""
    if not isinstance(code, int) or isinstance(code, bool):
        return LOST_EXIT_CODE
    if code < 0:
        return min(128 - code, 255)
    return code & 0xFF


def terminal_size() -> tuple[int, int] | None:
    for stream in (sys.stdout, sys.stdin, sys.stderr):
        try:
            size = os.get_terminal_size(stream.fileno())
            if size.lines > 0 and size.columns > 0:
                return min(size.lines, 1000), min(size.columns, 1000)
        except (OSError, ValueError, AttributeError):
            continue
    return None


async def stdin_chunks(fd: int):
    """Chunks of stdin as they come; b"" once at EOF. Never makes the fd non-blocking
    (it is shared with the parent shell): waits for readiness, then reads."""
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    try:
        loop.add_reader(fd, ready.set)
    except (PermissionError, ValueError, OSError):  # a regular file or /dev/null: reads never block
        while True:
            data = await asyncio.to_thread(os.read, fd, 65536)
            yield data
            if not data:
                return
    import select

    try:
        while True:
            await ready.wait()
            ready.clear()
            # The readiness callback is level-triggered and may have fired before an
            # earlier read emptied the fd: check again, never block the loop.
            if not select.select([fd], [], [], 0)[0]:
                continue
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            yield data
            if not data:
                return
    finally:
        loop.remove_reader(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            import select

            select.select([], [fd], [])


async def run_shell(client, session_id: str, *, command: str | None, mode: str) -> int:
    from websockets.exceptions import ConnectionClosed

    from chaser.client import connect_pty, pty_exec_message, pty_resize_message, pty_signal_message

    stdin_fd, stdout_fd = sys.stdin.fileno(), sys.stdout.fileno()
    raw = command is None and os.isatty(stdin_fd)
    size = terminal_size()
    rows, cols = size if size else (None, None)
    ws_mode = "exec" if command is not None else mode
    loop = asyncio.get_running_loop()
    exit_code: list[object] = []

    async with connect_pty(client, session_id, mode=ws_mode, rows=rows, cols=cols) as ws:
        if command is not None:
            await ws.send(pty_exec_message(command))

        async def send_stdin() -> None:
            last = b"\n"
            async for data in stdin_chunks(stdin_fd):
                if not data:
                    if not raw:  # end of input: the terminal's EOF (twice to end a partial line)
                        await ws.send(EOF_CHAR if last in (b"\n", b"") else EOF_CHAR * 2)
                    return
                last = data[-1:]
                await ws.send(data)

        async def receive() -> None:
            try:
                async for message in ws:
                    if isinstance(message, bytes):
                        write_all(stdout_fd, message)
                        continue
                    with contextlib.suppress(ValueError, AttributeError):
                        control = json.loads(message)
                        if control.get("type") == "exit":
                            exit_code.append(control.get("exit_code"))
                        elif control.get("type") == "error":
                            print(f"\r\nerror: {control.get('code')}: {control.get('message')}", file=sys.stderr)
            except ConnectionClosed:
                pass

        controls: set[asyncio.Task[None]] = set()  # sends from signal handlers, held until done

        def send_control(text: str) -> None:
            task = loop.create_task(ws.send(text))
            controls.add(task)
            task.add_done_callback(controls.discard)

        def on_winch() -> None:
            new = terminal_size()
            if new:
                send_control(pty_resize_message(*new))

        def on_interrupt() -> None:
            send_control(pty_signal_message("INT"))

        saved = None
        handlers = []
        if raw:
            import termios
            import tty

            saved = termios.tcgetattr(stdin_fd)
            tty.setraw(stdin_fd)
        try:
            if os.isatty(stdout_fd) or os.isatty(stdin_fd):
                loop.add_signal_handler(signal.SIGWINCH, on_winch)
                handlers.append(signal.SIGWINCH)
            if not raw:
                loop.add_signal_handler(signal.SIGINT, on_interrupt)
                handlers.append(signal.SIGINT)
            receiver = asyncio.create_task(receive())
            sender = asyncio.create_task(send_stdin())
            try:
                await receiver
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
        finally:
            for sig in handlers:
                loop.remove_signal_handler(sig)
            if saved is not None:
                import termios

                termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
    if not exit_code:
        print("error: connection_lost: the sandbox terminal closed without an exit status", file=sys.stderr)
        return LOST_EXIT_CODE
    return exit_status(exit_code[0])


@api_command
def shell_command(
    session: str | None = typer.Argument(None, metavar="[SESSION]", help="Session id (default: the current session)."),
    command: str | None = typer.Option(None, "-c", "--command",
                                       help="Run this command (exec mode) and exit with its code."),
    mode: str = typer.Option("human", "--mode", "-m",
                             help="human (login shell, colours) or agent (TERM=dumb, plain prompt)."),
) -> None:
    """Open a terminal in a session, or run one command with -c."""
    if mode not in ("human", "agent"):
        fail("invalid_argument", "--mode must be human or agent")
    if command is not None and not command.strip():
        fail("invalid_argument", "-c needs a command")
    session_id = resolve_session(session)
    with make_client() as client:
        code = asyncio.run(run_shell(client, session_id, command=command, mode=mode))
    sys.stdout.flush()
    raise typer.Exit(code)
