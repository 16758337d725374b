"""Where the client finds its server and key.

Order: explicit arguments, then env `CHASER_API_URL` / `CHASER_API_KEY` /
`CHASER_CA_BUNDLE`, then the config file (`$CHASER_CONFIG`, default
`~/.config/chaser/config.json`), which holds `{"api_url", "api_key", "ca_bundle",
"current_session"}`. `ca_bundle`: PEM certificates an https server may present
besides those the system trusts.
"""

from __future__ import annotations

import json
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_API_URL = "http://127.0.0.1:8080"
CONFIG_ENV = "CHASER_CONFIG"
API_URL_ENV = "CHASER_API_URL"
API_KEY_ENV = "CHASER_API_KEY"
CA_BUNDLE_ENV = "CHASER_CA_BUNDLE"


def config_path() -> Path:
    override = os.environ.get(CONFIG_ENV)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".config" / "chaser" / "config.json"


def load_config(path: Path | None = None) -> dict[str, Any]:
    """The config file as a dict; `{}` when it is missing or unreadable."""
    path = path or config_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_file_atomically(path: Path, text: str, *, mode: int, dir_mode: int = 0o777) -> None:
    """Replace `path` with `text` in one rename (a reader never sees half a file); a missing
    directory is made with `dir_mode` (under the umask)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save_config(data: dict[str, Any], path: Path | None = None) -> None:
    """Write atomically with mode 0600: the file holds an API key."""
    write_file_atomically(path or config_path(), json.dumps(data, indent=2) + "\n", mode=0o600, dir_mode=0o700)


def update_config(path: Path | None = None, **values: Any) -> dict[str, Any]:
    """Set (or, with value None, remove) keys in the config file."""
    data = load_config(path)
    for key, value in values.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    save_config(data, path)
    return data


def get_current_session(path: Path | None = None) -> str | None:
    value = load_config(path).get("current_session")
    return value if isinstance(value, str) and value else None


def set_current_session(session_id: str | None, path: Path | None = None) -> None:
    update_config(path, current_session=session_id)


@dataclass(frozen=True, slots=True)
class ClientSettings:
    api_url: str
    api_key: str | None
    ca_bundle: str | None = None


def tls_context(ca_bundle: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """The system's trusted CAs (OpenSSL's defaults, `SSL_CERT_FILE` included) plus `ca_bundle`'s
    certificates: a server with a self-signed certificate is trusted by naming that certificate."""
    context = ssl.create_default_context()
    if ca_bundle:
        try:
            context.load_verify_locations(cafile=os.fspath(ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            from chaser.client._errors import ChaserConnectionError

            raise ChaserConnectionError(f"cannot load the CA bundle {os.fspath(ca_bundle)}: {exc}") from exc
    return context


def resolve_settings(
    api_url: str | None = None,
    api_key: str | None = None,
    *,
    path: Path | None = None,
    ca_bundle: str | os.PathLike[str] | None = None,
) -> ClientSettings:
    file_values: dict[str, Any] | None = None

    def from_file(key: str) -> Any:
        nonlocal file_values
        if file_values is None:
            file_values = load_config(path)
        return file_values.get(key)

    url = api_url or os.environ.get(API_URL_ENV) or from_file("api_url") or DEFAULT_API_URL
    key = api_key or os.environ.get(API_KEY_ENV) or from_file("api_key") or None
    ca = ca_bundle or os.environ.get(CA_BUNDLE_ENV) or from_file("ca_bundle") or None
    return ClientSettings(api_url=str(url).rstrip("/"), api_key=key, ca_bundle=os.fspath(ca) if ca else None)
