"""docs/operations.md's settings table is the one chaser/settings_doc.py renders from chaser/config.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaser import settings_doc
from chaser.config import Settings

OPERATIONS_MD = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def table_rows(table: str) -> list[str]:
    return table.splitlines()[2:]  # after the header and its separator


def test_operations_md_holds_exactly_the_generated_table() -> None:
    documented = settings_doc.region(OPERATIONS_MD.read_text())
    assert documented == settings_doc.settings_table(), (
        f"docs/operations.md's settings table is out of date: run `{settings_doc.COMMAND}`"
    )


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_every_setting_has_a_description(name: str) -> None:
    description = Settings.model_fields[name].description
    assert description and description.strip(), f"Settings.{name} needs a description= (docs/operations.md)"


def test_one_row_per_setting_naming_its_variable() -> None:
    rows = table_rows(settings_doc.settings_table())
    assert len(rows) == len(Settings.model_fields)
    for row, (name, field) in zip(rows, Settings.model_fields.items(), strict=True):
        assert row.startswith(f"| `{settings_doc.env_names(name, field)[0]}`")
        assert row.count(" | ") == 3, row  # four cells: a stray `|` in a description is escaped


def test_variables_are_the_ones_the_settings_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHASER_MEMORY_MIB", "1024")
    monkeypatch.setenv("CHASER_CONFIG", "/tmp/chaser-test-config.json")
    settings = Settings()
    assert settings.memory_mib == 1024
    assert settings.config_file == Path("/tmp/chaser-test-config.json")
    names = {name: settings_doc.env_names(name, field) for name, field in Settings.model_fields.items()}
    assert names["memory_mib"] == ["CHASER_MEMORY_MIB"]
    assert names["config_file"] == ["CHASER_CONFIG", "CHASER_CONFIG_FILE"]


def test_computed_defaults_do_not_show_this_machines_home() -> None:
    rows = {row.split(" | ")[0]: row for row in table_rows(settings_doc.settings_table())}
    assert "| `~/.local/share/chaser` |" in rows["| `CHASER_HOME`"]
    assert "| `~/.config/chaser/config.json` |" in rows["| `CHASER_CONFIG` (or `CHASER_CONFIG_FILE`)"]
    home = str(Path.home())
    if home != "/":
        assert home not in settings_doc.settings_table()


def test_write_replaces_only_the_region(tmp_path: Path) -> None:
    doc = tmp_path / "ops.md"
    doc.write_text(f"# Ops\n\nbefore\n\n{settings_doc.START_MARKER}\n| stale |\n{settings_doc.END_MARKER}\n\nafter\n")
    assert settings_doc.main(["--check", str(doc)]) == 1
    assert settings_doc.main(["--write", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith(f"# Ops\n\nbefore\n\n{settings_doc.START_MARKER}\n| variable |")
    assert text.endswith(f"|\n{settings_doc.END_MARKER}\n\nafter\n")
    assert settings_doc.region(text) == settings_doc.settings_table()
    assert settings_doc.main(["--check", str(doc)]) == 0


def test_a_file_without_markers_is_an_error(tmp_path: Path) -> None:
    doc = tmp_path / "ops.md"
    doc.write_text("# Ops\n")
    with pytest.raises(ValueError, match="settings:start"):
        settings_doc.main(["--write", str(doc)])
