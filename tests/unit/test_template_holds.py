"""A VM remembers the template it was restored from (docs/pause-and-fork.md, "Which template"):
what holds a template against retirement (chaser/vm/template.py), which template a save
filters against and a resume maps (chaser/vm/suspend.py), and adopt.json carrying it
(chaser/vm/adopt.py). Real VMs: tests/integration/test_pause_fork.py."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from chaser import errors
from chaser.vm import adopt, suspend
from chaser.vm.template import Template, held, hold, load_template, retire_other_templates


def make_template(templates: Path, key: str, created_at: float) -> Template:
    template = Template(dir=templates / key, created_at=created_at)
    template.dir.mkdir(parents=True)
    for path in (template.memory_file, template.state_file, template.image_placeholder, template.writable_placeholder):
        path.write_bytes(b"")
    template.meta_file.write_text(json.dumps({"created_at": created_at}))
    return template


class FakeRuntime:
    def __init__(self, templates: Path, current: Template, memory_mib: int = 512) -> None:
        self.templates_dir, self.current = templates, current
        self.settings = SimpleNamespace(memory_mib=memory_mib)
        self.built = 0

    def template_dir(self) -> Path:
        return self.current.dir

    async def ensure_template(self) -> Template:
        self.built += 1
        return self.current


class FakeVM:
    def __init__(self, template: Template | None, *, ram_block: str = "mem", boot_method: str = "template",
                 memory_bytes: int = 512 << 20) -> None:
        self.template, self.ram_block, self.boot_method = template, ram_block, boot_method
        self.qmp = SimpleNamespace(execute=self._execute)
        self.memory_bytes = memory_bytes

    async def _execute(self, command: str, *args: Any) -> dict[str, Any]:
        assert command == "query-memory-size-summary"
        return {"base-memory": self.memory_bytes, "plugged-memory": 0}

    async def guard(self, awaitable: Any) -> Any:
        return await awaitable


def choose(runtime: FakeRuntime, vm: FakeVM) -> Template | None:
    return asyncio.run(suspend.template_for_save(runtime, vm))  # type: ignore[arg-type]


def test_a_held_template_outlives_the_build_of_another_key(tmp_path):
    templates = tmp_path / "templates"
    old, unheld = make_template(templates, "old", 1.0), make_template(templates, "unheld", 2.0)
    new = make_template(templates, "new", 3.0)
    holder = tmp_path / "vms" / "vm-1"
    holder.mkdir(parents=True)
    hold(old, holder)
    hold(old, holder)  # again: one link
    assert held(old.dir) and len(list(old.holds_dir.iterdir())) == 1
    retire_other_templates(templates, keep=new.dir)
    assert load_template(old.dir) == old and not unheld.dir.exists() and load_template(new.dir) == new
    holder.rmdir()  # the VM stopped (its directory goes with it)
    retire_other_templates(templates, keep=new.dir)
    assert not old.dir.exists()
    hold(old, holder)  # a template discarded meanwhile: nothing to hold, no error


def test_a_save_filters_against_the_template_the_vm_maps(tmp_path):
    templates = tmp_path / "templates"
    current = make_template(templates, "current", 2.0)
    runtime = FakeRuntime(templates, current)
    assert choose(runtime, FakeVM(current)) == current and runtime.built == 0
    assert choose(runtime, FakeVM(None, ram_block="builtin", boot_method="cold")) is None
    # Rebuilt in the same directory since the VM was restored (a failed restore elsewhere):
    # filtering against the current one is right as well, only bigger.
    assert choose(runtime, FakeVM(Template(dir=current.dir, created_at=1.0))) == current and runtime.built == 1


def test_a_vm_of_another_template_key_is_not_paused(tmp_path):
    templates = tmp_path / "templates"
    other = make_template(templates, "made-for-1024-mib", 1.0)
    runtime = FakeRuntime(templates, make_template(templates, "current", 2.0))
    with pytest.raises(errors.SnapshotIncompatible, match=r"made-for-1024-mib.*keeps running"):
        choose(runtime, FakeVM(other))


def test_an_adopted_vm_that_does_not_name_its_template_is_checked_by_its_ram_size(tmp_path):
    templates = tmp_path / "templates"
    current = make_template(templates, "current", 2.0)
    runtime = FakeRuntime(templates, current, memory_mib=512)
    assert choose(runtime, FakeVM(None, memory_bytes=512 << 20)) == current  # as before: the current one
    with pytest.raises(errors.SnapshotIncompatible, match=r"1024 MiB of RAM.*512 MiB"):
        choose(runtime, FakeVM(None, memory_bytes=1024 << 20))
    assert choose(runtime, FakeVM(None, boot_method="resume", memory_bytes=1024 << 20)) == current  # not asked


def test_a_resume_maps_the_template_its_state_names(tmp_path):
    templates = tmp_path / "templates"
    named = make_template(templates, "named", 1.0)
    runtime = FakeRuntime(templates, make_template(templates, "current", 2.0))

    def of(meta: dict[str, Any]) -> Template:
        return asyncio.run(suspend._template_of_state(runtime, meta))  # type: ignore[arg-type]

    assert of({"template": "named", "template_created_at": 1.0}) == named
    assert of({"template_created_at": 2.0}) == runtime.current  # an older state: the current one
    for meta in ({"template": "named", "template_created_at": 5.0}, {"template": "gone", "template_created_at": 1.0},
                 {"template_created_at": 1.0}):
        with pytest.raises(errors.SnapshotIncompatible, match="rebuilt or removed"):
            of(meta)


def test_adopt_json_carries_the_template_and_older_files_load_without_it(tmp_path):
    from tests.unit.test_adopt import FakeVM as AdoptVM

    vm_dir = tmp_path / "vm-1"
    vm_dir.mkdir()
    vm = AdoptVM(vm_dir)
    vm.template = Template(dir=tmp_path / "templates" / "abc", created_at=7.5)
    adopt.save_state(vm)  # type: ignore[arg-type]
    state = adopt.load_state(vm_dir)
    assert state is not None and state.template_dir == str(vm.template.dir) and state.template_created_at == 7.5
    older = {k: v for k, v in asdict(state).items() if not k.startswith("template")}
    (vm_dir / adopt.STATE_FILE).write_text(json.dumps(older))
    legacy = adopt.load_state(vm_dir)
    assert legacy is not None and legacy.template_dir is None and legacy.template_created_at is None
