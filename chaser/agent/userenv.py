"""Users, environment and the child-side set-up shared by /exec, /pty, /selftest.

Users are looked up in the SANDBOX's /etc/passwd and /etc/group (read through
the safe resolver), not with the pwd module, which would read the guest OS's.
"""

import os
from dataclasses import dataclass, field

from .errors import bad_request
from .protocol import SANDBOX_PATH
from .safepath import exists_dir, normalize, read_text

MAX_ID = 2**32 - 2  # uid/gid: (uid_t)-1 means "unchanged" to the kernel


def _decimal_id(text: str) -> bool:
    return text.isascii() and text.isdecimal() and int(text) <= MAX_ID


def check_os_string(value: str, what: str) -> str:
    """A string that becomes an argv entry, an environment entry or a path: no NUL, and
    encodable for the kernel (a lone surrogate from JSON is not)."""
    if "\0" in value:
        raise bad_request(f"{what} contains a NUL byte")
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        raise bad_request(f"{what} is not valid UTF-8") from None
    return value


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: str
    shell: str
    groups: list = field(default_factory=list)


def _passwd_entries(root: str):
    for line in (read_text(root, "/etc/passwd") or "").splitlines():
        parts = line.split(":")
        if len(parts) >= 7 and _decimal_id(parts[2]) and _decimal_id(parts[3]):
            yield parts


def resolve_user(root: str, spec) -> User:
    """`spec` is a user name, a numeric uid (int or str) or None (root)."""
    if spec is None or spec == "":
        spec = "root"
    if isinstance(spec, bool) or not isinstance(spec, (str, int)):
        raise bad_request("user must be a string or an integer")
    spec = str(spec)
    for name, _pw, uid, gid, _gecos, home, shell, *_ in _passwd_entries(root):
        if name == spec or uid == spec:
            user = User(name, int(uid), int(gid), home or "/", shell or "/bin/sh")
            break
    else:
        if spec == "root" or spec == "0":
            user = User("root", 0, 0, "/root", "/bin/sh")
        elif _decimal_id(spec):
            # Unknown numeric uid: still usable, like `docker run --user 1234`.
            user = User(spec, int(spec), int(spec), "/", "/bin/sh")
        else:
            raise bad_request(f"unknown user {spec!r}")
    groups = {user.gid}
    for line in (read_text(root, "/etc/group") or "").splitlines():
        parts = line.split(":")
        if len(parts) >= 4 and _decimal_id(parts[2]) and user.name in parts[3].split(","):
            groups.add(int(parts[2]))
    user.groups = sorted(groups)
    return user


def check_env(env, what: str = "env") -> dict:
    if env is None:
        return {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise bad_request(f"{what} must be an object of strings")
    for k, v in env.items():
        if not k or "=" in k or "\0" in k or "\0" in v:
            raise bad_request(f"invalid {what} entry {k!r}")
        check_os_string(k, f"{what} entry {k!r}")
        check_os_string(v, f"{what} entry {k!r}")
    return env


def build_env(user: User, session_id: str, init_env: dict, request_env: dict, term: str) -> dict:
    env = {
        "PATH": SANDBOX_PATH,
        "HOME": user.home,
        "USER": user.name,
        "LOGNAME": user.name,
        "SHELL": user.shell,
        "LANG": "C.UTF-8",
        "TERM": term,
        "CHASER_SESSION_ID": session_id or "",
        "CHASER": "1",
    }
    env.update(init_env)
    env.update(request_env)
    return env


def check_cwd(root: str, cwd) -> str:
    if not isinstance(cwd, str):
        raise bad_request("cwd must be a string")
    cwd = normalize(cwd)
    if not exists_dir(root, cwd):
        raise bad_request(f"cwd {cwd!r} is not a directory in the sandbox")
    return cwd


def make_preexec(root: str, cwd: str, user: User, controlling_tty: bool = False):
    """Child-side set-up, run after fork and setsid, before exec.

    chroot must come first and setuid last: subprocess's own cwd=/user= would
    run before preexec_fn, i.e. outside the chroot."""
    def preexec():
        if controlling_tty:
            import fcntl
            import termios
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        os.chroot(root)
        os.chdir(cwd)
        os.setgroups(user.groups)
        os.setgid(user.gid)
        os.setuid(user.uid)
    return preexec


def argv_of(command) -> list:
    if isinstance(command, str) and command:
        return ["/bin/sh", "-c", check_os_string(command, "command")]
    if isinstance(command, list) and command and all(isinstance(a, str) for a in command):
        return [check_os_string(a, "command") for a in command]
    raise bad_request("command must be a non-empty string or list of strings")
