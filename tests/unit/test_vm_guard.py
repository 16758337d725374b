"""VirtualMachine.guard: a caller that is cancelled cancels the agent call it was waiting for."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

from chaser.vm.machine import VirtualMachine


class RunningProcess:
    pid = 4242
    returncode = None

    def __init__(self) -> None:
        self.exited = asyncio.Event()

    async def wait(self) -> int:
        await self.exited.wait()
        return 0


async def test_cancelling_the_caller_cancels_the_call_and_leaves_no_unretrieved_error(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    process = RunningProcess()
    vm = VirtualMachine(vm_id="vm-1", vm_dir=tmp_path, process=process, qmp=None, agent=None)  # type: ignore[arg-type]
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def agent_call() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise RuntimeError("agent unreachable") from None  # how a call ends when its VM goes

    caller = asyncio.ensure_future(vm.guard(agent_call()))
    await started.wait()
    caller.cancel()
    await asyncio.gather(caller, return_exceptions=True)
    await asyncio.wait_for(cancelled.wait(), 5)
    for _ in range(3):
        await asyncio.sleep(0)
    gc.collect()  # an unretrieved task exception is reported when the task is collected
    for _ in range(3):
        await asyncio.sleep(0)
    assert unhandled == []
    process.exited.set()
