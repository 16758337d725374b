"""Forwarded ports: the port number check, and the ports a session opened to the public."""

from __future__ import annotations

from chaser import errors
from chaser.service.sessions import SessionManager

__all__ = ["PublicPorts", "check_port"]


def check_port(port: object) -> int:
    """`port` (text or a number) as an int in 1..65535, else InvalidRequest (400)."""
    try:
        value = int(str(port))
    except ValueError:
        raise errors.InvalidRequest("port must be an integer in 1..65535") from None
    if not 1 <= value <= 65535:
        raise errors.InvalidRequest("port must be an integer in 1..65535")
    return value


class PublicPorts:
    """Ports a session opened to unauthenticated gateway requests.

    Kept in memory, per live session: they end with the session (and with the
    server process, which ends every session anyway)."""

    def __init__(self, sessions: SessionManager) -> None:
        self.sessions = sessions
        self._ports: dict[str, set[int]] = {}

    def _prune(self) -> None:
        for session_id in [s for s in self._ports if s not in self.sessions.live]:
            del self._ports[session_id]

    def set(self, session_id: str, port: int, public: bool) -> None:
        """Open or close `port` (of a live session: the caller checked) and record it in the audit log."""
        self._prune()
        ports = self._ports.setdefault(session_id, set())
        if public:
            ports.add(port)
        else:
            ports.discard(port)
            if not ports:
                self._ports.pop(session_id, None)
        live = self.sessions.live.get(session_id)
        if live is not None:  # by the caller that `live_session` just let in (the audit log's request context)
            self.sessions.audit.record("port.public" if public else "port.private", account_id=live.account_id,
                                       resource_type="session", resource_id=session_id,
                                       summary=f"port {port} {'public' if public else 'private'}",
                                       metadata={"port": port})

    def is_public(self, session_id: str, port: int) -> bool:
        return session_id in self.sessions.live and port in self._ports.get(session_id, ())

    def ports(self, session_id: str) -> list[int]:
        return sorted(self._ports.get(session_id, ())) if session_id in self.sessions.live else []
