"""Every implementation of the runtime seam (chaser/runtime/interface.py) has its members
with the protocol's signatures: the QEMU runtime and its VMs, the test fakes, the
adapter over the host's agent."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from chaser.runtime import Runtime, SandboxVM, VMSpec
from tests.support import FakeRuntime, FakeVM
from tests.support.agent_vm import AgentRuntime, AgentVM


def protocol_members(protocol: type) -> dict[str, object]:
    skip = {"__init__", "__subclasshook__", "__class_getitem__", "__init_subclass__"}
    return {name: value for name, value in vars(protocol).items()
            if not name.startswith("_") and name not in skip and (callable(value) or isinstance(value, property))}


def compatible(declared: inspect.Signature, implemented: inspect.Signature) -> list[str]:
    """What the implementation lacks or changes: each declared parameter with its name, kind and
    default; extra parameters only if they have defaults."""
    problems = []
    actual = implemented.parameters
    for name, parameter in declared.parameters.items():
        if name not in actual:
            problems.append(f"no parameter {name!r}")
            continue
        if actual[name].kind != parameter.kind:
            problems.append(f"{name!r} is {actual[name].kind.description}, not {parameter.kind.description}")
        if actual[name].default != parameter.default:
            problems.append(f"{name!r} defaults to {actual[name].default!r}, not {parameter.default!r}")
    for name, parameter in actual.items():
        if name not in declared.parameters and parameter.default is inspect.Parameter.empty \
                and parameter.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            problems.append(f"extra required parameter {name!r}")
    return problems


def assigned_in_init(cls: type) -> set[str]:
    """Attribute names `cls.__init__` stores on self (`self.x = ...`)."""
    import ast
    import textwrap

    init = cls.__dict__.get("__init__")
    if init is None:
        return set()
    tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name) and node.value.id == "self"}


def seam_problems(protocol: type, implementation: type) -> list[str]:
    problems = []
    for name, declared in protocol_members(protocol).items():
        implemented = inspect.getattr_static(implementation, name, None)
        if isinstance(declared, property):
            # A read-only protocol property is met by a property, or by an attribute __init__ sets.
            if not isinstance(implemented, property) and name not in assigned_in_init(implementation):
                problems.append(f"{implementation.__name__}.{name} is not a property"
                                if implemented is not None else f"{implementation.__name__}.{name} is missing")
        elif implemented is None:
            problems.append(f"{implementation.__name__}.{name} is missing")
        else:
            kind = "async" if inspect.iscoroutinefunction(declared) else "sync"
            if inspect.isasyncgenfunction(implemented):
                got = "async iterator"
            elif inspect.iscoroutinefunction(implemented):
                got = "async"
            else:
                got = "sync"
            if got != kind and not (kind == "sync" and got == "async iterator"):  # stream_file: an async generator
                problems.append(f"{implementation.__name__}.{name} is {got}, the protocol's is {kind}")
            problems += [f"{implementation.__name__}.{name}: {p}"
                         for p in compatible(inspect.signature(declared), inspect.signature(implemented))]
    return problems


def qemu_vm_class():
    from chaser.vm.machine import VirtualMachine

    return VirtualMachine


def qemu_runtime_class():
    from chaser.vm.runtime import Runtime as QemuRuntime

    return QemuRuntime


@pytest.mark.parametrize("implementation", [FakeVM, AgentVM, qemu_vm_class()], ids=lambda c: c.__name__)
def test_vm_implementations_have_the_protocols_members(implementation):
    assert seam_problems(SandboxVM, implementation) == []


@pytest.mark.parametrize("implementation", [FakeRuntime, AgentRuntime, qemu_runtime_class()],
                         ids=lambda c: c.__module__ + "." + c.__name__)
def test_runtime_implementations_have_the_protocols_members(implementation):
    assert seam_problems(Runtime, implementation) == []


async def test_the_fakes_are_instances_of_the_runtime_checkable_protocols():
    runtime = FakeRuntime()
    assert isinstance(runtime, Runtime)
    vm = await runtime.start(VMSpec(image_disk=runtime.base_image_disk, session_id="s"))
    assert isinstance(vm, SandboxVM) and runtime.started == [vm]
    assert runtime.network_mode == "isolated" and runtime.base_image_disk == Path("/nonexistent/base.erofs")
    runtime.network_mode = "none"
    assert runtime.network_mode == "none"
    assert not isinstance(object(), SandboxVM) and not isinstance(object(), Runtime)  # the check means something


async def test_the_agent_adapters_are_instances_of_the_protocols(agent):
    runtime = AgentRuntime(agent)
    assert isinstance(runtime, Runtime)
    vm = await runtime.start(VMSpec(image_disk=runtime.base_image_disk, session_id="s"))
    try:
        assert isinstance(vm, SandboxVM) and vm.alive
    finally:
        await runtime.stop_all()
    assert not vm.alive


def test_the_checker_finds_what_is_missing_or_different():
    class Partial:
        @property
        def id(self) -> str:
            return "x"

        boot_method = "cold"  # not a property

        def exec(self, command, *, cwd=None):  # sync, and short of parameters
            return {}

    problems = seam_problems(SandboxVM, Partial)
    assert "Partial.boot_method is not a property" in problems
    assert "Partial.exec is sync, the protocol's is async" in problems
    assert "Partial.exec: no parameter 'env'" in problems
    assert "Partial.stop is missing" in problems
    assert "Partial.id is missing" not in problems

    class Attributes:
        def __init__(self) -> None:
            self.id = "vm-1"

    assert "Attributes.id is missing" not in seam_problems(SandboxVM, Attributes)
    assert "Attributes.alive is missing" in seam_problems(SandboxVM, Attributes)
