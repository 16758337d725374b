"""Copy what the web console takes from npm into chaser/console/static/vendor/ (run by `make setup`).

The console's own code is plain ES modules in chaser/console/static/ (no bundler, no build).
From npm it takes only xterm.js and its fit addon, pinned in console/package.json and
console/package-lock.json (integrity hashes). Their built files are copied, with their
licences, into chaser/console/static/vendor/ and committed, so a fresh clone serves the
console without Node.js. `vendor/SOURCES.sha256` is the hash of the inputs that made them
(the two npm files and this script): while it matches, this does nothing and needs no npm;
when an input changed it runs `npm ci --ignore-scripts` in a temporary directory and copies
the files again. `--check` only says whether the copy is current (exit 1 if not).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENDOR = HERE.parent / "chaser" / "console" / "static" / "vendor"
INPUTS = ("package.json", "package-lock.json", "vendor.py")
STAMP = "SOURCES.sha256"
# node_modules path -> name under vendor/
FILES = {
    "@xterm/xterm/lib/xterm.mjs": "xterm.mjs",
    "@xterm/xterm/css/xterm.css": "xterm.css",
    "@xterm/xterm/LICENSE": "xterm.LICENSE",
    "@xterm/addon-fit/lib/addon-fit.mjs": "addon-fit.mjs",
    "@xterm/addon-fit/LICENSE": "addon-fit.LICENSE",
}


def inputs_hash() -> str:
    digest = hashlib.sha256()
    for name in INPUTS:
        digest.update(name.encode() + b"\0" + (HERE / name).read_bytes() + b"\0")
    return digest.hexdigest()


def current() -> bool:
    stamp = VENDOR / STAMP
    return (stamp.is_file() and stamp.read_text().strip() == inputs_hash()
            and all((VENDOR / name).is_file() for name in FILES.values()))


def vendor() -> None:
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("console/vendor.py: console/package*.json changed and npm is missing (apt-get install npm)")
    with tempfile.TemporaryDirectory(prefix="chaser-console-") as tmp:
        for name in ("package.json", "package-lock.json"):
            shutil.copy(HERE / name, Path(tmp) / name)
        subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=tmp, check=True)
        VENDOR.mkdir(parents=True, exist_ok=True)
        for source, name in FILES.items():
            data = (Path(tmp) / "node_modules" / source).read_bytes()
            # The source map files are not shipped: drop the comment that points at them (bytes, as
            # they are: the minified code holds characters str.splitlines would take for line ends).
            lines = [line for line in data.split(b"\n") if not line.startswith(b"//# sourceMappingURL=")]
            (VENDOR / name).write_bytes(b"\n".join(lines))
    (VENDOR / STAMP).write_text(inputs_hash() + "\n")
    print(f"console: vendored {', '.join(FILES.values())} into {VENDOR}")


def main() -> None:
    if current():
        if "--check" not in sys.argv:
            print("console: vendored assets are current")
        return
    if "--check" in sys.argv:
        sys.exit("console: vendored assets are out of date (run `python3 console/vendor.py`)")
    vendor()


if __name__ == "__main__":
    main()
