"""The gateway's login cookie on host-style origins: a per-session token, never the API key.

A one-time link `{id}.{domain}/forward/{port}/…?token=<API key>` is exchanged for
`chaser_token=<session token>`, which authorises forwarding to that one session
(any of its ports) and nothing else: not `/v1`, not another session.

    token = "v1." + session_id + "." + key_id + "." + expiry (unix s) + "." + base64url(HMAC-SHA256)

The MAC covers (version, session id, key id, expiry) under a server secret kept in
`$CHASER_HOME/secrets/forward-cookie.key` (32 random bytes, mode 0600, made on first
start), so any replica with the same file verifies it without shared in-process
state. Each use also checks that the key still exists and is not revoked (the
database), and the session has to be running: revoking the key or ending the
session makes the cookie useless. Deleting the secret file logs every browser out.

A *link token* (`l1.` + the same fields, another MAC purpose, `LINK_TTL_S` long) is
what `POST /v1/sessions/{id}/ports/{port}/link` hands out, so that a browser is given
a login link without the API key in it; it is accepted only as `?token=` of a login
link, never as the cookie (nor the cookie as a link).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path

from chaser import errors

__all__ = ["LINK_TTL_S", "SECRET_FILE", "ForwardCookies", "load_or_create_secret"]

SECRET_FILE = Path("secrets") / "forward-cookie.key"
SECRET_BYTES = 32
VERSION = "v1"  # the cookie
LINK = "l1"  # a login link's token
LINK_TTL_S = 60
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
INVALID = "invalid or expired login cookie for this session: open the link with ?token=<API key> again"
INVALID_LINK = "invalid or expired login link for this session (a link lasts 60 s): ask for a new one"


def load_or_create_secret(home: Path) -> bytes:
    """The server secret in `home/secrets/forward-cookie.key`, created (0600, atomically) if missing."""
    path = home / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        secret = path.read_bytes()
        if len(secret) >= SECRET_BYTES:
            return secret
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_bytes(SECRET_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # first one wins when two processes start at once
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_bytes()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class ForwardCookies:
    """Issues and checks per-session login tokens (pure: no I/O after construction)."""

    def __init__(self, secret: bytes, ttl_s: int) -> None:
        if len(secret) < SECRET_BYTES:
            raise ValueError("the forward cookie secret must be at least 32 bytes")
        self._secret = secret
        self.ttl_s = ttl_s

    def _mac(self, kind: str, session_id: str, key_id: str, expiry: int) -> str:
        message = f"{kind}\n{session_id}\n{key_id}\n{expiry}".encode()
        return _b64(hmac.new(self._secret, message, hashlib.sha256).digest())

    def _issue(self, kind: str, session_id: str, key_id: str, ttl_s: int, now: float | None) -> str:
        if not (_ID.match(session_id) and _ID.match(key_id)) or "." in session_id + key_id:
            raise ValueError("session and key ids must be plain identifiers")
        expiry = int(time.time() if now is None else now) + ttl_s
        return f"{kind}.{session_id}.{key_id}.{expiry}.{self._mac(kind, session_id, key_id, expiry)}"

    def _key_id(self, kind: str, token: str, session_id: str, now: float | None) -> str:
        parts = token.split(".")
        if len(parts) != 5 or parts[0] != kind:
            raise errors.Unauthorized(INVALID if kind == VERSION else INVALID_LINK)
        _, token_session, key_id, expiry_text, mac = parts
        failure = errors.Unauthorized(INVALID if kind == VERSION else INVALID_LINK)
        if not expiry_text.isdigit() or not _ID.match(key_id):
            raise failure
        expiry = int(expiry_text)
        if not hmac.compare_digest(mac.encode(), self._mac(kind, token_session, key_id, expiry).encode()):
            raise failure
        if not hmac.compare_digest(token_session.encode(), session_id.encode()):
            raise failure
        if expiry <= (time.time() if now is None else now):
            raise failure
        return key_id

    def issue(self, session_id: str, key_id: str, *, now: float | None = None) -> str:
        """A cookie value for `session_id` on behalf of key `key_id`, valid `ttl_s`."""
        return self._issue(VERSION, session_id, key_id, self.ttl_s, now)

    def key_id(self, token: str, session_id: str, *, now: float | None = None) -> str:
        """The API key id behind cookie value `token` if it is authentic, unexpired and for
        `session_id`; else Unauthorized. (The caller still checks that the key is not revoked.)"""
        return self._key_id(VERSION, token, session_id, now)

    def issue_link(self, session_id: str, key_id: str, *, now: float | None = None) -> str:
        """A login link's token for `session_id`, valid `LINK_TTL_S`."""
        return self._issue(LINK, session_id, key_id, LINK_TTL_S, now)

    def link_key_id(self, token: str, session_id: str, *, now: float | None = None) -> str:
        """As `key_id`, for a login link's token."""
        return self._key_id(LINK, token, session_id, now)

    @staticmethod
    def is_link(token: str) -> bool:
        return token.startswith(LINK + ".")
