"""`refs.json`: normalised references → entry digests, and image-index digests → the
entry digest of their linux/amd64 manifest ("aliases"). Written whole (write to a temp
file, rename) under the `refs` file lock. Blocking: async code calls it in worker threads."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TypedDict

from chaser.images.entries import Entries
from chaser.images.locks import FileLocks

LOCK = "refs"


class RefData(TypedDict):
    refs: dict[str, str]
    aliases: dict[str, str]


class RefIndex:
    def __init__(self, root: Path, locks: FileLocks, entries: Entries) -> None:
        self.root = root
        self.file = root / "refs.json"
        self.locks = locks
        self.entries = entries

    def read(self) -> RefData:
        try:
            data = json.loads(self.file.read_text())
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        return {"refs": dict(data.get("refs") or {}), "aliases": dict(data.get("aliases") or {})}

    def write(self, data: RefData) -> None:
        """Replace the file; the caller holds the `refs` lock."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".refs.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.file)

    def lookup(self, name: str) -> str | None:
        """The digest a normalised reference points to, if any (the entry may be gone)."""
        return self.read()["refs"].get(name)

    def update(self, *, set_refs: dict[str, str] | None = None, aliases: dict[str, str] | None = None,
               drop_refs: set[str] | None = None) -> None:
        with self.locks.hold_sync(LOCK):
            data = self.read()
            new = dict(data["refs"])
            new.update(set_refs or {})
            for n in drop_refs or ():
                new.pop(n, None)
            new_aliases = {**data["aliases"], **(aliases or {})}
            if new != data["refs"] or new_aliases != data["aliases"]:
                self.write({"refs": new, "aliases": new_aliases})

    def known_digest(self, digest: str) -> str | None:
        """The entry digest for `digest` (an entry's own or an index's), if that entry exists."""
        if self.entries.has(digest):
            return digest
        alias = self.read()["aliases"].get(digest)
        return alias if alias and self.entries.has(alias) else None


def without(data: RefData, digest: str) -> RefData:
    """`data` less every ref and alias that points to `digest`."""
    return {"refs": {n: d for n, d in data["refs"].items() if d != digest},
            "aliases": {a: d for a, d in data["aliases"].items() if d != digest}}
