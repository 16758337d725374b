"""deploy/: the systemd unit is one systemd accepts, and the example environment holds only real settings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from chaser.config import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "systemd"


def setting_names() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        names.add(f"CHASER_{name.upper()}")
        choices = getattr(field.validation_alias, "choices", None) or []
        names.update(choice for choice in choices if isinstance(choice, str) and choice.startswith("CHASER_"))
    return names


def test_the_unit_verifies_and_leaves_the_vms_to_the_server(tmp_path: Path) -> None:
    unit = (DEPLOY / "chaser-server.service").read_text()
    assert re.search(r"^KillMode=process$", unit, re.M)  # a restart must not kill the VMs
    assert re.search(r"^ExecStart=/opt/chaser/\.venv/bin/chaser server$", unit, re.M)
    # systemd-analyze checks that ExecStart exists: point it at this checkout's chaser.
    chaser = Path(sys.executable).parent / "chaser"
    assert chaser.exists()
    local = tmp_path / "chaser-server.service"
    local.write_text(unit.replace("/opt/chaser/.venv/bin/chaser", str(chaser))
                     .replace("/etc/chaser/chaser.env", str(tmp_path / "chaser.env")))
    (tmp_path / "chaser.env").write_text((DEPLOY / "chaser.env.example").read_text())
    done = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stderr == "" and done.stdout == "", done.stderr + done.stdout


def test_a_unit_with_a_mistake_is_caught(tmp_path: Path) -> None:
    broken = tmp_path / "broken.service"
    broken.write_text((DEPLOY / "chaser-server.service").read_text()
                      .replace("KillMode=process", "KillMode=proces")
                      .replace("/opt/chaser/.venv/bin/chaser", str(Path(sys.executable).parent / "chaser")))
    done = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True, text=True, check=False)
    assert "proces" in done.stderr  # the check above would fail on it


def test_the_example_environment_names_only_settings() -> None:
    names = setting_names()
    assigned = re.findall(r"^#?\s*(CHASER_[A-Z0-9_]+)=", (DEPLOY / "chaser.env.example").read_text(), re.M)
    assert len(assigned) >= 8
    assert [name for name in assigned if name not in names] == []
