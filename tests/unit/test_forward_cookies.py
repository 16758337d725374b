"""The per-session login cookie of host-style forwards (chaser/service/forward/cookies.py):
signed (session id, key id, expiry) under a server secret kept 0600 in $CHASER_HOME."""

from __future__ import annotations

import stat

import pytest

from chaser import errors
from chaser.service.forward import ForwardCookies, load_or_create_secret
from chaser.service.forward.cookies import SECRET_FILE

NOW = 1_800_000_000.0
SESSION, OTHER, KEY = "ses_0123456789abcdef01234567", "ses_76543210fedcba9876543210", "key_00112233aabbccdd"


@pytest.fixture
def cookies(tmp_path) -> ForwardCookies:
    return ForwardCookies(load_or_create_secret(tmp_path), ttl_s=3600)


def test_a_token_names_its_session_and_key(cookies):
    token = cookies.issue(SESSION, KEY, now=NOW)
    assert token.startswith(f"v1.{SESSION}.{KEY}.{int(NOW) + 3600}.")
    assert cookies.key_id(token, SESSION, now=NOW) == KEY
    assert cookies.key_id(token, SESSION, now=NOW + 3599) == KEY


def test_expired(cookies):
    token = cookies.issue(SESSION, KEY, now=NOW)
    for later in (NOW + 3600, NOW + 10**6):
        with pytest.raises(errors.Unauthorized):
            cookies.key_id(token, SESSION, now=later)


def test_another_session_is_refused(cookies):
    token = cookies.issue(SESSION, KEY, now=NOW)
    with pytest.raises(errors.Unauthorized):
        cookies.key_id(token, OTHER, now=NOW)


def test_tampering_is_refused(cookies):
    token = cookies.issue(SESSION, KEY, now=NOW)
    version, session, key, expiry, mac = token.split(".")
    forged = [
        ".".join((version, OTHER, key, expiry, mac)),                 # moved to another session
        ".".join((version, session, "key_ffffffffffffffff", expiry, mac)),  # another key
        ".".join((version, session, key, str(int(expiry) + 10**6), mac)),   # a longer life
        ".".join((version, session, key, expiry, mac[:-1] + ("A" if mac[-1] != "A" else "B"))),
        ".".join(("v2", session, key, expiry, mac)),
        ".".join((version, session, key, expiry)),
        token + ".x", "", "sk_not_a_token", f"{token[:-1]}",
    ]
    for value in forged:
        with pytest.raises(errors.Unauthorized):
            cookies.key_id(value, SESSION, now=NOW)
        with pytest.raises(errors.Unauthorized):
            cookies.key_id(value, OTHER, now=NOW)


def test_another_servers_secret_is_refused(cookies, tmp_path):
    token = cookies.issue(SESSION, KEY, now=NOW)
    stranger = ForwardCookies(load_or_create_secret(tmp_path / "other"), ttl_s=3600)
    with pytest.raises(errors.Unauthorized):
        stranger.key_id(token, SESSION, now=NOW)
    # the same secret file, e.g. another replica over the same $CHASER_HOME: accepted
    assert ForwardCookies(load_or_create_secret(tmp_path), ttl_s=60).key_id(token, SESSION, now=NOW) == KEY


def test_secret_file_is_private_and_stable(tmp_path):
    first = load_or_create_secret(tmp_path)
    path = tmp_path / SECRET_FILE
    assert len(first) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_or_create_secret(tmp_path) == first
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_ids_with_separators_are_not_signed(cookies):
    for session, key in ((f"{SESSION}.x", KEY), (SESSION, "key.1"), ("", KEY)):
        with pytest.raises(ValueError):
            cookies.issue(session, key, now=NOW)
    with pytest.raises(ValueError):
        ForwardCookies(b"short", ttl_s=60)


def test_link_tokens_are_short_lived_and_not_cookies(cookies):
    link = cookies.issue_link(SESSION, KEY, now=NOW)
    assert cookies.is_link(link) and not cookies.is_link(cookies.issue(SESSION, KEY, now=NOW))
    assert cookies.link_key_id(link, SESSION, now=NOW + 59) == KEY
    with pytest.raises(errors.Unauthorized):
        cookies.link_key_id(link, SESSION, now=NOW + 60)  # LINK_TTL_S
    with pytest.raises(errors.Unauthorized):
        cookies.link_key_id(link, OTHER, now=NOW)
    with pytest.raises(errors.Unauthorized):  # a link is no cookie …
        cookies.key_id(link, SESSION, now=NOW)
    with pytest.raises(errors.Unauthorized):  # … even relabelled: the MAC names the purpose
        cookies.key_id("v1" + link[2:], SESSION, now=NOW)
    cookie = cookies.issue(SESSION, KEY, now=NOW)
    with pytest.raises(errors.Unauthorized):  # and a cookie is no link
        cookies.link_key_id("l1" + cookie[2:], SESSION, now=NOW)
