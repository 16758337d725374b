"""A running session's egress policy: read it, replace it, change it on reuse.

The VM's policy and the stored one change together under the session's
`network_lock`, so they cannot disagree after concurrent changes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from chaser.models.network import NetworkPolicyCreate
from chaser.runtime import EgressPolicy
from chaser.service.keys import Principal
from chaser.service.live import LiveSession
from chaser.service.network import effective_policy, network_enforced, stored_policy
from chaser.store import SessionRow

if TYPE_CHECKING:
    from chaser.service.sessions import SessionManager

log = logging.getLogger(__name__)


class SessionNetworks:
    def __init__(self, sessions: SessionManager) -> None:
        self.sessions = sessions

    def enforced(self) -> bool:
        return network_enforced(self.sessions.settings, self.sessions.runtime if self.sessions.has_runtime else None)

    def get(self, principal: Principal, session_id: str) -> EgressPolicy:
        """The session's policy: the VM's while it runs (where this server enforces policies),
        else the one recorded for it (an ended session: the last one)."""
        row = self.sessions.get(principal, session_id)
        live = self.sessions.live.get(session_id)
        if live is not None and live.vm is not None and not live.terminating:
            if self.enforced():
                return live.vm.network_policy
            if live.network is not None:
                return live.network
        return stored_policy(row.network, default_internet=self.sessions.settings.network_internet_default)

    async def set(self, principal: Principal, session_id: str, request: NetworkPolicyCreate) -> EgressPolicy:
        """Replace a running session's policy (omitted fields: the default); new connections follow it at once."""
        policy = effective_policy(request, base=None, default_internet=self.sessions.settings.network_internet_default,
                                  field="")
        live = await self.sessions.live_session(principal, session_id)
        return await self._apply(live, policy)

    async def change(self, live: LiveSession, request: NetworkPolicyCreate) -> EgressPolicy:
        """Apply `request` over the running session's current policy (a reused session, /v1/exec)."""
        base = live.network.to_dict() if live.network is not None else None
        policy = effective_policy(request, base=base, default_internet=self.sessions.settings.network_internet_default)
        if policy == live.network:
            return policy
        return await self._apply(live, policy)

    async def _apply(self, live: LiveSession, policy: EgressPolicy) -> EgressPolicy:
        async with live.network_lock:  # the VM's policy and the stored one change in the same order
            async with self.sessions.using(live) as vm:
                await vm.set_network_policy(policy)
            live.network = policy
            with self.sessions.db.session() as s:
                row = s.get(SessionRow, live.id)
                if row is not None:
                    row.network = policy.to_dict()
        log.info("session %s: egress policy set to %s", live.id, policy.to_dict())
        return policy
