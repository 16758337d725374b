"""Egress policies on the API side: resolving the effective policy of a request and
describing it. The rules of what an entry may be live in `EgressPolicy` only;
enforcing them is the runtime's business (chaser/vm/network)."""

from __future__ import annotations

from typing import Any

from chaser import errors
from chaser.config import Settings
from chaser.models.network import NetworkPolicyCreate, NetworkPolicyPublic
from chaser.runtime import UNENFORCED_MODES, EgressPolicy, Runtime


def effective_policy(request: NetworkPolicyCreate | None, *, base: dict[str, Any] | None, default_internet: bool,
                     field: str = "network") -> EgressPolicy:
    """The policy a session (or workspace) gets: the fields the request gives, the rest from
    `base` (a stored policy, e.g. the workspace's), the rest from the server default.
    Invalid entries → 400 invalid_request naming `field`."""
    merged: dict[str, Any] = dict(base or {})
    if request is not None:
        merged.update(request.model_dump(exclude_none=True))
    try:
        return EgressPolicy.from_dict(merged, default_internet=default_internet)
    except errors.InvalidRequest as exc:
        message = f"{field}.{exc.message}" if field else exc.message
        raise errors.InvalidRequest(message, code=exc.code) from None


def stored_policy(data: dict[str, Any] | None, *, default_internet: bool) -> EgressPolicy:
    """A policy read back from the store (rows written before policies existed have none)."""
    return EgressPolicy.from_dict(data, default_internet=default_internet)


def network_enforced(settings: Settings, runtime: Runtime | None = None) -> bool:
    """Whether this server applies egress policies: the mode the runtime resolved
    `CHASER_NETWORK` to, else (before it started) the configured one."""
    mode = runtime.network_mode if runtime is not None else settings.network
    return mode not in UNENFORCED_MODES


def policy_public(policy: EgressPolicy, *, enforced: bool) -> NetworkPolicyPublic:
    return NetworkPolicyPublic(internet=policy.internet, allow_out=list(policy.allow_out),
                               deny_out=list(policy.deny_out), enforced=enforced)
